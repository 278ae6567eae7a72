"""Stage `train`: fit the model from `params.yaml`, save it, and track the run in MLflow.

The MLflow run it opens is the one `evaluate` adds test metrics to (its id is in `--run-info`).
"""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Sequence
from pathlib import Path

from digits.cli import stage_main
from digits.config import Params, load_params, run_params
from digits.data import file_digest, load_splits
from digits.files import atomic_path, write_json, write_text

log = logging.getLogger(__name__)


@stage_main
def main(argv: Sequence[str] | None = None) -> None:
    """CLI: `python -m digits.train --data data/processed --model models/model.keras ...`."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--data", type=Path, required=True, help="folder with train/val .npz")
    parser.add_argument("--model", type=Path, required=True, help="where to save the .keras model")
    parser.add_argument("--run-info", type=Path, required=True, help="JSON with the MLflow run id")
    parser.add_argument("--metrics", type=Path, required=True, help="JSON of training metrics")
    parser.add_argument("--history", type=Path, required=True, help="per-epoch CSV (DVC plot)")
    parser.add_argument("--curves", type=Path, required=True, help="learning-curve PNG")
    args = parser.parse_args(argv)
    params = load_params(args.params)
    root = args.params.resolve().parent
    train(params, root, args)


def train(params: Params, root: Path, args: argparse.Namespace) -> str:
    """Fit and track one run; returns its MLflow run id."""
    import mlflow

    from digits import plots, tracking
    from digits.training import best_epoch, fit

    experiment_id = tracking.setup(params.mlflow, root)
    splits = load_splits(args.data, ("train", "val"))
    digest = file_digest(args.data / "train.npz", args.data / "val.npz")
    import os

    with tracking.tracked_run(run_name=os.environ.get("DVC_EXP_NAME")) as run:
        mlflow.set_tags(tracking.context_tags(root, digest))
        mlflow.log_params(run_params(params))
        tracking.log_dataset(
            splits["train"].x, splits["train"].y, args.data / "train.npz", digest, "training"
        )
        started = time.perf_counter()
        model, history = fit(
            params.model,
            params.train,
            splits["train"],
            splits["val"],
            callbacks=[tracking.epoch_logger()],
        )
        seconds = time.perf_counter() - started
        val_loss, val_accuracy = model.evaluate(splits["val"].x, splits["val"].y, verbose=0)
        metrics = {
            "train/seconds": round(seconds, 2),
            "train/epochs": len(history),
            "best_epoch": best_epoch(history, params.train.monitor),
            "best/val/loss": float(val_loss),
            "best/val/accuracy": float(val_accuracy),
        }
        mlflow.log_metrics(metrics)
        mlflow.log_param("model.n_params", model.count_params())

        with atomic_path(args.model) as tmp:
            model.save(tmp)
        write_text(args.history, history.to_csv(index=False, float_format="%.6g"))
        write_json(args.metrics, metrics)
        plots.save(plots.learning_curves(history), args.curves)
        mlflow.log_artifact(str(args.curves), artifact_path="plots")
        mlflow.log_table(history, artifact_file="history.json")
        tracking.log_keras_model(model, splits["val"].x[:5])
        write_json(args.run_info, {"run_id": run.info.run_id, "experiment_id": experiment_id})
        log.info(
            "run %s: val accuracy %.4f after %d epochs in %.0f s",
            run.info.run_id,
            val_accuracy,
            len(history),
            seconds,
        )
        return run.info.run_id


if __name__ == "__main__":
    main()
