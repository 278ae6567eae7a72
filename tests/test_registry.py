"""The model registry: every evaluated model becomes a version, the champion alias moves only
to a better one, and `mlflow models serve` answers for `models:/...@champion` on loopback."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from digits.lib.config import MLflowConfig
from digits.lib.tracking import logged_model, registry, runs

from conftest import free_port, stage_env

BIN = Path(sys.executable).parent


@pytest.fixture
def store(tmp_path: Path):
    import mlflow

    runs.setup(MLflowConfig(), tmp_path)
    yield tmp_path
    mlflow.set_tracking_uri(None)


def trained_uri(splits, epochs: int) -> tuple[str, float]:
    """A small MLP trained for `epochs` (0: untrained), logged in a run with its test accuracy
    like `train` + `evaluate` do; returns (model URI, test accuracy)."""
    import keras
    import mlflow

    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((784,)),
            keras.layers.Dense(16, activation="relu"),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )
    model.compile("adam", "categorical_crossentropy", metrics=["accuracy"])
    if epochs:
        model.fit(splits["train"].x, splits["train"].y, epochs=epochs, verbose=0)
    accuracy = float(model.evaluate(splits["test"].x, splits["test"].y, verbose=0)[1])
    with runs.tracked_run():
        uri = logged_model.log_keras_model(model, splits["test"].x[:5])
        mlflow.log_metric("test/accuracy", accuracy)
    return uri, accuracy


@pytest.fixture(scope="module")
def splits(processed: Path):
    from digits.lib.data import load_splits

    return load_splits(processed, ("train", "test"))


def test_champion_alias_moves_only_to_a_better_model(store, splits) -> None:
    from mlflow import MlflowClient

    cfg = MLflowConfig()
    client = MlflowClient()
    good_uri, good = trained_uri(splits, epochs=5)
    first = registry.register(good_uri, good, cfg)
    assert (first.version, first.champion, first.previous) == ("1", True, None)

    bad_uri, bad = trained_uri(splits, epochs=0)
    assert bad < good
    second = registry.register(bad_uri, bad, cfg)
    assert (second.version, second.champion) == ("2", False)
    assert second.previous_accuracy == pytest.approx(good)
    champion = client.get_model_version_by_alias(cfg.registered_model, cfg.champion_alias)
    assert str(champion.version) == "1"
    assert float(champion.tags["test_accuracy"]) == good

    tie = registry.register(good_uri, good, cfg)  # equal is not better
    assert not tie.champion
    better = registry.register(bad_uri, good + 0.01, cfg)  # as if it had scored higher
    assert better.champion and better.previous == "1"
    champion = client.get_model_version_by_alias(cfg.registered_model, cfg.champion_alias)
    assert str(champion.version) == better.version == "4"


def test_mlflow_models_serve_answers_for_the_champion(store, splits) -> None:
    import mlflow

    uri, accuracy = trained_uri(splits, epochs=5)
    registry.register(uri, accuracy, MLflowConfig())
    port = free_port()
    uri = mlflow.get_tracking_uri()
    cmd = [str(BIN / "mlflow"), "models", "serve", "-m", "models:/mnist-digits@champion"]
    cmd += ["--env-manager", "local", "--host", "127.0.0.1", "--port", str(port)]
    server = subprocess.Popen(
        cmd,
        env=stage_env(MLFLOW_TRACKING_URI=uri),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.time() + 120
        while True:
            assert server.poll() is None, server.communicate()[0]
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2)
                break
            except (urllib.error.URLError, ConnectionError):
                assert time.time() < deadline, "the model server did not come up in 120 s"
                time.sleep(1)
        digits = splits["test"].x[:8]
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
        assert (served.argmax(1) == splits["test"].labels[:8]).mean() >= 0.75
    finally:
        server.terminate()
        server.wait(timeout=30)
