"""Stage `train`: fit the model from `params.yaml`, save it, and track the run in MLflow.

The MLflow run it opens is the one `evaluate` adds test metrics to (its id is in `--run-info`).
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from digits.lib.cli import stage_main
from digits.lib.config import Params, load_params
from digits.lib.data import Split, file_digest, load_splits
from digits.lib.files import atomic_path, project_root, write_json, write_text

if TYPE_CHECKING:
    import keras

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainResult:
    """What one training run produced."""

    model: keras.Model
    history: pd.DataFrame
    metrics: dict[str, Any]
    run_id: str
    model_uri: str  # the model logged in the run (`models:/m-...`), for the registry


def train(params: Params, train: Split, val: Split, data_path: Path, root: Path) -> TrainResult:
    """Fit in a new MLflow run that records params, per-epoch metrics, data, code version and
    the model. (Figures, the learning curves among them, are `evaluate`'s.)"""
    import mlflow

    from digits.lib.tracking import logged_model, runs
    from digits.lib.training import fit_logged

    digest = file_digest(data_path / "train.npz", data_path / "val.npz")
    # system metrics (CPU, memory) every 10 s by MLflow's monitor thread; needs psutil
    with runs.tracked_run(run_name=runs.run_name(params), log_system_metrics=True) as run:
        mlflow.set_tags(runs.context_tags(root, digest))
        runs.log_dataset(train.x, train.y, data_path / "train.npz", digest, "training")
        model, history, metrics = fit_logged(params, train, val)
        mlflow.log_table(history, artifact_file="history.json")
        model_uri = logged_model.log_keras_model(model, val.x[:5])
    return TrainResult(model, history, metrics, run.info.run_id, model_uri)


@stage_main
def main(argv: Sequence[str] | None = None) -> None:
    """CLI: `python -m digits.stages.train --data data/processed --model models/model.keras ...`."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, default=Path("params.yaml"), help="params file")
    parser.add_argument("--data", type=Path, required=True, help="folder with train/val .npz")
    parser.add_argument("--model", type=Path, required=True, help="where to save the .keras model")
    parser.add_argument("--run-info", type=Path, required=True, help="JSON with the MLflow run id")
    parser.add_argument("--metrics", type=Path, required=True, help="JSON of training metrics")
    parser.add_argument("--history", type=Path, required=True, help="per-epoch CSV (DVC plot)")
    args = parser.parse_args(argv)
    params = load_params(args.params)

    from digits.lib.tracking import runs

    root = project_root(args.params)
    experiment_id = runs.setup(params.mlflow, root)
    splits = load_splits(args.data, ("train", "val"))
    result = train(params, splits["train"], splits["val"], args.data, root)

    with atomic_path(args.model) as tmp:
        result.model.save(tmp)
    write_text(args.history, result.history.to_csv(index=False, float_format="%.6g"))
    write_json(args.metrics, result.metrics)
    write_json(
        args.run_info,
        {"run_id": result.run_id, "experiment_id": experiment_id, "model_uri": result.model_uri},
    )
    log.info(
        "run %s: val accuracy %.4f (epoch %d of %d) in %.0f s",
        result.run_id,
        result.metrics["selected/val_accuracy"],
        result.metrics["selected/epoch"],
        result.metrics["train/epochs"],
        result.metrics["train/seconds"],
    )


if __name__ == "__main__":
    main()
