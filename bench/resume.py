"""What a `kill -9` of the train stage costs with and without resume, and what checkpointing
costs a run that is never killed. Real data: the processed splits in --data.

    python bench/resume.py --data data/processed --epochs 10 --kill-after 6 --pairs 3

Prints JSON: wall times of the restarts (resume on: epochs k+1.., off: from epoch 1), and of
uninterrupted runs with `train.resume` true and false, alternated.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]


def stage(data: Path) -> list[str]:
    return [
        sys.executable, "-m", "digits.stages.train", "--data", str(data.resolve()),
        "--model", "models/model.keras", "--run-info", "models/run.json",
        "--metrics", "reports/train_metrics.json", "--history", "reports/history.csv",
        "--checkpoint", "models/checkpoint.npz",
    ]  # fmt: skip


def workspace(folder: Path, epochs: int, resume: bool) -> Path:
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["train"].update(epochs=epochs, resume=resume)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "params.yaml").write_text(yaml.safe_dump(raw))
    return folder


def env() -> dict[str, str]:
    drop = {"MLFLOW_TRACKING_URI", "MNIST_MIRROR"}
    return {
        **{k: v for k, v in os.environ.items() if k not in drop},
        "PYTHONPATH": str(ROOT / "src"),
    }


def timed(cmd: list[str], cwd: Path) -> float:
    started = time.perf_counter()
    subprocess.run(cmd, cwd=cwd, env=env(), check=True, capture_output=True)
    return round(time.perf_counter() - started, 1)


def saved_epoch(path: Path) -> int:
    try:
        with np.load(path) as z:
            return json.loads(z["meta"].tobytes())["epoch"]
    except (OSError, ValueError, KeyError):
        return 0


def kill_after(data: Path, folder: Path, k: int) -> float:
    """Run until the checkpoint holds epoch k, then kill -9; returns the seconds it ran."""
    started = time.perf_counter()
    proc = subprocess.Popen(stage(data), cwd=folder, env=env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)  # fmt: skip
    while saved_epoch(folder / "models/checkpoint.npz") < k:
        if proc.poll() is not None:
            raise SystemExit("the stage ended before epoch k")
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    return round(time.perf_counter() - started, 1)


def time_saves(path: Path, scratch: Path, repeat: int = 10) -> list[float]:
    """Seconds per `checkpoint.save` of the real state in `path` (what each epoch end pays)."""
    sys.path.insert(0, str(ROOT / "src"))
    from digits.lib import checkpoint

    with np.load(path) as z:
        wanted = json.loads(z["meta"].tobytes())["identity"]
    state = checkpoint.load(path, wanted)
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        checkpoint.save(scratch, state)
        times.append(round(time.perf_counter() - started, 3))
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="processed train/val .npz")
    parser.add_argument("--epochs", type=int, default=10, help="train.epochs")
    parser.add_argument("--kill-after", type=int, default=6, help="epoch k of the kill")
    parser.add_argument("--pairs", type=int, default=3, help="uninterrupted on/off pairs")
    args = parser.parse_args()
    top = Path(tempfile.mkdtemp(prefix="resume-bench-"))
    result: dict[str, object] = {"epochs": args.epochs, "kill_after": args.kill_after}
    killed = workspace(top / "killed", args.epochs, resume=True)
    result["killed_run_s"] = kill_after(args.data, killed, args.kill_after)
    result["checkpoint_bytes"] = (killed / "models/checkpoint.npz").stat().st_size
    result["save_s"] = time_saves(killed / "models/checkpoint.npz", top / "scratch.npz")
    fresh = top / "fresh"
    shutil.copytree(killed, fresh)
    workspace(fresh, args.epochs, resume=False)  # the same checkpoint, resume turned off
    result["restart_resume_s"] = timed(stage(args.data), killed)
    result["restart_fresh_s"] = timed(stage(args.data), fresh)
    on, off = [], []
    for i in range(args.pairs):
        on.append(timed(stage(args.data), workspace(top / f"on{i}", args.epochs, True)))
        off.append(timed(stage(args.data), workspace(top / f"off{i}", args.epochs, False)))
    result["uninterrupted_resume_on_s"] = on
    result["uninterrupted_resume_off_s"] = off
    result["fit_seconds"] = {
        name: json.loads((top / name / "reports/train_metrics.json").read_text())["train/seconds"]
        for name in [f"on{i}" for i in range(args.pairs)] + [f"off{i}" for i in range(args.pairs)]
    }
    print(json.dumps(result, indent=2))
    shutil.rmtree(top)


if __name__ == "__main__":
    main()
