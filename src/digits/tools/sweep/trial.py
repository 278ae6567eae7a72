"""One trial: sample the space, train (with pruning, when the study can be pruned) in a child
MLflow run, one nested run per seed when `sweep.repeats > 1`, and return the objective(s)."""

from __future__ import annotations

import contextlib
import signal
import statistics
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from digits import PipelineError
from digits.lib.config import Params
from digits.lib.config.sweep import Dimension
from digits.lib.vocab import OBJECTIVES, epoch_metrics
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

    def checkpointer(self, trial: optuna.Trial, params: Params) -> Checkpointer | None:
        """The trial's checkpointer: a retry reads the one of the first attempt it retries."""
        from digits.lib.checkpoint import resumable

        if self.checkpoints is None or self.params.sweep.repeats > 1:  # type: ignore[union-attr]
            return None  # several seeds per trial: not resumed (a retry starts again)
        first = trial.user_attrs.get("first_attempt", trial.number)  # retries inherit it
        trial.set_user_attr("first_attempt", first)
        return resumable(params, self.data_digest, self.checkpoints / f"trial-{first}.npz")

    def __call__(self, trial: optuna.Trial) -> float | list[float]:
        import keras
        import mlflow
        import optuna

        from digits.lib.checkpoint import remove, reopened
        from digits.lib.config import ParamsError
        from digits.lib.config.runparams import run_params
        from digits.lib.process import process_id
        from digits.lib.tracking import runs
        from digits.lib.tracking.seeds import fit_seeds, log_spread
        from digits.lib.training import fit_logged

        trial.set_user_attr("worker", process_id())  # first: who owns this trial
        self.interruption.check()
        # a fresh graph: otherwise every earlier trial's layers stay in this process
        keras.backend.clear_session()
        sweep = self.params.sweep
        assert sweep is not None
        overrides = {**sweep.fixed, **{k: suggest(trial, k, d) for k, d in sweep.space.items()}}
        trial.set_user_attr("overrides", overrides)
        metric = reported_metric(sweep)
        pruning = pruning_callback(trial, metric) if metric else None

        def callbacks(seed_index: int) -> list[keras.callbacks.Callback]:
            # the first seed alone is judged: it is the same seed in every trial, so the pruner
            # compares like with like, and a pruned trial trains no further seeds
            judged = [pruning] if pruning and seed_index == 0 else []
            return [*judged, self.interruption.callback()]

        tags = {"optuna.study": self.study_name, "optuna.trial": str(trial.number)}
        tags.update(retry_tags(trial))
        name = f"{self.study_name}-{trial.number:03d}"
        try:
            params, invalid = self.params.with_overrides(overrides), None
        except ParamsError as err:  # raised inside the run below, so that its run says why
            params, invalid = self.params, err
        saver = self.checkpointer(trial, params) if invalid is None else None
        start = saver.start if saver else None
        # nested: in a one-worker sweep the parent run is the active run of this very process
        with (
            runs.tracked_run(
                run_name=name,
                parent_run_id=self.parent_run_id,
                nested=True,
                run_id=start.run_id if start else None,  # the dead attempt's run, reopened
                tags=tags,
            ) as run,
            taken_over(self, trial),
        ):
            trial.set_user_attr("mlflow_run_id", run.info.run_id)
            try:
                if invalid is not None:
                    raise invalid
                if saver is not None:
                    saver.run_id = run.info.run_id
                if start is not None:
                    reopened(run.info.run_id, start)
                    mlflow.set_tags(tags)  # this attempt's trial number and retry tags
                    trial.set_user_attr("resumed_after_epoch", start.epoch)
                if sweep.repeats == 1:
                    model, _, summary = fit_logged(
                        params, self.train, self.val, callbacks(0), verbose=0, checkpoint=saver
                    )
                    rows = [{**summary, "model.n_params": model.count_params()}]
                else:
                    mlflow.log_params({**run_params(params), "sweep.repeats": sweep.repeats})
                    rows = fit_seeds(
                        params,
                        self.train,
                        self.val,
                        sweep.repeats,
                        callbacks,
                        stop=lambda: bool(pruning and pruning.pruned_epoch),
                    )
                    if not pruning or not pruning.pruned_epoch:  # one partial seed has no spread
                        log_spread(rows)
            except BaseException:
                mlflow.set_tag("optuna.state", "FAIL")
                raise
            finally:
                if saver is not None:  # a killed process never gets here: its state stays
                    remove(saver.path)
            pruned = pruning.pruned_epoch if pruning else None
            trial.set_user_attr("epochs", int(sum(r["train/epochs"] for r in rows)))
            trial.set_user_attr("scores", scores(rows))
            mlflow.set_tag("optuna.state", "PRUNED" if pruned else "COMPLETE")
        if pruned:
            raise optuna.TrialPruned(f"pruned after epoch {pruned}")
        values = [scores(rows)[objective] for objective in sweep.objectives]
        return values[0] if len(values) == 1 else values
