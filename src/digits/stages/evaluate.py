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
from typing import Any

import numpy as np
import pandas as pd

from digits.lib.cli import stage_main
from digits.lib.config import load_params
from digits.lib.data import Split, load_split
from digits.lib.environment import Environment
from digits.lib.files import reporting_disk_full, write_json, write_text
from digits.lib.idx import NUM_CLASSES
from digits.lib.shifts import Predictor, describe, keras_predictor, shifted
from digits.lib.vocab import SHIFTED_VAL_ACCURACY

log = logging.getLogger(__name__)

GALLERY = 32
CALIBRATION_BINS = 15
SHIFTS_TAG = "evaluate.shifts"  # on the run and the registered version: how it was scored


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
        "test/ece": calibration(labels, probabilities)[0],
    }
    return Evaluation(metrics, per_class, confusion_matrix(labels, predicted, labels=classes))


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
    ece, bins = calibration(labels, probabilities)
    figures["reliability.png"] = plots.reliability_diagram(bins, ece)
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


def shifted_validation(predict: Predictor, val: Split, shifts: int) -> dict[str, float]:
    """The kept weights' validation accuracy with test-time shifts, beside the plain one the
    train stage logged (`selected/val_accuracy`): the check that shifting helps, made without
    the test set."""
    probabilities = shifted(predict, shifts)(val.x)
    return {SHIFTED_VAL_ACCURACY: float((probabilities.argmax(axis=1) == val.labels).mean())}


def headline(
    metrics: dict[str, float], train: dict[str, float], run_name: str, shifts: int = 0
) -> str:
    """The run's description in the MLflow UI: what it trained and how well, in one line."""
    text = (
        f"**{run_name}**: test accuracy {metrics['test/accuracy']:.2%} "
        f"({metrics['test/errors']} errors), ECE {metrics['test/ece']:.4f}"
    )
    if shifts:
        text += f" with test-time shifts ({(2 * shifts + 1) ** 2} views)"
    if "train/epochs" in train:
        text += f"; {int(train['train/epochs'])} epochs"
        if "selected/epoch" in train:
            text += f" (weights of epoch {int(train['selected/epoch'])})"
    if "train/seconds" in train:
        text += f" in {train['train/seconds']:.0f} s of training"
    return text + "."


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
    from digits.lib.tracking.provenance import numpy_dataset
    from digits.lib.tracking.store import setup

    test = load_split(args.data / "test.npz")
    history = pd.read_csv(args.history)
    model = keras.saving.load_model(args.model, safe_mode=True)  # no code from the file
    predict = keras_predictor(model)
    shifts = params.evaluate.shifts
    log.info("%s", describe(shifts))
    probabilities = shifted(predict, shifts)(test.x)
    validation = (
        shifted_validation(predict, load_split(args.data / "val.npz"), shifts) if shifts else {}
    )
    labels = test.labels
    predicted = probabilities.argmax(axis=1)
    evaluation = score(labels, probabilities)
    kernel = (
        model.get_layer("probabilities").get_weights()[0]
        if params.model.type == "softmax"
        else None
    )

    args.metrics.unlink(missing_ok=True)  # written last, once the run has everything: see below
    write_text(args.confusion, confusion_rows(labels, predicted).to_csv(index=False))
    write_text(args.per_class, evaluation.per_class.to_csv(index=False, float_format="%.4f"))
    figures = write_figures(
        args.figures, test.x, labels, probabilities, evaluation, kernel, history
    )

    env = Environment.read()
    setup(params.mlflow, env.project_root(args.params), env)
    run_info = json.loads(args.run_info.read_text())
    run_id = run_info["run_id"]
    info = mlflow.models.get_model_info(run_info["model_uri"])
    digest = registry.test_digest(test.x, labels)
    signature = str(info.signature.inputs) if info.signature else "unknown"
    table = None
    # a full disk under the artifact store names it; the run then ends FAILED, and no
    # metrics.json is left for `report` or `dvc metrics` to trust
    with (
        runs.tracked_run(run_id=run_id) as run,
        reporting_disk_full(runs.artifact_dir(run)),
    ):
        # against the logged model too, so the UI's Models view ranks models by them
        dataset = numpy_dataset(test.x, test.y, args.data / "test.npz", digest)
        mlflow.log_metrics(evaluation.metrics, model_id=info.model_id, dataset=dataset)
        mlflow.log_metrics(validation, model_id=info.model_id)
        # a tag, not a param: a changed `evaluate.shifts` re-evaluates the same run
        mlflow.set_tag(SHIFTS_TAG, str(shifts))
        for path in figures:
            mlflow.log_artifact(str(path), artifact_path="plots")
        matrix = pd.DataFrame(evaluation.confusion, columns=[str(d) for d in range(NUM_CLASSES)])
        matrix.insert(0, "actual", range(NUM_CLASSES))
        mlflow.log_table(matrix, artifact_file="confusion_matrix.json")
        mlflow.log_table(evaluation.per_class, artifact_file="per_class.json")
        mlflow.log_table(calibration(labels, probabilities)[1], artifact_file="calibration.json")
        registry.log_predictions(labels, probabilities)
        mlflow.set_tag(registry.TEST_DIGEST_TAG, digest)
        registered, before = registry.register(
            run_info["model_uri"], labels, predicted, digest, signature, params.mlflow,
            tags={SHIFTS_TAG: str(shifts)},
        )  # fmt: skip
        mlflow.set_tags(registry.run_tags(registered))
        if before is not None:
            table = fixed_and_broke(labels, before["predicted"], predicted)
            for path in comparison_figures(
                args.figures, test.x, labels, before["predicted"], predicted, table,
                (str(registered.previous), registered.version),
            ):  # fmt: skip
                mlflow.log_artifact(str(path), artifact_path="comparison")
            mlflow.log_table(table, artifact_file="comparison/fixed_and_broke.json")
        name = run.info.run_name or run_id
        train_metrics = mlflow.get_run(run_id).data.metrics
        note = headline(evaluation.metrics, train_metrics, name, shifts)
        mlflow.set_tag("mlflow.note.content", note)
        write_json(args.metrics, {**evaluation.metrics, **validation})
    log.info(
        "test accuracy %.4f (%d errors, ECE %.4f), logged to run %s",
        evaluation.metrics["test/accuracy"],
        evaluation.metrics["test/errors"],
        evaluation.metrics["test/ece"],
        run_id,
    )
    line = registry.registration_line(registered, evaluation.metrics["test/accuracy"])
    decision = {**dataclasses.asdict(registered), "line": line}
    decision["fixed_and_broke"] = (
        [] if table is None else json.loads(table.to_json(orient="records"))
    )
    write_json(args.registry, decision)
    log.info("%s", line)


if __name__ == "__main__":
    main()
