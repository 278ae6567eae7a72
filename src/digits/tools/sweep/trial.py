"""One trial: sample the space, train with pruning in a child MLflow run, return the objective."""

from __future__ import annotations

import signal
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from digits.lib.config import Dimension, Params
from digits.lib.vocab import epoch_metrics, selected
from digits.tools.sweep.study import OBJECTIVE

if TYPE_CHECKING:
    import keras
    import optuna

    from digits.lib.data import Split


def suggest(trial: optuna.Trial, key: str, dim: Dimension) -> Any:
    """Sample one setting of the space."""
    if dim.choices is not None:
        return trial.suggest_categorical(key, dim.choices)
    if isinstance(dim.low, int) and isinstance(dim.high, int):
        return trial.suggest_int(key, dim.low, dim.high, log=dim.log)
    return trial.suggest_float(key, float(dim.low), float(dim.high), log=dim.log)  # type: ignore[arg-type]


def pruning_callback(trial: optuna.Trial) -> keras.callbacks.Callback:
    """Reports the objective to the trial after every epoch (step = epoch, from 1) and
    stops training when the pruner says so; `pruned_epoch` tells whether it did."""
    import keras

    class Pruning(keras.callbacks.Callback):
        pruned_epoch: int | None = None

        def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
            trial.report(epoch_metrics(logs)[OBJECTIVE], epoch + 1)
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
        import keras
        import mlflow
        import optuna

        from digits.lib.tracking import runs
        from digits.lib.training import fit_logged

        trial.set_user_attr("worker", runs.process_id())  # first: who owns this trial
        self.interruption.check()
        # a fresh graph: otherwise every earlier trial's layers stay in this process
        keras.backend.clear_session()
        sweep = self.params.sweep
        assert sweep is not None
        overrides = {**sweep.fixed, **{k: suggest(trial, k, d) for k, d in sweep.space.items()}}
        trial.set_user_attr("overrides", overrides)
        pruning = pruning_callback(trial)
        tags = {"optuna.study": self.study_name, "optuna.trial": str(trial.number)}
        name = f"{self.study_name}-{trial.number:03d}"
        with runs.tracked_run(run_name=name, parent_run_id=self.parent_run_id, tags=tags) as run:
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
        return summary[selected(OBJECTIVE)]
