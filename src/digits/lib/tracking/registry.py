"""The model registry: every evaluated model becomes a version; a version competes for the
champion alias only with versions evaluated on the same test images with the same input
signature, and takes it only when McNemar's exact test on paired predictions says it is better.

Comparable versions share a registered model: the configured one (`mnist-digits`) for the data
it first saw, else one named from the test data (`mnist-digits-<digest>`). The registered model
carries the test data's digest and the input signature as tags, so a version on other data or
with another input shape is never compared with its versions, and the log and its tags say why.

Promotion holds a lock (a registered model `<name>-promotion-lock`, which only one client can
create) from reading the champion to setting the alias, so two `evaluate` stages racing compare
one after the other and the better model ends champion whatever the order.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np

from digits import PipelineError
from digits.lib.config import MLflowConfig
from digits.lib.process import process_gone, process_id
from digits.lib.tracking.reaping import PROCESS_TAG
from digits.lib.tracking.store import TrackingError, check_reachable

PREDICTIONS = "predictions/test.npz"  # each run's test predictions, for the next comparison
TEST_DIGEST_TAG = "test.sha256"
SIGNATURE_TAG = "signature.inputs"


class RegistryError(PipelineError):
    """The model registry cannot be reached or used while promoting."""


@dataclass(frozen=True)
class Test:
    """One paired test: `b` test images the champion got right and the challenger wrong
    (broke), `c` the other way round (fixed), McNemar's exact two-sided p-value."""

    b: int
    c: int
    p_value: float


@dataclass(frozen=True)
class Registration:
    """A version registered by `evaluate`, and what the registry decided about it."""

    name: str  # the registered model it joined
    version: str
    alias: str
    champion: bool  # whether it holds the alias now
    decision: str  # first | promoted | kept | not_compared
    reason: str  # one sentence: why
    previous: str | None = None  # the champion version it was compared with
    previous_accuracy: float | None = None
    test: Test | None = None
    not_compared_with: str | None = None  # the configured registered model, when not its own


def test_digest(x: np.ndarray, labels: np.ndarray) -> str:
    """sha256 of the test images and labels themselves (not of the .npz, whose zip headers
    carry the time it was written), so the same test data always has the same digest."""
    digest = hashlib.sha256()
    for array in (np.ascontiguousarray(x, dtype=np.float32), np.asarray(labels, dtype=np.int64)):
        digest.update(str(array.shape).encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def mcnemar(labels: np.ndarray, champion: np.ndarray, challenger: np.ndarray) -> Test:
    """McNemar's exact test on paired predictions of the same test images: only the images
    exactly one model gets right count; under "equally good" each is the challenger's with
    probability 1/2, so the p-value is a two-sided binomial test of c successes in b + c."""
    from scipy.stats import binomtest

    if not (len(labels) == len(champion) == len(challenger)):
        raise ValueError("paired predictions must cover the same test images")
    right_before, right_now = champion == labels, challenger == labels
    b = int((right_before & ~right_now).sum())
    c = int((~right_before & right_now).sum())
    p_value = 1.0 if b + c == 0 else float(binomtest(c, b + c, 0.5).pvalue)
    return Test(b, c, p_value)


def promotes(test: Test, significance: float) -> bool:
    """The challenger takes the alias when it fixed more images than it broke and McNemar's
    test rejects "equally good" at `significance`."""
    return test.c > test.b and test.p_value < significance


def log_predictions(labels: np.ndarray, probabilities: np.ndarray) -> None:
    """Store the active run's test predictions as the artifact `PREDICTIONS`, so a later
    challenger can be paired with this model image by image."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / Path(PREDICTIONS).name
        np.savez_compressed(
            path,
            labels=np.asarray(labels, dtype=np.uint8),
            predicted=probabilities.argmax(axis=1).astype(np.uint8),
            confidence=probabilities.max(axis=1).astype(np.float32),
        )
        mlflow.log_artifact(str(path), artifact_path=str(Path(PREDICTIONS).parent))


def load_predictions(run_id: str) -> dict[str, np.ndarray] | None:
    """A run's stored test predictions, or None when it has none."""
    from mlflow.exceptions import MlflowException

    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = mlflow.artifacts.download_artifacts(
                run_id=run_id, artifact_path=PREDICTIONS, dst_path=tmp
            )
        except (MlflowException, OSError):
            return None
        with np.load(path) as npz:
            return {k: npz[k] for k in npz.files}


def _missing(err: Exception) -> bool:
    return getattr(err, "error_code", "") == "RESOURCE_DOES_NOT_EXIST"


def _exists(err: Exception) -> bool:
    return getattr(err, "error_code", "") == "RESOURCE_ALREADY_EXISTS"


@contextlib.contextmanager
def promotion_lock(client: mlflow.MlflowClient, name: str, timeout: float) -> Iterator[None]:
    """Hold `<name>-promotion-lock` (a registered model: creating one that exists fails on
    every backend, so exactly one client gets it). A lock left by a dead process on this host
    is broken; one held longer than `timeout` by a live or remote one is an error."""
    from mlflow.exceptions import MlflowException

    lock = f"{name}-promotion-lock"
    deadline = time.monotonic() + timeout
    while True:
        try:
            client.create_registered_model(
                lock,
                tags={PROCESS_TAG: process_id()},
                description=f"held while `evaluate` promotes a version of {name}",
            )
            break
        except MlflowException as err:
            if not _exists(err):
                raise
        try:
            holder = client.get_registered_model(lock).tags.get(PROCESS_TAG, "")
        except MlflowException as err:  # released in between: try again
            if _missing(err):
                continue
            raise
        if process_gone(holder):
            with contextlib.suppress(MlflowException):
                client.delete_registered_model(lock)
            continue
        if time.monotonic() > deadline:
            raise RegistryError(
                f"registered model {lock} is held by {holder} for over {timeout:.0f} s; if "
                "no evaluate is running there, delete it and run again"
            )
        time.sleep(0.2)
    try:
        yield
    finally:
        client.delete_registered_model(lock)


def home(
    client: mlflow.MlflowClient, base: str, digest: str, signature: str
) -> tuple[str, str | None]:
    """The registered model whose versions are comparable with a model tested on `digest`
    with input `signature`, created if need be: `base` when it holds that data (or is new),
    else one named from the data. Returns its name and, when it is not `base`, why."""
    from mlflow.exceptions import MlflowException

    names = [base, f"{base}-{digest[:8]}", f"{base}-{digest[:8]}-{_short(signature)}"]
    reason = None
    for name in names:
        try:
            tags = client.get_registered_model(name).tags
        except MlflowException as err:
            if not _missing(err):
                raise
            try:
                client.create_registered_model(
                    name,
                    tags={TEST_DIGEST_TAG: digest, SIGNATURE_TAG: signature},
                    description=(
                        f"Models tested on the same test data (sha256 {digest[:12]}...) with "
                        f"input {signature}: their versions compete for the champion alias."
                    ),
                )
            except MlflowException as err:
                if not _exists(err):
                    raise
                tags = client.get_registered_model(name).tags
            else:
                return name, reason
        theirs_digest, theirs_signature = tags.get(TEST_DIGEST_TAG), tags.get(SIGNATURE_TAG)
        if (theirs_digest, theirs_signature) == (digest, signature):
            return name, reason
        if reason is None:
            if theirs_digest is None:
                reason = f"{name} records no test data (registered before comparisons)"
            elif theirs_digest != digest:
                reason = (
                    f"test data {digest[:8]} differs from {name}'s ({theirs_digest[:8]}): "
                    "accuracies on other images do not compare"
                )
            else:
                reason = f"input {signature} differs from {name}'s {theirs_signature}"
    raise RegistryError(f"no registered model for test data {digest[:8]} and input {signature}")


def _short(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def register(
    model_uri: str,
    labels: np.ndarray,
    predicted: np.ndarray,
    digest: str,
    signature: str,
    cfg: MLflowConfig,
    after_read: Callable[[], None] | None = None,
    lock_timeout: float = 300.0,
    tags: Mapping[str, str] | None = None,
) -> tuple[Registration, dict[str, np.ndarray] | None]:
    """Register a logged model as a version of the registered model that holds its test data
    and input signature, and move the alias to it when it is that data's first version or
    beats the champion by McNemar's exact test at `cfg.significance`. The run's test
    predictions must already be stored (`log_predictions`). Returns the registration and the
    predictions of the champion it was compared with (None when there was none).

    `tags` go on the new version beside the registry's own; `after_read` runs between reading
    the champion and setting the alias: a test's hook."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    uri = mlflow.get_registry_uri()
    try:
        check_reachable(uri)
    except TrackingError as err:
        raise RegistryError(f"model registry: {err}") from None
    client = MlflowClient()
    accuracy = float((predicted == labels).mean())
    try:
        with promotion_lock(client, cfg.registered_model, lock_timeout):
            return _register_locked(
                client, model_uri, labels, predicted, accuracy, digest, signature, cfg,
                after_read, tags or {},
            )  # fmt: skip
    except MlflowException as err:
        raise RegistryError(f"model registry {uri}: {err.message}") from None


def _register_locked(
    client: mlflow.MlflowClient,
    model_uri: str,
    labels: np.ndarray,
    predicted: np.ndarray,
    accuracy: float,
    digest: str,
    signature: str,
    cfg: MLflowConfig,
    after_read: Callable[[], None] | None,
    extra_tags: Mapping[str, str],
) -> tuple[Registration, dict[str, np.ndarray] | None]:
    name, not_compared = home(client, cfg.registered_model, digest, signature)
    holder = client.get_registered_model(name).aliases.get(cfg.champion_alias)
    current = None if holder is None else client.get_model_version(name, str(holder))
    before = load_predictions(current.run_id) if current is not None and current.run_id else None
    if after_read is not None:
        after_read()
    tags = {**extra_tags, TEST_DIGEST_TAG: digest, SIGNATURE_TAG: signature}
    tags["test_accuracy"] = str(accuracy)
    version = str(mlflow.register_model(model_uri, name, tags=tags).version)
    alias = cfg.champion_alias
    test = None
    previous_accuracy = None
    if current is None:
        decision, reason = "first", f"the first version tested on data {digest[:8]}"
    elif before is None or not np.array_equal(before["labels"], labels):
        decision = "kept"
        reason = (
            f"champion version {current.version} has no stored predictions on these test "
            "images to pair with"
        )
    else:
        previous_accuracy = float((before["predicted"] == before["labels"]).mean())
        test = mcnemar(labels, before["predicted"], predicted)
        won = promotes(test, cfg.significance)
        decision = "promoted" if won else "kept"
        verdict = "significant" if won else "not significant"
        reason = (
            f"fixed {test.c} and broke {test.b} of the champion's test digits; McNemar "
            f"p = {test.p_value:.3g} ({verdict} at {cfg.significance})"
        )
    if decision in ("first", "promoted"):
        client.set_registered_model_alias(name, alias, version)
    if not_compared is not None:
        reason = f"not compared with {cfg.registered_model}: {not_compared}; {reason}"
    version_tags = {"registry.decision": decision, "registry.reason": reason}
    if current is not None:
        version_tags["registry.compared_with"] = str(current.version)
    if test is not None:
        version_tags.update(_test_tags(test))
    if not_compared is not None:
        version_tags["registry.not_compared_with"] = cfg.registered_model
    for key, value in version_tags.items():
        client.set_model_version_tag(name, version, key, value)
    registration = Registration(
        name=name,
        version=version,
        alias=alias,
        champion=decision in ("first", "promoted"),
        decision=decision,
        reason=reason,
        previous=None if current is None else str(current.version),
        previous_accuracy=previous_accuracy,
        test=test,
        not_compared_with=cfg.registered_model if not_compared is not None else None,
    )
    return registration, before


def _test_tags(test: Test) -> dict[str, str]:
    return {
        "registry.b": str(test.b),
        "registry.c": str(test.c),
        "registry.p_value": f"{test.p_value:.6g}",
    }


def run_tags(reg: Registration) -> dict[str, str]:
    """What the evaluated run records about its registration."""
    tags = {
        "registry.model": reg.name,
        "registry.version": reg.version,
        "registry.champion": str(reg.champion),
        "registry.decision": reg.decision,
        "registry.reason": reg.reason,
    }
    if reg.test is not None:
        tags.update(_test_tags(reg.test))
    return tags


def registration_line(reg: Registration, accuracy: float) -> str:
    """What happened in the registry, in one sentence."""
    head = f"registered {reg.name} version {reg.version} (test accuracy {accuracy:.4f})"
    uri = f"models:/{reg.name}@{reg.alias}"
    if reg.decision == "first":
        return f"{head}: the first {reg.alias} ({uri}); {reg.reason}"
    before = f"version {reg.previous}"
    if reg.previous_accuracy is not None and math.isfinite(reg.previous_accuracy):
        before += f" at {reg.previous_accuracy:.4f}"
    if reg.decision == "promoted":
        return f"{head}: the new {reg.alias} ({uri}), replacing {before}; {reg.reason}"
    return f"{head}: the {reg.alias} stays {before}; {reg.reason}"
