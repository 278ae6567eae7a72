"""Predictions for `predict`'s inputs: rows streamed to the model a chunk at a time, each row's
top classes as one line `seven.png: 7  (7: 0.982, 1: 0.011, 9: 0.004)`."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from digits import PipelineError
from digits.lib.inputs import CHUNK, Rows, Unreadable
from digits.lib.shifts import Predictor


@dataclass(frozen=True)
class Prediction:
    """One input row's most probable classes as (label, probability), most probable first."""

    name: str
    ranked: list[tuple[int, float]]

    @property
    def label(self) -> int:
        return self.ranked[0][0]

    def line(self) -> str:
        """`seven.png: 7  (7: 0.982, 1: 0.011, 9: 0.004)`."""
        scores = ", ".join(f"{label}: {p:.3f}" for label, p in self.ranked)
        return f"{self.name}: {self.label}  ({scores})"


def top_k(probabilities: np.ndarray, k: int = 3) -> list[list[tuple[int, float]]]:
    """Per row, the `k` most probable classes as (label, probability), most probable first
    (ties: the lower label first)."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    order = np.argsort(-probabilities, axis=1, kind="stable")[:, :k]
    return [
        [(int(c), float(p[c])) for c in row] for p, row in zip(probabilities, order, strict=True)
    ]


def predict_rows(
    predictor: Predictor, names: Sequence[str], rows: np.ndarray, k: int
) -> list[Prediction]:
    """One prediction per row: its name and its top-`k` classes."""
    probabilities = np.asarray(predictor(rows.astype(np.float32, copy=False)), dtype=np.float64)
    if probabilities.ndim != 2 or len(probabilities) != len(names):
        raise PipelineError(
            f"the model returned shape {probabilities.shape} for {len(names)} inputs; "
            "expected (n, 10) class probabilities"
        )
    return [Prediction(n, r) for n, r in zip(names, top_k(probabilities, k), strict=True)]


def predict_inputs(
    load: Callable[[], Predictor], inputs: Iterable[Rows | Unreadable], k: int
) -> Iterator[Prediction | Unreadable]:
    """Every input's predictions, in order, and each unreadable input as it comes. Rows go to
    the model `CHUNK` at a time, so memory stays flat however many files or rows there are;
    the model is loaded (`load()`) with the first rows, not when no input can be read."""
    predictor: Predictor | None = None
    names: list[str] = []
    pending: list[np.ndarray] = []
    for item in inputs:
        if isinstance(item, Unreadable):
            yield item
            continue
        names += item.names
        pending.append(item.rows)
        if len(names) >= CHUNK:
            predictor = predictor or load()
            yield from predict_rows(predictor, names, np.concatenate(pending), k)
            names, pending = [], []
    if names:
        yield from predict_rows(predictor or load(), names, np.concatenate(pending), k)
