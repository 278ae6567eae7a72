"""Faults injected into real stages: kill -9 at any moment leaves whole files, and the temp
files a killed writer leaves are removed by the next writer; file modes are set without the
process umask; a NaN loss ends the MLflow run FAILED with the reason; the same seed gives the
same metrics."""

from __future__ import annotations

import os
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from digits.lib.data import SPLITS, Split, load_split, load_splits, save_split
from digits.stages import train as train_stage

from helpers import fresh_store, real_params, shrink, stage_env

BIN = Path(sys.executable).parent


def write_params(root: Path, hashes: dict[str, str], **train) -> Path:
    raw = shrink(real_params(), hashes, ["x"])
    raw["train"].update(train)
    path = root / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.mark.integration  # kill -9 of stage processes: `make test-integration`
def test_kill_9_at_any_moment_leaves_whole_outputs(tmp_path: Path, mirror, processed: Path) -> None:
    """`preprocess` killed at ten points of its run: every output present is complete."""
    _, hashes = mirror
    params = write_params(tmp_path, hashes)
    out = tmp_path / "processed"
    cmd = [str(BIN / "python"), "-m", "digits.stages.preprocess", "--params", str(params)]
    cmd += ["--raw", str(processed.parent / "raw"), "--out", str(out)]
    started = time.perf_counter()
    subprocess.run(cmd, check=True, env=stage_env(), capture_output=True)
    duration = time.perf_counter() - started
    for fraction in np.linspace(0.3, 1.0, 10):
        proc = subprocess.Popen(cmd, env=stage_env(), stderr=subprocess.DEVNULL)
        time.sleep(duration * fraction)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        for name in SPLITS:  # old or new, never torn
            split = load_split(out / f"{name}.npz")
            assert split.x.shape == (len(split.y), 784) and len(split.index) == len(split.y)
    leftovers = [p.name for p in out.iterdir() if p.name.startswith(".")]
    # a killed writer can leave a hidden temp file; `dvc repro` clears a stage's outputs first
    assert all(".tmp" in name for name in leftovers), leftovers


def test_nan_loss_ends_the_run_failed_with_the_reason(
    tmp_path: Path, mirror, processed: Path, monkeypatch, capsys, store_template: Path
) -> None:
    from mlflow import MlflowClient

    _, hashes = mirror
    fresh_store(tmp_path, store_template)
    write_params(tmp_path, hashes, epochs=3)
    data = tmp_path / "poisoned"
    splits = load_splits(processed)
    y = splits["train"].y.copy()
    y[7, 2] = np.nan
    save_split(data / "train.npz", Split(splits["train"].x, y, splits["train"].index))
    save_split(data / "val.npz", splits["val"])
    args = ["--data", str(data), "--model", "m/model.keras", "--run-info", "m/run.json"]
    args += ["--metrics", "r/m.json", "--history", "r/h.csv"]
    monkeypatch.chdir(tmp_path)  # in this process: the exit code and message are the point
    with pytest.raises(SystemExit) as exit_:
        train_stage.main(args)
    assert exit_.value.code == 1
    assert "error: training loss became nan in epoch 1" in capsys.readouterr().err
    assert not (tmp_path / "m/model.keras").exists()
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("mnist").experiment_id])
    assert run.info.status == "FAILED"
    assert run.data.tags["failure_reason"].startswith("TrainingDiverged: training loss became nan")


@pytest.mark.parametrize("family", ["mlp", "cnn"])
def test_same_seed_same_metrics(mirror, processed: Path, family: str) -> None:
    from digits.lib.config import parse_params
    from digits.lib.training import fit

    _, hashes = mirror
    raw = shrink(real_params(), hashes, ["x"])
    raw["model"]["type"] = family
    raw["model"]["cnn"].update(filters=[4], dense=16)
    params = parse_params(raw)
    splits = load_splits(processed, ("train", "val"))
    runs = [
        fit(params.model, params.train, splits["train"], splits["val"], verbose=0) for _ in "ab"
    ]
    (model_a, history_a), (model_b, history_b) = runs
    assert history_a.equals(history_b), "per-epoch metrics differ"
    for a, b in zip(model_a.get_weights(), model_b.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


# --- temp files left by killed writers ---------------------------------------------------------

KILLED_MID_WRITE = """
import os, sys
from pathlib import Path
import numpy as np
from digits.lib import checkpoint, files

def die(*args, **kwargs):
    os.kill(os.getpid(), 9)

path = Path(sys.argv[2])
if sys.argv[1] == "atomic_path":
    with files.atomic_path(path) as tmp:
        tmp.write_bytes(b"half a model")
        die()
else:
    np.savez = die
    checkpoint.save(path, checkpoint.State({}, 1, "r", 0.0, {}, {}, [], []))
"""


@pytest.mark.parametrize(
    ("writer", "name"), [("atomic_path", "model.keras"), ("checkpoint", "checkpoint.npz")]
)
def test_temp_files_of_killed_writers_are_removed_by_the_next_write(
    tmp_path: Path, writer: str, name: str
) -> None:
    """`kill -9` mid-write leaves a hidden temp file (git-ignored, so nobody sees it grow); the
    next write there removes it, but not a live writer's, nor one from another host."""
    from digits.lib import files

    path = tmp_path / "models" / name
    died = subprocess.run(
        [str(BIN / "python"), "-c", KILLED_MID_WRITE, writer, str(path)], env=stage_env()
    )
    assert died.returncode == -signal.SIGKILL
    (left,) = path.parent.iterdir()
    assert left.name.startswith(f".{path.stem}.") and ".tmp." in left.name
    fd, live = files.temp_beside(path)  # this process: alive, writing
    os.close(fd)
    elsewhere = path.parent / f".{path.stem}.0123abcd.tmp.other-host:1:ab12cd34:99{path.suffix}"
    elsewhere.touch()
    files.write_text(path.parent / "other.txt", "the next write in this folder")
    assert sorted(path.parent.iterdir()) == sorted([live, elsewhere, path.parent / "other.txt"])
    assert socket.gethostname() in live.name and f":{os.getpid()}:" in live.name


def test_file_modes_are_set_without_touching_the_umask(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Setting the umask is process-wide: MLflow's threads creating files meanwhile would get
    mode 0666 (`os.umask(0)`); a write takes the usual mode without ever calling it."""
    from digits.lib import checkpoint, files

    mask = os.umask(0o022)
    os.umask(mask)

    def forbidden(mask: int) -> int:
        raise AssertionError("os.umask called: races with other threads creating files")

    monkeypatch.setattr(os, "umask", forbidden)
    files.write_text(tmp_path / "a.txt", "x")
    checkpoint.save(tmp_path / "c.npz", checkpoint.State({}, 1, "r", 0.0, {}, {}, [], []))
    for name in ("a.txt", "c.npz"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o666 & ~mask, name
