"""The Keras callback that logs a fit's epochs to the active MLflow run."""

from __future__ import annotations

from typing import TYPE_CHECKING

import mlflow

from digits.lib.vocab import epoch_metrics

if TYPE_CHECKING:
    import keras


def epoch_logger() -> keras.callbacks.Callback:
    """A Keras callback that logs each epoch's metrics to the active run, step = epoch (from 1)."""
    import keras

    class EpochLogger(keras.callbacks.Callback):
        def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
            metrics = epoch_metrics(logs)
            # queued, written by MLflow's logging thread: each synchronous write commits to
            # the store (an fsync on SQLite) inside the fit
            mlflow.log_metrics(metrics, step=epoch + 1, synchronous=False)

    return EpochLogger()
