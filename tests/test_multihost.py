"""Sweep workers on two hosts: each host a Linux network namespace with its own hostname and a
veth link to a bridge on this machine, where PostgreSQL (Optuna's storage) and a real MLflow
tracking server listen on the bridge's address, never loopback. One host dies (every process
on it killed with -9), or loses its link, in the middle of a trial: the other host's worker
fails that trial by its heartbeat, retries it with the epochs it had reported, and finishes
the study; no MLflow run stays RUNNING, and trials.csv and the runs say which trial retried
which. Needs root and iproute2; skips otherwise (REQUIRE_NETNS=1, set by .ci/run, fails)."""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from digits.tools import hosts

from helpers import drop_database, postgres_database, stage_env, wait_until

# its own target: it restarts PostgreSQL, which the integration tests beside it are using
pytestmark = pytest.mark.hosts

HEARTBEAT = 3  # seconds: a trial is stale after 2 of them, a launcher's run after 3
EPOCHS = 40  # synthetic data trains an epoch in a fraction of a second: long enough to kill


def unavailable(reason: str) -> None:
    """Skip with `reason` printed, or fail under REQUIRE_NETNS=1."""
    if os.environ.get("REQUIRE_NETNS") == "1":
        pytest.fail(reason + "; REQUIRE_NETNS=1 makes it mandatory")
    print(reason)
    pytest.skip(reason)


@pytest.fixture(scope="module")
def network() -> Iterator[hosts.Network]:
    """Two hosts on a bridge; deleted afterwards, whatever happened."""
    for tool in ("ip", "unshare"):
        if not shutil.which(tool):
            unavailable(f"no `{tool}` (iproute2, util-linux)")
    try:
        with hosts.network(2) as net:
            yield net
    except hosts.Unavailable as err:
        unavailable(str(err))


@pytest.fixture(scope="module")
def tracking_server(
    network: hosts.Network, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """PostgreSQL listening on the bridge too (restored afterwards), and the project's MLflow
    server (PostgreSQL backend, artifacts proxied) bound to the bridge's address."""
    drop_database(postgres_database("digits_multihost_probe"))  # skips without PostgreSQL
    database = postgres_database("digits_multihost_mlflow")
    try:
        with hosts.postgres_listening(network):
            folder = tmp_path_factory.mktemp("server")
            with hosts.tracking_server(network, database, folder, stage_env()) as url:
                yield url
    except hosts.Unavailable as err:
        unavailable(str(err))
    finally:
        drop_database(database)


@dataclass
class Sweep:
    """One study run by a launcher on each host."""

    net: hosts.Network
    server: str
    storage: str  # over loopback, for the test's own reading
    study: str
    experiment: str
    folder: Path
    procs: dict[str, subprocess.Popen]

    def load(self) -> Any:
        import optuna

        return optuna.load_study(study_name=self.study, storage=self.storage)

    def trials(self) -> list[Any]:
        """The study's trials; none before a launcher has created it."""
        try:
            return self.load().trials
        except KeyError:
            return []

    def client(self) -> Any:
        from mlflow import MlflowClient

        return MlflowClient(tracking_uri=self.server)

    def log(self, host: hosts.Host) -> str:
        return (self.folder / host.name / "sweep.log").read_text()

    def wait(self, what: str, ready: Callable[[], Any], limit: float = 300) -> Any:
        """Poll `ready()` until it returns something true, for at most `limit` seconds."""
        logs = lambda: "\n".join(f"--- {h.name}\n{self.log(h)[-3000:]}" for h in self.net.hosts)  # noqa: E731
        try:
            return wait_until(ready, limit, what, interval=0.5)
        except pytest.fail.Exception as err:
            raise AssertionError(f"{err}\n{logs()}") from None


@pytest.fixture
def sweep(
    network: hosts.Network,
    tracking_server: str,
    processed: Path,
    small_params: dict[str, Any],
    tmp_path: Path,
) -> Iterator[Sweep]:
    """Both hosts' launchers (`sweep run`, one worker each) on a fresh PostgreSQL study, logging
    to the tracking server; every process on the hosts is killed afterwards."""
    database = postgres_database("digits_multihost_optuna")
    sweep_cfg = small_params["sweep"]
    sweep_cfg.update(heartbeat=HEARTBEAT, pruner="none", sampler="random", n_trials=2)
    sweep_cfg["fixed"].update({"train.epochs": EPOCHS, "train.patience": 0})
    name = f"hosts-{uuid.uuid4().hex[:8]}"
    sweep_cfg["study"] = name
    small_params["mlflow"]["experiment"] = name
    remote = database.replace("127.0.0.1", network.server)  # the hosts' way in: the bridge
    run = Sweep(network, tracking_server, database, name, name, tmp_path, {})
    try:
        for host in network.hosts:
            project = tmp_path / host.name
            project.mkdir()
            (project / "params.yaml").write_text(yaml.safe_dump(small_params, sort_keys=False))
            env = stage_env(MLFLOW_TRACKING_URI=tracking_server, OPTUNA_STORAGE=remote)
            command = hosts.on_host(host, [
                sys.executable, "-m", "digits.tools.sweep", "--params", "params.yaml",
                "run", "--workers", "1", "--data", str(processed), "--out", "reports/sweep",
            ])  # fmt: skip
            with (project / "sweep.log").open("w") as out:
                run.procs[host.name] = subprocess.Popen(
                    command, cwd=project, env=env, stdout=out, stderr=subprocess.STDOUT
                )
        yield run
    finally:
        for host in network.hosts:
            hosts.kill_host(host.name)
            subprocess.run(["ip", "link", "set", host.link, "up"], capture_output=True)
        for proc in run.procs.values():
            proc.wait(timeout=30)
        drop_database(database)


def trial_in_flight(run: Sweep, host: hosts.Host, epochs: int) -> Callable[[], Any]:
    """A check: the host's RUNNING trial once it has reported `epochs` epochs, else None."""

    def check() -> Any:
        for trial in run.trials():
            worker = trial.user_attrs.get("worker", "")
            if (
                trial.state.name == "RUNNING"
                and worker.startswith(f"{host.name}:")
                and len(trial.intermediate_values) >= epochs
            ):
                return trial
        return None

    return check


def retried(run: Sweep, victim: Any) -> Callable[[], Any]:
    """A check: the retry of `victim` once it is queued or running, else None."""

    def check() -> Any:
        trials = run.trials()
        if trials[victim.number].state.name != "FAIL":
            return None
        return next((t for t in trials if t.user_attrs.get("retry_of") == victim.number), None)

    return check


def check_retried_and_finished(run: Sweep, victim: Any, survivor: hosts.Host) -> None:
    """The study's end state after `victim`'s host was lost: failed by heartbeat, retried by
    `survivor` with the epochs it had reported, n_trials finished, no run left RUNNING."""
    from optuna.storages import RetryHeartbeatStaleTrialCallback

    study = run.load()
    states = [t.state.name for t in study.trials]
    assert states.count("COMPLETE") == 2 and "RUNNING" not in states, states
    assert study.trials[victim.number].state.name == "FAIL"
    (retry,) = [t for t in study.trials if t.user_attrs.get("retry_of") == victim.number]
    assert RetryHeartbeatStaleTrialCallback.retried_trial_number(retry) == victim.number
    assert retry.state.name == "COMPLETE"
    assert retry.user_attrs["worker"].startswith(f"{survivor.name}:"), "retried elsewhere"
    assert retry.params == victim.params
    # a report sent just before the host was lost may land after the retry was queued (Optuna
    # checks the trial's state, then writes): the retry keeps what it saw, a prefix
    kept = study.trials[victim.number].intermediate_values
    inherited = range(1, retry.user_attrs["inherited_epochs"] + 1)
    assert len(inherited) >= 2 and set(inherited) <= set(kept)
    assert [retry.intermediate_values[s] for s in inherited] == [kept[s] for s in inherited]
    assert len(retry.intermediate_values) == EPOCHS

    client = run.client()
    experiment = client.get_experiment_by_name(run.experiment)
    runs = client.search_runs([experiment.experiment_id])
    assert not [r.info.run_name for r in runs if r.info.status == "RUNNING"]
    dead = client.get_run(victim.user_attrs["mlflow_run_id"])
    assert dead.info.status == "FAILED"
    assert dead.data.tags["optuna.state"] == "FAIL"
    reason = dead.data.tags["failure_reason"]
    assert f"trial {victim.number}" in reason and ("died" in reason or "heartbeat" in reason)
    child = client.get_run(retry.user_attrs["mlflow_run_id"])
    assert child.info.status == "FINISHED"
    assert child.data.tags["optuna.retry_of"] == str(victim.number)
    assert child.data.tags["optuna.retry_of_run"] == dead.info.run_id
    assert child.data.tags["optuna.retry_inherited_epochs"] == str(len(kept))

    with (run.folder / survivor.name / "reports/sweep/trials.csv").open() as f:
        rows = {int(r["number"]): r for r in csv.DictReader(f)}
    assert rows[retry.number]["retry_of"] == str(victim.number)
    assert rows[victim.number]["state"] == "FAIL" and rows[victim.number]["retry_of"] == ""


def test_a_host_killed_mid_trial_is_retried_by_the_other(sweep: Sweep) -> None:
    lost, survivor = sweep.net.hosts
    victim = sweep.wait("a trial on host a", trial_in_flight(sweep, lost, 2))
    assert hosts.kill_host(lost.name), "the host's sweep (one worker: it trains in the launcher)"
    started = time.monotonic()
    retry = sweep.wait("the heartbeat to fail and retry it", retried(sweep, victim))
    # stale 2 heartbeats after the last one, which came at most one heartbeat before the kill
    assert time.monotonic() - started >= HEARTBEAT - 0.5, "failed by heartbeat, not before"
    assert retry.user_attrs.get("worker", survivor.name).startswith(survivor.name)
    code = sweep.procs[survivor.name].wait(timeout=600)
    assert code == 0, sweep.log(survivor)
    # the survivor's launcher ends the dead launcher's parent run if it finishes after that run's
    # grace (3 heartbeats past its last renewal); else the next sweep process to look does
    time.sleep(3 * HEARTBEAT + 1)
    import mlflow

    from digits.lib.tracking.reaping import close_dead_runs

    client = sweep.client()
    experiment = client.get_experiment_by_name(sweep.experiment)
    mlflow.set_tracking_uri(sweep.server)
    close_dead_runs(experiment.experiment_id)
    check_retried_and_finished(sweep, victim, survivor)
    parents = [
        r
        for r in client.search_runs([experiment.experiment_id])
        if r.data.tags.get("sweep") == "parent"
    ]
    lost_parent = [p for p in parents if p.data.tags["process"].startswith(f"{lost.name}:")]
    (lost_parent,) = lost_parent
    assert lost_parent.info.status == "FAILED", "closed once its launcher stopped renewing it"
    assert "stopped beating" in lost_parent.data.tags["failure_reason"]


def test_a_host_cut_off_mid_trial_is_retried_by_the_other(sweep: Sweep) -> None:
    cut, survivor = sweep.net.hosts
    victim = sweep.wait("a trial on host a", trial_in_flight(sweep, cut, 2))
    hosts.sh("ip", "link", "set", cut.link, "down")
    try:
        sweep.wait("the heartbeat to fail and retry it", retried(sweep, victim))
    finally:
        hosts.sh("ip", "link", "set", cut.link, "up")
    for host in (survivor, cut):  # the cut-off host learns its trial was taken and goes on
        code = sweep.procs[host.name].wait(timeout=600)
        assert code == 0, sweep.log(host)
    assert "was taken over" in sweep.log(cut)
    check_retried_and_finished(sweep, victim, survivor)
    dead = sweep.client().get_run(victim.user_attrs["mlflow_run_id"])
    assert dead.data.tags["failure_reason"].startswith("TakenOver: trial")
