"""The figures `evaluate` draws: learning curves, the confusion heatmap, galleries of mistakes
and correct digits, the reliability diagram, softmax weights, and champion against challenger."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from digits.lib.idx import NUM_CLASSES

if TYPE_CHECKING:
    from digits.lib.scoring import Evaluation

GALLERY = 32


def write_figures(
    folder: Path,
    x: np.ndarray,
    evaluation: Evaluation,
    softmax_kernel: np.ndarray | None,
    history: pd.DataFrame,
) -> list[Path]:
    """Learning curves (from the training history), confusion heatmap, galleries of the most
    confident mistakes and of correct digits, and the softmax weight images when the model is a
    softmax regression."""
    from digits.lib import plots

    labels, predicted = evaluation.labels, evaluation.predicted
    confidence = evaluation.probabilities.max(axis=1)
    wrong = np.flatnonzero(predicted != labels)
    wrong = wrong[np.argsort(-confidence[wrong], kind="stable")][:GALLERY]
    right = np.flatnonzero(predicted == labels)[:16]
    figures = {
        "learning_curves.png": plots.learning_curves(history),
        "confusion_matrix.png": plots.confusion_heatmap(evaluation.confusion),
        "misclassified.png": plots.digit_gallery(
            x[wrong],
            labels[wrong],
            predicted[wrong],
            confidence[wrong],
            f"Most confident mistakes ({len(np.flatnonzero(predicted != labels))} in all): "
            "true -> predicted",
        ),
        "correct.png": plots.digit_gallery(
            x[right],
            labels[right],
            predicted[right],
            confidence[right],
            "Correctly classified (first test digits)",
        ),
    }
    figures["reliability.png"] = plots.reliability_diagram(evaluation.calibration, evaluation.ece)
    if softmax_kernel is not None:
        figures["softmax_weights.png"] = plots.weight_images(softmax_kernel)
    return save_figures(folder, figures)


def save_figures(folder: Path, figures: dict[str, Any]) -> list[Path]:
    """Write each figure as `folder/<name>`; returns the paths."""
    from digits.lib import plots

    for name, fig in figures.items():
        plots.save(fig, folder / name)
    return [folder / name for name in figures]


def comparison_figures(
    folder: Path,
    x: np.ndarray,
    labels: np.ndarray,
    champion: np.ndarray,
    challenger: np.ndarray,
    table: pd.DataFrame,
    versions: tuple[str, str],
) -> list[Path]:
    """Champion against challenger: the difference of their confusion matrices, and the test
    digits the challenger fixed and broke with both predictions."""
    from sklearn.metrics import confusion_matrix

    from digits.lib import plots

    classes = list(range(NUM_CLASSES))
    before = confusion_matrix(labels, champion, labels=classes)
    after = confusion_matrix(labels, challenger, labels=classes)
    old, new = versions
    shown = pd.concat(
        [
            table[table.change == "fixed"][: GALLERY // 2],
            table[table.change == "broke"][: GALLERY // 2],
        ]
    )
    n_fixed, n_broke = int((table.change == "fixed").sum()), int((table.change == "broke").sum())
    index = shown["test_index"].to_numpy()
    figures = {
        "champion_vs_challenger.png": plots.confusion_difference(
            before, after, f"Confusion matrix: version {new} minus champion {old}"
        ),
        "fixed_and_broke.png": plots.fixed_and_broke(
            x[index],
            labels[index],
            champion[index],
            challenger[index],
            (shown["change"] == "fixed").to_numpy(),
            f"Fixed {n_fixed} (green), broke {n_broke} (red): true: champion v{old} / "
            f"challenger v{new}",
        ),
    }
    return save_figures(folder, figures)
