"""Keras's own shuffle (one seeded order, repeated every epoch) against the train stage's fresh
order each epoch (`digits.lib.batches`), on the same seeds, alternating in one process so both
see the same machine: validation and test accuracy, and the fit's seconds.

    python bench/per_epoch_shuffle.py --name "mlp, 3 seeds" --data data/processed \
        --seeds 42 43 44 --set model.type=mlp

`--set` takes dotted params.yaml keys (values as YAML), like `dvc exp run -S`; the rest of the
config is params.yaml's. The result, with its command, machine and day, is merged under `--name`
into reports/bench/shuffle.json (docs/benchmarks.md, "Per-epoch shuffle": `make bench-page`).
Choose recipes on the validation column; test is reported, not used.
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

from digits.lib.batches import epoch_batches, steps_per_epoch
from digits.lib.config import load_params, parse_overrides
from digits.lib.data import Split, load_splits
from digits.lib.models import build_model, compile_model
from digits.lib.training import image_shape
from digits.tools import provenance
from digits.tools.bench.entries import merge_entry

RESULTS = Path("reports/bench/shuffle.json")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", required=True, help="the entry's name in shuffle.json")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"), help="params file")
    parser.add_argument("--data", type=Path, default=Path("data/processed"), help=".npz folder")
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44], help="train.seed")
    parser.add_argument("--set", action="append", default=[], help="KEY=VALUE, as dvc exp run -S")
    parser.add_argument("--results", type=Path, default=RESULTS, help="the named results file")
    return parser.parse_args()


def run(
    args: argparse.Namespace, overrides: dict, splits: dict[str, Split], seed: int, fresh: bool
) -> dict[str, float]:
    train, val, test = splits["train"], splits["val"], splits["test"]
    params = load_params(args.params).with_overrides({**overrides, "train.seed": seed})
    cfg = params.train
    keras.backend.clear_session()
    keras.utils.set_random_seed(seed)
    steps = steps_per_epoch(len(train), cfg.batch_size)
    model = compile_model(build_model(params.model, image_shape(train.x.shape[1])), cfg, steps)
    if fresh:
        batches, order = epoch_batches(train.x, train.y, cfg.batch_size, seed)
        data = {"x": batches, "callbacks": [order], "validation_batch_size": cfg.batch_size}
        data["shuffle"] = False  # in its own order already
    else:
        data = {"x": train.x, "y": train.y, "batch_size": cfg.batch_size, "shuffle": True}
    started = time.perf_counter()
    model.fit(**data, epochs=cfg.epochs, validation_data=(val.x, val.y), verbose=0)
    seconds = time.perf_counter() - started
    score = {s: model.evaluate(d.x, d.y, batch_size=1024, verbose=0)[1] for s, d in
             (("val", val), ("test", test))}  # fmt: skip
    return {"seed": seed, "seconds": round(seconds, 2), **score}


def main() -> None:
    args = parse_args()
    overrides = parse_overrides(args.set)
    splits = load_splits(args.data)
    results: dict[str, list[dict[str, float]]] = {"keras_order": [], "fresh_order": []}
    for i, seed in enumerate(args.seeds):  # ABBA: neither variant always runs first
        for fresh in (False, True) if i % 2 == 0 else (True, False):
            row = run(args, overrides, splits, seed, fresh)
            results["fresh_order" if fresh else "keras_order"].append(row)
            print("fresh" if fresh else "keras", row, flush=True)
    summary = {
        name: {k: statistics.median(r[k] for r in rows) for k in ("seconds", "val", "test")}
        for name, rows in results.items()
    }
    origin = provenance.now(["python", *sys.argv])
    entry: dict[str, Any] = {"set": overrides, "runs": results, "medians": summary}
    merge_entry(args.results, args.name, {**entry, "provenance": origin.as_json()})
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
