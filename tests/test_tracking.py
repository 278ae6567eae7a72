"""MLflow runs always end: FINISHED, FAILED with the reason, or KILLED on Ctrl-C and SIGTERM; a
run beats while it lives, so one whose host vanished is ended FAILED by the next process that
looks; runs are named after what they train; the environment is read once, into a value."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from digits.lib.config import MLflowConfig
from digits.lib.environment import Environment
from digits.lib.tracking import runs
from digits.lib.tracking.store import setup

from helpers import fresh_store, real_params, shrink, stage_env, wait_until

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


# --- the environment, read once ---------------------------------------------------------------


def test_environment_is_read_once_into_a_value(tmp_path: Path, monkeypatch) -> None:
    """The library obeys the Environment it is given, not whatever os.environ holds later."""
    from digits.lib.tracking.store import tracking_uri

    env = Environment.read(
        {"DVC_ROOT": str(tmp_path), "MLFLOW_TRACKING_URI": "", "DVC_EXP_NAME": "wiry-mast"}
    )
    assert env == Environment(dvc_root=tmp_path, exp_name="wiry-mast")
    assert env.project_root(Path("elsewhere/params.yaml")) == tmp_path
    assert Environment().project_root(tmp_path / "params.yaml") == tmp_path.resolve()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://not-this:5000")
    assert tracking_uri(MLflowConfig(), tmp_path, env) == f"sqlite:///{tmp_path / 'mlflow.db'}"
    told = Environment(tracking_uri="http://this:5000")
    assert tracking_uri(MLflowConfig(), tmp_path, told) == "http://this:5000"


# --- names -------------------------------------------------------------------------------------


def test_a_cnn_with_a_kernel_size_per_block_is_named_by_its_kernels() -> None:
    from digits.lib.config import parse_params
    from digits.lib.tracking.naming import run_name

    raw = real_params()
    raw["model"]["type"] = "cnn"
    raw["model"]["cnn"].update(filters=[32, 64], kernel_size=[5, 3])
    assert run_name(parse_params(raw), Environment()) == "cnn-32-64-k5-3"
    raw["model"]["cnn"]["kernel_size"] = [3, 3]  # the same network as kernel_size: 3
    assert run_name(parse_params(raw), Environment()) == "cnn-32-64-k3"


# --- heartbeats: a run whose host vanished ------------------------------------------------------


def alive_until(client, run_id: str) -> float:
    from digits.lib.tracking.reaping import ALIVE_TAG

    return float(client.get_run(run_id).data.tags.get(ALIVE_TAG, "nan"))


def test_a_run_beats_while_it_lives(store, monkeypatch) -> None:
    from digits.lib.tracking import reaping

    monkeypatch.setattr(reaping, "HEARTBEAT_SECONDS", 1.0)
    with runs.tracked_run() as run:
        first = alive_until(store, run.info.run_id)
        assert time.time() < first <= time.time() + 3.5  # 3 beats' grace, whole seconds
        wait_until(lambda: alive_until(store, run.info.run_id) > first, 10, "a second beat")
    assert only_run(store).info.status == "FINISHED"


VANISHING = """
import socket, sys, time
socket.gethostname = lambda: "vanished-host"  # a process on another machine
import mlflow
from digits.lib.tracking import reaping, runs
reaping.HEARTBEAT_SECONDS = 2.0  # a grace of 6 s
mlflow.set_tracking_uri(sys.argv[1])
mlflow.set_experiment(experiment_id=sys.argv[2])
with runs.tracked_run() as run:
    print(run.info.run_id, flush=True)
    time.sleep(600)
"""


@pytest.mark.integration  # kill -9 of another process: `make test-integration`
def test_a_run_whose_host_vanished_is_ended_failed_by_the_next_setup(store, tmp_path) -> None:
    """A stage run from another host (here: a process that says so) stops beating, killed:
    the next process that opens the store ends it FAILED with the reason once its last promise
    lapses, not before; a run from a live process there stays RUNNING (no false alarm)."""
    import mlflow

    uri = mlflow.get_tracking_uri()
    experiment_id = store.get_experiment_by_name("mnist").experiment_id
    cmd = [str(BIN / "python"), "-c", VANISHING, uri, experiment_id]
    victim = subprocess.Popen(cmd, env=stage_env(), stdout=subprocess.PIPE, text=True)
    live = subprocess.Popen(cmd, env=stage_env(), stdout=subprocess.PIPE, text=True)
    try:
        assert victim.stdout is not None and live.stdout is not None
        run_id, live_id = victim.stdout.readline().strip(), live.stdout.readline().strip()
        first = alive_until(store, run_id)
        wait_until(lambda: alive_until(store, run_id) > first, 30, "the victim's heartbeat")
        victim.kill()
        victim.wait()
        assert setup(MLflowConfig(), tmp_path, Environment.read()) == experiment_id
        assert store.get_run(run_id).info.status == "RUNNING"  # its promise still holds

        def ended() -> bool:
            setup(MLflowConfig(), tmp_path, Environment.read())
            return store.get_run(run_id).info.status == "FAILED"

        wait_until(ended, 30, "the vanished host's run ended FAILED")
        reason = store.get_run(run_id).data.tags["failure_reason"]
        assert reason.startswith("process vanished-host:") and "stopped beating" in reason
        assert store.get_run(live_id).info.status == "RUNNING"
    finally:
        victim.kill()
        live.kill()
        live.wait()


@pytest.mark.parametrize(
    "settings",
    [
        {"model.type": "mlp", "model.mlp.width": 16, "model.mlp.depth": 1},
        {"model.type": "cnn", "model.cnn.filters": [4], "model.dtype_policy": "mixed_bfloat16"},
    ],
)
def test_model_signature_is_the_one_inferred_from_predictions(settings):
    """The signature read from the model's declared output (no `predict`) is the one MLflow
    infers from its predictions, in float32 and in bfloat16 compute."""
    pytest.importorskip("keras")
    from mlflow.models import infer_signature

    from digits.lib.config import parse_params, set_dotted
    from digits.lib.models import build_model
    from digits.lib.tracking.logged_model import model_signature

    raw = real_params()
    for key, value in settings.items():
        set_dotted(raw, key, value)
    model = build_model(parse_params(raw).model)
    x = np.random.default_rng(0).random((5, 784), dtype=np.float32)
    assert model_signature(model, x) == infer_signature(x, model.predict(x, verbose=0))
