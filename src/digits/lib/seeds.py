"""One configuration trained with several seeds: the seeds, and the spread of their summary
metrics (mean, sd, min, max). Pure; the training and logging are `tracking/seeds.py`'s. Shared
by `make repeat`, sweep trials when `sweep.repeats > 1`, and the report.

Seeds are `train.seed`, `train.seed + 1`, ...: the first is the seed a single run trains, so a
repeated configuration always contains the run the train stage (or a one-seed trial) makes.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from typing import Any

from digits.lib.config import Params

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


def describe(table: Mapping[str, Mapping[str, float | None]]) -> list[tuple[str, ...]]:
    """Rows of a readable table: metric, mean, sd, min, max (sd `-` for one seed)."""

    def fmt(value: float | None) -> str:
        if value is None:
            return "-"
        return f"{value:.4f}" if abs(value) < 100 and value != int(value) else f"{value:g}"

    return [(name, *(fmt(stats[s]) for s in STATISTICS)) for name, stats in table.items()]


def run_record(params: Params, seeds: Sequence[int], **extra: Any) -> dict[str, Any]:
    """What identifies a repeated configuration: its settings without the seed (and the
    test-time shifts its test metrics were computed with), and the seeds."""
    from digits.lib.config.runparams import run_params

    config = {k: v for k, v in run_params(params).items() if k != "train.seed"}
    config["evaluate.shifts"] = params.evaluate.shifts
    return {"config": config, "seeds": list(seeds), **extra}
