"""`make sweep`: an Optuna study over `sweep.space`, each trial a nested MLflow run.

    python -m digits.tools.sweep run [--workers N] [--n-trials N] [--timeout S] [--study S]
    python -m digits.tools.sweep promote      # the best trial's settings into params.yaml
    python -m digits.tools.sweep storage      # print the storage URL (for optuna-dashboard)

`run` opens one parent MLflow run, starts N worker processes on the same study (each trial:
`params.yaml` + `sweep.fixed` + sampled `sweep.space`, trained by the same code as the `train`
stage), then writes `trials.csv`, `best_params.yaml` and the study plots. The study's target is
`n_trials` finished (complete or pruned) trials, so running it again resumes an interrupted sweep.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from digits.lib.cli import stage_main
from digits.lib.config import Dimension, Params, ParamsError, SweepConfig, load_params, parse_params
from digits.lib.files import atomic_path, write_text

if TYPE_CHECKING:
    import keras
    import optuna

    from digits.lib.data import Split

log = logging.getLogger(__name__)

DEFAULT_JOURNAL = "sweeps/optuna-journal.log"
OBJECTIVE = "val/accuracy"
FINISHED = ("COMPLETE", "PRUNED")


# --- storage, sampler, pruner -----------------------------------------------------------------


def storage_url(cfg: SweepConfig, root: Path, override: str | None = None) -> str:
    """--storage, else $OPTUNA_STORAGE, else `sweep.storage`, else the project's journal file."""
    url = override or os.environ.get("OPTUNA_STORAGE") or cfg.storage or DEFAULT_JOURNAL
    if "://" in url:
        return url
    return str((root / url).resolve())


def open_storage(url: str, heartbeat: float) -> optuna.storages.BaseStorage:
    """A SQLAlchemy URL -> RDBStorage with heartbeats (a dead worker's trial turns FAIL);
    a file path -> JournalStorage, safe for many processes on one machine."""
    import optuna

    from digits.lib.journal import journal_backend

    if "://" in url:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.storages.RDBStorage(
                url,
                heartbeat_interval=max(1, round(heartbeat)),
                grace_period=max(2, round(2 * heartbeat)),
                engine_kwargs={"pool_pre_ping": True},
            )
    Path(url).parent.mkdir(parents=True, exist_ok=True)
    return optuna.storages.JournalStorage(journal_backend(url))  # the default symlink lock


def repair_storage(url: str) -> None:
    """Before the launcher opens a journal file (no worker running yet): drop partial records."""
    if "://" not in url:
        from digits.lib.journal import repair_journal

        repair_journal(url)


def redact(url: str) -> str:
    """A storage URL without its password, for logs and tags."""
    from digits.lib.secrets import redact_url

    return redact_url(url)


def make_sampler(cfg: SweepConfig, seed: int) -> optuna.samplers.BaseSampler:
    """Seeded TPE or random sampling (each worker gets its own seed)."""
    import optuna

    if cfg.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed)


def make_pruner(cfg: SweepConfig, epochs: int) -> optuna.pruners.BasePruner:
    """Median or Hyperband on validation accuracy per epoch, or none."""
    import optuna

    if cfg.pruner == "median":
        return optuna.pruners.MedianPruner(
            n_startup_trials=cfg.startup_trials, n_warmup_steps=cfg.warmup_epochs
        )
    if cfg.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(
            min_resource=max(1, cfg.warmup_epochs), max_resource=epochs, reduction_factor=3
        )
    return optuna.pruners.NopPruner()


def trial_epochs(params: Params) -> int:
    """Epochs a trial trains when not pruned."""
    epochs = params.sweep.fixed.get("train.epochs") if params.sweep else None
    return int(epochs or params.train.epochs)


def open_study(params: Params, url: str, name: str, seed: int) -> optuna.Study:
    """Create the study, or load it when it exists (safe to race from several processes)."""
    import optuna

    assert params.sweep is not None
    return optuna.create_study(
        study_name=name,
        storage=open_storage(url, params.sweep.heartbeat),
        direction="maximize",
        sampler=make_sampler(params.sweep, seed),
        pruner=make_pruner(params.sweep, trial_epochs(params)),
        load_if_exists=True,
    )


@dataclass(frozen=True)
class Counts:
    """Trials of a study by state."""

    complete: int = 0
    pruned: int = 0
    failed: int = 0
    running: int = 0

    @property
    def finished(self) -> int:
        return self.complete + self.pruned


def count_trials(study: optuna.Study) -> Counts:
    """How many trials are in each state."""
    states = [t.state.name for t in study.get_trials(deepcopy=False)]
    return Counts(
        complete=states.count("COMPLETE"),
        pruned=states.count("PRUNED"),
        failed=states.count("FAIL"),
        running=states.count("RUNNING"),
    )


# --- one trial --------------------------------------------------------------------------------


def suggest(trial: optuna.Trial, key: str, dim: Dimension) -> Any:
    """Sample one setting of the space."""
    if dim.choices is not None:
        return trial.suggest_categorical(key, dim.choices)
    if isinstance(dim.low, int) and isinstance(dim.high, int):
        return trial.suggest_int(key, dim.low, dim.high, log=dim.log)
    return trial.suggest_float(key, float(dim.low), float(dim.high), log=dim.log)  # type: ignore[arg-type]


def pruning_callback(trial: optuna.Trial) -> keras.callbacks.Callback:
    """Reports validation accuracy to the trial after every epoch (step = epoch, from 1) and
    stops training when the pruner says so; `pruned_epoch` tells whether it did."""
    import keras

    class Pruning(keras.callbacks.Callback):
        pruned_epoch: int | None = None

        def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
            trial.report(float((logs or {})["val_accuracy"]), epoch + 1)
            if trial.should_prune():
                self.pruned_epoch = epoch + 1
                self.model.stop_training = True

    return Pruning()


class Interruption:
    """Ctrl-C / SIGTERM in a worker, deferred to safe points. Raised at an arbitrary point, a
    KeyboardInterrupt can land inside Optuna's journal lock, whose clean-up then breaks the
    lock for every other worker; instead the signal sets a flag that `check` (between trials,
    and after every execution of batches via `callback`) turns into KeyboardInterrupt."""

    def __init__(self) -> None:
        self.signal: str | None = None

    def install(self) -> None:
        """Handle SIGINT and SIGTERM in this (main) thread from now on."""
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, self._note)

    def _note(self, signum: int, frame: Any) -> None:
        self.signal = signal.Signals(signum).name

    def check(self) -> None:
        """Raise KeyboardInterrupt if a signal came in."""
        if self.signal:
            raise KeyboardInterrupt(self.signal)

    def callback(self) -> keras.callbacks.Callback:
        """A Keras callback that checks whenever Keras reports a training or validation batch:
        after each call into TensorFlow, i.e. every `STEPS_PER_EXECUTION` batches."""
        import keras

        check = self.check

        class Check(keras.callbacks.Callback):
            def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
                check()

            def on_test_batch_end(self, batch: int, logs: Any = None) -> None:
                check()

        return Check()


@dataclass
class Objective:
    """Train one trial's configuration in a child run of the sweep's parent run."""

    params: Params
    train: Split
    val: Split
    parent_run_id: str
    study_name: str
    interruption: Interruption

    def __call__(self, trial: optuna.Trial) -> float:
        import mlflow
        import optuna

        from digits.lib import tracking
        from digits.lib.training import fit_logged

        trial.set_user_attr("worker", tracking.process_id())  # first: who owns this trial
        self.interruption.check()
        sweep = self.params.sweep
        assert sweep is not None
        overrides = {**sweep.fixed, **{k: suggest(trial, k, d) for k, d in sweep.space.items()}}
        trial.set_user_attr("overrides", overrides)
        pruning = pruning_callback(trial)
        tags = {"optuna.study": self.study_name, "optuna.trial": str(trial.number)}
        name = f"{self.study_name}-{trial.number:03d}"
        with tracking.tracked_run(
            run_name=name, parent_run_id=self.parent_run_id, tags=tags
        ) as run:
            trial.set_user_attr("mlflow_run_id", run.info.run_id)
            try:
                params = self.params.with_overrides(overrides)
                callbacks = [pruning, self.interruption.callback()]
                _, history, summary = fit_logged(params, self.train, self.val, callbacks, verbose=0)
            except BaseException:
                mlflow.set_tag("optuna.state", "FAIL")
                raise
            trial.set_user_attr("epochs", len(history))
            state = "PRUNED" if pruning.pruned_epoch else "COMPLETE"
            mlflow.set_tag("optuna.state", state)
        if pruning.pruned_epoch:
            raise optuna.TrialPruned(f"pruned after epoch {pruning.pruned_epoch}")
        return summary["selected/val_accuracy"]


def work(params: Params, args: argparse.Namespace) -> None:
    """A worker: run trials until the study holds its target of finished trials (counting the
    ones in flight), the deadline passes, or this worker saw `n_trials` of its trials fail."""
    import optuna

    from digits.lib import tracking
    from digits.lib.data import load_splits

    interruption = Interruption()
    interruption.install()
    study = open_study(params, args.storage, args.study, args.seed)
    tracking.setup(params.mlflow, tracking.project_root(args.params))
    splits = load_splits(args.data, ("train", "val"))
    objective = Objective(
        params, splits["train"], splits["val"], args.parent_run_id, args.study, interruption
    )
    failures: list[int] = []

    def note_failure(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if trial.state.name == "FAIL":
            failures.append(trial.number)

    while len(failures) < args.n_trials:
        interruption.check()
        fail_orphans(study)  # a dead worker's trial must not hold a slot of the budget
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)  # the same, by heartbeat (RDB storages)
        counts = count_trials(study)
        if counts.finished + counts.running >= args.n_trials:
            return
        if args.deadline and time.time() >= args.deadline:
            log.info("timeout: no new trials")
            return
        study.optimize(
            objective, n_trials=1, catch=(Exception,), callbacks=[note_failure], gc_after_trial=True
        )
    log.error("stopping: trials %s failed; see their failure_reason in MLflow", failures)


# --- faults: trials and runs left behind by dead workers -------------------------------------


def fail_orphans(study: optuna.Study, dead: set[str] | None = None) -> list[int]:
    """Mark FAIL the RUNNING trials whose worker process is gone: the ones in `dead`, and any
    of this host's workers that no longer exist. Other hosts' workers are left to heartbeats."""
    import optuna
    from optuna.trial import TrialState

    from digits.lib.tracking import process_gone

    failed = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = trial.user_attrs.get("worker", "")
        if worker in (dead or set()) or process_gone(worker):
            try:
                study._storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL)
            except optuna.exceptions.UpdateFinishedTrialError:
                continue  # another process (a worker, the launcher) failed it first
            failed.append(trial.number)
    return failed


def close_orphan_runs(study: optuna.Study) -> list[str]:
    """End FAILED the MLflow runs of FAIL trials that are still RUNNING (their worker died)."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException
    from optuna.trial import TrialState

    client = MlflowClient()
    closed = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.FAIL,)):
        run_id = trial.user_attrs.get("mlflow_run_id")
        if not run_id:
            continue
        try:
            if client.get_run(run_id).info.status != "RUNNING":
                continue
        except MlflowException:
            continue
        client.set_tag(run_id, "optuna.state", "FAIL")
        client.set_tag(run_id, "failure_reason", "worker process died")
        client.set_terminated(run_id, status="FAILED")
        closed.append(run_id)
    return closed


# --- results ----------------------------------------------------------------------------------


def nest(flat: dict[str, Any]) -> dict[str, Any]:
    """{'a.b': 1} -> {'a': {'b': 1}}."""
    tree: dict[str, Any] = {}
    for key, value in flat.items():
        *parents, leaf = key.split(".")
        node = tree
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return tree


def trials_frame(study: optuna.Study) -> Any:
    """One row per trial: number, state, value, duration, epochs, params, MLflow run."""
    import pandas as pd

    rows = [
        {
            "number": t.number,
            "state": t.state.name,
            "value": t.value,
            "duration": t.duration.total_seconds() if t.duration else None,
            "epochs": t.user_attrs.get("epochs", len(t.intermediate_values)),
            **t.params,
            "mlflow_run_id": t.user_attrs.get("mlflow_run_id"),
        }
        for t in study.get_trials(deepcopy=False)
    ]
    return pd.DataFrame(rows, columns=None if rows else ["number", "state", "value"])


def best_record(study: optuna.Study) -> dict[str, Any]:
    """What `best_params.yaml` holds: the best trial's number, value and settings."""
    best = study.best_trial
    return {
        "study": study.study_name,
        "trial": best.number,
        "objective": OBJECTIVE,
        "value": best.value,
        "mlflow_run_id": best.user_attrs.get("mlflow_run_id"),
        "params": nest(best.user_attrs["overrides"]),
    }


def write_plots(study: optuna.Study, out: Path) -> list[Path]:
    """Optimization history, parameter importances and parallel coordinates as PNGs."""
    import optuna
    from optuna.visualization import matplotlib as ovm

    from digits.lib import plots

    written = []
    makers = {
        "optimization_history": ovm.plot_optimization_history,
        "param_importances": ovm.plot_param_importances,
        "parallel_coordinate": ovm.plot_parallel_coordinate,
    }
    for name, make in makers.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            try:
                axes = make(study)
            except (ValueError, RuntimeError) as err:  # e.g. too few complete trials
                log.warning("no %s plot: %s", name, err)
                continue
        figure = axes.figure if hasattr(axes, "figure") else axes.flat[0].figure
        figure.set_size_inches(9, 5.5)
        plots.save(figure, out / f"{name}.png")
        written.append(out / f"{name}.png")
    return written


def summary_metrics(study: optuna.Study, epochs_per_trial: int) -> dict[str, float]:
    """The sweep's totals: best value, trials by state, epochs trained and saved by pruning."""
    counts = count_trials(study)
    trials = study.get_trials(deepcopy=False)

    def epochs(state: str) -> int:
        return sum(
            t.user_attrs.get("epochs", len(t.intermediate_values))
            for t in trials
            if t.state.name == state
        )

    metrics = {
        "trials/complete": counts.complete,
        "trials/pruned": counts.pruned,
        "trials/failed": counts.failed,
        "epochs/trained": epochs("COMPLETE") + epochs("PRUNED"),
        "epochs/saved_by_pruning": epochs_per_trial * counts.pruned - epochs("PRUNED"),
    }
    if counts.complete:
        metrics["best/val_accuracy"] = study.best_value
    return metrics


def write_results(study: optuna.Study, out: Path, epochs_per_trial: int) -> dict[str, Any]:
    """trials.csv, best_params.yaml, summary.yaml and the plots in `out`; returns the summary."""
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / "trials.csv", trials_frame(study).to_csv(index=False, float_format="%.6g"))
    summary: dict[str, Any] = summary_metrics(study, epochs_per_trial)
    if summary.get("best/val_accuracy") is not None:
        best = best_record(study)
        write_text(out / "best_params.yaml", yaml.safe_dump(best, sort_keys=False))
        summary["best"] = best
    summary["plots"] = [str(p) for p in write_plots(study, out)]
    return summary


# --- the launcher -----------------------------------------------------------------------------


def worker_command(args: argparse.Namespace, parent: str, seed: int) -> list[str]:
    """The command line of one worker process (the storage URL goes in its environment)."""
    command = [sys.executable, "-m", "digits.tools.sweep", "--params", str(args.params), "worker"]
    command += ["--study", args.study, "--data", str(args.data)]
    command += ["--parent-run-id", parent, "--seed", str(seed), "--n-trials", str(args.n_trials)]
    if args.timeout:
        command += ["--deadline", str(time.time() + args.timeout)]
    return command


def run_workers(
    commands: list[list[str]], storage: str, on_exit: Callable[[str, int], None]
) -> dict[str, int]:
    """Start the workers and wait for them, calling `on_exit(worker id, exit code)` as each one
    ends (at once, so a killed worker's trial is freed while the others work on); Ctrl-C or
    SIGTERM is passed on to each as SIGINT. Returns {worker id: exit code}."""
    from digits.lib.tracking import process_id

    env = {
        **os.environ,
        "OPTUNA_STORAGE": storage,
    }  # not on the command line: it may hold a password
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


def sweep(params: Params, args: argparse.Namespace) -> dict[str, Any]:
    """Run the sweep; returns its summary (also in `args.out` and the parent MLflow run)."""
    import mlflow

    from digits.lib import tracking
    from digits.lib.config import flatten

    assert params.sweep is not None
    root = tracking.project_root(args.params)
    url = storage_url(params.sweep, root, args.storage)
    repair_storage(url)
    study = open_study(params, url, args.study, params.sweep.seed)
    if failed := fail_orphans(study):
        log.info("trials %s were left RUNNING by dead workers: marked FAIL", failed)
    epochs = trial_epochs(params)
    counts = count_trials(study)
    log.info("study %r in %s: %s", args.study, redact(url), counts)
    tracking.setup(params.mlflow, root)
    close_orphan_runs(study)
    if counts.finished >= args.n_trials:
        log.info(
            "%d finished trials already (target %d): nothing to run; raise N_TRIALS to go on",
            counts.finished,
            args.n_trials,
        )
        return write_results(study, args.out, epochs)

    tags = {"optuna.study": args.study, "optuna.storage": redact(url), "sweep": "parent"}
    with tracking.tracked_run(run_name=f"sweep-{args.study}", tags=tags) as parent:
        mlflow.log_params(
            {
                f"sweep.{k}": v
                for k, v in flatten(params.sweep.model_dump()).items()
                if k not in ("study", "storage", "n_trials", "timeout")
            }
        )
        mlflow.log_params(
            {
                "sweep.study": args.study,
                "sweep.n_trials": args.n_trials,
                "sweep.workers": args.workers,
            }
        )
        base_seed = params.sweep.seed + len(study.trials)  # a resumed sweep samples anew
        commands = [
            worker_command(args, parent.info.run_id, base_seed + i) for i in range(args.workers)
        ]

        def on_exit(worker: str, code: int) -> None:
            if code and (failed := fail_orphans(study, {worker})):
                log.warning(
                    "worker %s exited with %d: its trials %s marked FAIL", worker, code, failed
                )

        try:
            codes = run_workers(commands, url, on_exit)
        finally:
            study = open_study(params, url, args.study, params.sweep.seed)
            if failed := fail_orphans(study):
                log.warning("trials %s lost their worker: marked FAIL", failed)
            close_orphan_runs(study)
        if bad := {w: c for w, c in codes.items() if c}:
            log.warning("workers exited abnormally: %s", bad)
        summary = write_results(study, args.out, epochs)
        mlflow.log_metrics({k: v for k, v in summary.items() if k.count("/") == 1})
        if best := summary.get("best"):
            mlflow.log_params({f"best.{k}": v for k, v in flatten(best["params"]).items()})
            mlflow.set_tag("best.trial", best["trial"])
            mlflow.log_artifact(str(args.out / "best_params.yaml"), "sweep")
        mlflow.log_artifact(str(args.out / "trials.csv"), "sweep")
        for plot in summary["plots"]:
            mlflow.log_artifact(plot, "sweep")
    return summary


# --- promote ----------------------------------------------------------------------------------


def promote(params_path: Path, overrides: dict[str, Any]) -> None:
    """Write dotted-key settings into `params.yaml`, keeping its comments and layout; the
    result is validated before it replaces the file."""
    from ruamel.yaml import YAML

    yaml_rt = YAML()
    yaml_rt.preserve_quotes = True
    yaml_rt.width = 4096  # never wrap a line
    yaml_rt.indent(mapping=2, sequence=4, offset=2)  # lists indented under their key
    yaml_rt.representer.add_representer(
        type(None), lambda r, _: r.represent_scalar("tag:yaml.org,2002:null", "null")
    )
    document = yaml_rt.load(params_path.read_text())
    for key, value in overrides.items():
        *parents, leaf = key.split(".")
        node = document
        for part in parents:
            node = node[part]
        node[leaf] = value
    with atomic_path(params_path) as tmp:
        with tmp.open("w") as f:
            yaml_rt.dump(document, f)
        parse_params(yaml.safe_load(tmp.read_text()), str(params_path))


# --- command line -----------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The subcommands and their options; defaults come from `sweep:` in params.yaml."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run (or resume) the sweep")
    run.add_argument("--workers", type=int, default=1)
    run.add_argument("--out", type=Path, default=Path("reports/sweep"))
    work_ = commands.add_parser("worker", help="internal: one worker process")
    work_.add_argument("--parent-run-id", required=True)
    work_.add_argument("--seed", type=int, required=True)
    work_.add_argument("--deadline", type=float)
    for sub in (run, work_):
        sub.add_argument("--data", type=Path, default=Path("data/processed"))
        sub.add_argument("--n-trials", type=int)
        sub.add_argument("--study")
        sub.add_argument("--storage")
    run.add_argument("--timeout", type=float)
    show = commands.add_parser("storage", help="print the storage URL, password masked")
    show.add_argument(
        "--show-password", action="store_true", help="print the password too (it is secret)"
    )
    for sub in (commands.add_parser("promote", help="best trial -> params.yaml"), show):
        sub.add_argument("--study")
        sub.add_argument("--storage")
    return parser.parse_args(argv)


@stage_main
def main(argv: Sequence[str] | None = None) -> None:
    """CLI entry point (`make sweep`, `make promote`, `make dashboard`)."""
    args = parse_args(argv)
    params = load_params(args.params)
    if params.sweep is None:
        raise ParamsError(f"{args.params}: no `sweep:` section; see the README")
    cfg = params.sweep
    args.study = args.study or cfg.study
    if getattr(args, "n_trials", None) is None and args.command in ("run", "worker"):
        args.n_trials = cfg.n_trials
    if args.command == "run" and args.timeout is None:
        args.timeout = cfg.timeout
    from digits.lib import tracking

    root = tracking.project_root(args.params)
    url = storage_url(cfg, root, args.storage)
    if args.command == "storage":
        print(url if args.show_password else redact(url))
    elif args.command == "worker":
        args.storage = url
        work(params, args)
    elif args.command == "run":
        if args.workers < 1:
            raise ParamsError("--workers must be at least 1")
        summary = sweep(params, args)
        best = summary.get("best")
        print(f"sweep {args.study}: {count_trials_line(summary)}")
        if best:
            print(
                f"best trial {best['trial']}: {OBJECTIVE} {best['value']:.4f}; "
                f"`make promote` writes its settings into {args.params}"
            )
    elif args.command == "promote":
        import optuna

        repair_storage(url)
        try:
            study = optuna.load_study(study_name=args.study, storage=open_storage(url, 60))
        except KeyError:
            raise ParamsError(f"no study {args.study!r} in {redact(url)}; check STUDY=") from None
        if not count_trials(study).complete:
            raise ParamsError(f"study {args.study!r} has no complete trial yet; run `make sweep`")
        best = study.best_trial
        promote(args.params, best.user_attrs["overrides"])
        print(f"trial {best.number} ({OBJECTIVE} {best.value:.4f}) written to {args.params}:")
        for key, value in best.user_attrs["overrides"].items():
            print(f"  {key}: {value}")
        print("now `dvc repro` (or `make repro`) trains it")


def count_trials_line(summary: dict[str, Any]) -> str:
    """'12 complete, 17 pruned, 1 failed'."""
    return ", ".join(
        f"{summary[k]} {k.split('/')[1]}"
        for k in ("trials/complete", "trials/pruned", "trials/failed")
    )


if __name__ == "__main__":
    main()
