"""MLflow runs always end: FINISHED, FAILED with the reason, or KILLED on Ctrl-C and SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from digits.lib.config import MLflowConfig
from digits.lib.environment import Environment
from digits.lib.tracking import runs
from digits.lib.tracking.store import setup

from helpers import fresh_store, real_params, shrink, stage_env

BIN = Path(sys.executable).parent


@pytest.fixture
def store(tmp_path: Path, store_template: Path):
    import mlflow

    setup(MLflowConfig(), fresh_store(tmp_path, store_template).parent, Environment.read())
    yield mlflow.MlflowClient()
    mlflow.set_tracking_uri(None)


def only_run(client):
    experiment = client.get_experiment_by_name("mnist")
    (run,) = client.search_runs([experiment.experiment_id])
    return run


def test_finished(store) -> None:
    with runs.tracked_run():
        pass
    assert only_run(store).info.status == "FINISHED"


def test_exception_ends_failed_with_reason(store) -> None:
    with pytest.raises(ValueError), runs.tracked_run():
        raise ValueError("boom")
    run = only_run(store)
    assert run.info.status == "FAILED"
    assert run.data.tags["failure_reason"] == "ValueError: boom"


def test_keyboard_interrupt_ends_killed(store) -> None:
    with pytest.raises(KeyboardInterrupt), runs.tracked_run():
        raise KeyboardInterrupt
    run = only_run(store)
    assert run.info.status == "KILLED"
    assert run.data.tags["failure_reason"] == "interrupted"


def test_sigterm_ends_killed(store) -> None:
    with pytest.raises(KeyboardInterrupt), runs.tracked_run():
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler raises at the next bytecode, long before this ends
    assert only_run(store).info.status == "KILLED"
    assert only_run(store).data.tags["failure_reason"] == "interrupted"


@pytest.mark.integration  # a signal to another process: `make test-integration`
def test_sigterm_during_training_ends_killed(
    tmp_path: Path, mirror, processed: Path, store_template: Path
) -> None:
    """A real `train` stage, terminated mid-fit: its run ends KILLED and no model is written."""
    from mlflow import MlflowClient

    _, hashes = mirror
    fresh_store(tmp_path, store_template)
    raw = shrink(real_params(), hashes, ["x"])
    raw["train"].update(epochs=500, patience=0)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    cmd = [str(BIN / "python"), "-m", "digits.stages.train", "--data", str(processed)]
    cmd += ["--model", "m/model.keras", "--run-info", "m/run.json", "--metrics", "r/m.json"]
    cmd += ["--history", "r/h.csv"]
    errors = (tmp_path / "stderr.txt").open("w")  # a file: a full pipe would stall the stage
    proc = subprocess.Popen(
        cmd, cwd=tmp_path, env=stage_env(), stdout=subprocess.PIPE, stderr=errors, text=True
    )
    # Keras announces each epoch as it starts: at the third, the run is open and two epochs are
    # logged. (Opening the store from here sooner would race the stage creating its tables.)
    assert proc.stdout is not None
    epochs = 0
    while epochs < 3 and (line := proc.stdout.readline()):
        epochs += line.startswith("Epoch ")
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=120)
    errors.close()
    stderr = (tmp_path / "stderr.txt").read_text()
    assert epochs == 3, stderr
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert proc.returncode != 0
    assert "interrupted" in stderr
    run = only_run(client)
    assert run.info.status == "KILLED"
    assert not (tmp_path / "m/model.keras").exists()


def test_setup_when_another_process_creates_the_experiment_first(store, tmp_path: Path) -> None:
    """Two sweep hosts starting at once both find no experiment; the one whose create comes
    second uses the other's (seen with two hosts on one MLflow server)."""
    import mlflow

    real = mlflow.get_experiment_by_name
    looks: list[str] = []

    def before_the_other(name: str):  # the first look comes before the other host's create
        looks.append(name)
        return None if len(looks) == 1 else real(name)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(mlflow, "get_experiment_by_name", before_the_other)
        experiment_id = setup(MLflowConfig(), tmp_path, Environment.read())
    assert len(looks) == 2 and experiment_id == real("mnist").experiment_id
