"""Whether a sweep's space fits the rest of the schema: every fixed value, and every end or
choice of each searched setting, must make valid params, so that no trial is wasted on a
setting the schema refuses. Run by `make sweep` before any trial."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from digits.lib.config import Params, ParamsError, Problem, flatten, load_params
from digits.lib.config.errors import invalid
from digits.lib.config.sweep import Dimension, SweepParams

# the sections a trial cannot vary: the data source, and the sweep itself
UNSEARCHABLE = ("download", "sweep")


def load_sweep_params(path: Path) -> SweepParams:
    """`params.yaml` with its `sweep:` section validated and its spaces checked."""
    params = load_params(path, SweepParams)
    check_sweep(params, str(path))
    return params


def check_sweep(params: SweepParams, source: str = "params.yaml") -> None:
    """Raise a ParamsError naming every setting of `sweep.fixed`, `sweep.space` and each of
    `sweep.spaces` that would make an invalid trial."""
    if problems := sweep_problems(params):
        raise invalid(source, problems, {})


def sweep_problems(params: SweepParams) -> list[Problem]:
    """The problems of the main space and of every named space, each once."""
    if params.sweep is None:
        return []
    problems = space_problems(params, params.sweep.fixed, params.sweep.space, "sweep")
    for name, chosen in params.sweep.spaces.items():
        problems += space_problems(params, chosen.fixed, chosen.space, f"sweep.spaces.{name}")
    return list(dict.fromkeys(problems))


def space_problems(
    params: Params, fixed: dict[str, Any], space: dict[str, Dimension], where: str
) -> list[Problem]:
    """Why a sweep's `fixed` settings or `space` would make invalid trials: every fixed value
    and every end or choice of each dimension, with the other dimensions at their first value
    (what trials will actually combine)."""
    known = flatten(params.model_dump())
    first = {**fixed, **{k: d.values[0] for k, d in space.items()}}
    first = {k: v for k, v in first.items() if k in known}
    problems = []
    for key in fixed:
        problems += override_problems(params, first, f"{where}.fixed.{key}", key)
    for key, dim in space.items():
        for value in dim.values:
            overrides = {**first, key: value}
            problems += override_problems(params, overrides, f"{where}.space.{key}", key)
    return problems


def override_problems(
    params: Params, overrides: dict[str, Any], where: str, key: str
) -> list[Problem]:
    """Why `overrides` would make `params` invalid, as problems of `where`: those of `key`
    itself and of the rules across keys it takes part in."""
    if key.split(".")[0] in UNSEARCHABLE:
        return [Problem(where, "only model, train and data settings can be searched")]
    if key not in flatten(params.model_dump()):
        return [Problem(where, "no such setting")]
    try:
        params.model_copy(update={"sweep": None}).with_overrides(overrides)
    except ParamsError as err:
        # this setting, or a rule of its section (`model.mlp`: width against depth)
        mine = [p for p in err.problems if key.startswith(p.key) or p.key.startswith(key)]
        return [Problem(where, p.message) for p in mine]
    return []
