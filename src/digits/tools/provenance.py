"""Where a benchmark figure comes from: the command that measures it again, the machine and the
day. `bench` and `ladder` record one with every result; `benchpage` prints only figures that
carry one, so a number on docs/benchmarks.md can always be traced and re-run."""

from __future__ import annotations

import os
import platform
import shlex
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import date
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

FIELDS = ("command", "machine", "date")


@dataclass(frozen=True)
class Provenance:
    """A figure's origin. `source` is set only when it was recovered afterwards (from git
    history) rather than recorded by the run itself."""

    command: str
    machine: str
    date: str  # ISO day of the measurement
    commit: str | None = None  # the code measured, when known
    source: str | None = None

    def as_json(self) -> dict[str, str]:
        """The fields that are set, for a results file."""
        return {k: v for k, v in asdict(self).items() if v is not None}


def cpu_model() -> str | None:
    """The processor's name from /proc/cpuinfo ('AMD EPYC'); None where there is none. VMs of
    one size land on different processors, whose speed and bfloat16 kernels differ."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return None
    names = (line.split(":", 1)[1].strip() for line in lines if line.startswith("model name"))
    return next(names, None)


def machine() -> str:
    """'x86_64, 2 CPU cores (AMD EPYC), Linux, Python 3.11.7, TensorFlow 2.21.0'."""
    try:
        tensorflow = f", TensorFlow {version('tensorflow')}"
    except PackageNotFoundError:
        tensorflow = ""
    cpu = f" ({name})" if (name := cpu_model()) else ""
    return (
        f"{platform.machine()}, {os.cpu_count()} CPU cores{cpu}, {platform.system()}, "
        f"Python {platform.python_version()}{tensorflow}"
    )


RESULTS = "reports"  # where the benchmarks write their own results while they run


def commit(folder: Path | None = None) -> str | None:
    """The checked-out commit (short hash, `+` when tracked files outside `reports/` have
    changed: a ladder writes its table there after each rung); None outside git."""

    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=folder, capture_output=True, text=True)
        return done.stdout.strip() if done.returncode == 0 else ""

    head = git("rev-parse", "--short", "HEAD")
    if not head:
        return None
    changed = git("status", "--porcelain", "--untracked-files=no", "--", ".", f":!{RESULTS}")
    return head + ("+" if changed else "")


def now(command: Sequence[str]) -> Provenance:
    """The provenance of a figure measured right now by `command` (an argv)."""
    return Provenance(shlex.join(command), machine(), date.today().isoformat(), commit())


def read(record: Mapping[str, Any]) -> Provenance | None:
    """A results record's provenance (its `provenance` entry, or its own top-level fields);
    None when any of command, machine and date is missing."""
    fields = record.get("provenance", record)
    if not isinstance(fields, Mapping) or not all(isinstance(fields.get(k), str) for k in FIELDS):
        return None
    return Provenance(
        fields["command"],
        fields["machine"],
        fields["date"],
        fields.get("commit"),
        fields.get("source"),
    )
