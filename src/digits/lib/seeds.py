"""One configuration trained with several seeds: each seed a nested MLflow run of the active run,
and the spread of their summary metrics (mean, sd, min, max). Shared by `make repeat` and by
sweep trials when `sweep.repeats > 1`.

Seeds are `train.seed`, `train.seed + 1`, ...: the first is the seed a single run trains, so a
repeated configuration always contains the run the train stage (or a one-seed trial) makes.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from digits.lib.config import Params

if TYPE_CHECKING:
    import keras

    from digits.lib.data import Split

STATISTICS = ("mean", "sd", "min", "max")


def seed_list(base: int, repeats: int) -> list[int]:
    """The seeds of `repeats` runs starting at `base`."""
    return [base + i for i in range(repeats)]


def spread(rows: Sequence[Mapping[str, float]]) -> dict[str, dict[str, float | None]]:
    """For every metric all rows have: mean, sample sd (n - 1; None for one seed, which says
    nothing about the spread), min and max."""
    if not rows:
        return {}
    names = [k for k in rows[0] if all(k in r for r in rows[1:])]
    table: dict[str, dict[str, float | None]] = {}
    for name in names:
        values = [float(r[name]) for r in rows]
        table[name] = {
            "mean": statistics.fmean(values),
            "sd": statistics.stdev(values) if len(values) > 1 else None,
            "min": min(values),
            "max": max(values),
        }
    return table


def spread_metrics(table: Mapping[str, Mapping[str, float | None]]) -> dict[str, float]:
    """The spread as flat metric names for MLflow: `test/accuracy.mean`, `test/accuracy.sd`..."""
    return {
        f"{name}.{stat}": value
        for name, stats in table.items()
        for stat, value in stats.items()
        if value is not None and math.isfinite(value)
    }


def fit_seeds(
    params: Params,
    train: Split,
    val: Split,
    repeats: int,
    callbacks: Callable[[int], Sequence[keras.callbacks.Callback]] = lambda i: (),
    measure: Callable[[keras.Model], Mapping[str, float]] | None = None,
    stop: Callable[[], bool] = lambda: False,
) -> list[dict[str, float]]:
    """Train `params` with `repeats` seeds, each in a nested run (named `seed-<seed>`) of the
    active run. `callbacks(i)` adds Keras callbacks to the i-th seed's fit; `measure(model)`
    adds metrics of the fitted model (e.g. on the test set), logged to the seed's run; `stop()`,
    asked after each seed, ends the loop early (a pruned trial). Returns one row per seed:
    the fit's summary, `model.n_params`, `train.seed` and what `measure` gave."""
    import mlflow

    from digits.lib.tracking import runs
    from digits.lib.training import fit_logged

    rows = []
    for i, seed in enumerate(seed_list(params.train.seed, repeats)):
        seeded = params.with_overrides({"train.seed": seed})
        with runs.tracked_run(run_name=f"seed-{seed}", nested=True, tags={"seed": str(seed)}):
            model, _, summary = fit_logged(seeded, train, val, callbacks(i), verbose=0)
            row = {**summary, "model.n_params": model.count_params()}
            if measure is not None:
                extra = dict(measure(model))
                mlflow.log_metrics(extra)
                row.update(extra)
        rows.append({**row, "train.seed": seed})
        if stop():
            break
    return rows


def log_spread(rows: Sequence[Mapping[str, float]]) -> dict[str, dict[str, float | None]]:
    """Log the spread of `rows` (without `train.seed`) to the active run; returns it."""
    import mlflow

    table = spread([{k: v for k, v in r.items() if k != "train.seed"} for r in rows])
    mlflow.log_metrics({**spread_metrics(table), "seeds/count": len(rows)})
    return table


def describe(table: Mapping[str, Mapping[str, float | None]]) -> list[tuple[str, ...]]:
    """Rows of a readable table: metric, mean, sd, min, max (sd `-` for one seed)."""

    def fmt(value: float | None) -> str:
        if value is None:
            return "-"
        return f"{value:.4f}" if abs(value) < 100 and value != int(value) else f"{value:g}"

    return [(name, *(fmt(stats[s]) for s in STATISTICS)) for name, stats in table.items()]


def run_record(params: Params, seeds: Sequence[int], **extra: Any) -> dict[str, Any]:
    """What identifies a repeated configuration: its settings without the seed, and the seeds."""
    from digits.lib.config import run_params

    config = {k: v for k, v in run_params(params).items() if k != "train.seed"}
    return {"config": config, "seeds": list(seeds), **extra}
