"""The promotion lock is a lease, with processes: one holder at a time however long it holds
(it renews), a holder killed with -9 is overtaken, a holder on another host that stopped
renewing is overtaken once its lease runs out (and waited for before), and only the holder's
own version is released."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest

from digits.lib.process import process_gone
from digits.lib.tracking import lease

from helpers import fresh_store, stage_env, wait_until

BASE = "m"

HOLD = """
import sys, time
import mlflow
from digits.lib.tracking.lease import promotion_lock

uri, log, seconds, hold = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4])
client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
with promotion_lock(client, "m", timeout=120, seconds=seconds) as held:
    with open(log, "a") as f:
        f.write(f"enter {time.time()}\\n")
    time.sleep(hold)
    held.check()  # still ours: renewed all along
    with open(log, "a") as f:
        f.write(f"exit {time.time()}\\n")
"""


@pytest.fixture
def uri(tmp_path: Path, store_template: Path) -> str:
    return f"sqlite:///{fresh_store(tmp_path, store_template)}"


@pytest.fixture
def client(uri: str) -> mlflow.MlflowClient:
    return mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)


def holder(uri: str, log: Path, seconds: float, hold: float) -> subprocess.Popen:
    """A process that holds the lock for `hold` s, renewing a lease of `seconds`."""
    argv = [sys.executable, "-c", HOLD, uri, str(log), str(seconds), str(hold)]
    return subprocess.Popen(argv, env=stage_env(), stderr=subprocess.PIPE, text=True)


def live(client: mlflow.MlflowClient) -> list[str]:
    """The lock's versions: contenders holding or waiting."""
    found = client.search_model_versions(f"name = '{lease.lock_name(BASE)}'")
    return sorted(str(v.version) for v in found)


@pytest.mark.integration
def test_two_promoters_hold_the_lock_one_at_a_time(client, uri: str, tmp_path: Path) -> None:
    """Each holds for 2.5 leases of 1 s: without renewal the other would overtake it."""
    log = tmp_path / "log"
    both = [holder(uri, log, seconds=1.0, hold=2.5) for _ in range(2)]
    for process in both:
        assert process.wait(timeout=120) == 0, process.stderr.read()
    events = [line.split() for line in log.read_text().splitlines()]
    assert [kind for kind, _ in events] == ["enter", "exit", "enter", "exit"]
    assert float(events[2][1]) >= float(events[1][1])  # the second entered after the first left
    assert live(client) == []  # each released its own version


@pytest.mark.integration
def test_a_holder_killed_with_minus_9_is_overtaken(client, uri: str, tmp_path: Path) -> None:
    log = tmp_path / "log"
    killed = holder(uri, log, seconds=3.0, hold=600)
    wait_until(lambda: log.exists() and "enter" in log.read_text(), 60, "the holder's entry")
    os.kill(killed.pid, signal.SIGKILL)
    killed.wait(timeout=30)
    assert len(live(client)) == 1  # its version is left behind
    started = time.monotonic()
    with lease.promotion_lock(client, BASE, timeout=60, seconds=3.0) as held:
        assert live(client) == [held.version]  # the dead holder's version was deleted
    assert time.monotonic() - started < 3.0 + 10  # no later than its lease
    assert live(client) == []


@pytest.mark.integration
def test_a_holder_on_another_host_is_overtaken_after_its_lease(client) -> None:
    """A holder whose process cannot be checked from here (another host) and that stopped
    renewing: waited for until its lease runs out, then its version, and only it, deleted."""
    other_host = "elsewhere:4242:boot:1"
    stale = lease.enter(client, lease.lock_name(BASE), 6.0, other_host)  # never renewed
    refused = pytest.raises(lease.LeaseError, match="is held by elsewhere:4242:boot:1")
    with refused, lease.promotion_lock(client, BASE, timeout=1, seconds=6.0):
        pass
    assert live(client) == [stale.version]  # the waiter that gave up left nothing behind
    started = time.monotonic()
    with lease.promotion_lock(client, BASE, timeout=60, seconds=6.0) as held:
        waited = time.monotonic() - started
        assert stale.version not in live(client) and held.version in live(client)
    assert 2.0 < waited < 6.0 + 10
    assert not process_gone(other_host)  # the pid was never judged: another host's


def test_only_the_holder_releases_its_version(client) -> None:
    """A holder overtaken while it stalled (its version deleted) neither deletes another's
    version on leaving nor acts as if it still held the lock."""
    lost = pytest.raises(lease.LeaseError, match="lost m-promotion-lock")
    with lost, lease.promotion_lock(client, BASE, timeout=5, seconds=0.6) as held:
        client.delete_model_version(held.name, held.version)  # what an overtaker does
        successor = lease.enter(client, held.name, 60.0, "elsewhere:1:b:1")
        wait_until(held.lost.is_set, 10, "the holder noticing its lost lease")
        held.check()
    assert live(client) == [successor.version]
