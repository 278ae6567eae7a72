"""A training lever against the same recipe without it, alternating on the same seeds in one
process so both see the same machine. Validation accuracy only: a lever is kept or dropped on
validation, and the test set stays untouched.

    python bench/levers.py --lever ema --name "EMA, 99.5% rung" --seeds 101 102 103 \
        --set model.type=cnn --set train.epochs=12

Levers:
- `ema`: Keras's exponential moving average of the weights (`use_ema=True`, `--momentum`).
  `keras.callbacks.SwapEMAWeights` validates the average, and the average is the model kept.
- `elastic`: elastic distortion of each training image (`--alpha`, `--sigma`): the train
  stage's own `model.augment.elastic` and `elastic_sigma`, so the fields are the ones a stage
  run of the recipe draws (keyed by seed, epoch and batch). Entries recorded before 2026-12-05
  afternoon drew them from a seeded generator instead (see each entry's commit).
- `set`: any params.yaml settings (`--with KEY=VALUE`, as `--set`), such as another learning rate.

`--set` takes dotted params.yaml keys (values as YAML), like `dvc exp run -S`. The result, with
its command, machine and day, is merged under `--name` into reports/bench/levers.json
(docs/benchmarks.md, "Levers tried on validation": `make bench-page`).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from digits.lib.batches import epoch_batches, steps_per_epoch
from digits.lib.config import load_params, parse_overrides
from digits.lib.data import Split, load_splits
from digits.lib.elastic import elastic
from digits.lib.models import STEPS_PER_EXECUTION, build_model, compile_model
from digits.lib.training import image_shape
from digits.tools import provenance
from digits.tools.bench.entries import merge_entry

RESULTS = Path("reports/bench/levers.json")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lever", choices=("ema", "elastic", "set"), required=True)
    parser.add_argument("--name", required=True, help="the entry's name in levers.json")
    parser.add_argument("--momentum", type=float, default=0.99, help="ema: the average's decay")
    parser.add_argument("--alpha", type=float, default=34.0, help="elastic: field scale, pixels")
    parser.add_argument("--sigma", type=float, default=4.0, help="elastic: smoothing, pixels")
    parser.add_argument(
        "--with", dest="with_", action="append", default=[], help="set: KEY=VALUE, as --set"
    )
    parser.add_argument("--params", type=Path, default=Path("params.yaml"), help="params file")
    parser.add_argument("--data", type=Path, default=Path("data/processed"), help=".npz folder")
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44], help="train.seed")
    parser.add_argument("--set", action="append", default=[], help="KEY=VALUE, as dvc exp run -S")
    parser.add_argument("--results", type=Path, default=RESULTS, help="the named results file")
    parser.add_argument("--show", type=Path, help="elastic: save 8 digits, 3 draws each, and stop")
    return parser.parse_args()


def show(args: argparse.Namespace, train: Split, path: Path) -> None:
    """Eight training digits (top row) and three elastic draws of each below, to look at."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    side = image_shape(train.x.shape[1])[0]
    x = tf.constant(train.x[:8])
    rows = [x] + [elastic(x, args.alpha, args.sigma, tf.constant([k, 0])) for k in (1, 2, 3)]
    fig, axes = plt.subplots(len(rows), 8, figsize=(8, len(rows)))
    for row, images in zip(axes, rows, strict=True):
        for ax, image in zip(row, np.asarray(images), strict=True):
            ax.imshow(image.reshape(side, side), cmap="gray")
            ax.axis("off")
    fig.savefig(path, dpi=80)


def with_ema(model: keras.Model, momentum: float) -> keras.Model:
    """The model compiled again with the same optimiser, averaging its weights."""
    optimizer = model.optimizer
    config = {**optimizer.get_config(), "use_ema": True, "ema_momentum": momentum}
    model.compile(
        optimizer=type(optimizer).from_config(config),
        loss=model.loss,
        metrics=["accuracy"],
        steps_per_execution=STEPS_PER_EXECUTION,
    )
    return model


def run(
    args: argparse.Namespace, overrides: dict, splits: dict[str, Split], seed: int, on: bool
) -> dict[str, Any]:
    train, val = splits["train"], splits["val"]
    lever: dict[str, Any] = {}
    if on and args.lever == "elastic":
        lever = {"model.augment.elastic": args.alpha, "model.augment.elastic_sigma": args.sigma}
    if on and args.lever == "set":
        lever = parse_overrides(args.with_)
    params = load_params(args.params).with_overrides({**overrides, **lever, "train.seed": seed})
    cfg = params.train
    keras.backend.clear_session()
    keras.utils.set_random_seed(seed)
    shape = image_shape(train.x.shape[1])
    steps = steps_per_epoch(len(train), cfg.batch_size)
    model = compile_model(build_model(params.model, shape), cfg, steps)
    elastic_field = params.model.augment.elastic_field
    batches, order = epoch_batches(train.x, train.y, cfg.batch_size, seed, elastic_field)
    callbacks: list[keras.callbacks.Callback] = [order]
    if on and args.lever == "ema":
        model = with_ema(model, args.momentum)
        callbacks.append(keras.callbacks.SwapEMAWeights())
    started = time.perf_counter()
    history = model.fit(
        batches,
        validation_data=(val.x, val.y),
        validation_batch_size=cfg.batch_size,
        shuffle=False,  # in each epoch's own order already
        epochs=cfg.epochs,
        callbacks=callbacks,
        verbose=0,
    ).history
    seconds = time.perf_counter() - started
    curve = [round(v, 4) for v in history["val_accuracy"]]
    best = int(np.argmax(curve))
    return {
        "seed": seed,
        "seconds": round(seconds, 1),
        "val": curve[-1],  # the last epoch's (one-cycle: the rate has decayed to zero)
        "best_val": curve[best],
        "best_epoch": best + 1,
        "val_curve": curve,
    }


def lever_label(args: argparse.Namespace) -> str:
    if args.lever == "set":
        return ", ".join(args.with_)
    if args.lever == "ema":
        return f"EMA of the weights, momentum {args.momentum}"
    return f"elastic distortion, alpha {args.alpha}, sigma {args.sigma}"


def main() -> None:
    args = parse_args()
    overrides = parse_overrides(args.set)
    splits = load_splits(args.data, ("train", "val"))
    if args.show:
        return show(args, splits["train"], args.show)
    runs: dict[str, list[dict[str, Any]]] = {"without": [], "with": []}
    for i, seed in enumerate(args.seeds):  # ABBA: neither variant always runs first
        for on in (False, True) if i % 2 == 0 else (True, False):
            row = run(args, overrides, splits, seed, on)
            runs["with" if on else "without"].append(row)
            print("with" if on else "without", json.dumps(row), flush=True)
    medians: dict[str, dict[str, float]] = {
        k: {m: statistics.median(r[m] for r in rows) for m in ("val", "best_val", "seconds")}
        for k, rows in runs.items()
    }
    entry = {"lever": lever_label(args), "set": overrides, "runs": runs, "medians": medians}
    origin = provenance.now(["python", *sys.argv])
    merge_entry(args.results, args.name, {**entry, "provenance": origin.as_json()})
    print(json.dumps(medians, indent=2))


if __name__ == "__main__":
    main()
