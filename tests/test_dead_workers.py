"""Dead sweep workers, judged without starting any: process names that survive reboots, reused
pids and other hosts; and the retry of a trial whose worker died (fast: no subprocess, no
training; the storages are Optuna's own, on local files)."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path
from typing import Any

import pytest

from digits.lib.process import ProcessName, boot_id, process_gone, process_id, start_time
from digits.tools.sweep.orphans import fail_orphans

HOST = socket.gethostname()


def dead_pid() -> int:
    """A pid no process has now (the highest ones are free on any test machine)."""
    pid = int(Path("/proc/sys/kernel/pid_max").read_text()) - 1
    while os.path.exists(f"/proc/{pid}"):
        pid -= 1
    return pid


def test_a_process_is_named_by_host_pid_boot_and_start_time() -> None:
    name = ProcessName.parse(process_id())
    assert name == ProcessName(HOST, os.getpid(), boot_id(), start_time(os.getpid()))
    assert len(name.boot) == 8 and name.start.isdigit()
    assert not process_gone(process_id())
    assert ProcessName.parse("old-host:123") == ProcessName("old-host", 123)  # older names
    assert ProcessName.parse("no pid") is None and ProcessName.parse("h:x:y:z") is None


@pytest.mark.parametrize(
    ("name", "gone"),
    [
        (lambda: f"{HOST}:{os.getpid()}", False),  # an old name of a live process
        (lambda: f"{HOST}:{dead_pid()}", True),  # an old name of a dead one
        (lambda: f"{HOST}:{dead_pid()}:{boot_id()}:{start_time(1)}", True),
        # this very pid, but from before a reboot (another boot id)
        (lambda: f"{HOST}:{os.getpid()}:00000000:{start_time(os.getpid())}", True),
        # this pid, reused: the process that had it started at another time
        (lambda: f"{HOST}:{os.getpid()}:{boot_id()}:{int(start_time(os.getpid())) + 1}", True),
        (lambda: "not a process name", False),
    ],
)
def test_process_gone_sees_death_reboot_and_pid_reuse(name: Any, gone: bool) -> None:
    assert process_gone(name()) is gone


def test_another_hosts_worker_is_gone_only_for_a_single_host_storage() -> None:
    other = f"{HOST}-before-restart:{os.getpid()}:{boot_id()}:{start_time(os.getpid())}"
    assert not process_gone(other)  # a shared storage: its heartbeat judges it
    assert process_gone(other, single_host=True)  # the journal: it cannot be running elsewhere


@pytest.fixture
def study(tmp_path: Path) -> Any:
    """A study in the project's default storage kind, Optuna's journal file."""
    import optuna

    from digits.lib.urls import StorageUrl
    from digits.tools.sweep.study import open_storage

    journal = StorageUrl.parse(str(tmp_path / "journal.log"))
    return optuna.create_study(storage=open_storage(journal, 30))


def running_trial(study: Any, worker: str, epochs: int) -> Any:
    """A RUNNING trial of `worker` that reported `epochs` epochs."""
    trial = study.ask()
    trial.suggest_float("train.learning_rate", 1e-4, 1e-2, log=True)
    trial.set_user_attr("worker", worker)
    trial.set_user_attr("mlflow_run_id", "run-of-the-dead")
    trial.set_user_attr("first_attempt", trial.number)  # as the objective records it
    for epoch in range(1, epochs + 1):
        trial.report(0.5 + epoch / 100, epoch)
    return trial


def test_a_trial_left_running_before_a_restart_is_failed_and_retried(study: Any) -> None:
    from optuna.storages import RetryHeartbeatStaleTrialCallback as Retry

    live = running_trial(study, process_id(), 1)
    elsewhere = running_trial(study, f"{HOST}-old-container:{os.getpid()}", 2)
    rebooted = running_trial(study, f"{HOST}:{os.getpid()}:00000000:1", 3)
    assert fail_orphans(study, single_host=True) == [elsewhere.number, rebooted.number]
    states = [t.state.name for t in study.trials]
    assert states == ["RUNNING", "FAIL", "FAIL", "WAITING", "WAITING"]
    assert study.trials[live.number].state.name == "RUNNING"
    for dead, retry in zip((elsewhere, rebooted), study.trials[3:], strict=True):
        assert Retry.retried_trial_number(retry) == dead.number  # Optuna's own reading
        assert retry.user_attrs["retry_of"] == dead.number
        assert retry.user_attrs["retry_of_run"] == "run-of-the-dead"
        assert "worker" not in retry.user_attrs, "no dead worker's name on the retry"
        assert retry.params == study.trials[dead.number].params
        assert retry.intermediate_values == study.trials[dead.number].intermediate_values
        assert retry.user_attrs["inherited_epochs"] == len(retry.intermediate_values)
    assert fail_orphans(study, single_host=True) == [], "each death noticed once"


def test_a_retry_is_run_with_its_params_and_retried_at_most_twice(study: Any) -> None:
    dead = f"{HOST}:{dead_pid()}"
    first = running_trial(study, dead, 2)
    fail_orphans(study)
    seen = {}

    def objective(trial: Any) -> float:
        seen.update(trial.params)
        trial.set_user_attr("worker", dead)  # this one dies too, and its retry as well
        raise SystemExit  # leave it RUNNING, as a kill -9 would

    for _ in range(2):
        with pytest.raises(SystemExit):
            study.optimize(objective, n_trials=1)
        assert seen == first.params
        fail_orphans(study)
    states = [t.state.name for t in study.trials]
    assert states == ["FAIL", "FAIL", "FAIL"], "the second retry's death is not retried"
    assert study.trials[2].system_attrs["retry_history"] == [0, 1]


def test_a_running_trial_without_an_owner_is_failed_after_the_grace_period(study: Any) -> None:
    """A worker killed between Optuna creating its trial (or popping a retry) and recording
    itself as the owner leaves a RUNNING trial no one owns: failed and retried once it has
    run `grace` seconds, never before (a live worker records itself at once)."""
    orphan = study.ask()  # RUNNING, no `worker`: killed before the objective's first line
    assert fail_orphans(study, single_host=True, grace=60) == [], "young: its worker may live"
    time.sleep(0.3)
    assert fail_orphans(study, single_host=True, grace=0.2) == [orphan.number]
    states = [t.state.name for t in study.trials]
    assert states == ["FAIL", "WAITING"]
    assert study.trials[1].user_attrs["retry_of"] == orphan.number


def checkpoint_files(folder: Path, names: list[str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_bytes(b"state")


def test_checkpoints_go_once_no_trial_can_resume_them(study: Any, tmp_path: Path) -> None:
    """A checkpoint stays while its trial (or a retry of it) is RUNNING with a live worker or
    WAITING to resume it; those of ended trials, left by dead processes, are removed."""
    import optuna

    from digits.tools.sweep.orphans import remove_stale_checkpoints

    done = study.ask()
    study.tell(done, 0.9)  # complete: its process died before removing its checkpoint
    live = running_trial(study, process_id(), 1)  # this process writes it now
    killed = running_trial(study, f"{HOST}:{dead_pid()}", 2)
    gave_up = study.ask()
    study.tell(gave_up, state=optuna.trial.TrialState.FAIL)  # failed for good
    assert fail_orphans(study, single_host=True) == [killed.number]  # its retry is WAITING
    folder = tmp_path / "checkpoints" / "study"
    names = [f"trial-{n}.npz" for n in (done.number, live.number, killed.number, gave_up.number)]
    checkpoint_files(folder, [*names, f".trial-{done.number}.x1y2.tmp.npz", "notes.txt"])
    removed = remove_stale_checkpoints(study, folder)
    assert sorted(p.name for p in removed) == sorted(
        [
            f"trial-{done.number}.npz",
            f"trial-{gave_up.number}.npz",
            f".trial-{done.number}.x1y2.tmp.npz",
        ]
    )
    kept = sorted(p.name for p in folder.iterdir())
    assert kept == sorted([f"trial-{live.number}.npz", f"trial-{killed.number}.npz", "notes.txt"])
