"""What the pipeline costs over plain Keras: the train stage against bench/bare_keras.py in
alternating pairs (ABBA order), then the preprocess stage and a no-op `dvc repro`."""

from __future__ import annotations

import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import date
from pathlib import Path
from typing import Any

from digits.lib.config import load_params
from digits.lib.vocab import SELECTED_VAL_ACCURACY, TRAIN_SECONDS
from digits.tools.bench.timing import SCRIPTS, spread, timed
from digits.tools.provenance import machine

log = logging.getLogger(__name__)

KINDS = ("stage", "bare")


@dataclass(frozen=True)
class Run:
    """One timed process: its wall seconds, the fit's seconds within them, its result."""

    wall: float
    fit: float
    val_accuracy: float


@dataclass(frozen=True)
class Overhead:
    """Every run of each kind, in the order they ran, and the stages timed beside them."""

    stage: list[Run]
    bare: list[Run]
    preprocess_seconds: list[float]
    noop_repro_seconds: list[float]  # empty when the workspace was not up to date

    @property
    def ratio_wall(self) -> float:
        """Stage over bare, whole processes, all runs together."""
        return sum(r.wall for r in self.stage) / sum(r.wall for r in self.bare)

    @property
    def ratio_fit(self) -> float:
        """Stage over bare, the fit alone."""
        return sum(r.fit for r in self.stage) / sum(r.fit for r in self.bare)

    @property
    def same_val_accuracy(self) -> bool:
        """Whether every run, of both kinds, ended at the same validation accuracy."""
        return len({r.val_accuracy for r in self.stage + self.bare}) == 1

    def as_json(self) -> dict[str, Any]:
        """The results file's layout (reports/bench/overhead.json, read by `benchpage`)."""
        return {
            "runs": {
                "stage": [asdict(r) for r in self.stage],
                "bare": [asdict(r) for r in self.bare],
            },
            "ratio_wall": self.ratio_wall,
            "ratio_fit": self.ratio_fit,
            "same_val_accuracy": self.same_val_accuracy,
            "preprocess_seconds": self.preprocess_seconds,
            "noop_repro_seconds": self.noop_repro_seconds,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Overhead:
        """Read back what `as_json` wrote (the ratios follow from the runs)."""
        stage, bare = ([Run(**r) for r in data["runs"][kind]] for kind in KINDS)
        return cls(stage, bare, data["preprocess_seconds"], data["noop_repro_seconds"])


def stage_command(params: Path, data: Path, out: Path) -> list[str]:
    """The train stage's command line (as in dvc.yaml), writing into `out`."""
    command = [
        sys.executable,
        "-m",
        "digits.stages.train",
        "--params",
        str(params),
        "--data",
        str(data),
    ]
    command += ["--model", str(out / "model.keras"), "--run-info", str(out / "run.json")]
    return [*command, "--metrics", str(out / "train_metrics.json"), "--history", str(out / "h.csv")]


def stage_run(params: Path, data: Path, out: Path, env: dict[str, str]) -> Run:
    """The train stage once; fit seconds and accuracy from its metrics file."""
    seconds, _ = timed(stage_command(params, data, out), env)
    metrics = json.loads((out / "train_metrics.json").read_text())
    return Run(seconds, metrics[TRAIN_SECONDS], metrics[SELECTED_VAL_ACCURACY])


def bare_run(params: Path, data: Path, out: Path, env: dict[str, str]) -> Run:
    """bench/bare_keras.py once; fit seconds and accuracy from its last stdout line."""
    command = [sys.executable, str(SCRIPTS / "bare_keras.py"), "--params", str(params)]
    command += ["--data", str(data), "--out", str(out / "bare.keras")]
    seconds, stdout = timed(command, env)
    result = json.loads(stdout.strip().splitlines()[-1])
    return Run(seconds, result["fit_seconds"], result["val_accuracy"])


def alternate(
    params: Path, data: Path, out: Path, env: dict[str, str], repeats: int
) -> dict[str, list[Run]]:
    """`repeats` runs of each kind in ABBA order, so a drift in the machine hits both alike."""
    runs: dict[str, list[Run]] = {kind: [] for kind in KINDS}
    measure = {"stage": stage_run, "bare": bare_run}
    for i in range(repeats):
        for kind in KINDS if i % 2 == 0 else KINDS[::-1]:
            run = measure[kind](params, data, out, env)
            runs[kind].append(run)
            log.info(
                "%s run %d: %.1f s wall, %.1f s fit, val %.4f",
                kind,
                i + 1,
                run.wall,
                run.fit,
                run.val_accuracy,
            )
    return runs


def preprocess_seconds(params: Path, raw: Path, out: Path, env: dict[str, str]) -> float:
    """The preprocess stage once, from the raw IDX files into `out/processed`."""
    command = [sys.executable, "-m", "digits.stages.preprocess", "--params", str(params)]
    return timed([*command, "--raw", str(raw), "--out", str(out / "processed")], env)[0]


def noop_repro_seconds(repeats: int) -> list[float]:
    """`dvc repro` with nothing to do, `repeats` times; none when the workspace is stale."""
    status = subprocess.run(["dvc", "status", "--quiet"], capture_output=True, check=False)
    if status.returncode == 0:
        return [timed(["dvc", "repro"])[0] for _ in range(repeats)]
    log.warning("workspace not up to date (`dvc status`): no-op repro not timed; make repro")
    return []


def measure_overhead(params: Path, data: Path, raw: Path, repeats: int) -> Overhead:
    """Alternate the train stage and the bare Keras script (ABBA order), then time the
    preprocess stage on the raw files and a no-op `dvc repro`."""
    with tempfile.TemporaryDirectory(prefix="digits-bench-") as tmp:
        out = Path(tmp)
        # the stage logs to a throw-away MLflow store, created here before any timing
        from digits.lib.environment import Environment
        from digits.lib.tracking.store import setup

        setup(load_params(params).mlflow, out, Environment(dvc_root=out))
        env = {**os.environ, "DVC_ROOT": str(out), "TF_CPP_MIN_LOG_LEVEL": "3"}
        env.pop("MLFLOW_TRACKING_URI", None)  # the stage finds the same store via DVC_ROOT
        runs = alternate(params, data, out, env, repeats)
        preprocess = [preprocess_seconds(params, raw, out, env) for _ in range(repeats)]
    return Overhead(runs["stage"], runs["bare"], preprocess, noop_repro_seconds(repeats))


def overhead_markdown(result: Overhead, params: Path) -> str:
    """The overhead figures as a Markdown section."""
    stage, bare = result.stage, result.bare
    rows = "\n".join(
        f"| {i + 1} | {s.wall:.1f} s | {b.wall:.1f} s | {s.fit:.1f} s | {b.fit:.1f} s "
        f"| {s.val_accuracy:.4f} / {b.val_accuracy:.4f} |"
        for i, (s, b) in enumerate(zip(stage, bare, strict=True))
    )
    noop = spread(result.noop_repro_seconds) if result.noop_repro_seconds else "not timed"
    ratios = [s.wall / b.wall for s, b in zip(stage, bare, strict=True)]
    by_run = ", ".join(f"{r:.3f}" for r in ratios)
    kinds = {"stage": stage, "bare": bare}
    outside = {k: [r.wall - r.fit for r in runs] for k, runs in kinds.items()}
    fit = {k: statistics.median(r.fit for r in runs) for k, runs in kinds.items()}
    return f"""## Overhead: the train stage against bare Keras

`{params}` as committed; {len(stage)} alternating runs each (ABBA order), on {machine()},
{date.today().isoformat()}. Wall = the whole process (Python start, TensorFlow import, data,
fit, saving); the stage also logs everything to MLflow (params, per-epoch metrics, dataset,
history table, the model with signature and input example).

| run | train stage wall | bare Keras wall | stage fit | bare fit | val accuracy (stage / bare) |
|---|---|---|---|---|---|
{rows}

Wall-time ratio stage / bare: **{result.ratio_wall:.3f}** over all runs (fit only:
{result.ratio_fit:.3f}); run by run: {by_run} (median {statistics.median(ratios):.3f}).
Identical validation accuracy in every run: {"yes" if result.same_val_accuracy else "no"}.

The same split without the fit's noise. Outside the fit (wall minus fit: Python start, imports,
data, MLflow, saving): stage {spread(outside["stage"])}, bare {spread(outside["bare"])}. The
fit itself: median {fit["stage"]:.1f} s in the stage, {fit["bare"]:.1f} s bare (ratio
{fit["stage"] / fit["bare"]:.3f}).

Preprocess stage, 70,000 images from the four IDX files: {spread(result.preprocess_seconds)}.
No-op `dvc repro` (nothing changed): {noop}.
"""
