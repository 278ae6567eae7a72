"""Workers: the loop each one runs (trials until the study holds its target, retrying those of
dead workers), and the worker processes the launcher starts and watches."""

from __future__ import annotations

import enum
import logging
import os
import signal
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from digits.lib.config import Params
from digits.lib.urls import StorageUrl
from digits.tools.sweep.orphans import fail_orphans, remove_stale_checkpoints
from digits.tools.sweep.study import (
    Counts,
    SweepOptions,
    count_trials,
    grace_seconds,
    open_study,
    single_host,
)
from digits.tools.sweep.trial import Interruption, Objective

if TYPE_CHECKING:
    import optuna

log = logging.getLogger(__name__)
CHECKPOINTS = "sweeps/checkpoints"  # per study, one file per trial in flight (git-ignored)


class Step(enum.Enum):
    """What a worker does next."""

    RUN = "run a trial"
    WAIT = "wait: the last trials run elsewhere"
    DONE = "stop: the study holds its target of finished trials"
    TIMEOUT = "stop: the sweep's time is up"


def next_step(counts: Counts, n_trials: int, deadline: float | None, now: float) -> Step:
    """RUN while the study needs more trials than are finished or in flight; WAIT while the
    last ones run on other workers (to retry any whose worker dies); else stop."""
    if deadline and now >= deadline:
        return Step.TIMEOUT
    if counts.finished >= n_trials:
        return Step.DONE
    if counts.finished + counts.running >= n_trials:
        return Step.WAIT
    return Step.RUN


def checkpoint_folder(opts: SweepOptions) -> Path:
    """Where the study's trials save their state: next to the journal, on this machine, where
    a retry of a trial killed here finds it."""
    return opts.env.project_root(opts.params_path) / CHECKPOINTS / opts.study


def tidy(study: optuna.Study, opts: SweepOptions, grace: float) -> Counts:
    """Fail (and retry) the trials no live worker owns, so that none holds a slot of the
    target, remove the checkpoints no trial can resume, and count the trials."""
    import optuna

    fail_orphans(study, single_host=single_host(opts.storage), grace=grace)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)  # the same, by heartbeat (RDB storages)
    remove_stale_checkpoints(study, checkpoint_folder(opts))
    return count_trials(study)


def work(
    params: Params, opts: SweepOptions, parent_run_id: str, seed: int, deadline: float | None
) -> None:
    """A worker: run trials until the study holds its target of finished trials, the deadline
    passes, or this worker saw `n_trials` of its trials fail. While the last trials run on
    other workers it waits rather than start more, and retries any whose worker dies."""
    assert params.sweep is not None
    heartbeat = params.sweep.heartbeat
    with Interruption().installed() as interruption:
        study = open_study(params, opts.storage, opts.study, seed)
        objective = make_objective(params, opts, parent_run_id, interruption, deadline)
        grace = grace_seconds(heartbeat)
        failures: list[int] = []
        while len(failures) < opts.n_trials:
            interruption.check()
            step = next_step(tidy(study, opts, grace), opts.n_trials, deadline, time.time())
            if step in (Step.DONE, Step.TIMEOUT):
                log.info("%s", step.value)
                return
            if step is Step.WAIT:
                time.sleep(min(max(heartbeat, 0.5), 5))
                continue
            if (failed := run_one(study, objective)) is not None:
                failures.append(failed)
        log.error("stopping: trials %s failed; see their failure_reason in MLflow", failures)


def make_objective(
    params: Params,
    opts: SweepOptions,
    parent_run_id: str,
    interruption: Interruption,
    deadline: float | None,
) -> Objective:
    """The objective on the study's data, logging to the sweep's MLflow experiment."""
    from digits.lib.data import file_digest, load_splits
    from digits.lib.tracking.store import setup

    setup(params.mlflow, opts.env.project_root(opts.params_path), opts.env)
    splits = load_splits(opts.data, ("train", "val"))
    return Objective(
        params,
        splits["train"],
        splits["val"],
        parent_run_id,
        opts.study,
        interruption,
        checkpoints=checkpoint_folder(opts),
        data_digest=file_digest(opts.data / "train.npz", opts.data / "val.npz"),
        deadline=deadline,
    )


def run_one(study: optuna.Study, objective: Objective) -> int | None:
    """Run one trial; returns its number when it failed, else None."""
    failed: list[int] = []

    def note_failure(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if trial.state.name == "FAIL":
            failed.append(trial.number)

    try:
        study.optimize(
            objective, n_trials=1, catch=(Exception,), callbacks=[note_failure], gc_after_trial=True
        )
    except Exception:
        if objective.taken_over is None:
            raise
        # Optuna cannot tell a trial that another worker already failed: go on, the study
        # holds the retry
        log.warning("trial %d was taken over; going on", objective.taken_over)
        objective.taken_over = None
    return failed[0] if failed else None


def worker_command(opts: SweepOptions, parent: str, seed: int, deadline: float | None) -> list[str]:
    """The command line of one worker process (the storage URL goes in its environment)."""
    command = [sys.executable, "-m", "digits.tools.sweep", "--params", str(opts.params_path)]
    command += ["worker", "--study", opts.study, "--data", str(opts.data)]
    if opts.space:
        command += ["--space", opts.space]
    command += ["--parent-run-id", parent, "--seed", str(seed), "--n-trials", str(opts.n_trials)]
    if deadline:
        command += ["--deadline", str(deadline)]
    return command


def thread_env(threads: int) -> dict[str, str]:
    """Environment that caps a worker's TensorFlow thread pools at `threads` (0: no cap). Two
    workers each running a pool per core would oversubscribe the cores."""
    if not threads:
        return {}
    return {"TF_NUM_INTRAOP_THREADS": str(threads), "TF_NUM_INTEROP_THREADS": str(threads)}


def run_workers(
    commands: list[list[str]],
    storage: StorageUrl,
    on_exit: Callable[[str, int], None],
    beat: Callable[[], None] = lambda: None,
    threads: int = 0,
) -> dict[str, int]:
    """Start the workers (each with at most `threads` TensorFlow threads, 0: no cap) and wait
    for them, calling `on_exit(worker id, exit code)` as each one ends (at once, so a killed
    worker's trial is freed while the others work on) and `beat()` every half second; Ctrl-C
    or SIGTERM is passed on to each as SIGINT. Returns {worker id: exit code}."""
    from digits.lib.process import process_id

    # the storage is not in argv: it may hold a password
    env = {**os.environ, "OPTUNA_STORAGE": storage.secret, **thread_env(threads)}
    # own sessions: a Ctrl-C reaches the launcher only, which passes one SIGINT to each worker
    started = (subprocess.Popen(c, env=env, start_new_session=True) for c in commands)
    procs = {process_id(p.pid): p for p in started}
    codes: dict[str, int] = {}
    try:
        while len(codes) < len(procs):
            for worker, proc in procs.items():
                if worker not in codes and (code := proc.poll()) is not None:
                    codes[worker] = code
                    on_exit(worker, code)
            beat()
            time.sleep(0.5)
    except BaseException:
        for proc in procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
        for proc in procs.values():
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
        raise
    return codes
