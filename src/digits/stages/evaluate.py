"""Stage `evaluate`: the trained model on the test set, once, after all selection is done.

Writes DVC metrics and plots and the figures, adds all of it to the training run in MLflow, and
registers the model (`digits.lib.tracking.registry` decides whether it becomes the champion).
A user the tracking server lets log runs but not register models gets the metrics logged and one
line saying it did not register, and why.
A run that is not in this tracking store (a clone that pulled the model, another
MLFLOW_TRACKING_URI) is evaluated into a new run, tagged with the training run's id.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from digits.lib.cli import stage_main
from digits.lib.config import MLflowConfig, load_params
from digits.lib.data import Split, load_split
from digits.lib.environment import Environment
from digits.lib.figures import comparison_figures, write_figures
from digits.lib.files import reporting_disk_full, write_json, write_text
from digits.lib.idx import NUM_CLASSES
from digits.lib.run_info import RunInfo
from digits.lib.scoring import Evaluation, evaluate, fixed_and_broke
from digits.lib.shifts import describe, keras_predictor
from digits.lib.tracking.promotion import (
    Challenger,
    Decision,
    Registration,
    may_promote,
    test_digest,
)
from digits.lib.vocab import (
    SELECTED_EPOCH,
    SHIFTED_VAL_ACCURACY,
    TEST_ACCURACY,
    TEST_ECE,
    TEST_ERRORS,
    TRAIN_EPOCHS,
    TRAIN_SECONDS,
)

if TYPE_CHECKING:
    import keras

log = logging.getLogger(__name__)

GALLERY = 32
CALIBRATION_BINS = 15
TRAINED_RUN_TAG = "evaluate.trained_run"  # on a run evaluating a model trained elsewhere
MODEL_URI_TAG = "evaluate.model_uri"  # that run's copy of the model


def confusion_rows(labels: np.ndarray, predicted: np.ndarray) -> pd.DataFrame:
    """One row per test image, the layout DVC's `confusion` plot template reads."""
    return pd.DataFrame({"actual": labels, "predicted": predicted})


def headline(
    metrics: Mapping[str, float], train: Mapping[str, float], run_name: str, shifts: int = 0
) -> str:
    """The run's description in the MLflow UI: what it trained and how well, in one line."""
    text = (
        f"**{run_name}**: test accuracy {metrics[TEST_ACCURACY]:.2%} "
        f"({metrics[TEST_ERRORS]} errors), ECE {metrics[TEST_ECE]:.4f}"
    )
    if shifts:
        text += f" with test-time shifts ({(2 * shifts + 1) ** 2} views)"
    if TRAIN_EPOCHS in train:
        text += f"; {int(train[TRAIN_EPOCHS])} epochs"
        if SELECTED_EPOCH in train:
            text += f" (weights of epoch {int(train[SELECTED_EPOCH])})"
    if TRAIN_SECONDS in train:
        text += f" in {train[TRAIN_SECONDS]:.0f} s of training"
    return text + "."


@dataclass(frozen=True)
class Target:
    """Where the evaluation is logged: the training run and its logged model, or a new run
    holding a copy of the model when the training run is not in this store."""

    run_id: str
    model_uri: str
    signature: str


def tracking_target(info: RunInfo, model: keras.Model, example: np.ndarray) -> Target:
    """The training run of `info` if this store has it and its model, else an earlier copy
    of it here (tag `evaluate.trained_run`), else a new run with the model logged anew."""
    import mlflow
    from mlflow.exceptions import MlflowException

    from digits.lib.tracking import logged_model, runs

    try:
        mlflow.get_run(info.run_id)
        model_info = mlflow.models.get_model_info(info.model_uri)
    except MlflowException as err:
        if getattr(err, "error_code", "") != "RESOURCE_DOES_NOT_EXIST":
            raise
    else:
        return Target(info.run_id, info.model_uri, _signature(model_info))
    found = mlflow.search_runs(
        filter_string=f"tags.`{TRAINED_RUN_TAG}` = '{info.run_id}' and status = 'FINISHED'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
        output_format="list",
    )
    if found:
        run_id, uri = found[0].info.run_id, found[0].data.tags[MODEL_URI_TAG]
    else:
        name = f"evaluate-{info.run_id[:8]}"
        with runs.tracked_run(run_name=name, tags={TRAINED_RUN_TAG: info.run_id}) as run:
            uri = logged_model.log_keras_model(model, example)
            mlflow.set_tag(MODEL_URI_TAG, uri)
        run_id = run.info.run_id
    target = Target(run_id, uri, _signature(mlflow.models.get_model_info(uri)))
    log.warning(
        "run %s is not in the tracking store %s (a clone that did not train it, or another "
        "MLFLOW_TRACKING_URI): evaluating into run %s (tag %s=%s), registering "
        "the local model",
        info.run_id, mlflow.get_tracking_uri(), run_id, TRAINED_RUN_TAG, info.run_id,
    )  # fmt: skip
    return target


def _signature(model_info: Any) -> str:
    return str(model_info.signature.inputs) if model_info.signature else "unknown"


def log_evaluation(
    evaluation: Evaluation, test: Split, path: Path, target: Target, figures: list[Path]
) -> str:
    """Add the evaluation to the active run: metrics (against the logged model too, so the
    UI's Models view ranks models by them), figures and tables. Returns the test digest."""
    import mlflow

    from digits.lib.tracking import registry
    from digits.lib.tracking.provenance import numpy_dataset

    digest = test_digest(test.x, test.labels)
    model_id = target.model_uri.removeprefix("models:/")
    test_metrics = {k: v for k, v in evaluation.metrics.items() if k != SHIFTED_VAL_ACCURACY}
    dataset = numpy_dataset(test.x, test.y, path, digest)
    mlflow.log_metrics(test_metrics, model_id=model_id, dataset=dataset)
    if evaluation.shifted_val_accuracy is not None:
        mlflow.log_metrics(
            {SHIFTED_VAL_ACCURACY: evaluation.shifted_val_accuracy}, model_id=model_id
        )
    for figure in figures:
        mlflow.log_artifact(str(figure), artifact_path="plots")
    matrix = pd.DataFrame(evaluation.confusion, columns=[str(d) for d in range(NUM_CLASSES)])
    matrix.insert(0, "actual", range(NUM_CLASSES))
    mlflow.log_table(matrix, artifact_file="confusion_matrix.json")
    mlflow.log_table(evaluation.per_class, artifact_file="per_class.json")
    mlflow.log_table(evaluation.calibration, artifact_file="calibration.json")
    mlflow.set_tag(registry.TEST_DIGEST_TAG, digest)
    return digest


def promote(
    challenger: Challenger, cfg: MLflowConfig, x: np.ndarray, figures: Path
) -> tuple[Registration, pd.DataFrame | None]:
    """Register the challenger (`registry.register`) and record the decision in the active
    run; when it was compared with a champion, the digits it fixed and broke, as a table and
    figures. Returns the registration and that table."""
    import mlflow

    from digits.lib.tracking import registry

    registered, before = registry.register(challenger, cfg)
    mlflow.set_tags(registry.run_tags(registered))
    if before is None:
        return registered, None
    labels, predicted = challenger.labels, challenger.predicted
    table = fixed_and_broke(labels, before, predicted)
    versions = (str(registered.previous), registered.version)
    for path in comparison_figures(figures, x, labels, before, predicted, table, versions):
        mlflow.log_artifact(str(path), artifact_path="comparison")
    mlflow.log_table(table, artifact_file="comparison/fixed_and_broke.json")
    return registered, table


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The stage's command line (from `dvc.yaml`)."""
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
    return parser.parse_args(argv)


def write_local(
    args: argparse.Namespace, evaluation: Evaluation, x: np.ndarray, kernel: Any
) -> list[Path]:
    """The DVC plots' CSVs and the figures; metrics.json is removed, to be written last, once
    the run has everything."""
    args.metrics.unlink(missing_ok=True)
    write_text(
        args.confusion, confusion_rows(evaluation.labels, evaluation.predicted).to_csv(index=False)
    )
    write_text(args.per_class, evaluation.per_class.to_csv(index=False, float_format="%.4f"))
    history = pd.read_csv(args.history)
    return write_figures(args.figures, x, evaluation, kernel, history)


def registry_record(
    registered: Registration, table: pd.DataFrame | None, line: str
) -> dict[str, Any]:
    """What `reports/registry.json` holds: the registration, its line, the fixed and broken."""
    record = {**dataclasses.asdict(registered), "line": line}
    record["fixed_and_broke"] = [] if table is None else json.loads(table.to_json(orient="records"))
    return record


@stage_main
def main(argv: Sequence[str] | None = None) -> None:
    """CLI: `python -m digits.stages.evaluate --data data/processed --model ...`."""
    args = parse_args(argv)
    params = load_params(args.params)
    promotable = may_promote(os.environ)
    info = RunInfo.read(args.run_info)

    import keras
    import mlflow

    from digits.lib.tracking import registry, runs
    from digits.lib.tracking.store import setup

    test = load_split(args.data / "test.npz")
    model = keras.saving.load_model(args.model, safe_mode=True)  # no code from the file
    shifts = params.evaluate.shifts
    log.info("%s", describe(shifts))
    val = load_split(args.data / "val.npz") if shifts else None
    evaluation = evaluate(keras_predictor(model), test, shifts, val)
    softmax = params.model.type == "softmax"
    kernel = model.get_layer("probabilities").get_weights()[0] if softmax else None
    figures = write_local(args, evaluation, test.x, kernel)

    env = Environment.read()
    setup(params.mlflow, env.project_root(args.params), env)
    target = tracking_target(info, model, test.x[:5])
    # a full disk under the artifact store names it; the run then ends FAILED, and no
    # metrics.json is left for `report` or `dvc metrics` to trust
    with runs.tracked_run(run_id=target.run_id) as run, reporting_disk_full(runs.artifact_dir(run)):
        digest = log_evaluation(evaluation, test, args.data / "test.npz", target, figures)
        # a tag, not a param: a changed `evaluate.shifts` re-evaluates the same run
        mlflow.set_tag(registry.SHIFTS_TAG, str(shifts))
        challenger = Challenger(
            target.run_id, target.model_uri, test.labels, evaluation.probabilities, digest,
            target.signature, shifts, promotable,
        )  # fmt: skip
        registered, table = promote(challenger, params.mlflow, test.x, args.figures)
        train_metrics = mlflow.get_run(target.run_id).data.metrics
        note = headline(
            evaluation.metrics, train_metrics, run.info.run_name or target.run_id, shifts
        )
        mlflow.set_tag("mlflow.note.content", note)
        write_json(args.metrics, evaluation.metrics)
    log.info(
        "test accuracy %.4f (%d errors, ECE %.4f), logged to run %s",
        evaluation.accuracy, evaluation.errors, evaluation.ece, target.run_id,
    )  # fmt: skip
    line = registry.registration_line(registered, evaluation.accuracy)
    write_json(args.registry, registry_record(registered, table, line))
    if registered.decision is Decision.NOT_REGISTERED:  # the user's to act on: plainly shown
        print(f"evaluate: {line}")
    else:
        log.info("%s", line)


if __name__ == "__main__":
    main()
