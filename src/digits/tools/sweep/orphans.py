"""Trials whose worker died: failed and retried, their MLflow runs ended, their checkpoints
removed once no trial can resume from them.

A worker records itself as a trial's owner (the `worker` user attr) first thing in the
objective, but Optuna creates the trial (or pops a queued retry) a moment before: a worker
killed in between leaves a RUNNING trial that no one owns. Such a trial is judged dead once it
has run `grace` seconds (two heartbeats) without an owner, on every storage: Optuna's own
heartbeat never sees it when the kill came before the first beat.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import optuna

log = logging.getLogger(__name__)

RETRIES = 2  # a trial whose worker died is retried this often: one that kills its worker stops
# user attrs of a dead worker's trial that describe that attempt, not the configuration
ATTEMPT_ATTRS = (
    "worker",
    "mlflow_run_id",
    "epochs",
    "scores",
    "retry_of",
    "retry_of_run",
    "inherited_epochs",
    "resumed_after_epoch",
)
# a trial's checkpoint, and the temporary file of a save a kill interrupted
CHECKPOINT_NAME = re.compile(r"\.?trial-(\d+)(\.[^/]*\.tmp)?\.npz")


def retry_trial(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
    """After `trial` failed because its worker died (stale heartbeat, or a worker found gone):
    queue it again (WAITING, same params) keeping the epochs it had reported, as Optuna's
    `RetryHeartbeatStaleTrialCallback(inherit_intermediate_values=True)` does and with the same
    system attrs (its `retried_trial_number`, `retry_history`), and end its MLflow run FAILED
    when this process logs to MLflow. Returns whether it queued a retry (not past `RETRIES`, and
    not queued already by another process that noticed first)."""
    import optuna

    history = [*trial.system_attrs.get("retry_history", []), trial.number]
    run = trial.user_attrs.get("mlflow_run_id")
    if run:
        close_trial_run(run, trial)
    if len(history) > RETRIES:
        return False
    for other in study.get_trials(deepcopy=False):
        if other.system_attrs.get("retry_history") == history:
            return False  # another process noticed first and queued it
    user_attrs = {k: v for k, v in trial.user_attrs.items() if k not in ATTEMPT_ATTRS}
    user_attrs["retry_of"] = trial.number  # public to the trial (Trial has no system attrs)
    user_attrs["inherited_epochs"] = len(trial.intermediate_values)
    if run:
        user_attrs["retry_of_run"] = run
    study.add_trial(
        optuna.create_trial(
            state=optuna.trial.TrialState.WAITING,
            params=trial.params,
            distributions=trial.distributions,
            user_attrs=user_attrs,
            system_attrs={
                "failed_trial": history[0],
                **trial.system_attrs,
                "retry_history": history,
            },
            intermediate_values=trial.intermediate_values,
        )
    )
    return True


def close_trial_run(run_id: str, trial: optuna.trial.FrozenTrial) -> None:
    """End a dead worker's trial run FAILED, if this process is set up to log to MLflow (a
    worker, or the launcher after `store.setup`; else the launcher's last clean-up does)."""
    import mlflow

    from digits.lib.tracking.reaping import close_run

    if not mlflow.is_tracking_uri_set():
        return
    worker = trial.user_attrs.get("worker", "?")
    reason = (
        f"trial {trial.number} failed: its worker {worker} died or lost its network (no "
        f"heartbeat, or its process is gone) after {len(trial.intermediate_values)} reported "
        "epochs"
    )
    try:
        close_run(run_id, reason)
    except Exception as err:  # the launcher's last clean-up closes it (`orphan_runs`)
        log.warning("could not end run %s of dead trial %d: %s", run_id, trial.number, err)


def owner_dead(
    trial: optuna.trial.FrozenTrial,
    dead: set[str],
    single_host: bool,
    grace: float,
    now: datetime,
) -> bool:
    """Whether the RUNNING `trial` has no live worker: its owner is in `dead` or gone (see
    `process_gone`), or it never recorded one and started more than `grace` seconds ago (by
    this host's clock; Optuna stores start times in local time)."""
    from digits.lib.process import process_gone

    worker = trial.user_attrs.get("worker")
    if worker is not None:
        return worker in dead or process_gone(worker, single_host)
    started = trial.datetime_start
    return started is not None and (now - started).total_seconds() > grace


def fail_orphans(
    study: optuna.Study,
    dead: Iterable[str] = (),
    single_host: bool = False,
    grace: float = 60.0,
) -> list[int]:
    """Mark FAIL, and queue a retry of (`retry_trial`), the RUNNING trials that no live worker
    owns: those of the workers in `dead`, of this host's workers that no longer exist (or ran
    before this host rebooted), and those without an owner after `grace` seconds. Other hosts'
    workers are left to heartbeats, except with `single_host` (the journal storage), where a
    worker on another host is gone. Returns the trials failed."""
    import optuna
    from optuna.trial import TrialState

    dead = set(dead)
    now = datetime.now()
    failed = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if not owner_dead(trial, dead, single_host, grace, now):
            continue
        try:
            study.tell(trial.number, state=TrialState.FAIL)
        except (optuna.exceptions.UpdateFinishedTrialError, ValueError):
            continue  # another process (a worker, the launcher) finished it first
        retry_trial(study, trial)
        failed.append(trial.number)
    return failed


def orphan_runs(study: optuna.Study) -> list[str]:
    """The MLflow runs of the study's FAIL trials: none of them may still be RUNNING."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
    return [run for t in trials if (run := t.user_attrs.get("mlflow_run_id"))]


def first_attempt(trial: optuna.trial.FrozenTrial) -> int:
    """The trial whose checkpoint file `trial` writes and resumes: its own number, or for a
    retry the first attempt's (retries inherit the `first_attempt` user attr)."""
    return int(trial.user_attrs.get("first_attempt", trial.number))


def stale_checkpoints(study: optuna.Study, folder: Path) -> list[Path]:
    """The checkpoint files in `folder` (the study's) that no trial can still resume or write:
    each belongs to a first attempt, and is live only while that trial or a retry of it is
    RUNNING (its writer) or WAITING (the retry that resumes it). Call it after `fail_orphans`,
    so that a RUNNING trial here has a live worker."""
    from optuna.trial import TrialState

    if not folder.is_dir():
        return []
    pending = study.get_trials(deepcopy=False, states=(TrialState.RUNNING, TrialState.WAITING))
    live = {first_attempt(t) for t in pending}
    stale = []
    for path in sorted(folder.iterdir()):
        match = CHECKPOINT_NAME.fullmatch(path.name)
        if match and int(match.group(1)) not in live:
            stale.append(path)
    return stale


def remove_stale_checkpoints(study: optuna.Study, folder: Path) -> list[Path]:
    """Delete `stale_checkpoints`: those of trials that ended (complete, pruned, failed for
    good) in a process that died before it could remove them. Returns them."""
    stale = stale_checkpoints(study, folder)
    for path in stale:
        path.unlink(missing_ok=True)
    if stale:
        log.info(
            "removed %d checkpoint(s) of ended trials: %s", len(stale), [p.name for p in stale]
        )
    return stale
