"""The launcher, `make sweep`'s own process: it opens the study after any crash, starts the
workers under one parent MLflow run (or, with one worker, runs the loop itself), cleans up
after them and writes the results."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from digits.lib.config import Params, flatten
from digits.tools.sweep.orphans import fail_orphans, orphan_runs, remove_stale_checkpoints
from digits.tools.sweep.results import SweepSummary, write_results
from digits.tools.sweep.study import (
    SweepOptions,
    count_trials,
    grace_seconds,
    open_study,
    pruning_off_reason,
    repair_storage,
    single_host,
    trial_epochs,
)
from digits.tools.sweep.workers import checkpoint_folder, run_workers, work, worker_command

if TYPE_CHECKING:
    import optuna

log = logging.getLogger(__name__)


@contextlib.contextmanager
def beating(beat: Callable[[], None], interval: float) -> Iterator[None]:
    """Call `beat` every `interval` seconds from a thread while inside: the trials of a
    one-worker sweep hold this process's main thread."""
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(interval):
            beat()

    thread = threading.Thread(target=loop, name="sweep-keep-alive", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=30)


@dataclass
class KeepAlive:
    """Renews the parent run's alive tag every `heartbeat` seconds when called (more often is
    free): other hosts' sweeps end the run FAILED if this host dies or is cut off."""

    run_id: str
    heartbeat: float
    next_beat: float = 0.0

    def __call__(self) -> None:
        from digits.lib.tracking.reaping import keep_alive

        if time.monotonic() < self.next_beat:
            return
        try:
            keep_alive(self.run_id, 3 * self.heartbeat)
            self.next_beat = time.monotonic() + self.heartbeat
        except Exception as err:  # an unreachable server must not stop the workers
            log.warning("could not renew run %s: %s", self.run_id, err)


def sweep(params: Params, opts: SweepOptions) -> SweepSummary:
    """Run the sweep; returns its summary (also in `opts.out` and the parent MLflow run)."""
    import mlflow

    from digits.lib.tracking import runs

    assert params.sweep is not None
    study, experiment_id = prepare(params, opts)
    if (finished := count_trials(study).finished) >= opts.n_trials:
        log.info(
            "%d finished trials already (target %d): nothing to run; raise N_TRIALS to go on",
            finished,
            opts.n_trials,
        )
        return results(study, params, opts)
    beats = params.sweep.heartbeat  # as KeepAlive: both promise 3 beats
    tags = parent_tags(params, opts)
    with runs.tracked_run(beats, run_name=f"sweep-{opts.study}", tags=tags) as run:
        mlflow.log_params(parent_params(params, opts))
        # a resumed sweep samples anew, and so does each host that joins the study at once
        host = zlib.crc32(socket.gethostname().encode()) % 100_000
        seed = (params.sweep.seed + len(study.trials) + host) % 2**32
        deadline = time.time() + opts.timeout if opts.timeout else None
        try:
            codes = launch(params, opts, study, run.info.run_id, (seed, deadline))
        finally:
            study = clean_up(params, opts, experiment_id)
        if bad := {w: c for w, c in codes.items() if c}:
            log.warning("workers exited abnormally: %s", bad)
        summary = results(study, params, opts)
        log_summary(summary, opts.out)
    return summary


def prepare(params: Params, opts: SweepOptions) -> tuple[optuna.Study, str]:
    """Open the study after any crash (journal repaired; dead workers' trials failed and
    retried, their runs ended, stale checkpoints removed) and set up MLflow; returns the study
    and the experiment id."""
    from digits.lib.tracking.reaping import close_dead_runs
    from digits.lib.tracking.store import setup

    assert params.sweep is not None
    repair_storage(opts.storage)
    study = open_study(params, opts.storage, opts.study, params.sweep.seed)
    grace = grace_seconds(params.sweep.heartbeat)
    if failed := fail_orphans(study, single_host=single_host(opts.storage), grace=grace):
        log.info("trials %s were left RUNNING by dead workers: marked FAIL, retried", failed)
    remove_stale_checkpoints(study, checkpoint_folder(opts))
    if reason := pruning_off_reason(params.sweep):
        log.warning("%s", reason)
    elif params.sweep.pruner != "none" and params.sweep.repeats > 1:
        log.info("pruning: %s, on each trial's first seed", params.sweep.pruner)
    log.info("study %r in %s: %s", opts.study, opts.storage.redacted, count_trials(study))
    experiment_id = setup(params.mlflow, opts.env.project_root(opts.params_path), opts.env)
    close_dead_runs(experiment_id, orphans=orphan_runs(study))
    return study, experiment_id


def parent_tags(params: Params, opts: SweepOptions) -> dict[str, str]:
    """The parent run's tags: the study, its storage (password masked), pruning on or off."""
    assert params.sweep is not None
    reason = pruning_off_reason(params.sweep)
    pruning = reason or ("off" if params.sweep.pruner == "none" else "on")
    return {
        "optuna.study": opts.study,
        "optuna.storage": opts.storage.redacted,
        "sweep": "parent",
        "optuna.pruning": pruning,
    }


def parent_params(params: Params, opts: SweepOptions) -> dict[str, Any]:
    """The parent run's params: `sweep:` as it shapes the trials, and this run's study, target
    and workers (not the storage, which may hold a password, nor the other spaces)."""
    assert params.sweep is not None
    skip = ("study", "storage", "n_trials", "timeout", "workers", "spaces")
    settings = flatten(params.sweep.model_dump())
    logged = {f"sweep.{k}": v for k, v in settings.items() if k.split(".")[0] not in skip}
    return {
        **logged,
        "sweep.study": opts.study,
        "sweep.n_trials": opts.n_trials,
        "sweep.workers": opts.workers,
    }


def launch(
    params: Params,
    opts: SweepOptions,
    study: optuna.Study,
    parent: str,
    start: tuple[int, float | None],
) -> dict[str, int]:
    """Run the workers under the parent run, renewing its alive tag: one in this process (one
    TensorFlow start-up fewer), else `opts.workers` processes, each with its own sampler seed
    from `start`'s seed, all stopping at its deadline. A worker that exits abnormally has its
    trials failed and retried at once. Returns {worker id: exit code} (empty for the one in
    this process)."""
    assert params.sweep is not None
    seed, deadline = start
    beat = KeepAlive(parent, params.sweep.heartbeat)
    beat()
    if opts.workers == 1:
        with beating(beat, params.sweep.heartbeat):
            work(params, opts, parent, seed, deadline)
        return {}
    commands = [
        worker_command(opts, parent, (seed + i) % 2**32, deadline) for i in range(opts.workers)
    ]
    threads = params.sweep.threads or max(1, len(os.sched_getaffinity(0)) // opts.workers)
    log.info("%d workers x %d TensorFlow threads", opts.workers, threads)
    alone, grace = single_host(opts.storage), grace_seconds(params.sweep.heartbeat)

    def on_exit(worker: str, code: int) -> None:
        if code and (failed := fail_orphans(study, {worker}, alone, grace)):
            log.warning("worker %s exited %d: trials %s marked FAIL, retried", worker, code, failed)

    return run_workers(commands, opts.storage, on_exit, beat, threads)


def clean_up(params: Params, opts: SweepOptions, experiment_id: str) -> optuna.Study:
    """After the workers: fail (and retry) the trials that lost their worker, end their runs,
    remove the checkpoints no trial can resume; returns the study, freshly read."""
    from digits.lib.tracking.reaping import close_dead_runs

    assert params.sweep is not None
    study = open_study(params, opts.storage, opts.study, params.sweep.seed)
    grace = grace_seconds(params.sweep.heartbeat)
    if failed := fail_orphans(study, single_host=single_host(opts.storage), grace=grace):
        log.warning("trials %s lost their worker: marked FAIL, retried", failed)
    close_dead_runs(experiment_id, orphans=orphan_runs(study))
    remove_stale_checkpoints(study, checkpoint_folder(opts))
    return study


def results(study: optuna.Study, params: Params, opts: SweepOptions) -> SweepSummary:
    """trials.csv, best_params.yaml and the plots in `opts.out`; returns the summary."""
    assert params.sweep is not None
    epochs = trial_epochs(params) * params.sweep.repeats  # a trial's whole budget: every seed
    cfg = params.sweep
    return write_results(study, opts.out, epochs, dict(cfg.objectives), cfg.promote)


def log_summary(summary: SweepSummary, out: Path) -> None:
    """The summary into the active (parent) run: its metrics, the best trial's settings and
    number (with several objectives, the Pareto front and the rule that picked the trial),
    trials.csv and the plots."""
    import mlflow

    mlflow.log_metrics(summary.metrics())
    if (best := summary.best) is not None:
        mlflow.log_params({f"best.{k}": v for k, v in flatten(best.params).items()})
        mlflow.set_tag("best.trial", best.number)
        mlflow.log_artifact(str(out / "best_params.yaml"), "sweep")
        if best.multi_objective:  # the front, and how one point was picked
            mlflow.set_tags({"promote.rule": best.rule, "pareto.trials": str(best.pareto_front)})
            mlflow.log_artifact(str(out / "pareto.csv"), "sweep")
    mlflow.log_artifact(str(out / "trials.csv"), "sweep")
    for plot in summary.plots:
        mlflow.log_artifact(str(plot), "sweep")
