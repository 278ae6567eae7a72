"""`make bench`: what the pipeline costs over plain Keras, and what pruning buys a sweep.

    python -m digits.tools.bench overhead [--repeats 4]     # train stage vs bench/bare_keras.py
    python -m digits.tools.bench sweep [--workers 2]        # TPE + pruning vs random, no pruning
    python -m digits.tools.bench speed [--only 10s]         # ladder rungs vs keras-io's convnet

Real data (`data/processed`, `make repro` first). Results: `reports/bench/*.json` and `.md`.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import date
from pathlib import Path
from typing import Any

from digits.lib.cli import stage_main
from digits.lib.config import load_params
from digits.lib.config.sweep import SweepParams
from digits.lib.files import write_text
from digits.tools import provenance
from digits.tools.provenance import machine

log = logging.getLogger(__name__)

TARGET = 0.984  # validation accuracy the sweep comparison asks for


def timed(command: list[str], env: dict[str, str] | None = None) -> tuple[float, str]:
    """Run a command to completion; (wall seconds, its stdout). Fails loudly."""
    started = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - started
    if done.returncode:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stdout}\n{done.stderr}")
    return seconds, done.stdout


# --- overhead ---------------------------------------------------------------------------------


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


def overhead(params: Path, data: Path, raw: Path, repeats: int) -> dict[str, Any]:
    """Alternate the train stage and the bare Keras script (ABBA order), then time the
    preprocess stage on the raw files and a no-op `dvc repro`."""
    bare = Path(__file__).resolve().parents[3] / "bench" / "bare_keras.py"
    runs: dict[str, list[dict[str, float]]] = {"stage": [], "bare": []}
    with tempfile.TemporaryDirectory(prefix="digits-bench-") as tmp:
        out = Path(tmp)
        # the stage logs to a throw-away MLflow store, created here before any timing
        from digits.lib.environment import Environment
        from digits.lib.tracking.store import setup

        setup(load_params(params).mlflow, out, Environment(dvc_root=out))
        env = {**os.environ, "DVC_ROOT": str(out), "TF_CPP_MIN_LOG_LEVEL": "3"}
        env.pop("MLFLOW_TRACKING_URI", None)  # the stage finds the same store via DVC_ROOT
        for i in range(repeats):
            order = ("stage", "bare") if i % 2 == 0 else ("bare", "stage")
            for kind in order:
                if kind == "stage":
                    seconds, _ = timed(stage_command(params, data, out), env)
                    metrics = json.loads((out / "train_metrics.json").read_text())
                    fit = metrics["train/seconds"]
                    val = metrics["selected/val_accuracy"]
                else:
                    command = [sys.executable, str(bare), "--params", str(params)]
                    command += ["--data", str(data), "--out", str(out / "bare.keras")]
                    seconds, stdout = timed(command, env)
                    result = json.loads(stdout.strip().splitlines()[-1])
                    fit, val = result["fit_seconds"], result["val_accuracy"]
                runs[kind].append({"wall": seconds, "fit": fit, "val_accuracy": val})
                log.info(
                    "%s run %d: %.1f s wall, %.1f s fit, val %.4f", kind, i + 1, seconds, fit, val
                )
        preprocess = [
            timed(
                [
                    sys.executable,
                    "-m",
                    "digits.stages.preprocess",
                    "--params",
                    str(params),
                    "--raw",
                    str(raw),
                    "--out",
                    str(out / "processed"),
                ],
                env,
            )[0]
            for _ in range(repeats)
        ]
    noop = []
    status = subprocess.run(["dvc", "status", "--quiet"], capture_output=True, check=False)
    if status.returncode == 0:
        noop = [timed(["dvc", "repro"])[0] for _ in range(repeats)]
    else:
        log.warning("workspace not up to date (`dvc status`): no-op repro not timed; make repro")
    stage_wall = [r["wall"] for r in runs["stage"]]
    bare_wall = [r["wall"] for r in runs["bare"]]
    return {
        "runs": runs,
        "ratio_wall": sum(stage_wall) / sum(bare_wall),
        "ratio_fit": sum(r["fit"] for r in runs["stage"]) / sum(r["fit"] for r in runs["bare"]),
        "same_val_accuracy": len({r["val_accuracy"] for r in runs["stage"] + runs["bare"]}) == 1,
        "preprocess_seconds": preprocess,
        "noop_repro_seconds": noop,
    }


def spread(seconds: Sequence[float]) -> str:
    """'0.81 s (runs: 0.79, 0.81, 0.85)': the median and every run."""
    runs = ", ".join(f"{x:.2f}" for x in seconds)
    return f"{statistics.median(seconds):.2f} s (runs: {runs})"


def overhead_markdown(result: dict[str, Any], params: Path) -> str:
    """The overhead figures as a Markdown section."""
    stage, bare = result["runs"]["stage"], result["runs"]["bare"]
    rows = "\n".join(
        f"| {i + 1} | {s['wall']:.1f} s | {b['wall']:.1f} s | {s['fit']:.1f} s | {b['fit']:.1f} s "
        f"| {s['val_accuracy']:.4f} / {b['val_accuracy']:.4f} |"
        for i, (s, b) in enumerate(zip(stage, bare, strict=True))
    )
    noop = spread(result["noop_repro_seconds"]) if result["noop_repro_seconds"] else "not timed"
    ratios = [s["wall"] / b["wall"] for s, b in zip(stage, bare, strict=True)]
    by_run = ", ".join(f"{r:.3f}" for r in ratios)
    kinds = {"stage": stage, "bare": bare}
    outside = {k: [r["wall"] - r["fit"] for r in runs] for k, runs in kinds.items()}
    fit = {k: statistics.median(r["fit"] for r in runs) for k, runs in kinds.items()}
    return f"""## Overhead: the train stage against bare Keras

`{params}` as committed; {len(stage)} alternating runs each (ABBA order), on {machine()},
{date.today().isoformat()}. Wall = the whole process (Python start, TensorFlow import, data,
fit, saving); the stage also logs everything to MLflow (params, per-epoch metrics, dataset,
history table, the model with signature and input example).

| run | train stage wall | bare Keras wall | stage fit | bare fit | val accuracy (stage / bare) |
|---|---|---|---|---|---|
{rows}

Wall-time ratio stage / bare: **{result["ratio_wall"]:.3f}** over all runs (fit only:
{result["ratio_fit"]:.3f}); run by run: {by_run} (median {statistics.median(ratios):.3f}).
Identical validation accuracy in every run: {"yes" if result["same_val_accuracy"] else "no"}.

The same split without the fit's noise. Outside the fit (wall minus fit: Python start, imports,
data, MLflow, saving): stage {spread(outside["stage"])}, bare {spread(outside["bare"])}. The
fit itself: median {fit["stage"]:.1f} s in the stage, {fit["bare"]:.1f} s bare (ratio
{fit["stage"] / fit["bare"]:.3f}).

Preprocess stage, 70,000 images from the four IDX files: {spread(result["preprocess_seconds"])}.
No-op `dvc repro` (nothing changed): {noop}.
"""


# --- speed: rungs against the Keras example CNN, FLOPs ---------------------------------------


def forward_flops(model: Any) -> int:
    """FLOPs (2 per multiply-add) of one image through the model's convolutions and dense
    layers, the work that matters; pooling, activations and normalisation are left out."""
    import keras

    flops = 0
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D):
            rows, cols, out = layer.output.shape[1:]
            k_rows, k_cols = layer.kernel_size
            flops += 2 * rows * cols * out * k_rows * k_cols * layer.input.shape[-1]
        elif isinstance(layer, keras.layers.Dense):
            flops += 2 * layer.input.shape[-1] * layer.units
    return flops


def run_flops(params: Any, n_train: int, n_val: int, epochs: int) -> dict[str, float]:
    """FLOPs of a training run: per training image forward and backward (the backward pass
    about twice the forward), per run with each epoch's validation pass."""
    from digits.lib.models import build_model

    forward = forward_flops(build_model(params.model))
    return {
        "forward_mflop": forward / 1e6,
        "train_mflop_per_image": 3 * forward / 1e6,
        "run_tflop": epochs * (3 * forward * n_train + forward * n_val) / 1e12,
    }


def convnet_seconds(data: Path, env: dict[str, str]) -> dict[str, Any]:
    """Run keras-io's mnist_convnet (bench/keras_convnet.py) until it reaches 99.0% test."""
    script = Path(__file__).resolve().parents[3] / "bench" / "keras_convnet.py"
    wall, stdout = timed([sys.executable, str(script), "--data", str(data)], env)
    return {**json.loads(stdout.strip().splitlines()[-1]), "wall": wall}


def speed(params_path: Path, data: Path, rungs_path: Path, only: Sequence[str]) -> dict[str, Any]:
    """The selected ladder rungs through the pipeline (`dvc exp run`, every seed of a repeated
    rung), after keras-io's example CNN in the same run, so the ratio compares runs on the same
    machine minutes apart. The rungs' figures also go to the ladder's results and table."""
    from digits.lib.data import load_split
    from digits.lib.environment import Environment
    from digits.lib.tracking.store import setup
    from digits.tools import ladder

    params = load_params(params_path)
    every = ladder.load_rungs(rungs_path, params)
    rungs = [r for r in every if any(o in r.name for o in only)]
    environment = Environment.read()
    setup(params.mlflow, environment.project_root(params_path), environment)
    n_train, n_val = len(load_split(data / "train.npz")), len(load_split(data / "val.npz"))
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    load = os.getloadavg()[0]
    convnet = convnet_seconds(data, env)
    log.info("keras-io mnist_convnet: %s", convnet)
    results = []
    for rung in rungs:
        load = os.getloadavg()[0]
        ours = ladder.measure(rung, params)
        ladder.record(every, {rung.name: ours})
        flops = run_flops(params.with_overrides(rung.set), n_train, n_val, ours["epochs"])
        ratio = (
            convnet["seconds_to_target"] / ours["seconds"] if convnet["seconds_to_target"] else None
        )
        results.append(
            {
                "rung": rung.name,
                **ours,
                **flops,
                "gflop_per_s": 1000 * flops["run_tflop"] / ours["seconds"],
                "convnet_ratio": ratio,
                "load_before": load,
                "load_after": os.getloadavg()[0],
            }
        )
        log.info("%s: %s", rung.name, results[-1])
    return {"convnet": convnet, "rungs": results}


def speed_markdown(result: dict[str, Any]) -> str:
    """The speed figures as a Markdown section."""
    rows = []
    for r in result["rungs"]:
        convnet = result["convnet"]["seconds_to_target"]
        ratio = f"**{r['convnet_ratio']:.1f}x**" if r["convnet_ratio"] else "-"
        test, seconds = f"{r['accuracy']:.2f}%", f"{r['seconds']:.1f} s"
        if "seeds" in r:
            test += f" (min {r['accuracy_min']:.2f}%, {len(r['seeds'])} seeds)"
            seconds += f" ({min(r['seconds_all']):.1f}-{max(r['seconds_all']):.1f})"
        rows.append(
            f"| {r['rung']} | {test} | {seconds} | {r['epochs']} "
            f"| {r['train_mflop_per_image']:.1f} | {r['run_tflop']:.2f} | {r['gflop_per_s']:.0f} "
            f"| {r.get('peak_memory_mb') or '-'} | {convnet or 0:.1f} s | {ratio} "
            f"| {r['load_before']:.1f} / {r['load_after']:.1f} |"
        )
    convnet_epochs = len(result["convnet"]["epochs"])
    return f"""## Speed to accuracy: the rungs against keras-io's mnist_convnet

On {machine()}, {date.today().isoformat()}. Training = `train/seconds`; MFLOP per training
image = 3x the forward pass of the convolutions and dense layers; GFLOP/s = the run's FLOPs
(training and each epoch's validation pass) / training seconds; peak memory = the train
stage's peak resident memory (`train/peak_memory_mb`). Convnet = seconds of fit keras-io's
`mnist_convnet` needed to reach 99.0% test on the same split ({convnet_epochs} epochs), run
once right before the rungs; ratio = its seconds / ours. A repeated rung shows its median run
(test: median, and the worst seed; training: median and range). Load = 1-minute load average
before / after the rung.

| rung | test | training | epochs | MFLOP/image | TFLOP/run | GFLOP/s | peak MiB \
| convnet to 99.0% | ratio | load |
|---|---|---|---|---|---|---|---|---|---|---|
{chr(10).join(rows)}
"""


# --- sweep efficiency -------------------------------------------------------------------------

VARIANTS = {
    "tpe-pruned": {"sweep.sampler": "tpe", "sweep.pruner": "median"},
    "random-unpruned": {"sweep.sampler": "random", "sweep.pruner": "none"},
}


def to_target(trials: Sequence[Any], target: float) -> dict[str, Any]:
    """Trials (in start order) and epochs trained until the first trial whose validation
    accuracy reached `target` at some epoch; None when no trial did."""
    epochs = 0
    for count, trial in enumerate(sorted(trials, key=lambda t: t.number), 1):
        epochs += len(trial.intermediate_values)
        if max(trial.intermediate_values.values(), default=0.0) >= target:
            return {"trials": count, "epochs": epochs, "trial": trial.number}
    return {"trials": None, "epochs": None, "trial": None}


def sweep_variant(params: Path, name: str, workers: int, n_trials: int) -> dict[str, Any]:
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
    return {
        "variant": VARIANTS[name],
        "wall_seconds_last_call": wall,
        "trials": len(finished),
        "epochs": sum(len(t.intermediate_values) for t in finished),
        "best_val_accuracy": max(
            (max(t.intermediate_values.values(), default=0) for t in finished), default=0
        ),
        "pruned": sum(t.state.name == "PRUNED" for t in finished),
        "to_target": to_target(finished, TARGET),
    }


def efficiency_ratio(tpe: dict[str, Any], random: dict[str, Any]) -> str:
    """The comparison in one sentence; a lower bound when random search never got there."""
    a, b = tpe["to_target"], random["to_target"]
    target = f"{100 * TARGET:.1f}%"
    if a["epochs"] and b["epochs"]:
        return (
            f"Random search needed **{b['epochs'] / a['epochs']:.2f}x** the epochs "
            f"({b['trials'] / a['trials']:.2f}x the trials) of TPE + pruning to reach {target}."
        )
    if a["epochs"]:
        return (
            f"Random search did not reach {target} within its {random['trials']} trials "
            f"({random['epochs']} epochs); TPE + pruning got there after {a['epochs']} epochs: "
            f"a ratio of **more than {random['epochs'] / a['epochs']:.2f}x** in epochs "
            f"(more than {random['trials'] / a['trials']:.2f}x in trials)."
        )
    return f"TPE + pruning did not reach {target} within its budget: no ratio."


def sweep_markdown(results: dict[str, dict[str, Any]], workers: int, n_trials: int) -> str:
    """The sweep comparison as a Markdown section."""
    rows = []
    for name, r in results.items():
        reach = r["to_target"]
        reached = (
            f"trial {reach['trial']}: {reach['trials']} trials, {reach['epochs']} epochs"
            if reach["trials"]
            else "not reached"
        )
        rows.append(
            f"| {name} | {r['trials']} ({r['pruned']} pruned) | {r['epochs']} "
            f"| {100 * r['best_val_accuracy']:.2f}% | {reached} |"
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


@stage_main
def main(argv: Sequence[str] | None = None) -> None:
    """CLI entry point (`make bench`)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, default=Path("params.yaml"), help="params file")
    parser.add_argument(
        "--data", type=Path, default=Path("data/processed"), help="processed .npz folder"
    )
    parser.add_argument("--raw", type=Path, default=Path("data/raw"), help="the IDX files")
    parser.add_argument(
        "--out", type=Path, default=Path("reports/bench"), help="folder for the results"
    )
    commands = parser.add_subparsers(dest="command", required=True)
    over = commands.add_parser("overhead", help="train stage vs bare Keras")
    over.add_argument("--repeats", type=int, default=4, help="runs of each (ABBA order)")
    sweeps = commands.add_parser("sweep", help="TPE + pruning vs random without pruning")
    sweeps.add_argument("--workers", type=int, default=2, help="worker processes per sweep")
    sweeps.add_argument("--n-trials", type=int, help="finished trials per variant")
    fast = commands.add_parser("speed", help="ladder rungs vs keras-io's mnist_convnet")
    fast.add_argument(
        "--rungs", type=Path, default=Path("bench/ladder.yaml"), help="the ladder's rungs"
    )
    fast.add_argument(
        "--only", nargs="+", default=["99."], help="rungs whose name contains any of these"
    )
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    params = load_params(args.params, SweepParams)
    if args.command == "overhead":
        result = overhead(args.params, args.data, args.raw, args.repeats)
        text = overhead_markdown(result, args.params)
    elif args.command == "speed":
        result = speed(args.params, args.data, args.rungs, args.only)
        text = speed_markdown(result)
    else:
        assert params.sweep is not None
        n_trials = args.n_trials or params.sweep.n_trials
        result = {
            name: sweep_variant(args.params, name, args.workers, n_trials) for name in VARIANTS
        }
        text = sweep_markdown(result, args.workers, n_trials)
    # the command, machine and day go with the figures, for docs/benchmarks.md
    origin = provenance.now(["python", "-m", "digits.tools.bench", *argv])
    record = {**result, "provenance": origin.as_json()}
    write_text(args.out / f"{args.command}.json", json.dumps(record, indent=2))
    write_text(args.out / f"{args.command}.md", text)
    print(text)


if __name__ == "__main__":
    main()
