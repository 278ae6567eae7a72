"""Test-time shifts: a model's class probabilities averaged over copies of each image moved by
whole pixels, the cheap test-time augmentation of the CIFAR-10 speedruns.

`params.yaml`'s `evaluate.shifts` sets how far: `evaluate`, `predict` and `make repeat` apply it.
The model file itself stays one view, so a model served by `mlflow models serve` answers
unshifted.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

SIDE = 28
BATCH = 1024  # images per forward pass when predicting

Predictor = Callable[[np.ndarray], np.ndarray]


def keras_predictor(model: Any) -> Predictor:
    """A Keras model's `predict` as a Predictor: images -> class probabilities (NumPy)."""
    return lambda x: np.asarray(model.predict(x, batch_size=BATCH, verbose=0))


def offsets(shifts: int) -> list[tuple[int, int]]:
    """Every (rows, columns) move of at most `shifts` pixels along each axis, (0, 0) first:
    (2 * shifts + 1) ** 2 views."""
    steps = range(-shifts, shifts + 1)
    moves = [(dy, dx) for dy in steps for dx in steps]
    moves.remove((0, 0))
    return [(0, 0), *moves]


def shift_images(x: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """Images (n, 784) or (n, 28, 28) moved `dy` rows down and `dx` columns right; what moves in
    from the edge is black (0), as MNIST's border is."""
    images = x.reshape(-1, SIDE, SIDE)
    if dy == dx == 0:
        return x
    out = np.zeros_like(images)

    def span(d: int) -> tuple[slice, slice]:  # (destination, source) along one axis
        return slice(max(d, 0), SIDE + min(d, 0)), slice(max(-d, 0), SIDE + min(-d, 0))

    (rows_to, rows_from), (cols_to, cols_from) = span(dy), span(dx)
    out[:, rows_to, cols_to] = images[:, rows_from, cols_from]
    return out.reshape(x.shape)


def shifted(predict: Predictor, shifts: int) -> Predictor:
    """`predict` (images -> class probabilities) averaged over the `offsets(shifts)` views of
    its input; `predict` itself when `shifts` is 0."""
    if shifts == 0:
        return predict
    views = offsets(shifts)

    def averaged(x: np.ndarray) -> np.ndarray:
        total = np.zeros(0)
        for dy, dx in views:
            p = np.asarray(predict(shift_images(x, dy, dx)), dtype=np.float64)
            total = p if total.size == 0 else total + p
        return (total / len(views)).astype(np.float32)

    return averaged


def describe(shifts: int) -> str:
    """How predictions are made, for logs and the report."""
    if shifts == 0:
        return "one view per image (no test-time shifts)"
    n = (2 * shifts + 1) ** 2
    return (
        f"test-time shifts: each image's probabilities averaged over {n} views, moved by up to "
        f"{shifts} pixel{'s' if shifts > 1 else ''} along each axis (evaluate.shifts = {shifts})"
    )
