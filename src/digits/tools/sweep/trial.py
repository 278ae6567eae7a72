"""One trial: sample the space, train (with pruning, when the study can be pruned) in a child
MLflow run, one nested run per seed when `sweep.repeats > 1`, and return the objective(s)."""

from __future__ import annotations

import contextlib
import signal
import statistics
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from digits import PipelineError
from digits.lib.config import Params
from digits.lib.config.sweep import Dimension, SweepConfig
from digits.lib.vocab import OBJECTIVES, TRAIN_EPOCHS, epoch_metrics
from digits.tools.sweep.study import reported_metric

if TYPE_CHECKING:
    import keras
    import optuna

    from digits.lib.checkpoint import Checkpointer
    from digits.lib.data import Split


def suggest(trial: optuna.Trial, key: str, dim: Dimension) -> Any:
    """Sample one setting of the space."""
    if dim.choices is not None:
        return trial.suggest_categorical(key, dim.choices)
    if isinstance(dim.low, int) and isinstance(dim.high, int):
        return trial.suggest_int(key, dim.low, dim.high, log=dim.log)
    return trial.suggest_float(key, float(dim.low), float(dim.high), log=dim.log)  # type: ignore[arg-type]


def pruning_callback(trial: optuna.Trial, metric: str) -> keras.callbacks.Callback:
    """Reports `metric` to the trial after every epoch (step = epoch, from 1) and stops
    training when the pruner says so; `pruned_epoch` tells whether it did. Single-objective
    studies only: Optuna's `report` and `should_prune` raise in multi-objective ones."""
    import keras

    class Pruning(keras.callbacks.Callback):
        pruned_epoch: int | None = None

        def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
            with warnings.catch_warnings():  # a retry keeps the epochs its dead run reported
                warnings.filterwarnings("ignore", "The reported value is ignored")
                trial.report(epoch_metrics(logs)[metric], epoch + 1)
            if trial.should_prune():
                self.pruned_epoch = epoch + 1
                self.model.stop_training = True

    return Pruning()


class TakenOver(PipelineError):
    """Another process failed this worker's trial (its heartbeat went stale) and retried it."""


@contextlib.contextmanager
def taken_over(objective: Objective, trial: optuna.Trial) -> Iterator[None]:
    """When the trial fails because another process already failed it (this worker was cut
    off, paused or without network, long enough to be taken for dead: Optuna refuses to update
    it, or the database ended the session), say so, and note it in `objective.taken_over`."""
    try:
        yield
    except Exception as err:
        try:
            state = trial.study.trials[trial.number].state.name
        except Exception:
            raise err from None  # the storage is still out of reach: the error as it was
        if state == "RUNNING":
            raise
        objective.taken_over = trial.number
        raise TakenOver(
            f"trial {trial.number} was failed by another worker while this one trained it: this "
            f"worker's heartbeat went stale (host paused or lost its network); it was retried "
            f"({type(err).__name__})"
        ) from err


def retry_tags(trial: optuna.Trial) -> dict[str, str]:
    """`optuna.retry_of` (the trial this one retries), `optuna.retry_of_run` (its MLflow run)
    and `optuna.retry_inherited_epochs` (its reported epochs, kept) for a retried trial;
    nothing for a fresh one."""
    if (retried := trial.user_attrs.get("retry_of")) is None:
        return {}
    tags = {"optuna.retry_of": str(retried)}
    if run := trial.user_attrs.get("retry_of_run"):
        tags["optuna.retry_of_run"] = run
    tags["optuna.retry_inherited_epochs"] = str(trial.user_attrs.get("inherited_epochs", 0))
    return tags


class Interruption:
    """Ctrl-C / SIGTERM in a worker, deferred to safe points. Raised at an arbitrary point, a
    KeyboardInterrupt can land inside Optuna's journal lock, whose clean-up then breaks the
    lock for every other worker; instead the signal sets a flag that `check` (between trials,
    and after every execution of batches via `callback`) turns into KeyboardInterrupt."""

    def __init__(self) -> None:
        self.signal: str | None = None

    @contextlib.contextmanager
    def installed(self) -> Iterator[Interruption]:
        """Handle SIGINT and SIGTERM in this (main) thread while inside; the handlers from
        before come back after (a sweep with one worker runs it in the launcher's process)."""
        previous = {s: signal.signal(s, self._note) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield self
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)

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


def scores(rows: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """Every objective the vocabulary knows, as the mean over the seeds' rows."""
    return {name: statistics.fmean(r[key] for r in rows) for name, key in OBJECTIVES.items()}


def sample(trial: optuna.Trial, sweep: SweepConfig) -> dict[str, Any]:
    """The trial's settings: `sweep.fixed` and a sampled value of each setting of the space,
    kept as its `overrides` user attr (what `make promote` writes)."""
    overrides = {**sweep.fixed, **{k: suggest(trial, k, d) for k, d in sweep.space.items()}}
    trial.set_user_attr("overrides", overrides)
    return overrides


def deadline_callback(deadline: float) -> keras.callbacks.Callback:
    """Stops training at the first epoch end past `deadline` (Unix time): the sweep's time
    budget bounds a trial in flight too; `stopped_epoch` tells whether it did."""
    import keras

    class Deadline(keras.callbacks.Callback):
        stopped_epoch: int | None = None

        def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
            last = epoch + 1 >= self.params.get("epochs", 0)  # the fit ends here anyway
            if time.time() >= deadline and not last and not self.model.stop_training:
                self.stopped_epoch = epoch + 1
                self.model.stop_training = True

    return Deadline()


@dataclass
class Stops:
    """What may end a trial's training before its last epoch: the pruner (single-objective
    studies), Ctrl-C, and the sweep's deadline."""

    pruning: keras.callbacks.Callback | None
    interruption: Interruption
    deadline: keras.callbacks.Callback | None = None

    @classmethod
    def of(
        cls, trial: optuna.Trial, sweep: SweepConfig, interruption: Interruption, at: float | None
    ) -> Stops:
        metric = reported_metric(sweep)
        pruning = pruning_callback(trial, metric) if metric else None
        return cls(pruning, interruption, deadline_callback(at) if at else None)

    def callbacks(self, seed_index: int) -> list[keras.callbacks.Callback]:
        """The Keras callbacks of the trial's `seed_index`-th fit. The first seed alone is
        judged: it is the same seed in every trial, so the pruner compares like with like, and
        a pruned trial trains no further seeds."""
        judged = [self.pruning] if self.pruning and seed_index == 0 else []
        timed = [self.deadline] if self.deadline else []
        return [*judged, self.interruption.callback(), *timed]

    @property
    def reason(self) -> str | None:
        """Why training stopped early ('pruned after epoch 3'), or None."""
        if self.pruning and self.pruning.pruned_epoch:
            return f"pruned after epoch {self.pruning.pruned_epoch}"
        if self.deadline and self.deadline.stopped_epoch:
            return f"stopped by the sweep's timeout after epoch {self.deadline.stopped_epoch}"
        return None


def record(trial: optuna.Trial, rows: Sequence[Mapping[str, float]], stops: Stops) -> None:
    """The trial's epochs and scores (user attrs), and its state in its MLflow run."""
    import mlflow

    trial.set_user_attr("epochs", int(sum(r[TRAIN_EPOCHS] for r in rows)))
    trial.set_user_attr("scores", scores(rows))
    mlflow.set_tag("optuna.state", "PRUNED" if stops.reason else "COMPLETE")
    if stops.deadline and stops.deadline.stopped_epoch:
        mlflow.set_tag("optuna.stopped_by", "timeout")


@dataclass
class Objective:
    """Train one trial's configuration in a child run of the sweep's parent run."""

    params: Params
    train: Split
    val: Split
    parent_run_id: str
    study_name: str
    interruption: Interruption
    taken_over: int | None = None  # a trial another process failed under this worker
    # where each trial saves its state after every epoch, so a retry of a trial whose worker
    # died on this machine resumes it (None: never); and the train/val data's digest
    checkpoints: Path | None = None
    data_digest: str = ""
    deadline: float | None = None  # Unix time: trials in flight stop at their next epoch end

    @property
    def sweep(self) -> SweepConfig:
        assert self.params.sweep is not None
        return self.params.sweep

    def __call__(self, trial: optuna.Trial) -> float | list[float]:
        import keras
        import optuna

        from digits.lib.process import process_id

        trial.set_user_attr("worker", process_id())  # first: who owns this trial
        self.interruption.check()
        # a fresh graph: otherwise every earlier trial's layers stay in this process
        keras.backend.clear_session()
        overrides = sample(trial, self.sweep)
        stops = Stops.of(trial, self.sweep, self.interruption, self.deadline)
        params, invalid = self.trial_params(overrides)
        saver = self.checkpointer(trial, params) if invalid is None else None
        with self.child_run(trial, saver):
            if invalid is not None:  # raised in the run, so that its run says why
                raise invalid
            rows = self.fit(params, saver, stops)
            record(trial, rows, stops)
        if stops.reason:
            raise optuna.TrialPruned(stops.reason)
        values = [scores(rows)[objective] for objective in self.sweep.objectives]
        return values[0] if len(values) == 1 else values

    def trial_params(self, overrides: Mapping[str, Any]) -> tuple[Params, Exception | None]:
        """The params with the trial's settings, or the base params and why the settings are
        invalid (an out-of-range value in the space)."""
        from digits.lib.config import ParamsError

        try:
            return self.params.with_overrides(overrides), None
        except ParamsError as err:
            return self.params, err

    def checkpointer(self, trial: optuna.Trial, params: Params) -> Checkpointer | None:
        """The trial's checkpointer: a retry reads the one of the first attempt it retries."""
        from digits.lib.checkpoint import resumable

        if self.checkpoints is None or self.sweep.repeats > 1:
            return None  # several seeds per trial: not resumed (a retry starts again)
        first = trial.user_attrs.get("first_attempt", trial.number)  # retries inherit it
        trial.set_user_attr("first_attempt", first)
        return resumable(params, self.data_digest, self.checkpoints / f"trial-{first}.npz")

    @contextlib.contextmanager
    def child_run(self, trial: optuna.Trial, saver: Checkpointer | None) -> Iterator[None]:
        """Inside the trial's nested MLflow run: a new one, or the dead attempt's that `saver`
        resumes, reopened. A trial that raises is tagged FAIL there; one failed meanwhile by
        another process raises `TakenOver`; the checkpoint goes when the trial ends here (a
        killed process never gets to it: its retry resumes from it)."""
        import mlflow

        from digits.lib.checkpoint import remove, reopened
        from digits.lib.tracking import runs

        start = saver.start if saver else None
        tags = {"optuna.study": self.study_name, "optuna.trial": str(trial.number)}
        tags.update(retry_tags(trial))
        # nested: in a one-worker sweep the parent run is the active run of this very process
        with (
            runs.tracked_run(
                run_name=f"{self.study_name}-{trial.number:03d}",
                parent_run_id=self.parent_run_id,
                nested=True,
                run_id=start.run_id if start else None,
                tags=tags,
            ) as run,
            taken_over(self, trial),
        ):
            trial.set_user_attr("mlflow_run_id", run.info.run_id)
            try:
                if saver is not None:
                    saver.run_id = run.info.run_id
                if start is not None:
                    reopened(run.info.run_id, start)
                    mlflow.set_tags(tags)  # this attempt's trial number and retry tags
                    trial.set_user_attr("resumed_after_epoch", start.epoch)
                yield
            except BaseException:
                mlflow.set_tag("optuna.state", "FAIL")
                raise
            finally:
                if saver is not None:
                    remove(saver.path)

    def fit(
        self, params: Params, saver: Checkpointer | None, stops: Stops
    ) -> list[dict[str, float]]:
        """Train the trial's settings once (resumable from `saver`), or once per seed in
        nested runs when `sweep.repeats > 1`; one row of results per fit."""
        import mlflow

        from digits.lib.config.runparams import run_params
        from digits.lib.tracking.seeds import fit_seeds, log_spread
        from digits.lib.training import fit_logged

        repeats = self.sweep.repeats
        if repeats == 1:
            model, _, summary = fit_logged(
                params, self.train, self.val, stops.callbacks(0), verbose=0, checkpoint=saver
            )
            return [{**summary, "model.n_params": model.count_params()}]
        mlflow.log_params({**run_params(params), "sweep.repeats": repeats})
        rows = fit_seeds(
            params, self.train, self.val, repeats, stops.callbacks, stop=lambda: bool(stops.reason)
        )
        if not stops.reason:  # one partial seed has no spread
            log_spread(rows)
        return rows
