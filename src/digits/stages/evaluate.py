"""Stage `evaluate`: the trained model on the test set, once, after all selection is done.

Writes DVC metrics and plots and the figures, and adds all of it to the training run in MLflow.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from digits.lib.cli import stage_main
from digits.lib.config import load_params
from digits.lib.data import load_split
from digits.lib.files import project_root, reporting_disk_full, write_json, write_text
from digits.lib.idx import NUM_CLASSES

if TYPE_CHECKING:
    pass

log = logging.getLogger(__name__)

GALLERY = 32


@dataclass(frozen=True)
class Evaluation:
    """Headline metrics, per-class scores and the confusion matrix of one prediction run."""

    metrics: dict[str, float]
    per_class: pd.DataFrame
    confusion: np.ndarray


def score(labels: np.ndarray, probabilities: np.ndarray) -> Evaluation:
    """Metrics in the project's vocabulary from true labels and predicted class probabilities."""
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
    metrics = {
        "test/accuracy": float(accuracy_score(labels, predicted)),
        "test/loss": float(log_loss(labels, probabilities, labels=classes)),
        "test/macro_precision": float(precision.mean()),
        "test/macro_recall": float(recall.mean()),
        "test/macro_f1": float(f1.mean()),
        "test/errors": int((predicted != labels).sum()),
    }
    return Evaluation(metrics, per_class, confusion_matrix(labels, predicted, labels=classes))


def confusion_rows(labels: np.ndarray, predicted: np.ndarray) -> pd.DataFrame:
    """One row per test image, the layout DVC's `confusion` plot template reads."""
    return pd.DataFrame({"actual": labels, "predicted": predicted})


def write_figures(
    folder: Path,
    x: np.ndarray,
    labels: np.ndarray,
    probabilities: np.ndarray,
    evaluation: Evaluation,
    softmax_kernel: np.ndarray | None,
    history: pd.DataFrame,
) -> list[Path]:
    """Learning curves (from the training history), confusion heatmap, galleries of the most
    confident mistakes and of correct digits, and the softmax weight images when the model is a
    softmax regression."""
    from digits.lib import plots

    predicted = probabilities.argmax(axis=1)
    confidence = probabilities.max(axis=1)
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
    if softmax_kernel is not None:
        figures["softmax_weights.png"] = plots.weight_images(softmax_kernel)
    paths = []
    for name, fig in figures.items():
        plots.save(fig, folder / name)
        paths.append(folder / name)
    return paths


@stage_main
def main(argv: Sequence[str] | None = None) -> None:
    """CLI: `python -m digits.stages.evaluate --data data/processed --model ...`."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, default=Path("params.yaml"), help="params file")
    parser.add_argument("--data", type=Path, required=True, help="folder with test.npz")
    parser.add_argument("--model", type=Path, required=True, help="the .keras model from train")
    parser.add_argument("--run-info", type=Path, required=True, help="JSON written by train")
    parser.add_argument("--history", type=Path, required=True, help="per-epoch CSV from train")
    parser.add_argument("--metrics", type=Path, required=True, help="DVC metrics JSON")
    parser.add_argument("--confusion", type=Path, required=True, help="CSV for the DVC plot")
    parser.add_argument("--per-class", type=Path, required=True, help="per-digit scores CSV")
    parser.add_argument("--figures", type=Path, required=True, help="folder for the PNGs")
    parser.add_argument(
        "--registry", type=Path, required=True, help="JSON: the version and the alias decision"
    )
    args = parser.parse_args(argv)
    params = load_params(args.params)

    import keras
    import mlflow

    from digits.lib.tracking import registry, runs

    test = load_split(args.data / "test.npz")
    history = pd.read_csv(args.history)
    model = keras.saving.load_model(args.model, safe_mode=True)  # no code from the file
    probabilities = model.predict(test.x, batch_size=1024, verbose=0)
    labels = test.labels
    evaluation = score(labels, probabilities)
    kernel = (
        model.get_layer("probabilities").get_weights()[0]
        if params.model.type == "softmax"
        else None
    )

    args.metrics.unlink(missing_ok=True)  # written last, once the run has everything: see below
    write_text(
        args.confusion, confusion_rows(labels, probabilities.argmax(axis=1)).to_csv(index=False)
    )
    write_text(args.per_class, evaluation.per_class.to_csv(index=False, float_format="%.4f"))
    figures = write_figures(
        args.figures, test.x, labels, probabilities, evaluation, kernel, history
    )

    runs.setup(params.mlflow, project_root(args.params))
    run_info = json.loads(args.run_info.read_text())
    run_id = run_info["run_id"]
    # a full disk under the artifact store names it; the run then ends FAILED, and no
    # metrics.json is left for `report` or `dvc metrics` to trust
    with (
        runs.tracked_run(run_id=run_id) as run,
        reporting_disk_full(runs.artifact_dir(run)),
    ):
        mlflow.log_metrics(evaluation.metrics)
        for path in figures:
            mlflow.log_artifact(str(path), artifact_path="plots")
        matrix = pd.DataFrame(evaluation.confusion, columns=[str(d) for d in range(NUM_CLASSES)])
        matrix.insert(0, "actual", range(NUM_CLASSES))
        mlflow.log_table(matrix, artifact_file="confusion_matrix.json")
        mlflow.log_table(evaluation.per_class, artifact_file="per_class.json")
        registered = registry.register(
            run_info["model_uri"], evaluation.metrics["test/accuracy"], params.mlflow
        )
        mlflow.set_tags(
            {"registry.version": registered.version, "registry.champion": registered.champion}
        )
        write_json(args.metrics, evaluation.metrics)
    log.info(
        "test accuracy %.4f (%d errors), logged to run %s",
        evaluation.metrics["test/accuracy"],
        evaluation.metrics["test/errors"],
        run_id,
    )
    line = registry.registration_line(registered, evaluation.metrics["test/accuracy"])
    write_json(args.registry, {**dataclasses.asdict(registered), "decision": line})
    log.info("%s", line)


if __name__ == "__main__":
    main()
