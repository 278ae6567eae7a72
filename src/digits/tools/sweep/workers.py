"""Worker processes: the launcher that starts them under one parent run (or, with one worker,
runs the loop itself), the loop each one runs, and the clean-up after a worker that died."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import warnings
import zlib
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

from digits.lib.config import Params, flatten
from digits.tools.sweep.results import write_results
from digits.tools.sweep.study import (
    SweepOptions,
    count_trials,
    open_study,
    pruning_off_reason,
    redact,
    repair_storage,
    retry_trial,
    single_host,
    trial_epochs,
)
from digits.tools.sweep.trial import Interruption, Objective

if TYPE_CHECKING:
    import optuna

log = logging.getLogger(__name__)
CHECKPOINTS = "sweeps/checkpoints"  # per study, one file per trial in flight (git-ignored)


def work(
    params: Params, opts: SweepOptions, parent_run_id: str, seed: int, deadline: float | None
) -> None:
    """A worker: run trials until the study holds its target of finished trials, the deadline
    passes, or this worker saw `n_trials` of its trials fail. While the last trials run on
    other workers it waits rather than start more, and retries any whose worker dies."""
    with Interruption().installed() as interruption:
        _work(params, opts, parent_run_id, seed, deadline, interruption)


def _work(
    params: Params,
    opts: SweepOptions,
    parent_run_id: str,
    seed: int,
    deadline: float | None,
    interruption: Interruption,
) -> None:
    import optuna

    from digits.lib.data import file_digest, load_splits
    from digits.lib.tracking.store import setup

    study = open_study(params, opts.storage, opts.study, seed)
    setup(params.mlflow, opts.env.project_root(opts.params_path), opts.env)
    splits = load_splits(opts.data, ("train", "val"))
    objective = Objective(
        params, splits["train"], splits["val"], parent_run_id, opts.study, interruption
    )
    # next to the journal: on this machine, where a retry of a trial killed here finds it
    objective.checkpoints = opts.env.project_root(opts.params_path) / CHECKPOINTS / opts.study
    objective.data_digest = file_digest(opts.data / "train.npz", opts.data / "val.npz")
    failures: list[int] = []

    def note_failure(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if trial.state.name == "FAIL":
            failures.append(trial.number)

    while len(failures) < opts.n_trials:
        interruption.check()
        # a dead worker's trial must not hold a slot of the budget: failed (and retried) here
        fail_orphans(study, single_host=single_host(opts.storage))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)  # the same, by heartbeat (RDB storages)
        counts = count_trials(study)
        if deadline and time.time() >= deadline:
            log.info("timeout: no new trials")
            return
        if counts.finished >= opts.n_trials:
            return
        if counts.finished + counts.running >= opts.n_trials:
            # the last trials are in flight elsewhere: wait, to retry any whose worker dies
            time.sleep(min(max(params.sweep.heartbeat, 0.5), 5))
            continue
        try:
            study.optimize(
                objective,
                n_trials=1,
                catch=(Exception,),
                callbacks=[note_failure],
                gc_after_trial=True,
            )
        except Exception:
            if objective.taken_over is None:
                raise
            # Optuna cannot tell a trial that another worker already failed: go on, the study
            # holds the retry
            log.warning("trial %d was taken over; going on", objective.taken_over)
            objective.taken_over = None
    log.error("stopping: trials %s failed; see their failure_reason in MLflow", failures)


def fail_orphans(
    study: optuna.Study, dead: Iterable[str] = (), single_host: bool = False
) -> list[int]:
    """Mark FAIL, and queue a retry of (`retry_trial`), the RUNNING trials whose worker process
    is gone: the ones in `dead`, and any of this host's workers that no longer exist (or that
    ran before this host rebooted). Other hosts' workers are left to heartbeats, except with
    `single_host` (the journal storage), where a worker on another host is gone."""
    import optuna
    from optuna.trial import TrialState

    from digits.lib.process import process_gone

    dead = set(dead)
    failed = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = trial.user_attrs.get("worker", "")
        if worker in dead or process_gone(worker, single_host):
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
    storage: str,
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
    env = {**os.environ, "OPTUNA_STORAGE": storage, **thread_env(threads)}
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


def sweep(params: Params, opts: SweepOptions) -> dict[str, Any]:
    """Run the sweep; returns its summary (also in `opts.out` and the parent MLflow run)."""
    import mlflow

    from digits.lib.tracking import runs
    from digits.lib.tracking.reaping import close_dead_runs, keep_alive
    from digits.lib.tracking.store import setup

    assert params.sweep is not None
    repair_storage(opts.storage)
    study = open_study(params, opts.storage, opts.study, params.sweep.seed)
    alone = single_host(opts.storage)
    if failed := fail_orphans(study, single_host=alone):
        log.info("trials %s were left RUNNING by dead workers: marked FAIL, retried", failed)
    epochs = trial_epochs(params) * params.sweep.repeats  # a trial's whole budget: every seed
    if reason := pruning_off_reason(params.sweep):
        log.warning("%s", reason)
    elif params.sweep.pruner != "none" and params.sweep.repeats > 1:
        log.info("pruning: %s, on each trial's first seed", params.sweep.pruner)

    def results() -> dict[str, Any]:
        cfg = params.sweep
        return write_results(study, opts.out, epochs, dict(cfg.objectives), cfg.promote)

    counts = count_trials(study)
    log.info("study %r in %s: %s", opts.study, redact(opts.storage), counts)
    experiment_id = setup(params.mlflow, opts.env.project_root(opts.params_path), opts.env)
    close_dead_runs(experiment_id, orphans=orphan_runs(study))
    if counts.finished >= opts.n_trials:
        log.info(
            "%d finished trials already (target %d): nothing to run; raise N_TRIALS to go on",
            counts.finished,
            opts.n_trials,
        )
        return results()

    tags = {"optuna.study": opts.study, "optuna.storage": redact(opts.storage), "sweep": "parent"}
    tags["optuna.pruning"] = reason or ("off" if params.sweep.pruner == "none" else "on")
    beats = params.sweep.heartbeat  # as `beat` below: both promise 3 beats
    with runs.tracked_run(beats, run_name=f"sweep-{opts.study}", tags=tags) as parent:
        mlflow.log_params(
            {
                f"sweep.{k}": v
                for k, v in flatten(params.sweep.model_dump()).items()
                if k.split(".")[0]
                not in ("study", "storage", "n_trials", "timeout", "workers", "spaces")
            }
        )
        mlflow.log_params(
            {
                "sweep.study": opts.study,
                "sweep.n_trials": opts.n_trials,
                "sweep.workers": opts.workers,
            }
        )
        # a resumed sweep samples anew, and so does each host that joins the study at once
        host = zlib.crc32(socket.gethostname().encode()) % 100_000
        base_seed = (params.sweep.seed + len(study.trials) + host) % 2**32
        deadline = time.time() + opts.timeout if opts.timeout else None
        commands = [
            worker_command(opts, parent.info.run_id, (base_seed + i) % 2**32, deadline)
            for i in range(opts.workers)
        ]

        def on_exit(worker: str, code: int) -> None:
            if code and (failed := fail_orphans(study, {worker}, alone)):
                log.warning(
                    "worker %s exited with %d: its trials %s marked FAIL, retried",
                    worker,
                    code,
                    failed,
                )

        # other hosts' sweeps end this parent run FAILED if this host dies or is cut off
        grace = 3 * params.sweep.heartbeat
        next_beat = 0.0

        def beat() -> None:
            nonlocal next_beat
            if time.monotonic() >= next_beat:
                try:
                    keep_alive(parent.info.run_id, grace)
                    next_beat = time.monotonic() + params.sweep.heartbeat
                except Exception as err:  # an unreachable server must not stop the workers
                    log.warning("could not renew run %s: %s", parent.info.run_id, err)

        try:
            beat()
            if opts.workers == 1:  # in this process: one TensorFlow start-up fewer
                with beating(beat, params.sweep.heartbeat):
                    work(params, opts, parent.info.run_id, base_seed, deadline)
                codes = {}
            else:
                threads = params.sweep.threads or max(
                    1, len(os.sched_getaffinity(0)) // opts.workers
                )
                log.info("%d workers x %d TensorFlow threads", opts.workers, threads)
                codes = run_workers(commands, opts.storage, on_exit, beat, threads)
        finally:
            study = open_study(params, opts.storage, opts.study, params.sweep.seed)
            if failed := fail_orphans(study, single_host=alone):
                log.warning("trials %s lost their worker: marked FAIL, retried", failed)
            close_dead_runs(experiment_id, orphans=orphan_runs(study))
        if bad := {w: c for w, c in codes.items() if c}:
            log.warning("workers exited abnormally: %s", bad)
        summary = results()
        mlflow.log_metrics({k: v for k, v in summary.items() if k.count("/") == 1})
        if best := summary.get("best"):
            mlflow.log_params({f"best.{k}": v for k, v in flatten(best["params"]).items()})
            mlflow.set_tag("best.trial", best["trial"])
            mlflow.log_artifact(str(opts.out / "best_params.yaml"), "sweep")
            if "rule" in best:  # several objectives: the front, and how one point was picked
                mlflow.set_tags(
                    {"promote.rule": best["rule"], "pareto.trials": str(best["pareto_front"])}
                )
                mlflow.log_artifact(str(opts.out / "pareto.csv"), "sweep")
        mlflow.log_artifact(str(opts.out / "trials.csv"), "sweep")
        for plot in summary["plots"]:
            mlflow.log_artifact(plot, "sweep")
    return summary
