"""The model registry against a real MLflow store: versions compete only on the same test data,
input signature and views, McNemar's exact test decides at a level shared by a champion's
challengers, a run evaluated again registers nothing, runs that may not promote never do, an
unreachable registry fails the run and leaves the alias, and `mlflow models serve` answers for
`models:/...@champion` on loopback. The promotion lock's processes: tests/test_lease.py."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import mlflow
import numpy as np
import pytest

from digits.lib.config import MLflowConfig
from digits.lib.environment import Environment
from digits.lib.tracking import logged_model, promotion, registry, runs
from digits.lib.tracking.promotion import Challenger, Decision
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


def challenger(predicted: np.ndarray, labels: np.ndarray = LABELS, **kwargs) -> Challenger:
    """A run that logged a model and was scored with `predicted`, as `evaluate` hands it over."""
    with runs.tracked_run() as run:
        info = mlflow.pyfunc.log_model(name="model", python_model=Constant(), pip_requirements=[])
    fields = {"digest": "d" * 64, "signature": SIGNATURE, **kwargs}
    return Challenger(run.info.run_id, info.model_uri, labels, np.eye(10)[predicted], **fields)


def register(predicted, labels=LABELS, **kwargs) -> registry.Registration:
    return registry.register(challenger(predicted, labels, **kwargs), CFG)[0]


def champion(client, name: str = CFG.registered_model) -> str:
    return str(client.get_model_version_by_alias(name, CFG.champion_alias).version)


def test_mcnemar_exact_p_values() -> None:
    labels = np.zeros(20, dtype=int)
    before = np.array([0] * 10 + [1] * 10)  # right on the first 10
    # fixed 6 (10..15), broke 0: p = 2 * 0.5**6
    after = np.array([0] * 16 + [1] * 4)
    assert promotion.mcnemar(labels, before, after) == promotion.Test(0, 6, 2 * 0.5**6)
    # fixed 5, broke 1: p = 2 * (1 + 6) / 2**6
    after = np.array([1] + [0] * 14 + [1] * 5)
    test = promotion.mcnemar(labels, before, after)
    assert (test.b, test.c) == (1, 5) and test.p_value == pytest.approx(2 * 7 / 64)
    assert promotion.mcnemar(labels, before, before) == promotion.Test(0, 0, 1.0)
    assert promotion.promotes(promotion.Test(0, 6, 0.03125), 0.05)
    assert not promotion.promotes(promotion.Test(0, 6, 0.03125), 0.01)
    assert not promotion.promotes(promotion.Test(6, 0, 0.03125), 0.05)  # significantly worse


def test_test_digest_is_of_the_content() -> None:
    x = np.random.default_rng(0).random((5, 784), dtype=np.float32)
    labels = np.arange(5)
    assert promotion.test_digest(x, labels) == promotion.test_digest(x.copy(), labels.copy())
    assert promotion.test_digest(x, labels) != promotion.test_digest(x[:4], labels[:4])
    assert promotion.test_digest(x, labels) != promotion.test_digest(x, labels[::-1])


@pytest.mark.parametrize(("value", "allowed"), [("1", True), ("", True), ("0", False)])
def test_digits_promote_is_on_or_off(value: str, allowed: bool) -> None:
    assert promotion.may_promote({promotion.PROMOTE_ENV: value}) is allowed
    assert promotion.may_promote({}) is True
    with pytest.raises(promotion.PromoteEnvError, match="DIGITS_PROMOTE='maybe': use 1"):
        promotion.may_promote({promotion.PROMOTE_ENV: "maybe"})


def test_first_version_is_champion_and_only_a_significant_win_moves_the_alias(store) -> None:
    first = register(predictions(100))
    assert (first.version, first.decision, first.champion) == ("1", Decision.FIRST, True)

    noise = register(predictions(103))  # fixed 3, broke 0: p = 0.25
    assert (noise.decision, noise.champion, noise.previous) == (Decision.KEPT, False, "1")
    assert (noise.test.b, noise.test.c) == (0, 3) and noise.test.p_value == pytest.approx(0.25)
    assert champion(store) == "1"

    worse = register(predictions(60))
    assert worse.decision == Decision.KEPT and worse.test.b == 40
    assert ": not better; rule: a challenger takes the alias" in worse.reason
    assert champion(store) == "1"

    better = register(predictions(120, offset=10))  # fixed 30, broke 10
    assert (better.test.b, better.test.c) == (10, 30)
    assert better.test.p_value < 0.05 / 3  # the third challenger of version 1
    assert (better.decision, better.champion) == (Decision.PROMOTED, True)
    assert champion(store) == better.version == "4"
    tags = store.get_model_version(CFG.registered_model, "4").tags
    assert tags["registry.decision"] == "promoted"
    assert (tags["registry.b"], tags["registry.c"]) == ("10", "30")
    assert float(tags["registry.p_value"]) == pytest.approx(better.test.p_value, rel=1e-5)
    assert tags["registry.compared_with"] == "1"
    assert tags["registry.challengers"] == "3"
    assert float(tags["registry.level"]) == pytest.approx(0.05 / 3, rel=1e-5)
    assert tags[registry.TEST_DIGEST_TAG] == "d" * 64
    assert "McNemar" in tags["registry.reason"] and "significance / k" in tags["registry.reason"]


def test_an_empty_registered_model_made_beforehand_is_adopted(store) -> None:
    """A team server's admin makes `mnist-digits` empty (`server user add`): the first
    evaluated model joins it and tags it, rather than going to `mnist-digits-<digest>`."""
    store.create_registered_model(CFG.registered_model)
    first = register(predictions(100))
    assert (first.name, first.version, first.decision) == (CFG.registered_model, "1", "first")
    tags = store.get_registered_model(CFG.registered_model).tags
    assert tags[registry.TEST_DIGEST_TAG] == "d" * 64


def test_a_user_refused_the_registry_is_told_why_in_one_line(store, monkeypatch) -> None:
    """A 403 while registering (a `logger` on a team server) is no failure: the registration
    says not_registered, and its line names the user and the role to ask for."""
    from mlflow.exceptions import RestException

    def refuse(*args, **kwargs):
        raise RestException({"error_code": "PERMISSION_DENIED", "message": "Permission denied"})

    monkeypatch.setattr(mlflow, "register_model", refuse)
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "ann")
    refused = register(predictions(100))
    assert (refused.decision, refused.version, refused.champion) == (
        Decision.NOT_REGISTERED, None, False,
    )  # fmt: skip
    line = registry.registration_line(refused, 1.0)
    assert line.startswith("not registered: ann may log runs but not register models on ")
    assert line.endswith("`python -m digits.tools.server user role ann --role registrar`")


def test_each_challenger_of_a_champion_shares_the_test_level(store) -> None:
    """Bonferroni: the k-th challenger of the same champion must reach p < 0.05 / k; the count
    starts again at a new champion. A win at p = 0.031 promotes a first challenger only."""
    register(predictions(100))
    register(predictions(100))  # challenger 1: identical, kept
    register(predictions(100))  # challenger 2
    lucky = register(predictions(106))  # fixed 6, broke 0: p = 0.03125
    assert (lucky.test.challengers, lucky.test.level) == (3, pytest.approx(0.05 / 3))
    assert lucky.decision == Decision.KEPT and champion(store) == "1"
    assert "at level 0.05 / 3 = 0.0167 (challenger 3 of version 1): not significant" in (
        lucky.reason
    )
    strong = register(predictions(150))
    assert strong.decision == Decision.PROMOTED and strong.test.challengers == 4
    again = register(predictions(156))  # fixed 6 of the new champion's, broke 0
    assert (again.test.challengers, again.decision) == (1, Decision.PROMOTED)
    assert champion(store) == again.version


def test_other_test_data_signature_or_shifts_are_registered_but_never_compared(store) -> None:
    register(predictions(150))
    other = register(predictions(200), digest="e" * 64)  # perfect, but on other images
    assert other.name == f"{CFG.registered_model}-eeeeeeee"
    assert (other.decision, other.champion) == (Decision.FIRST, True)  # first of its own data
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

    # nine views per image: paired with one-view predictions, fixed and broke would mix the
    # models with the views; and `mlflow models serve` answers in one view
    viewed = register(predictions(200), shifts=1)
    assert viewed.name.startswith(f"{CFG.registered_model}-dddddddd-")
    assert viewed.decision == Decision.FIRST and viewed.test is None
    assert "evaluate.shifts 1 differs from mnist-digits's 0" in viewed.reason
    assert champion(store) == "1"
    assert register(predictions(150), shifts=1).name == viewed.name

    again = register(predictions(60), digest="e" * 64)  # the second of that data: compared
    assert again.name == other.name and again.decision == Decision.KEPT and again.test.b == 140


def test_a_run_evaluated_again_registers_nothing_and_keeps_its_predictions(store) -> None:
    first = challenger(predictions(100))
    assert registry.register(first, CFG)[0].decision == Decision.FIRST
    stored = registry.load_predictions(first.run_id)
    # evaluated again (say with other views): other predictions, the same run and model
    redone = dataclasses.replace(first, probabilities=np.eye(10)[predictions(180)], shifts=1)
    again, before = registry.register(redone, CFG)
    assert (again.decision, again.version, again.champion) == (
        Decision.ALREADY_REGISTERED, "1", True
    )  # fmt: skip
    assert before is None and "nothing new registered" in again.reason
    assert len(store.search_model_versions(f"name = '{CFG.registered_model}'")) == 1
    kept = registry.load_predictions(first.run_id)
    np.testing.assert_array_equal(kept["predicted"], stored["predicted"])
    assert "it holds models:/mnist-digits@champion" in registry.registration_line(again, 0.9)
    # an alias renamed in params.yaml: the version evaluated again is the first to hold it
    renamed = CFG.model_copy(update={"champion_alias": "best"})
    best = registry.register(redone, renamed)[0]
    assert (best.decision, best.version, best.champion) == (Decision.FIRST, "1", True)
    assert str(store.get_model_version_by_alias(CFG.registered_model, "best").version) == "1"
    assert len(store.search_model_versions(f"name = '{CFG.registered_model}'")) == 1


def test_runs_that_may_not_promote_are_compared_but_never_crowned(store) -> None:
    trial = register(predictions(100), may_promote=False)  # a ladder rung, no champion yet
    assert (trial.decision, trial.champion) == (Decision.HELD_BACK, False)
    assert store.get_registered_model(CFG.registered_model).aliases == {}
    first = register(predictions(100))
    assert first.decision == Decision.FIRST and champion(store) == first.version
    rung = register(predictions(200), may_promote=False)  # far better: would be promoted
    assert (rung.decision, rung.champion, rung.test.challengers) == (Decision.HELD_BACK, False, 1)
    assert "promotion off" in rung.reason and champion(store) == first.version
    tags = store.get_model_version(CFG.registered_model, rung.version).tags
    assert tags["registry.may_promote"] == "False"
    # the held-back rung could not have promoted: it does not count against the next one
    assert register(predictions(200)).test.challengers == 1


PROMOTER = """
import sys
import mlflow
import numpy as np
from digits.lib.config import MLflowConfig
from digits.lib.tracking import registry
from digits.lib.tracking.promotion import Challenger

uri, run_id, model_uri, path = sys.argv[1:]
mlflow.set_tracking_uri(uri)
with np.load(path) as npz:
    challenger = Challenger(run_id, model_uri, npz["labels"], npz["probabilities"], "d" * 64, "s")
print(registry.register(challenger, MLflowConfig())[0].decision)
"""


@pytest.mark.integration  # two promoting processes
def test_two_evaluates_promoting_at_once_leave_the_better_model(store, tmp_path) -> None:
    """Both beat the champion; whichever order the lock lets them in, the second is compared
    with the first's result, so the stronger ends champion and the lock is left empty."""
    register(predictions(60), signature="s")
    processes = []
    for right in (200, 120):
        candidate = challenger(predictions(right), signature="s")
        path = tmp_path / f"{right}.npz"
        np.savez(path, labels=candidate.labels, probabilities=candidate.probabilities)
        argv = [mlflow.get_tracking_uri(), candidate.run_id, candidate.model_uri, str(path)]
        command = [sys.executable, "-c", PROMOTER, *argv]
        processes.append(subprocess.Popen(command, env=stage_env(), stdout=subprocess.PIPE))
    decisions = [process.communicate(timeout=300)[0].decode().split() for process in processes]
    assert all(process.returncode == 0 for process in processes)
    strong = store.search_model_versions(f"name = '{CFG.registered_model}'")
    (best,) = [v for v in strong if v.tags["test_accuracy"] == "1.0"]
    assert champion(store) == str(best.version)
    assert sorted(d[-1] for d in decisions) in (["kept", "promoted"], ["promoted", "promoted"])
    lock = f"{CFG.registered_model}-promotion-lock"
    assert store.search_model_versions(f"name = '{lock}'") == []


def test_unreachable_registry_fails_the_run_and_leaves_the_alias(store, monkeypatch) -> None:
    register(predictions(100))
    candidate = challenger(predictions(200))
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", f"http://127.0.0.1:{free_port()}")
    mlflow.set_registry_uri(f"http://127.0.0.1:{free_port()}")
    try:
        started = time.monotonic()
        with pytest.raises(registry.RegistryError, match="model registry"), runs.tracked_run():
            registry.register(candidate, CFG)
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


def trained(splits, epochs: int) -> Challenger:
    """A small MLP trained for `epochs` and logged like `train` does, scored like `evaluate`
    does."""
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
    with runs.tracked_run() as run:
        uri = logged_model.log_keras_model(model, splits["test"].x[:5])
    test = splits["test"]
    digest = promotion.test_digest(test.x, test.labels)
    return Challenger(run.info.run_id, uri, test.labels, probabilities, digest, SIGNATURE)


@pytest.fixture(scope="module")
def splits(processed: Path):
    from digits.lib.data import load_splits

    return load_splits(processed, ("train", "test"))


@pytest.mark.integration  # a model server process: `make test-integration`
def test_mlflow_models_serve_answers_for_the_champion(store, splits) -> None:
    registry.register(trained(splits, epochs=5), CFG)
    test = splits["test"]
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
