"""Resuming a killed train stage (`train.resume`, lib/checkpoint.py): `kill -9` after epoch k,
start again, and it continues at epoch k+1 in the same MLflow run, ending with the weights,
history and metrics of a run never killed, bit for bit. A checkpoint from other params or data,
a torn one, or one whose run was deleted in MLflow, is never resumed."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from helpers import fresh_store, real_params, shrink, stage_env, wait_until

BIN = Path(sys.executable).parent
CHECKPOINT = "models/checkpoint.npz"


def stage_args(data: Path) -> list[str]:
    return [
        str(BIN / "python"), "-m", "digits.stages.train", "--data", str(data),
        "--model", "models/model.keras", "--run-info", "models/run.json",
        "--metrics", "reports/train_metrics.json", "--history", "reports/history.csv",
        "--checkpoint", CHECKPOINT,
    ]  # fmt: skip


def workspace(path: Path, hashes: dict[str, str], **train: object) -> Path:
    """A folder with params.yaml: the real config shrunk, dropout on, early stopping armed."""
    raw = shrink(real_params(), hashes, ["x"])
    raw["train"].update(train)
    path.mkdir()
    (path / "params.yaml").write_text(yaml.safe_dump(raw))
    return path


def client(root: Path):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")


# Measurements of the process, not results: a resumed process loads a checkpoint its twin never
# did, and was seen to peak 1 MiB higher.
MEASURED = ("train/seconds", "train/peak_memory_mb")


def results(run: Any) -> dict[str, float]:
    """A run's training results: not its time or peak memory, nor the machine's load (MLflow's
    system metrics, sampled every 10 s, so a run killed and resumed has other samples)."""
    return {
        k: v
        for k, v in run.data.metrics.items()
        if k not in MEASURED and not k.startswith("system/")
    }


def only_run(root: Path):
    c = client(root)
    (run,) = c.search_runs([c.get_experiment_by_name("mnist").experiment_id])
    return run


def weights(path: Path) -> list[np.ndarray]:
    import keras

    return keras.saving.load_model(path).get_weights()


@pytest.mark.integration
def test_kill_9_after_epoch_k_resumes_bit_identical(tmp_path: Path, mirror, processed) -> None:
    from digits.lib import checkpoint

    _, hashes = mirror
    settings = {"epochs": 12, "patience": 4, "batch_size": 32}
    whole = workspace(tmp_path / "whole", hashes, **settings)
    killed = workspace(tmp_path / "killed", hashes, **settings)
    env = stage_env()
    reference = subprocess.Popen(stage_args(processed), cwd=whole, env=env, text=True,
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT)  # fmt: skip
    victim = subprocess.Popen(stage_args(processed), cwd=killed, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip

    def checkpointed() -> bool:  # the first epoch's checkpoint, then kill -9
        assert victim.poll() is None, "the victim ended before writing a checkpoint"
        return (killed / CHECKPOINT).exists()

    wait_until(checkpointed, 300, "the first checkpoint", interval=0.005)
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait()
    reference_out = reference.communicate(timeout=300)[0]
    assert reference.returncode == 0, reference_out

    from digits.lib.config import load_params
    from digits.lib.data import file_digest

    wanted = checkpoint.identity(
        load_params(killed / "params.yaml"),
        file_digest(processed / "train.npz", processed / "val.npz"),
    )
    saved = checkpoint.load(killed / CHECKPOINT, wanted)
    assert saved is not None
    total = len((whole / "reports/history.csv").read_text().splitlines()) - 1
    assert 1 <= saved.epoch < total, (saved.epoch, total)
    assert not (killed / "models/model.keras").exists()

    resumed = subprocess.run(stage_args(processed), cwd=killed, env=env, capture_output=True,
                             text=True, timeout=300)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming run {saved.run_id} after epoch {saved.epoch}" in resumed.stderr
    assert not (killed / CHECKPOINT).exists(), "the checkpoint outlived its run"

    for ours, theirs in zip(
        weights(killed / "models/model.keras"), weights(whole / "models/model.keras"), strict=True
    ):
        assert np.array_equal(ours, theirs)
    history = (killed / "reports/history.csv").read_text()
    assert history == (whole / "reports/history.csv").read_text()
    ours = json.loads((killed / "reports/train_metrics.json").read_text())
    theirs = json.loads((whole / "reports/train_metrics.json").read_text())
    for measured in MEASURED:
        assert ours.pop(measured) > 0 and theirs.pop(measured) > 0
    assert ours == theirs

    run, reference_run = only_run(killed), only_run(whole)  # one run: the killed one, reopened
    assert run.info.run_id == saved.run_id
    assert run.info.status == "FINISHED"
    assert "failure_reason" not in run.data.tags
    assert run.data.tags["resumed_after_epochs"] == str(saved.epoch)
    for metric in ("train/loss", "train/accuracy", "val/loss", "val/accuracy"):
        logged = client(killed).get_metric_history(run.info.run_id, metric)
        expected = client(whole).get_metric_history(reference_run.info.run_id, metric)
        assert sorted(m.step for m in logged) == list(range(1, total + 1)), metric
        assert {m.step: m.value for m in logged} == {m.step: m.value for m in expected}
    assert results(run) == results(reference_run)


@pytest.mark.integration
def test_kill_9_during_a_refit_resumes_it_without_its_validation_run_again(
    tmp_path: Path, mirror, processed
) -> None:
    """The refit alone checkpoints, so the kill lands in it: the rerun takes the epochs from
    the finished validation run and resumes the refit's own MLflow run."""
    from digits.lib.tracking.provenance import REFIT_BY, REFIT_OF

    _, hashes = mirror
    killed = workspace(tmp_path / "killed", hashes, epochs=8, batch_size=32, refit=True)
    env = stage_env()
    victim = subprocess.Popen(stage_args(processed), cwd=killed, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip

    def checkpointed() -> bool:
        assert victim.poll() is None, "the victim ended before the refit wrote a checkpoint"
        return (killed / CHECKPOINT).exists()

    wait_until(checkpointed, 300, "the refit's first checkpoint", interval=0.005)
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait()
    resumed = subprocess.run(stage_args(processed), cwd=killed, env=env, capture_output=True,
                             text=True, timeout=300)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming a refit: its validation run" in resumed.stderr

    c = client(killed)
    runs = c.search_runs([c.get_experiment_by_name("mnist").experiment_id])
    (chooser,) = [r for r in runs if r.info.run_name.endswith("-validation")]
    (refit,) = [r for r in runs if r is not chooser]
    assert refit.data.tags[REFIT_OF] == chooser.info.run_id
    assert c.get_run(chooser.info.run_id).data.tags[REFIT_BY] == refit.info.run_id
    assert refit.info.status == "FINISHED" and "resumed_after_epochs" in refit.data.tags
    trained = len((killed / "reports/history.csv").read_text().splitlines()) - 1
    assert trained == int(chooser.data.metrics["selected/epoch"])


# --- the checkpoint file: what is and is not resumed (fast, no TensorFlow) ---------------------


def state(identity: dict) -> object:
    from digits.lib.checkpoint import State

    return State(
        identity=identity,
        epoch=3,
        run_id="abc",
        seconds=1.5,
        history={"loss": [3.0, 2.0, 1.0]},
        stopping={"wait": 1, "best": 0.5, "best_epoch": 1, "stopped": False},
        model=[np.arange(6, dtype=np.float32).reshape(2, 3)],
        optimizer=[np.array(30, dtype=np.int64)],
        best_weights=[np.ones(3, dtype=np.float32)],
    )


def test_checkpoint_round_trips(tmp_path: Path) -> None:
    from digits.lib import checkpoint

    identity = {"format": 1, "train.epochs": 5, "data.sha256": "d"}
    checkpoint.save(tmp_path / "c.npz", state(identity))
    loaded = checkpoint.load(tmp_path / "c.npz", identity)
    assert loaded is not None and loaded.epoch == 3 and loaded.run_id == "abc"
    assert np.array_equal(loaded.model[0], np.arange(6).reshape(2, 3))
    assert loaded.optimizer[0] == 30 and loaded.best_weights is not None
    assert list(tmp_path.iterdir()) == [tmp_path / "c.npz"], "no temp file left"


def test_checkpoint_from_other_params_or_data_is_not_resumed(tmp_path: Path, caplog) -> None:
    from digits.lib import checkpoint

    saved = {"format": 1, "train.epochs": 5, "data.sha256": "d"}
    checkpoint.save(tmp_path / "c.npz", state(saved))
    with caplog.at_level(logging.WARNING):
        assert checkpoint.load(tmp_path / "c.npz", {**saved, "train.epochs": 6}) is None
        assert checkpoint.load(tmp_path / "c.npz", {**saved, "data.sha256": "e"}) is None
    assert "train.epochs: 5 -> 6" in caplog.text and "data.sha256: d -> e" in caplog.text
    assert "starting afresh" in caplog.text


def test_torn_or_garbage_checkpoint_is_not_resumed(tmp_path: Path, caplog) -> None:
    from digits.lib import checkpoint

    identity = {"format": 1, "data.sha256": "d"}
    path = tmp_path / "c.npz"
    checkpoint.save(path, state(identity))
    whole = path.read_bytes()
    for torn in (whole[: len(whole) // 2], whole[:-30], b"", b"not a zip at all"):
        path.write_bytes(torn)
        with caplog.at_level(logging.WARNING):
            assert checkpoint.load(path, identity) is None
    assert caplog.text.count("unreadable") == 4


def test_resume_off_or_numpy_model_takes_no_checkpoint(tmp_path: Path, small_params) -> None:
    from digits.lib.checkpoint import resumable
    from digits.lib.config import parse_params

    params = parse_params(small_params)
    assert resumable(params, "d", tmp_path / "c.npz") is not None
    off = {**small_params, "train": {**small_params["train"], "resume": False}}
    assert resumable(parse_params(off), "d", tmp_path / "c.npz") is None
    assert resumable(params, "d", None) is None


def test_a_checkpoint_whose_run_was_deleted_in_mlflow_starts_afresh(
    tmp_path: Path, mirror, processed: Path, store_template: Path, monkeypatch, caplog
) -> None:
    """The run of a killed training, deleted in the UI: MLflow still finds it (soft-deleted)
    but will not reopen it. The stage warns, names the run, trains afresh in a new run, exit 0,
    instead of failing every `dvc repro` until the checkpoint is removed by hand."""
    import mlflow

    from digits.lib import checkpoint
    from digits.lib.config import load_params
    from digits.lib.data import file_digest
    from digits.stages import train

    _, hashes = mirror
    root = workspace(tmp_path / "w", hashes, epochs=2)
    store = client(fresh_store(root, store_template).parent)
    experiment = store.create_experiment("mnist")
    deleted = store.create_run(experiment).info.run_id  # killed: left RUNNING, then deleted
    store.delete_run(deleted)
    identity = checkpoint.identity(
        load_params(root / "params.yaml"),
        file_digest(processed / "train.npz", processed / "val.npz"),
    )
    killed = checkpoint.State(identity, 1, deleted, 1.0, {}, {}, [], [])
    checkpoint.save(root / CHECKPOINT, killed)
    monkeypatch.chdir(root)
    monkeypatch.delenv("DVC_ROOT", raising=False)
    with caplog.at_level(logging.WARNING):
        train.main(stage_args(processed)[3:])  # returns: exit 0
    assert f"its MLflow run {deleted} was deleted in MLflow: starting afresh" in caplog.text
    (run,) = store.search_runs([experiment])  # the deleted run is not searched
    assert run.info.run_id != deleted and run.info.status == "FINISHED"
    assert "resumed_after_epochs" not in run.data.tags
    assert store.get_run(deleted).info.lifecycle_stage == "deleted"
    assert (root / "models/model.keras").exists() and not (root / CHECKPOINT).exists()
    mlflow.set_tracking_uri(None)
