"""The promotion lock: a lease in the model registry that one process at a time holds.

Each contender registers a version of `<name>-promotion-lock` (the registry numbers a model's
versions atomically and never reuses a number); the lowest live version holds the lock, the
others wait their turn. Every contender renews its own version's lease (`lease.expires`, Unix
time) from a background thread. A version whose lease ran out (its process was killed, its host
died or lost the network) is deleted by whoever waits behind it: a delete by version number
removes exactly the incarnation that was seen to expire (compare-and-delete). On this host a
contender whose process is gone is overtaken at once; on another host only its lease counts
(hosts' clocks are assumed to agree to well within a lease). Only the holder deletes its own
version, after checking its token, when it is done.
"""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

import mlflow

from digits import PipelineError
from digits.lib.process import process_gone, process_id
from digits.lib.tracking.reaping import PROCESS_TAG

LEASE_SECONDS = 60.0  # how long a contender that stopped renewing keeps its place
TOKEN_TAG = "lease.token"
EXPIRES_TAG = "lease.expires"
# the API wants a source; nothing is stored there (a tracking server refuses local paths and
# artifact URIs outside a run)
SOURCE = "lease:/promotion-lock"


class LeaseError(PipelineError):
    """The promotion lock could not be had, or was lost while held."""


def lock_name(base: str) -> str:
    """The registered model whose versions are the lock of `base`'s promotions."""
    return f"{base}-promotion-lock"


@dataclass
class Lease:
    """A contender's place in the lock: its version, its token and its renewal thread."""

    client: mlflow.MlflowClient
    name: str
    version: str
    token: str
    seconds: float
    lost: threading.Event = field(default_factory=threading.Event)
    stop: threading.Event = field(default_factory=threading.Event)

    def check(self) -> None:
        """Raise unless the lease is still this process's: its version is there and not
        expired (asked of the registry now: call it right before acting under the lock)."""
        from mlflow.exceptions import MlflowException

        if not self.lost.is_set():
            try:
                mine = self.client.get_model_version(self.name, self.version)
            except MlflowException as err:
                if not _missing(err):
                    raise
                self.lost.set()
            else:
                if float(mine.tags.get(EXPIRES_TAG, "0")) < time.time():
                    self.lost.set()
        if self.lost.is_set():
            raise LeaseError(
                f"lost {self.name} version {self.version}: it was not renewed within "
                f"{self.seconds:.0f} s and another promoter overtook it; run again"
            )

    def renew_forever(self) -> None:
        """Push the expiry forward every third of a lease until stopped; a version deleted
        by another (it saw the lease expire) or a lease that ran out unrenewed is lost."""
        from mlflow.exceptions import MlflowException

        renewed = time.monotonic()
        while not self.stop.wait(self.seconds / 3):
            try:
                self.client.set_model_version_tag(
                    self.name, self.version, EXPIRES_TAG, f"{time.time() + self.seconds:.3f}"
                )
                renewed = time.monotonic()
            except MlflowException as err:
                if _missing(err) or time.monotonic() - renewed > self.seconds:
                    self.lost.set()
                    return


def _missing(err: Exception) -> bool:
    return getattr(err, "error_code", "") == "RESOURCE_DOES_NOT_EXIST"


def expired(version: mlflow.entities.model_registry.ModelVersion, now: float) -> bool:
    """Whether a contender's lease ran out, or (on this host only) its process is gone."""
    if float(version.tags.get(EXPIRES_TAG, "0")) < now:
        return True
    return process_gone(version.tags.get(PROCESS_TAG, ""))


def enter(client: mlflow.MlflowClient, name: str, seconds: float, holder: str) -> Lease:
    """Join the queue for lock `name` as `holder`, with a lease of `seconds` (not renewed
    here: `promotion_lock` starts the renewal)."""
    from mlflow.exceptions import MlflowException

    with contextlib.suppress(MlflowException):  # exists already: the usual case
        client.create_registered_model(
            name, description="promotion lock: each version is a promoter holding or waiting"
        )
    token = uuid.uuid4().hex
    tags = {TOKEN_TAG: token, EXPIRES_TAG: f"{time.time() + seconds:.3f}"}
    version = client.create_model_version(
        name,
        SOURCE,
        tags={**tags, PROCESS_TAG: holder},
        description="promotion lock",
        await_creation_for=0,  # nothing to copy: ready at once
    )
    return Lease(client, name, str(version.version), token, seconds)


def _wait_turn(lease: Lease, timeout: float) -> None:
    """Return once no live version is ahead of ours, deleting those whose lease ran out."""
    from mlflow.exceptions import MlflowException

    deadline = time.monotonic() + timeout
    while True:
        lease.check()
        found = lease.client.search_model_versions(f"name = '{lease.name}'")
        ahead = sorted(
            (v for v in found if int(v.version) < int(lease.version)), key=lambda v: int(v.version)
        )
        if not ahead:
            lease.check()  # and ours still there: deleted by one who saw it expire, it is not
            return
        now = time.time()
        for version in ahead:
            if expired(version, now):
                with contextlib.suppress(MlflowException):  # another waiter deleted it first
                    lease.client.delete_model_version(lease.name, version.version)
        if not any(expired(v, now) for v in ahead) and time.monotonic() > deadline:
            first = ahead[0]
            raise LeaseError(
                f"{lease.name} is held by {first.tags.get(PROCESS_TAG, '?')} (version "
                f"{first.version}) for over {timeout:.0f} s; a holder that stopped is overtaken "
                f"when its lease ({lease.seconds:.0f} s) runs out: run again then"
            )
        time.sleep(0.2)


def _release(lease: Lease) -> None:
    """Delete our own version, and only if it still carries our token."""
    from mlflow.exceptions import MlflowException

    try:
        version = lease.client.get_model_version(lease.name, lease.version)
        if version.tags.get(TOKEN_TAG) == lease.token:
            lease.client.delete_model_version(lease.name, lease.version)
    except MlflowException as err:
        if not _missing(err):  # overtaken and deleted: nothing of ours is left
            raise


@contextlib.contextmanager
def promotion_lock(
    client: mlflow.MlflowClient,
    base: str,
    timeout: float = 300.0,
    seconds: float = LEASE_SECONDS,
    holder: str | None = None,
) -> Iterator[Lease]:
    """Hold the promotion lock of registered model `base` for the `with` block: wait up to
    `timeout` s for the contenders ahead, renew the lease every `seconds` / 3 meanwhile.
    `holder` names the process in the lock (default: this one's `process_id`)."""
    lease = enter(client, lock_name(base), seconds, holder or process_id())
    renewer = threading.Thread(target=lease.renew_forever, name="lease-renewal", daemon=True)
    renewer.start()
    try:
        _wait_turn(lease, timeout)
        yield lease
    finally:
        lease.stop.set()
        renewer.join(timeout=seconds)
        _release(lease)
