"""The metric vocabulary, the same in MLflow, `reports/*.json`, the DVC plots and the sweep.

Per epoch (step = epoch, from 1): `train/loss`, `train/accuracy`, `val/loss`, `val/accuracy`.
Once per run: `train/seconds`, `train/epochs`, `train/peak_memory_mb`, `selected/epoch`,
`selected/val_loss`, `selected/val_accuracy`, and `evaluate`'s `test/accuracy`, `test/loss`,
`test/errors`, `test/ece` and `test/macro_{precision,recall,f1}` (plus
`selected/shifted_val_accuracy` when `evaluate.shifts` is on).

Keras' names (`val_accuracy`, ...) are translated here and nowhere else. Importing this module
loads neither Keras, MLflow nor pandas.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd

# Every metric name the project logs, once; modules use these constants, never the strings.
TRAIN_LOSS = "train/loss"
TRAIN_ACCURACY = "train/accuracy"
VAL_LOSS = "val/loss"
VAL_ACCURACY = "val/accuracy"
TRAIN_SECONDS = "train/seconds"
TRAIN_EPOCHS = "train/epochs"
TRAIN_PEAK_MEMORY_MB = "train/peak_memory_mb"
SELECTED_EPOCH = "selected/epoch"
SELECTED_VAL_LOSS = "selected/val_loss"
SELECTED_VAL_ACCURACY = "selected/val_accuracy"
TEST_ACCURACY = "test/accuracy"
TEST_LOSS = "test/loss"
TEST_ERRORS = "test/errors"
TEST_ECE = "test/ece"
TEST_MACRO_PRECISION = "test/macro_precision"
TEST_MACRO_RECALL = "test/macro_recall"
TEST_MACRO_F1 = "test/macro_f1"
MODEL_N_PARAMS = "model.n_params"

KERAS_TO_METRIC = {
    "loss": TRAIN_LOSS,
    "accuracy": TRAIN_ACCURACY,
    "val_loss": VAL_LOSS,
    "val_accuracy": VAL_ACCURACY,
}
METRIC_TO_KERAS = {v: k for k, v in KERAS_TO_METRIC.items()}

# the kept weights' validation accuracy under `evaluate`'s test-time shifts
SHIFTED_VAL_ACCURACY = "selected/shifted_val_accuracy"

# What a sweep can optimise (`sweep.objectives`), each read from a trained run's summary:
# validation metrics at the kept epoch, the model's size and the fit's time. Never a test metric.
OBJECTIVES = {
    VAL_ACCURACY: SELECTED_VAL_ACCURACY,
    VAL_LOSS: SELECTED_VAL_LOSS,
    MODEL_N_PARAMS: MODEL_N_PARAMS,
    TRAIN_SECONDS: TRAIN_SECONDS,
}


def metric_name(keras_name: str) -> str:
    """`val_accuracy` -> `val/accuracy`; a name outside the vocabulary is kept as it is."""
    return KERAS_TO_METRIC.get(keras_name, keras_name)


def keras_name(metric: str) -> str:
    """`val/accuracy` -> `val_accuracy`, the key Keras uses in `logs` and `History`."""
    try:
        return METRIC_TO_KERAS[metric]
    except KeyError:
        raise ValueError(
            f"{metric!r} is not a per-epoch metric: {sorted(METRIC_TO_KERAS)}"
        ) from None


def epoch_metrics(logs: Mapping[str, float] | None) -> dict[str, float]:
    """A Keras `logs` dict -> the per-epoch metrics in the vocabulary (others dropped)."""
    return {KERAS_TO_METRIC[k]: float(v) for k, v in (logs or {}).items() if k in KERAS_TO_METRIC}


def higher_is_better(metric: str) -> bool:
    """Accuracy-like metrics are maximised, losses and counts (errors, seconds) minimised."""
    return metric.rsplit("/", 1)[-1].endswith("accuracy")


def direction(metric: str) -> str:
    """Optuna's word for the way `metric` improves: `maximize` or `minimize`."""
    return "maximize" if higher_is_better(metric) else "minimize"


def is_better(metric: str, value: float, than: float) -> bool:
    """Whether `value` strictly improves on `than` for `metric`."""
    return value > than if higher_is_better(metric) else value < than


def selected(metric: str) -> str:
    """The run-level name of a per-epoch validation metric at the kept epoch:
    `val/accuracy` -> `selected/val_accuracy`."""
    return "selected/" + keras_name(metric)


def history_frame(history: Mapping[str, list[float]]) -> pd.DataFrame:
    """Keras History.history -> one row per epoch (from 1) in the metric vocabulary."""
    import pandas as pd

    frame = pd.DataFrame({metric_name(k): v for k, v in history.items()})
    frame.insert(0, "epoch", range(1, len(frame) + 1))
    for curve in KERAS_TO_METRIC.values():  # a refit has no validation: empty, for DVC's plots
        if curve not in frame:
            frame[curve] = float("nan")
    return frame


def best_epoch(history: pd.DataFrame, monitor: str) -> int:
    """The epoch (from 1) whose weights early stopping keeps: the first best value."""
    column = history[monitor]
    row = column.idxmax() if higher_is_better(monitor) else column.idxmin()
    return int(history["epoch"][row])
