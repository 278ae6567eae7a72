"""The model registry against a real MLflow store: versions compete only on the same test data
and input signature, McNemar's exact test decides, promotion is atomic under a race, an
unreachable registry fails the run and leaves the alias, and `mlflow models serve` answers for
`models:/...@champion` on loopback."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import mlflow
import numpy as np
import pytest

from digits.lib.config import MLflowConfig
from digits.lib.environment import Environment
from digits.lib.process import process_id
from digits.lib.tracking import logged_model, registry, runs
from digits.lib.tracking.reaping import PROCESS_TAG
from digits.lib.tracking.store import EXPERIMENT_KIND, setup

from helpers import free_port, fresh_store, stage_env, wait_until

BIN = Path(sys.executable).parent
CFG = MLflowConfig()
SIGNATURE = "[Tensor('float32', (-1, 784))]"
N = 200
LABELS = np.arange(N) % 10


class Constant(mlflow.pyfunc.PythonModel):
    """A stand-in model: the registry never loads it, it only needs a logged model to register."""

    def predict(self, context, model_input, params=None):
        return np.zeros(len(model_input))


@pytest.fixture
def store(tmp_path: Path, store_template: Path):
    setup(CFG, fresh_store(tmp_path, store_template).parent, Environment.read())
    yield mlflow.MlflowClient()
    mlflow.set_tracking_uri(None)


def predictions(right: int, offset: int = 0) -> np.ndarray:
    """Predicted labels that are right on `right` of the N test images, starting at `offset`
    (wrapping around), wrong elsewhere."""
    predicted = (LABELS + 1) % 10
    rows = (np.arange(right) + offset) % N
    predicted[rows] = LABELS[rows]
    return predicted


def challenger(predicted: np.ndarray, labels: np.ndarray = LABELS) -> str:
    """A run that stored its test predictions and logged a model, as `evaluate` sees it."""
    with runs.tracked_run():
        registry.log_predictions(labels, np.eye(10)[predicted])
        info = mlflow.pyfunc.log_model(name="model", python_model=Constant(), pip_requirements=[])
    return info.model_uri


def register(predicted, digest="d" * 64, signature=SIGNATURE, labels=LABELS, **kwargs):
    uri = challenger(predicted, labels)
    return registry.register(uri, labels, predicted, digest, signature, CFG, **kwargs)[0]


def champion(client, name: str = CFG.registered_model) -> str:
    return str(client.get_model_version_by_alias(name, CFG.champion_alias).version)


def test_mcnemar_exact_p_values() -> None:
    labels = np.zeros(20, dtype=int)
    before = np.array([0] * 10 + [1] * 10)  # right on the first 10
    # fixed 6 (10..15), broke 0: p = 2 * 0.5**6
    after = np.array([0] * 16 + [1] * 4)
    assert registry.mcnemar(labels, before, after) == registry.Test(0, 6, 2 * 0.5**6)
    # fixed 5, broke 1: p = 2 * (1 + 6) / 2**6
    after = np.array([1] + [0] * 14 + [1] * 5)
    test = registry.mcnemar(labels, before, after)
    assert (test.b, test.c) == (1, 5) and test.p_value == pytest.approx(2 * 7 / 64)
    assert registry.mcnemar(labels, before, before) == registry.Test(0, 0, 1.0)
    assert registry.promotes(registry.Test(0, 6, 0.03125), 0.05)
    assert not registry.promotes(registry.Test(0, 6, 0.03125), 0.01)
    assert not registry.promotes(registry.Test(6, 0, 0.03125), 0.05)  # significantly worse


def test_test_digest_is_of_the_content() -> None:
    x = np.random.default_rng(0).random((5, 784), dtype=np.float32)
    labels = np.arange(5)
    assert registry.test_digest(x, labels) == registry.test_digest(x.copy(), labels.copy())
    assert registry.test_digest(x, labels) != registry.test_digest(x[:4], labels[:4])
    assert registry.test_digest(x, labels) != registry.test_digest(x, labels[::-1])


def test_first_version_is_champion_and_only_a_significant_win_moves_the_alias(store) -> None:
    first = register(predictions(100))
    assert (first.version, first.decision, first.champion) == ("1", "first", True)

    noise = register(predictions(103))  # fixed 3, broke 0: p = 0.25
    assert (noise.decision, noise.champion, noise.previous) == ("kept", False, "1")
    assert (noise.test.b, noise.test.c) == (0, 3) and noise.test.p_value == pytest.approx(0.25)
    assert champion(store) == "1"

    worse = register(predictions(60))
    assert worse.decision == "kept" and worse.test.b == 40
    assert champion(store) == "1"

    better = register(predictions(120, offset=10))  # fixed 30, broke 10
    assert (better.test.b, better.test.c) == (10, 30)
    assert better.test.p_value < 0.05
    assert (better.decision, better.champion) == ("promoted", True)
    assert champion(store) == better.version == "4"
    tags = store.get_model_version(CFG.registered_model, "4").tags
    assert tags["registry.decision"] == "promoted"
    assert (tags["registry.b"], tags["registry.c"]) == ("10", "30")
    assert float(tags["registry.p_value"]) == pytest.approx(better.test.p_value, rel=1e-5)
    assert tags["registry.compared_with"] == "1"
    assert tags[registry.TEST_DIGEST_TAG] == "d" * 64
    assert "McNemar" in tags["registry.reason"]


def test_other_test_data_or_signature_is_registered_but_never_compared(store) -> None:
    register(predictions(150))
    other = register(predictions(200), digest="e" * 64)  # perfect, but on other images
    assert other.name == f"{CFG.registered_model}-eeeeeeee"
    assert (other.decision, other.champion) == ("first", True)  # the first of its own data
    assert other.not_compared_with == CFG.registered_model
    assert "test data eeeeeeee differs" in other.reason
    assert champion(store) == "1"  # the MNIST-like champion did not move
    tags = store.get_model_version(other.name, other.version).tags
    assert tags["registry.not_compared_with"] == CFG.registered_model
    assert "differs" in tags["registry.reason"]
    model_tags = store.get_registered_model(other.name).tags
    assert model_tags[registry.TEST_DIGEST_TAG] == "e" * 64

    shaped = register(predictions(200), signature="[Tensor('float32', (-1, 64))]")
    assert shaped.name == f"{CFG.registered_model}-dddddddd"  # same images, other input
    assert "input [Tensor('float32', (-1, 64))] differs" in shaped.reason and shaped.champion
    assert champion(store) == "1"

    again = register(predictions(60), digest="e" * 64)  # the second of that data: compared
    assert again.name == other.name and again.decision == "kept" and again.test.b == 140


@pytest.mark.parametrize("locked", [True, False])
def test_racing_promotions_leave_the_better_model(store, monkeypatch, locked: bool) -> None:
    """Two challengers that both beat the champion, paused after reading it, released in the
    worst order (the stronger sets the alias first). With the lock the second compares with the
    first's result; without it (the control) the weaker ends champion."""
    if not locked:
        monkeypatch.setattr(registry, "promotion_lock", lambda *a: contextlib.nullcontext())
    register(predictions(60))
    strong_uri, weak_uri = challenger(predictions(200)), challenger(predictions(120))
    both_read = threading.Barrier(2, timeout=3)
    strong_done = threading.Event()
    results: dict[str, registry.Registration] = {}
    errors: list[BaseException] = []

    def pause(who: str) -> None:
        with contextlib.suppress(threading.BrokenBarrierError):  # the lock kept the other out
            both_read.wait()
            if who == "weak":
                strong_done.wait(timeout=30)

    def promote(who: str, uri: str, predicted: np.ndarray) -> None:
        try:
            results[who] = registry.register(
                uri, LABELS, predicted, "d" * 64, SIGNATURE, CFG, after_read=lambda: pause(who)
            )[0]
        except BaseException as err:
            errors.append(err)
        finally:
            if who == "strong":
                strong_done.set()

    threads = [
        threading.Thread(target=promote, args=("strong", strong_uri, predictions(200))),
        threading.Thread(target=promote, args=("weak", weak_uri, predictions(120))),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors, errors
    winner = champion(store)
    if locked:
        assert winner == results["strong"].version
        assert (
            store.search_registered_models(f"name = '{CFG.registered_model}-promotion-lock'") == []
        )
    else:
        assert winner == results["weak"].version  # the race the lock prevents


def test_a_lock_left_by_a_dead_process_is_broken_a_live_one_waited_for(store) -> None:
    lock = f"{CFG.registered_model}-promotion-lock"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    store.create_registered_model(lock, tags={PROCESS_TAG: process_id(dead.pid)})
    assert register(predictions(100)).decision == "first"
    assert store.search_registered_models(f"name = '{lock}'") == []

    store.create_registered_model(lock, tags={PROCESS_TAG: process_id()})
    started = time.monotonic()
    with pytest.raises(registry.RegistryError, match="is held by"):
        register(predictions(150), lock_timeout=1)
    assert 1 <= time.monotonic() - started < 30
    assert champion(store) == "1"


def test_unreachable_registry_fails_the_run_and_leaves_the_alias(store, monkeypatch) -> None:
    register(predictions(100))
    uri = challenger(predictions(200))
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", f"http://127.0.0.1:{free_port()}")
    mlflow.set_registry_uri(f"http://127.0.0.1:{free_port()}")
    try:
        started = time.monotonic()
        with pytest.raises(registry.RegistryError, match="model registry"), runs.tracked_run():
            registry.register(uri, LABELS, predictions(200), "d" * 64, SIGNATURE, CFG)
        assert time.monotonic() - started < 30
    finally:
        monkeypatch.delenv("MLFLOW_REGISTRY_URI")
        mlflow.set_registry_uri(None)
    experiment = store.get_experiment_by_name(CFG.experiment)
    (run,) = store.search_runs([experiment.experiment_id], max_results=1)
    assert run.info.status == "FAILED"
    assert run.data.tags["failure_reason"].startswith("RegistryError: model registry")
    assert champion(store) == "1"


def test_experiment_is_tagged_for_model_training_once(store) -> None:
    experiment = store.get_experiment_by_name(CFG.experiment)
    assert experiment.tags[EXPERIMENT_KIND] == "custom_model_development"
    store.set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND, "genai_development")
    setup(
        CFG,
        Path(mlflow.get_tracking_uri().removeprefix("sqlite:///")).parent,
        Environment.read(),
    )
    kept = store.get_experiment(experiment.experiment_id).tags[EXPERIMENT_KIND]
    assert kept == "genai_development"  # a choice made in the UI is not overwritten


def trained_uri(splits, epochs: int) -> tuple[str, np.ndarray]:
    """A small MLP trained for `epochs`, logged with its test predictions like `train` +
    `evaluate` do; returns (model URI, predicted test labels)."""
    import keras

    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((784,)),
            keras.layers.Dense(16, activation="relu"),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )
    model.compile("adam", "categorical_crossentropy", metrics=["accuracy"])
    model.fit(splits["train"].x, splits["train"].y, epochs=epochs, verbose=0)
    probabilities = model.predict(splits["test"].x, verbose=0)
    with runs.tracked_run():
        uri = logged_model.log_keras_model(model, splits["test"].x[:5])
        registry.log_predictions(splits["test"].labels, probabilities)
    return uri, probabilities.argmax(axis=1)


@pytest.fixture(scope="module")
def splits(processed: Path):
    from digits.lib.data import load_splits

    return load_splits(processed, ("train", "test"))


@pytest.mark.integration  # a model server process: `make test-integration`
def test_mlflow_models_serve_answers_for_the_champion(store, splits) -> None:
    uri, predicted = trained_uri(splits, epochs=5)
    test = splits["test"]
    digest = registry.test_digest(test.x, test.labels)
    registry.register(uri, test.labels, predicted, digest, SIGNATURE, CFG)
    port = free_port()
    tracking = mlflow.get_tracking_uri()
    cmd = [str(BIN / "mlflow"), "models", "serve", "-m", "models:/mnist-digits@champion"]
    cmd += ["--env-manager", "local", "--host", "127.0.0.1", "--port", str(port)]
    server = subprocess.Popen(
        cmd,
        env=stage_env(MLFLOW_TRACKING_URI=tracking),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:

        def pong() -> bool:
            assert server.poll() is None, server.communicate()[0]
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2)
            except (urllib.error.URLError, ConnectionError):
                return False
            return True

        wait_until(pong, 120, "the model server's /ping", interval=1)
        digits = test.x[:8]
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/invocations",
            data=json.dumps({"inputs": digits.tolist()}).encode(),
            headers={"Content-Type": "application/json"},
        )
        answer = json.loads(urllib.request.urlopen(request, timeout=30).read())
        served = np.asarray(answer["predictions"])
        local = mlflow.pyfunc.load_model("models:/mnist-digits@champion").predict(digits)
        assert served.shape == (8, 10)
        np.testing.assert_allclose(served, np.asarray(local), rtol=1e-4, atol=1e-6)
        assert (served.argmax(1) == test.labels[:8]).mean() >= 0.75
    finally:
        server.terminate()
        server.wait(timeout=30)
