"""The figures people look at: learning curves, confusion matrix, digit galleries, weights.

Built on `matplotlib.figure.Figure`, not pyplot: no backend, no display and no global figure
list, so nothing happens at import and a stage on a desktop opens no window.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from digits.lib.files import atomic_path


def save(fig: Figure, path: Path) -> None:
    """Write a PNG atomically and release the figure."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    close(fig)


def close(fig: Figure) -> None:
    """Release a figure that pyplot made (Optuna's plots): pyplot keeps those alive."""
    import sys

    if "matplotlib.pyplot" in sys.modules:
        sys.modules["matplotlib.pyplot"].close(fig)


def learning_curves(history: pd.DataFrame) -> Figure:
    """Loss and accuracy per epoch, train against validation."""
    fig = Figure(figsize=(10, 3.8))
    axes = fig.subplots(1, 2)
    for ax, metric in zip(axes, ("loss", "accuracy"), strict=True):
        for split, style in (("train", "-o"), ("val", "-s")):
            column = f"{split}/{metric}"
            if column in history:
                ax.plot(history["epoch"], history[column], style, ms=3, label=column)
        ax.set(xlabel="epoch", ylabel=metric, title=metric)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    return fig


def confusion_heatmap(matrix: np.ndarray) -> Figure:
    """Counts of true (rows) against predicted (columns) digits."""
    from sklearn.metrics import ConfusionMatrixDisplay

    fig = Figure(figsize=(7, 6))
    ax = fig.subplots()
    ConfusionMatrixDisplay(matrix, display_labels=list(range(len(matrix)))).plot(
        ax=ax, cmap="Blues", colorbar=True, values_format="d"
    )
    ax.set_title(f"Confusion matrix ({matrix.trace()} / {matrix.sum()} correct)")
    return fig


def digit_gallery(
    images: np.ndarray,
    true: np.ndarray,
    pred: np.ndarray,
    confidence: np.ndarray,
    title: str,
    columns: int = 8,
) -> Figure:
    """A grid of digits captioned `true -> predicted (confidence)`."""
    rows = max(1, int(np.ceil(len(images) / columns)))
    fig = Figure(figsize=(columns * 1.3, rows * 1.5))
    axes = fig.subplots(rows, columns, squeeze=False)
    side = round(images.shape[1] ** 0.5) if images.ndim == 2 else images.shape[1]
    for ax in axes.flat:
        ax.axis("off")
    for ax, img, t, p, c in zip(axes.flat, images, true, pred, confidence, strict=False):
        ax.imshow(img.reshape(side, side), cmap="gray_r")
        ax.set_title(f"{t} -> {p} ({c:.0%})", fontsize=8, color="black" if t == p else "crimson")
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def weight_images(kernel: np.ndarray) -> Figure:
    """The ten learned weight images of a softmax model (kernel 784 x 10): red pushes a class up,
    blue pushes it down."""
    side = round(kernel.shape[0] ** 0.5)
    limit = float(np.abs(kernel).max())
    fig = Figure(figsize=(kernel.shape[1] * 1.2, 1.6))
    axes = fig.subplots(1, kernel.shape[1])
    for digit, ax in enumerate(axes):
        ax.imshow(kernel[:, digit].reshape(side, side), cmap="seismic", vmin=-limit, vmax=limit)
        ax.set_title(str(digit))
        ax.axis("off")
    fig.suptitle("Softmax weights per digit")
    return fig
