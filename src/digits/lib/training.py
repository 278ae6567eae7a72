"""Fitting a model from params on the processed splits; shared by `train` and the sweep."""

from __future__ import annotations

import math
import resource
import sys
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

import pandas as pd

from digits import PipelineError
from digits.lib import numpy_mlp
from digits.lib.batches import epoch_batches, steps_per_epoch
from digits.lib.config import ModelConfig, Params, TrainConfig
from digits.lib.config.runparams import run_params
from digits.lib.data import Split
from digits.lib.vocab import (
    SELECTED_EPOCH,
    TRAIN_EPOCHS,
    TRAIN_LOSS,
    TRAIN_PEAK_MEMORY_MB,
    TRAIN_SECONDS,
    VAL_ACCURACY,
    VAL_LOSS,
    best_epoch,
    history_frame,
    keras_name,
    selected,
)


class TrainingDiverged(PipelineError):
    """The loss became NaN or infinite; TerminateOnNaN stopped the fit."""


if TYPE_CHECKING:
    import keras

    from digits.lib.checkpoint import Checkpointer


def image_shape(n_features: int) -> tuple[int, int]:
    """The square image a flattened row came from (28 x 28 for MNIST)."""
    side = round(n_features**0.5)
    if side * side != n_features:
        raise ValueError(f"{n_features} features are not a square image")
    return side, side


def fit(
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    train: Split,
    val: Split | None,
    callbacks: Sequence[keras.callbacks.Callback] = (),
    verbose: int | None = None,
    checkpoint: Checkpointer | None = None,
) -> tuple[keras.Model, pd.DataFrame]:
    """Seed, build, compile and fit; returns the model (best epoch's weights when early stopping
    is on) and the per-epoch history in the metric vocabulary. With a `checkpoint`, the fit
    starts from its saved state (if any) and saves its state at each epoch's end. Without `val`
    (a refit) there is nothing to monitor: `train_cfg.patience` must be 0."""
    import keras

    from digits.lib.models import build_model, compile_model

    if model_cfg.type == "numpy_mlp":
        assert val is not None, "numpy_mlp has no refit mode"
        return fit_numpy(model_cfg, train_cfg, train, val, callbacks, verbose)
    assert val is not None or not train_cfg.patience, "early stopping needs validation data"
    keras.utils.set_random_seed(train_cfg.seed)
    steps = steps_per_epoch(len(train), train_cfg.batch_size)
    model = compile_model(build_model(model_cfg, image_shape(train.x.shape[1])), train_cfg, steps)
    standard: list[keras.callbacks.Callback] = [keras.callbacks.TerminateOnNaN()]
    stopping = None
    if train_cfg.patience:
        stopping = keras.callbacks.EarlyStopping(
            monitor=keras_name(train_cfg.monitor),
            patience=train_cfg.patience,
            restore_best_weights=True,
        )
        standard.append(stopping)
    done = 0
    if checkpoint is not None:
        done = checkpoint.restore(model)
        # after early stopping (it restores that state) and before the caller's callbacks (an
        # epoch is logged only once it is saved: a resume never logs it twice)
        standard.append(checkpoint.callback(stopping))
    if checkpoint is None or checkpoint.remaining(train_cfg.epochs):
        batches, order = epoch_batches(
            train.x, train.y, train_cfg.batch_size, train_cfg.seed, model_cfg.augment.elastic_field
        )
        logs = model.fit(
            batches,
            validation_data=None if val is None else (val.x, val.y),
            validation_batch_size=train_cfg.batch_size,
            shuffle=False,  # the batches come in each epoch's own order already
            epochs=train_cfg.epochs,
            initial_epoch=done,
            callbacks=[order, *standard, *callbacks],
            verbose=(1 if sys.stdout.isatty() else 2) if verbose is None else verbose,
        ).history
    else:  # killed after its last epoch was saved: nothing left to train
        logs = {}
        if stopping is not None and checkpoint.start and checkpoint.start.best_weights:
            model.set_weights(checkpoint.start.best_weights)
    if checkpoint is not None and checkpoint.history:
        logs = checkpoint.history  # the epochs before the resume too
    return model, check_finite(history_frame(logs))


def fit_numpy(
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    train: Split,
    val: Split,
    callbacks: Sequence[keras.callbacks.Callback],
    verbose: int | None,
) -> tuple[keras.Model, pd.DataFrame]:
    """The notes' from-scratch NumPy network: its own loop, the same history."""
    verbose = 1 if verbose is None else verbose
    model, logs = numpy_mlp.fit(model_cfg.numpy_mlp, train_cfg, train, val, callbacks, verbose)
    return model, check_finite(history_frame({k: [e[k] for e in logs] for k in logs[0]}))


def check_finite(history: pd.DataFrame) -> pd.DataFrame:
    """The history, if its training loss stayed finite; else TrainingDiverged."""
    if not all(math.isfinite(v) for v in history[TRAIN_LOSS]):
        raise TrainingDiverged(
            f"training loss became {history[TRAIN_LOSS].iloc[-1]} in epoch {len(history)}; "
            "lower train.learning_rate or pick another optimizer"
        )
    return history


def fit_logged(
    params: Params,
    train: Split,
    val: Split | None,
    callbacks: Sequence[keras.callbacks.Callback] = (),
    verbose: int | None = None,
    checkpoint: Checkpointer | None = None,
) -> tuple[keras.Model, pd.DataFrame, dict[str, float]]:
    """`fit` inside the active MLflow run: logs the params, every epoch's metrics (step = epoch)
    and a summary of the selected (restored) model; returns the model, history and summary.
    Without `val` (a refit) the summary has no validation metrics."""
    import mlflow

    from digits.lib.tracking.callbacks import epoch_logger

    mlflow.log_params(run_params(params))
    logger = epoch_logger()  # imports Keras and TensorFlow, which is not part of the fit
    started = time.perf_counter()
    model, history = fit(
        params.model, params.train, train, val, [logger, *callbacks], verbose, checkpoint
    )
    seconds = time.perf_counter() - started
    if checkpoint is not None and checkpoint.start is not None:
        seconds += checkpoint.start.seconds  # the fit time before the resume
    summary: dict[str, float] = {
        TRAIN_SECONDS: round(seconds, 2),
        TRAIN_EPOCHS: len(history),
        # the process's peak resident memory so far (Linux counts KiB): data, TensorFlow, model
        TRAIN_PEAK_MEMORY_MB: round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        # early stopping restores the best epoch's weights; without it the last epoch's stay
        SELECTED_EPOCH: (
            best_epoch(history, params.train.monitor) if params.train.patience else len(history)
        ),
    }
    if val is not None:
        val_loss, val_accuracy = model.evaluate(val.x, val.y, batch_size=1024, verbose=0)
        summary[selected(VAL_LOSS)] = float(val_loss)
        summary[selected(VAL_ACCURACY)] = float(val_accuracy)
    mlflow.log_metrics(summary)
    mlflow.log_param("model.n_params", model.count_params())
    return model, history, summary
