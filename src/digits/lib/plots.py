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
    """Write a PNG atomically and release the figure. A figure laid out by its layout engine
    (`layout="tight"`) is drawn once; cropping to `bbox_inches="tight"` would lay it out and
    measure every text a second time."""
    bbox = None if fig.get_layout_engine() is not None else "tight"
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches=bbox)
    close(fig)


def close(fig: Figure) -> None:
    """Release a figure that pyplot made (Optuna's plots): pyplot keeps those alive."""
    import sys

    if "matplotlib.pyplot" in sys.modules:
        sys.modules["matplotlib.pyplot"].close(fig)


def learning_curves(history: pd.DataFrame) -> Figure:
    """Loss and accuracy per epoch, train against validation."""
    fig = Figure(figsize=(10, 3.8), layout="tight")
    axes = fig.subplots(1, 2)
    for ax, metric in zip(axes, ("loss", "accuracy"), strict=True):
        for split, style in (("train", "-o"), ("val", "-s")):
            column = f"{split}/{metric}"
            if column in history:
                ax.plot(history["epoch"], history[column], style, ms=3, label=column)
        ax.set(xlabel="epoch", ylabel=metric, title=metric)
        ax.grid(alpha=0.3)
        ax.legend()
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
    fig = Figure(figsize=(columns * 1.3, rows * 1.5), layout="tight")
    # no ticks: hidden, but laying out still measures every one of them
    axes = fig.subplots(rows, columns, squeeze=False, subplot_kw={"xticks": [], "yticks": []})
    side = round(images.shape[1] ** 0.5) if images.ndim == 2 else images.shape[1]
    for ax in axes.flat:
        ax.axis("off")
    for ax, img, t, p, c in zip(axes.flat, images, true, pred, confidence, strict=False):
        ax.imshow(img.reshape(side, side), cmap="gray_r")
        ax.set_title(f"{t} -> {p} ({c:.0%})", fontsize=8, color="black" if t == p else "crimson")
    fig.suptitle(title)
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


def reliability_diagram(bins: pd.DataFrame, ece: float) -> Figure:
    """Accuracy against confidence per confidence bin (the diagonal is perfect calibration),
    with how many test images each bin holds."""
    fig = Figure(figsize=(10, 4), layout="tight")
    left, right = fig.subplots(1, 2)
    width = bins["upper"] - bins["lower"]
    filled = bins[bins["count"] > 0]
    left.bar(filled["lower"], filled["accuracy"], width=width[filled.index], align="edge",
             edgecolor="black", alpha=0.7, label="accuracy")  # fmt: skip
    left.plot([0, 1], [0, 1], "k--", lw=1, label="perfect calibration")
    left.plot(
        filled["confidence"],
        filled["accuracy"],
        "ro",
        ms=3,
        label="accuracy at the bin's mean confidence",
    )
    left.set(xlabel="confidence (top softmax probability)", ylabel="accuracy", xlim=(0, 1),
             ylim=(0, 1), title=f"Reliability (ECE {ece:.4f})")  # fmt: skip
    left.legend(loc="upper left")
    left.grid(alpha=0.3)
    right.bar(bins["lower"], bins["count"], width=width, align="edge", edgecolor="black")
    right.set(xlabel="confidence", ylabel="test images", yscale="log", title="Images per bin")
    return fig


def confusion_difference(before: np.ndarray, after: np.ndarray, title: str) -> Figure:
    """Challenger minus champion confusion matrix: off the diagonal, red is more mistakes of
    that kind and blue fewer; on it, blue is more right."""
    diff = after.astype(int) - before.astype(int)
    shown = diff.copy()
    np.fill_diagonal(shown, -np.diag(diff))  # so that blue is better everywhere
    limit = max(1, int(np.abs(shown).max()))
    fig = Figure(figsize=(7, 6))
    ax = fig.subplots()
    image = ax.imshow(shown, cmap="coolwarm", vmin=-limit, vmax=limit)
    for (row, col), value in np.ndenumerate(diff):
        if value:
            ax.text(col, row, f"{value:+d}", ha="center", va="center", fontsize=8)
    ticks = range(len(diff))
    ax.set(xticks=ticks, yticks=ticks, xlabel="predicted", ylabel="true", title=title)
    fig.colorbar(image, ax=ax, label="blue: better, red: worse")
    return fig


def fixed_and_broke(
    images: np.ndarray,
    true: np.ndarray,
    champion: np.ndarray,
    challenger: np.ndarray,
    fixed: np.ndarray,
    title: str,
    columns: int = 8,
) -> Figure:
    """Test digits on which the two models disagree about being right, captioned
    `true: champion / challenger`; green the challenger fixed, red it broke."""
    rows = max(1, int(np.ceil(len(images) / columns)))
    fig = Figure(figsize=(columns * 1.3, rows * 1.5 + 0.4), layout="tight")
    # no ticks: hidden, but laying out still measures every one of them
    axes = fig.subplots(rows, columns, squeeze=False, subplot_kw={"xticks": [], "yticks": []})
    side = round(images.shape[1] ** 0.5) if images.ndim == 2 else images.shape[1]
    for ax in axes.flat:
        ax.axis("off")
    cases = zip(axes.flat, images, true, champion, challenger, fixed, strict=False)
    for ax, img, t, before, after, was_fixed in cases:
        ax.imshow(img.reshape(side, side), cmap="gray_r")
        color = "forestgreen" if was_fixed else "crimson"
        ax.set_title(f"{t}: {before} / {after}", fontsize=8, color=color)
    fig.suptitle(title)
    return fig
