"""Scoring a model on the test set: the metrics `evaluate` reports (and `make repeat` reports
per seed), computed once from the predicted class probabilities. Pure: no files, no MLflow."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import pandas as pd

from digits.lib.data import Split
from digits.lib.idx import NUM_CLASSES
from digits.lib.shifts import Predictor, shifted
from digits.lib.vocab import (
    SHIFTED_VAL_ACCURACY,
    TEST_ACCURACY,
    TEST_ECE,
    TEST_ERRORS,
    TEST_LOSS,
    TEST_MACRO_F1,
    TEST_MACRO_PRECISION,
    TEST_MACRO_RECALL,
)

CALIBRATION_BINS = 15


@dataclass(frozen=True)
class Evaluation:
    """One model's test predictions and everything `evaluate` reports of them, each computed
    once: headline metrics, per-class scores, the confusion matrix and the calibration bins."""

    labels: np.ndarray
    probabilities: np.ndarray
    accuracy: float
    loss: float
    errors: int
    ece: float
    macro_precision: float
    macro_recall: float
    macro_f1: float
    per_class: pd.DataFrame
    confusion: np.ndarray
    calibration: pd.DataFrame  # the reliability diagram's bins
    shifted_val_accuracy: float | None = None  # with evaluate.shifts on

    @property
    def predicted(self) -> np.ndarray:
        return self.probabilities.argmax(axis=1)

    @property
    def metrics(self) -> dict[str, float]:
        """In the project's vocabulary, as `reports/metrics.json` holds them."""
        metrics = {
            TEST_ACCURACY: self.accuracy,
            TEST_LOSS: self.loss,
            TEST_MACRO_PRECISION: self.macro_precision,
            TEST_MACRO_RECALL: self.macro_recall,
            TEST_MACRO_F1: self.macro_f1,
            TEST_ERRORS: self.errors,
            TEST_ECE: self.ece,
        }
        if self.shifted_val_accuracy is not None:
            metrics[SHIFTED_VAL_ACCURACY] = self.shifted_val_accuracy
        return metrics


def score(labels: np.ndarray, probabilities: np.ndarray) -> Evaluation:
    """Everything `evaluate` reports, from true labels and predicted class probabilities."""
    from sklearn.metrics import (
        accuracy_score,
        confusion_matrix,
        log_loss,
        precision_recall_fscore_support,
    )

    classes = list(range(NUM_CLASSES))
    predicted = probabilities.argmax(axis=1)
    precision, recall, f1, support = precision_recall_fscore_support(
        labels, predicted, labels=classes, zero_division=0
    )
    per_class = pd.DataFrame(
        {"digit": classes, "precision": precision, "recall": recall, "f1": f1, "support": support}
    )
    ece, bins = calibration(labels, probabilities)
    return Evaluation(
        labels=labels,
        probabilities=probabilities,
        accuracy=float(accuracy_score(labels, predicted)),
        loss=float(log_loss(labels, probabilities, labels=classes)),
        errors=int((predicted != labels).sum()),
        ece=ece,
        macro_precision=float(precision.mean()),
        macro_recall=float(recall.mean()),
        macro_f1=float(f1.mean()),
        per_class=per_class,
        confusion=confusion_matrix(labels, predicted, labels=classes),
        calibration=bins,
    )


def evaluate(predict: Predictor, test: Split, shifts: int, val: Split | None = None) -> Evaluation:
    """Score a model (`predict`: images -> class probabilities) on the test split, averaged
    over `shifts`' views; with shifts and `val`, the same views' validation accuracy too (the
    check that shifting helps, made without the test set)."""
    scored = score(test.labels, shifted(predict, shifts)(test.x))
    if not shifts or val is None:
        return scored
    on_val = shifted(predict, shifts)(val.x).argmax(axis=1)
    return dataclasses.replace(scored, shifted_val_accuracy=float((on_val == val.labels).mean()))


def calibration(
    labels: np.ndarray, probabilities: np.ndarray, n_bins: int = CALIBRATION_BINS
) -> tuple[float, pd.DataFrame]:
    """Expected calibration error: the test images binned by confidence (the top softmax
    probability) into equal-width bins, the gap between each bin's accuracy and its mean
    confidence, weighted by its share of images. Returns it and the bins (the reliability
    diagram's data)."""
    confidence = probabilities.max(axis=1)
    right = probabilities.argmax(axis=1) == labels
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    # bins are (lower, upper]; a confidence of exactly 0 cannot happen with 10 classes
    which = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, n_bins - 1)
    count = np.bincount(which, minlength=n_bins)
    safe = np.maximum(count, 1)
    mean_confidence = np.bincount(which, weights=confidence, minlength=n_bins) / safe
    accuracy = np.bincount(which, weights=right, minlength=n_bins) / safe
    ece = float((count / len(labels) * np.abs(accuracy - mean_confidence)).sum())
    bins = pd.DataFrame(
        {
            "lower": edges[:-1],
            "upper": edges[1:],
            "count": count,
            "confidence": mean_confidence,
            "accuracy": accuracy,
        }
    )
    return ece, bins


def fixed_and_broke(
    labels: np.ndarray, champion: np.ndarray, challenger: np.ndarray
) -> pd.DataFrame:
    """The test digits exactly one of the two models gets right: `fixed` (the challenger is
    right, the champion was wrong) first, then `broke`, each by test index."""
    before, after = champion == labels, challenger == labels
    rows = np.flatnonzero(before != after)
    table = pd.DataFrame(
        {
            "test_index": rows,
            "digit": labels[rows],
            "champion": champion[rows],
            "challenger": challenger[rows],
            "change": np.where(after[rows], "fixed", "broke"),
        }
    )
    return table.sort_values(["change", "test_index"], ascending=[False, True], ignore_index=True)
