"""The model registry: every evaluated model becomes a version; a version competes for the
champion alias only with versions evaluated on the same test images, with the same input
signature and the same test-time shifts (`evaluate.shifts`), and takes it only when McNemar's
exact test on paired predictions says it is better, at a level shared by every challenger of
the same champion.

Comparable versions share a registered model: the configured one (`mnist-digits`) for the data
it first saw, else one named from the test data (`mnist-digits-<digest>`, then with the input's
and the shifts' marks). The registered model carries the test data's digest, the input
signature and the shifts as tags, so a version scored otherwise is never compared with its
versions, and the log and its tags say why. (`mlflow models serve` answers in one view, so a
champion of the configured model scored with shifts would not be what it serves.)

Promotion holds a lease (`lease.promotion_lock`) from reading the champion to setting the alias,
so two `evaluate` stages racing compare one after the other and the better model ends champion
whatever the order. A run that is a version already registers nothing new.
"""

from __future__ import annotations

import hashlib
import math
import tempfile
from collections.abc import Mapping
from pathlib import Path

import mlflow
import numpy as np

from digits import PipelineError
from digits.lib.config import MLflowConfig
from digits.lib.secrets import redact_text
from digits.lib.tracking.access import current_user, is_permission_denied
from digits.lib.tracking.lease import LEASE_SECONDS, Lease, promotion_lock
from digits.lib.tracking.promotion import (
    Challenger,
    Champion,
    Decision,
    Registration,
    Test,
    Verdict,
    decide,
)
from digits.lib.tracking.store import TrackingError, check_reachable

PREDICTIONS = "predictions/test.npz"  # each run's test predictions, for the next comparison
TEST_DIGEST_TAG = "test.sha256"
SIGNATURE_TAG = "signature.inputs"
SHIFTS_TAG = "evaluate.shifts"  # on the run, the version and the registered model
COMPARED_WITH_TAG = "registry.compared_with"
P_VALUE_TAG = "registry.p_value"
MAY_PROMOTE_TAG = "registry.may_promote"


class RegistryError(PipelineError):
    """The model registry cannot be reached or used while promoting."""


def save_predictions(client: mlflow.MlflowClient, challenger: Challenger) -> None:
    """Store the challenger's test predictions in its run as the artifact `PREDICTIONS`, so a
    later challenger can be paired with this model image by image."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / Path(PREDICTIONS).name
        np.savez_compressed(
            path,
            labels=np.asarray(challenger.labels, dtype=np.uint8),
            predicted=challenger.predicted.astype(np.uint8),
            confidence=challenger.probabilities.max(axis=1).astype(np.float32),
            shifts=np.asarray(challenger.shifts),
        )
        client.log_artifact(challenger.run_id, str(path), str(Path(PREDICTIONS).parent))


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


def home(client: mlflow.MlflowClient, base: str, key: Mapping[str, str]) -> tuple[str, str | None]:
    """The registered model whose versions are comparable with a model scored as `key` says
    (test digest, input signature, shifts), created if need be: `base` when it holds such
    versions (or is new), else one named from them. Returns its name and, if not `base`, why."""
    from mlflow.exceptions import MlflowException

    digest, signature, shifts = key[TEST_DIGEST_TAG], key[SIGNATURE_TAG], key[SHIFTS_TAG]
    stem = f"{base}-{digest[:8]}"
    names = [base, stem, f"{stem}-{_short(signature)}", f"{stem}-{_short(signature)}-s{shifts}"]
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
                    tags=dict(key),
                    description=(
                        f"Models tested on the same test data (sha256 {digest[:12]}...) with "
                        f"input {signature} and {shifts} test-time shifts: their versions "
                        "compete for the champion alias."
                    ),
                )
            except MlflowException as err:
                if not _exists(err):
                    raise
                tags = client.get_registered_model(name).tags
            else:
                return name, reason
        if TEST_DIGEST_TAG not in tags and not client.search_model_versions(f"name = '{name}'"):
            for tag, value in key.items():  # made empty (by a server's admin): adopt it
                client.set_registered_model_tag(name, tag, value)
            return name, reason
        theirs = {SHIFTS_TAG: "0", **tags}  # registered before shifts counted: one view
        if all(theirs.get(k) == v for k, v in key.items()):
            return name, reason
        reason = reason or _why_apart(name, theirs, key)
    raise RegistryError(f"no registered model for test data {digest[:8]} and input {signature}")


def _why_apart(name: str, theirs: Mapping[str, str], key: Mapping[str, str]) -> str:
    digest, signature, shifts = key[TEST_DIGEST_TAG], key[SIGNATURE_TAG], key[SHIFTS_TAG]
    if TEST_DIGEST_TAG not in theirs:
        return f"{name} records no test data (registered before comparisons)"
    if theirs[TEST_DIGEST_TAG] != digest:
        return (
            f"test data {digest[:8]} differs from {name}'s ({theirs[TEST_DIGEST_TAG][:8]}): "
            "accuracies on other images do not compare"
        )
    if theirs.get(SIGNATURE_TAG) != signature:
        return f"input {signature} differs from {name}'s {theirs.get(SIGNATURE_TAG)}"
    return (
        f"evaluate.shifts {shifts} differs from {name}'s {theirs[SHIFTS_TAG]}: predictions "
        "over other views do not pair"
    )


def _short(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def _champion(client: mlflow.MlflowClient, name: str, alias: str) -> Champion | None:
    """The alias holder of `name`, its stored predictions, and how many challengers that
    could have taken the alias were tested against it (`RULE`'s k - 1)."""
    holder = client.get_registered_model(name).aliases.get(alias)
    if holder is None:
        return None
    current = client.get_model_version(name, str(holder))
    tested = [
        v
        for v in client.search_model_versions(f"name = '{name}'")
        if v.tags.get(COMPARED_WITH_TAG) == str(holder)
        and P_VALUE_TAG in v.tags
        and v.tags.get(MAY_PROMOTE_TAG) != "False"
    ]
    predictions = load_predictions(current.run_id) if current.run_id else None
    return Champion(str(holder), predictions, len(tested))


def _already(
    client: mlflow.MlflowClient, challenger: Challenger, alias: str, lease: Lease
) -> Registration | None:
    """The registration of a run that is a version already (evaluated again), else None. Such
    a version is not registered or compared again; it takes the alias only where no version
    holds it (an alias renamed in params.yaml: the first version evaluated under it)."""
    found = client.search_model_versions(f"run_id = '{challenger.run_id}'")
    if not found:
        return None
    version = min(found, key=lambda v: int(v.version))
    name, number = version.name, str(version.version)
    holder = client.get_registered_model(name).aliases.get(alias)
    was = version.tags.get("registry.decision", "unknown")
    reason = (
        f"run {challenger.run_id} is version {number} of {name} already (decided: {was}): "
        "nothing new registered, its stored predictions kept"
    )
    if holder is None and challenger.may_promote:
        lease.check()
        client.set_registered_model_alias(name, alias, number)
        reason = f"no version of {name} held {alias}; {reason}"
        return Registration(name, number, alias, True, Decision.FIRST, reason)
    crowned = str(holder) == number
    return Registration(name, number, alias, crowned, Decision.ALREADY_REGISTERED, reason)


def check_may_register(client: mlflow.MlflowClient, uri: str, name: str) -> None:
    """On a tracking server, raise its 403 unless this user may edit registered model `name`:
    MLflow's auth app lets any user create a registered model (and manage it), so only an edit
    of the team's own (a no-op: its description set to itself) shows the grant."""
    from mlflow.exceptions import MlflowException

    if not uri.lower().startswith(("http://", "https://")):
        return
    try:
        description = client.get_registered_model(name).description
    except MlflowException as err:
        if not _missing(err):
            raise
        return
    client.update_registered_model(name, description or "")


def register(
    challenger: Challenger,
    cfg: MLflowConfig,
    lock_timeout: float = 300.0,
    lease_seconds: float = LEASE_SECONDS,
) -> tuple[Registration, np.ndarray | None]:
    """Store the challenger's test predictions in its run, register its model as a version
    of the registered model that holds comparable versions, and move the alias to it when
    `decide` says so, all under the promotion lock. A run that is a version already keeps its
    predictions and registers nothing. Returns the registration and the predicted labels of
    the champion it was compared with (None when there was none)."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    uri = mlflow.get_registry_uri()
    try:
        check_reachable(uri)
    except TrackingError as err:
        raise RegistryError(f"model registry: {err}") from None
    client = MlflowClient()
    try:
        check_may_register(client, uri, cfg.registered_model)
        with promotion_lock(client, cfg.registered_model, lock_timeout, lease_seconds) as lease:
            if (again := _already(client, challenger, cfg.champion_alias, lease)) is not None:
                return again, None
            save_predictions(client, challenger)
            key = {
                TEST_DIGEST_TAG: challenger.digest,
                SIGNATURE_TAG: challenger.signature,
                SHIFTS_TAG: str(challenger.shifts),
            }
            name, apart = home(client, cfg.registered_model, key)
            champion = _champion(client, name, cfg.champion_alias)
            verdict = decide(challenger, champion, cfg.significance)
            tags = {**challenger.tags, **key, "test_accuracy": str(_accuracy(challenger))}
            version = str(mlflow.register_model(challenger.model_uri, name, tags=tags).version)
            if verdict.decision.crowns:
                lease.check()
                client.set_registered_model_alias(name, cfg.champion_alias, version)
            registration = _registration(name, version, cfg, verdict, champion, apart)
            _tag_version(client, registration, challenger.may_promote)
    except MlflowException as err:
        if is_permission_denied(err):  # a logger: the metrics are logged, the registry is not
            return not_registered(cfg, uri), None
        raise RegistryError(f"model registry {uri}: {err.message}") from None
    before = champion.predictions if champion is not None and verdict.test else None
    return registration, None if before is None else before["predicted"]


def not_registered(cfg: MLflowConfig, uri: str) -> Registration:
    """The registration of a run whose user the server let log runs but not register models."""
    user = current_user() or "(unknown user)"
    reason = (
        f"{user} may log runs but not register models on {redact_text(uri)}; ask an admin for "
        f"`python -m digits.tools.server user role {user} --role registrar`"
    )
    return Registration(
        cfg.registered_model, None, cfg.champion_alias, False, Decision.NOT_REGISTERED, reason
    )


def _accuracy(challenger: Challenger) -> float:
    return float((challenger.predicted == challenger.labels).mean())


def _registration(
    name: str,
    version: str,
    cfg: MLflowConfig,
    verdict: Verdict,
    champion: Champion | None,
    apart: str | None,
) -> Registration:
    reason = verdict.reason
    if apart is not None:
        reason = f"not compared with {cfg.registered_model}: {apart}; {reason}"
    before = None if champion is None else champion.predictions
    previous_accuracy = (
        float((before["predicted"] == before["labels"]).mean()) if verdict.test else None
    )
    return Registration(
        name=name,
        version=version,
        alias=cfg.champion_alias,
        champion=verdict.decision.crowns,
        decision=verdict.decision,
        reason=reason,
        previous=None if champion is None else champion.version,
        previous_accuracy=previous_accuracy,
        test=verdict.test,
        not_compared_with=cfg.registered_model if apart is not None else None,
    )


def _tag_version(client: mlflow.MlflowClient, reg: Registration, may_promote: bool) -> None:
    tags = {"registry.decision": str(reg.decision), "registry.reason": reg.reason}
    tags[MAY_PROMOTE_TAG] = str(may_promote)
    if reg.previous is not None:
        tags[COMPARED_WITH_TAG] = reg.previous
    if reg.test is not None:
        tags.update(_test_tags(reg.test))
    if reg.not_compared_with is not None:
        tags["registry.not_compared_with"] = reg.not_compared_with
    for key, value in tags.items():
        client.set_model_version_tag(reg.name, reg.version, key, value)


def _test_tags(test: Test) -> dict[str, str]:
    return {
        "registry.b": str(test.b),
        "registry.c": str(test.c),
        P_VALUE_TAG: f"{test.p_value:.6g}",
        "registry.challengers": str(test.challengers),
        "registry.level": f"{test.level:.6g}",
    }


def run_tags(reg: Registration) -> dict[str, str]:
    """What the evaluated run records about its registration."""
    tags = {
        "registry.model": reg.name,
        "registry.version": reg.version or "",
        "registry.champion": str(reg.champion),
        "registry.decision": str(reg.decision),
        "registry.reason": reg.reason,
    }
    if reg.test is not None:
        tags.update(_test_tags(reg.test))
    return tags


def registration_line(reg: Registration, accuracy: float) -> str:
    """What happened in the registry, in one sentence."""
    if reg.decision is Decision.NOT_REGISTERED:
        return f"not registered: {reg.reason}"
    head = f"registered {reg.name} version {reg.version} (test accuracy {accuracy:.4f})"
    uri = f"models:/{reg.name}@{reg.alias}"
    if reg.decision is Decision.ALREADY_REGISTERED:
        holds = f"; it holds {uri}" if reg.champion else ""
        return f"{reg.reason}{holds}"
    if reg.decision is Decision.FIRST:
        return f"{head}: the first {reg.alias} ({uri}); {reg.reason}"
    before = f"version {reg.previous}"
    if reg.previous_accuracy is not None and math.isfinite(reg.previous_accuracy):
        before += f" at {reg.previous_accuracy:.4f}"
    if reg.decision is Decision.PROMOTED:
        return f"{head}: the new {reg.alias} ({uri}), replacing {before}; {reg.reason}"
    if reg.previous is None:  # held back, with no champion yet
        return f"{head}: {uri} stays unset; {reg.reason}"
    return f"{head}: the {reg.alias} stays {before}; {reg.reason}"
