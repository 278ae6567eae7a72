"""`make repeat K=5`: the configuration in params.yaml trained with K seeds, each evaluated.

    python -m digits.tools.repeat [--repeats K] [--data data/processed] [--out reports/repeat]

One parent MLflow run `repeat-<K>-seeds` holds a child run per seed (`seed-42`, `seed-43`, ...:
params, per-epoch curves, summary and test metrics) and the mean, sd, min and max of every
summary metric (`test/accuracy.mean`, ...). `reports/repeat/` gets `seeds.csv` (one row per
seed) and `spread.json`, which the report stage shows when it matches the report's
configuration. Outside the DVC graph, like the sweep: it measures a configuration, it does not
make the model `dvc repro` ships (that one is seed `train.seed`, the first of the K).
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from digits.lib.cli import stage_main
from digits.lib.config import Params, load_params, parse_params
from digits.lib.environment import Environment
from digits.lib.files import write_json, write_text
from digits.lib.seeds import describe, run_record, seed_list

log = logging.getLogger(__name__)


def repeat(params: Params, data: Path, root: Path, out: Path, env: Environment) -> dict[str, Any]:
    """Train and evaluate `train.repeats` seeds under one parent run, write `seeds.csv` and
    `spread.json` into `out` (and the parent run); returns what `spread.json` holds."""
    import mlflow
    import pandas as pd

    from digits.lib.data import file_digest, load_splits
    from digits.lib.scoring import score
    from digits.lib.shifts import keras_predictor, shifted
    from digits.lib.tracking import runs
    from digits.lib.tracking.provenance import context_tags
    from digits.lib.tracking.seeds import fit_seeds, log_spread

    splits = load_splits(data, ("train", "val", "test"))
    test = splits["test"]
    digest = file_digest(data / "train.npz", data / "val.npz")
    seeds = seed_list(params.train.seed, params.train.repeats)

    def measure(model: Any) -> dict[str, float]:
        # reported, never used to choose: each seed's test metrics, as `evaluate` computes them
        predict = shifted(keras_predictor(model), params.evaluate.shifts)
        return score(test.labels, predict(test.x)).metrics

    name = f"repeat-{len(seeds)}-seeds"
    with runs.tracked_run(run_name=name, tags={"repeat": "parent"}) as parent:
        mlflow.set_tags(context_tags(root, digest, env))
        record = run_record(params, seeds, **{"data.sha256": digest})
        mlflow.log_params({**record["config"], "train.seed": seeds[0]})
        mlflow.log_params({"train.repeats": len(seeds), "seeds": ",".join(map(str, seeds))})
        rows = fit_seeds(params, splits["train"], splits["val"], len(seeds), measure=measure)
        record.update(run_id=parent.info.run_id, spread=log_spread(rows))
        frame = pd.DataFrame(rows)
        write_text(out / "seeds.csv", frame.to_csv(index=False, float_format="%.6g"))
        write_json(out / "spread.json", record)
        mlflow.log_artifact(str(out / "seeds.csv"), "repeat")
        mlflow.log_artifact(str(out / "spread.json"), "repeat")
    return record


@stage_main
def main(argv: Sequence[str] | None = None) -> None:
    """CLI entry point (`make repeat K=5`)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, default=Path("params.yaml"), help="params file")
    parser.add_argument("--repeats", type=int, help="seeds to train (default: train.repeats)")
    parser.add_argument(
        "--data", type=Path, default=Path("data/processed"), help="train/val/test .npz folder"
    )
    parser.add_argument(
        "--out", type=Path, default=Path("reports/repeat"), help="folder for seeds.csv, spread"
    )
    args = parser.parse_args(argv)
    params = load_params(args.params)
    if args.repeats is not None:  # validated like the file: `train.repeats` named on error
        tree = params.model_dump()
        tree["train"]["repeats"] = args.repeats
        params = parse_params(tree, f"--repeats {args.repeats} (make repeat K=)")

    from digits.lib.tracking.store import setup

    env = Environment.read()
    root = env.project_root(args.params)
    setup(params.mlflow, root, env)
    record = repeat(params, args.data, root, args.out, env)
    print(f"{len(record['seeds'])} seeds {record['seeds']}, parent run {record['run_id']}:")
    print(f"  {'metric':24} {'mean':>10} {'sd':>10} {'min':>10} {'max':>10}")
    for row in describe(record["spread"]):
        print(f"  {row[0]:24} " + " ".join(f"{c:>10}" for c in row[1:]))


if __name__ == "__main__":
    main()
