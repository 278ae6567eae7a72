"""What pruning buys a sweep: TPE with median pruning against random search without, counted
in trials and epochs until a trial reaches the target validation accuracy."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import date
from pathlib import Path
from typing import Any

from digits.lib.config import load_params
from digits.lib.config.sweep import SweepParams
from digits.tools.provenance import machine

TARGET = 0.984  # validation accuracy the sweep comparison asks for

VARIANTS = {
    "tpe-pruned": {"sweep.sampler": "tpe", "sweep.pruner": "median"},
    "random-unpruned": {"sweep.sampler": "random", "sweep.pruner": "none"},
}


@dataclass(frozen=True)
class Reach:
    """Trials (in start order) and epochs until the first trial at the target, and its number;
    all None when no trial got there."""

    trials: int | None
    epochs: int | None
    trial: int | None


@dataclass(frozen=True)
class VariantResult:
    """One variant's study: what it ran, what it reached, and how soon."""

    variant: dict[str, str]  # the params.yaml settings that make the variant
    wall_seconds_last_call: float
    trials: int
    epochs: int
    best_val_accuracy: float
    pruned: int
    to_target: Reach

    def as_json(self) -> dict[str, Any]:
        """One variant's entry in reports/bench/sweep.json (read by `benchpage`)."""
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> VariantResult:
        """Read back what `as_json` wrote."""
        return cls(**{**data, "to_target": Reach(**data["to_target"])})


def to_target(trials: Sequence[Any], target: float) -> Reach:
    """Trials (in start order) and epochs trained until the first trial whose validation
    accuracy reached `target` at some epoch; None when no trial did."""
    epochs = 0
    for count, trial in enumerate(sorted(trials, key=lambda t: t.number), 1):
        epochs += len(trial.intermediate_values)
        if max(trial.intermediate_values.values(), default=0.0) >= target:
            return Reach(trials=count, epochs=epochs, trial=trial.number)
    return Reach(trials=None, epochs=None, trial=None)


def sweep_variant(params: Path, name: str, workers: int, n_trials: int) -> VariantResult:
    """Run (or resume) the study `bench-<name>` with the variant's sampler and pruner."""
    from digits.lib.config.edit import edit_params
    from digits.tools.sweep.study import FINISHED, open_study, storage_url

    root = params.resolve().parent
    with tempfile.TemporaryDirectory(prefix="digits-bench-") as tmp:
        variant = Path(tmp) / "params.yaml"
        shutil.copy(params, variant)
        edit_params(variant, {**VARIANTS[name], "sweep.study": f"bench-{name}"})
        out = root / "reports" / "bench" / f"sweep-{name}"
        env = {**os.environ, "DVC_ROOT": str(root)}
        command = [sys.executable, "-m", "digits.tools.sweep", "--params", str(variant), "run"]
        command += ["--workers", str(workers), "--n-trials", str(n_trials), "--out", str(out)]
        started = time.perf_counter()
        subprocess.run(command, env=env, check=True)
        wall = time.perf_counter() - started
        cfg = load_params(variant, SweepParams)
        study = open_study(cfg, storage_url(cfg.sweep, root), f"bench-{name}", 0)
    finished = [t for t in study.trials if t.state.name in FINISHED]
    return VariantResult(
        variant=VARIANTS[name],
        wall_seconds_last_call=wall,
        trials=len(finished),
        epochs=sum(len(t.intermediate_values) for t in finished),
        best_val_accuracy=max(
            (max(t.intermediate_values.values(), default=0) for t in finished), default=0
        ),
        pruned=sum(t.state.name == "PRUNED" for t in finished),
        to_target=to_target(finished, TARGET),
    )


def compare_sweeps(params: Path, workers: int, n_trials: int) -> dict[str, VariantResult]:
    """Every variant's study, in the order of VARIANTS."""
    return {name: sweep_variant(params, name, workers, n_trials) for name in VARIANTS}


def efficiency_ratio(tpe: VariantResult, random: VariantResult) -> str:
    """The comparison in one sentence; a lower bound when random search never got there."""
    a, b = tpe.to_target, random.to_target
    target = f"{100 * TARGET:.1f}%"
    if a.epochs and b.epochs and a.trials and b.trials:
        return (
            f"Random search needed **{b.epochs / a.epochs:.2f}x** the epochs "
            f"({b.trials / a.trials:.2f}x the trials) of TPE + pruning to reach {target}."
        )
    if a.epochs and a.trials:
        return (
            f"Random search did not reach {target} within its {random.trials} trials "
            f"({random.epochs} epochs); TPE + pruning got there after {a.epochs} epochs: "
            f"a ratio of **more than {random.epochs / a.epochs:.2f}x** in epochs "
            f"(more than {random.trials / a.trials:.2f}x in trials)."
        )
    return f"TPE + pruning did not reach {target} within its budget: no ratio."


def sweep_markdown(results: Mapping[str, VariantResult], workers: int, n_trials: int) -> str:
    """The sweep comparison as a Markdown section."""
    rows = []
    for name, r in results.items():
        reach = r.to_target
        reached = (
            f"trial {reach.trial}: {reach.trials} trials, {reach.epochs} epochs"
            if reach.trials
            else "not reached"
        )
        rows.append(
            f"| {name} | {r.trials} ({r.pruned} pruned) | {r.epochs} "
            f"| {100 * r.best_val_accuracy:.2f}% | {reached} |"
        )
    ratio = efficiency_ratio(results["tpe-pruned"], results["random-unpruned"])
    return f"""## Sweep efficiency: TPE + median pruning against random search without pruning

The `sweep:` section of params.yaml (MLP space, 15 epochs per trial, seed 42), {n_trials} trials
each, {workers} workers, on {machine()}, {date.today().isoformat()}; only the sampler and pruner
differ. "To {100 * TARGET:.1f}%": trials in start order, and the epochs they trained, until the
first trial whose validation accuracy reached {100 * TARGET:.1f}% at some epoch.

| variant | trials | epochs trained | best val accuracy | to {100 * TARGET:.1f}% |
|---|---|---|---|---|
{chr(10).join(rows)}

{ratio}
"""
