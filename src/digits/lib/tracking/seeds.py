"""Several seeds of one configuration in MLflow: each seed a nested run of the active run, and
the spread of their summary metrics on the active run itself."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING

import mlflow

from digits.lib.config import Params
from digits.lib.seeds import seed_list, spread, spread_metrics

if TYPE_CHECKING:
    import keras

    from digits.lib.data import Split


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
    table = spread([{k: v for k, v in r.items() if k != "train.seed"} for r in rows])
    mlflow.log_metrics({**spread_metrics(table), "seeds/count": len(rows)})
    return table
