"""`bench timed`: the wall time of any command, run a few times from the same starting state.

    python -m digits.tools.bench timed --name "make setup, cold cache" \
        --setup "rm -rf .venv ~/.cache/uv" -- make setup

`--setup` (a bash line, not timed) restores the starting state before each run: a fresh clone,
an empty cache, a new study. The command itself runs without a shell, from its argv. Each run's
seconds and exit code are merged under the name into reports/bench/timed.json; with
`--sweep-results`, each run also records the best validation accuracy its sweep wrote there.
"""

from __future__ import annotations

import csv
import shutil
import statistics
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

from digits import PipelineError
from digits.lib.vocab import VAL_ACCURACY

BEST_PARAMS, TRIALS = "best_params.yaml", "trials.csv"  # what `make sweep` writes (tools.sweep)


@dataclass(frozen=True)
class SweepBest:
    """The best validation accuracy among a sweep's complete trials, and which trial it was."""

    best_val_accuracy: float
    trial: int
    complete: int  # trials that ran to the end


@dataclass(frozen=True)
class TimedRun:
    """One run of the command: its wall seconds and exit code (and its sweep's best)."""

    seconds: float
    returncode: int
    sweep: SweepBest | None = None

    @property
    def failed(self) -> bool:
        return self.returncode != 0

    def as_json(self) -> dict[str, Any]:
        record = {"seconds": self.seconds, "returncode": self.returncode, "failed": self.failed}
        return record | ({"sweep": asdict(self.sweep)} if self.sweep else {})

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> TimedRun:
        sweep = SweepBest(**data["sweep"]) if data.get("sweep") else None
        return cls(data["seconds"], data["returncode"], sweep)


@dataclass(frozen=True)
class Timed:
    """Every run of one command, in the order they ran."""

    command: list[str]  # the argv that was timed
    setup: str | None  # the bash line run, untimed, before each run
    runs: list[TimedRun]

    @property
    def seconds(self) -> list[float]:
        """The wall seconds of the runs that succeeded."""
        return [r.seconds for r in self.runs if not r.failed]

    @property
    def median(self) -> float | None:
        """The median over the runs that succeeded; None when none did."""
        return statistics.median(self.seconds) if self.seconds else None

    def as_json(self) -> dict[str, Any]:
        """An entry of reports/bench/timed.json (read by `benchpage`)."""
        return {
            "command": self.command,
            "setup": self.setup,
            "runs": [r.as_json() for r in self.runs],
            "median": self.median,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Timed:
        """Read back what `as_json` wrote (the median follows from the runs)."""
        return cls(data["command"], data["setup"], [TimedRun.from_json(r) for r in data["runs"]])


def sweep_best(folder: Path, since: float) -> SweepBest:
    """The best `val/accuracy` of the complete trials in `folder`/trials.csv, which must have
    been written after `since` (epoch seconds): a stale folder would time one sweep and report
    another's result."""
    best_params, trials = folder / BEST_PARAMS, folder / TRIALS
    for path in (best_params, trials):
        if not path.exists() or path.stat().st_mtime < since - 1.0:  # the kernel's coarse clock
            raise PipelineError(f"{path}: not written by this run: is the sweep writing there?")
    record = yaml.safe_load(best_params.read_text()) or {}
    if record.get("objective") == VAL_ACCURACY:
        column = "value"  # one objective: trials.csv calls it `value`
    elif VAL_ACCURACY in (record.get("objectives") or {}):
        column = VAL_ACCURACY
    else:
        raise PipelineError(f"{best_params}: the sweep did not optimize {VAL_ACCURACY}")
    with trials.open(newline="") as f:
        done = [r for r in csv.DictReader(f) if r["state"] == "COMPLETE" and r.get(column)]
    if not done:
        raise PipelineError(f"{trials}: no complete trial: the sweep finished none")
    best = max(done, key=lambda r: float(r[column]))
    return SweepBest(float(best[column]), int(best["number"]), len(done))


def run_setup(setup: str) -> None:
    """The untimed bash line before a run; a failure stops the measurement."""
    done = subprocess.run(["bash", "-c", setup], check=False)
    if done.returncode:
        raise PipelineError(f"--setup {setup!r} failed (exit {done.returncode}): fix it first")


def measure_timed(
    command: Sequence[str], repeats: int, setup: str | None, sweep_results: Path | None
) -> Timed:
    """Run `command` `repeats` times, each after `setup`; a failed run is recorded, not fatal."""
    if repeats < 1:
        raise PipelineError(f"--repeats {repeats}: give at least 1")
    if shutil.which(command[0]) is None:
        raise PipelineError(f"{command[0]}: no such command: check the words after --")
    runs = []
    for _ in range(repeats):
        if setup:
            run_setup(setup)
        since, started = time.time(), time.perf_counter()
        code = subprocess.run(list(command), check=False).returncode
        seconds = round(time.perf_counter() - started, 3)
        sweep = sweep_best(sweep_results, since) if sweep_results and not code else None
        runs.append(TimedRun(seconds, code, sweep))
    return Timed(list(command), setup, runs)
