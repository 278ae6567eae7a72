"""Problems with `params.yaml` as typed values: one per key, built from pydantic's structured
errors (location, type, context), never from its text."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from pydantic import ValidationError

from digits import PipelineError


@dataclass(frozen=True)
class Problem:
    """What is wrong with one setting: its full dotted key ('' for the whole file) and why."""

    key: str
    message: str

    def __str__(self) -> str:
        return f"{self.key}: {self.message}" if self.key else self.message


class SettingProblems(ValueError):
    """Raised by a validator that checks several keys together: each problem names its own
    key, relative to the model that raised it."""

    def __init__(self, problems: Iterable[Problem]) -> None:
        self.problems = list(problems)
        super().__init__("; ".join(map(str, self.problems)))


class ParamsError(PipelineError, ValueError):
    """`params.yaml` is missing, unreadable or invalid; the message lists every problem, and
    `problems` holds them as values."""

    def __init__(self, message: str, problems: Sequence[Problem] = ()) -> None:
        super().__init__(message)
        self.problems = list(problems)


def _join(*parts: object) -> str:
    return ".".join(str(p) for p in parts if str(p))


def problems_of(err: ValidationError) -> list[Problem]:
    """One Problem per pydantic error, naming the full dotted key; a validator's
    SettingProblems become one Problem per key it named."""
    problems: list[Problem] = []
    for e in err.errors():
        key = _join(*e["loc"])
        cause = e.get("ctx", {}).get("error")
        if isinstance(cause, SettingProblems):
            problems += [Problem(_join(key, p.key), p.message) for p in cause.problems]
        elif e["type"] == "extra_forbidden":
            problems.append(Problem(key, "unknown key (typo?)"))
        elif isinstance(cause, ValueError):
            problems.append(Problem(key, str(cause)))
        elif e["type"] == "missing":
            problems.append(Problem(key, e["msg"]))
        else:
            problems.append(Problem(key, f"{e['msg']} (got {e.get('input')!r})"))
    return list(dict.fromkeys(problems))


def invalid(source: str, problems: Sequence[Problem], lines: Mapping[str, int]) -> ParamsError:
    """The error listing every problem, one line each, with the line in `source` of each key
    the file gives (`lines`: dotted key -> line number)."""
    text = [f"{source}: {len(problems)} invalid setting(s):"]
    for problem in problems:
        line = lines.get(problem.key)
        text.append(f"  line {line}: {problem}" if line else f"  {problem}")
    return ParamsError("\n".join(text), problems)
