"""What a sweep leaves behind: trials.csv, best_params.yaml and the study's plots."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from digits.lib.config import nest
from digits.lib.files import write_text
from digits.tools.sweep.study import OBJECTIVE, count_trials

if TYPE_CHECKING:
    import optuna

log = logging.getLogger(__name__)


def trials_frame(study: optuna.Study) -> Any:
    """One row per trial: number, state, value, duration, epochs, params, MLflow run."""
    import pandas as pd

    rows = [
        {
            "number": t.number,
            "state": t.state.name,
            "value": t.value,
            "duration": t.duration.total_seconds() if t.duration else None,
            "epochs": t.user_attrs.get("epochs", len(t.intermediate_values)),
            **t.params,
            "mlflow_run_id": t.user_attrs.get("mlflow_run_id"),
        }
        for t in study.get_trials(deepcopy=False)
    ]
    return pd.DataFrame(rows, columns=None if rows else ["number", "state", "value"])


def best_record(study: optuna.Study) -> dict[str, Any]:
    """What `best_params.yaml` holds: the best trial's number, value and settings."""
    best = study.best_trial
    return {
        "study": study.study_name,
        "trial": best.number,
        "objective": OBJECTIVE,
        "value": best.value,
        "mlflow_run_id": best.user_attrs.get("mlflow_run_id"),
        "params": nest(best.user_attrs["overrides"]),
    }


def write_plots(study: optuna.Study, out: Path) -> list[Path]:
    """Optimization history, parameter importances and parallel coordinates as PNGs."""
    import matplotlib
    import optuna
    from optuna.visualization import matplotlib as ovm

    matplotlib.use("Agg")  # Optuna draws with pyplot: files only, never a window

    from digits.lib import plots

    written = []
    makers = {
        "optimization_history": ovm.plot_optimization_history,
        "param_importances": ovm.plot_param_importances,
        "parallel_coordinate": ovm.plot_parallel_coordinate,
    }
    for name, make in makers.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            try:
                axes = make(study)
            except (ValueError, RuntimeError) as err:  # e.g. too few complete trials
                log.warning("no %s plot: %s", name, err)
                continue
        figure = axes.figure if hasattr(axes, "figure") else axes.flat[0].figure
        figure.set_size_inches(9, 5.5)
        plots.save(figure, out / f"{name}.png")
        written.append(out / f"{name}.png")
    return written


def summary_metrics(study: optuna.Study, epochs_per_trial: int) -> dict[str, float]:
    """The sweep's totals: best value, trials by state, epochs trained and saved by pruning."""
    counts = count_trials(study)
    trials = study.get_trials(deepcopy=False)

    def epochs(state: str) -> int:
        return sum(
            t.user_attrs.get("epochs", len(t.intermediate_values))
            for t in trials
            if t.state.name == state
        )

    metrics = {
        "trials/complete": counts.complete,
        "trials/pruned": counts.pruned,
        "trials/failed": counts.failed,
        "epochs/trained": epochs("COMPLETE") + epochs("PRUNED"),
        "epochs/saved_by_pruning": epochs_per_trial * counts.pruned - epochs("PRUNED"),
    }
    if counts.complete:
        metrics["best/val_accuracy"] = study.best_value
    return metrics


def write_results(study: optuna.Study, out: Path, epochs_per_trial: int) -> dict[str, Any]:
    """trials.csv, best_params.yaml and the plots in `out`; returns the summary."""
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / "trials.csv", trials_frame(study).to_csv(index=False, float_format="%.6g"))
    summary: dict[str, Any] = summary_metrics(study, epochs_per_trial)
    if summary.get("best/val_accuracy") is not None:
        best = best_record(study)
        write_text(out / "best_params.yaml", yaml.safe_dump(best, sort_keys=False))
        summary["best"] = best
    summary["plots"] = [str(p) for p in write_plots(study, out)]
    return summary


def count_trials_line(summary: dict[str, Any]) -> str:
    """'12 complete, 17 pruned, 1 failed'."""
    return ", ".join(
        f"{summary[k]} {k.split('/')[1]}"
        for k in ("trials/complete", "trials/pruned", "trials/failed")
    )
