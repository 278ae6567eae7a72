"""What a sweep leaves behind: trials.csv, best_params.yaml and the study's plots; with several
objectives also the Pareto front (pareto.csv, pareto_front.png) and the one trial `make promote`
picks from it by the rule in `sweep.promote`."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from digits.lib.config import nest
from digits.lib.config.sweep import PromoteRule
from digits.lib.files import write_text
from digits.tools.sweep.study import count_trials

if TYPE_CHECKING:
    import optuna

log = logging.getLogger(__name__)


def objective_values(trial: optuna.trial.FrozenTrial, names: list[str]) -> dict[str, Any]:
    """{objective: value} of a complete trial; None for the others."""
    values = trial.values or [None] * len(names)
    return dict(zip(names, values, strict=True))


def trials_frame(study: optuna.Study, names: list[str]) -> Any:
    """One row per trial: number, state, value (one objective) or one column per objective and
    `pareto` (several), duration, epochs, params, MLflow run, the trial it retried (after its
    worker died) and the worker that ran it."""
    import pandas as pd

    several = len(names) > 1
    front = {t.number for t in study.best_trials} if several else set()
    rows = []
    for t in study.get_trials(deepcopy=False):
        values = objective_values(t, names) if several else {"value": t.value}
        if several:
            values["pareto"] = t.number in front
        rows.append(
            {
                "number": t.number,
                "state": t.state.name,
                **values,
                "duration": t.duration.total_seconds() if t.duration else None,
                "epochs": t.user_attrs.get("epochs", len(t.intermediate_values)),
                **t.params,
                "mlflow_run_id": t.user_attrs.get("mlflow_run_id"),
                "retry_of": t.user_attrs.get("retry_of"),
                "worker": t.user_attrs.get("worker"),
            }
        )
    empty = ["number", "state", *(names if several else ["value"])]
    return pd.DataFrame(rows, columns=None if rows else empty)


def pick(
    front: list[optuna.trial.FrozenTrial],
    names: list[str],
    directions: list[str],
    rule: PromoteRule,
) -> optuna.trial.FrozenTrial:
    """The one trial of a Pareto front that `rule` picks: of the trials within `tolerance` of
    the best `metric`, the best in `then`; ties go to the better `metric`, then the earlier
    trial. Every trial of the front is best at something, so the rule is the choice."""
    sign = {n: 1.0 if d == "maximize" else -1.0 for n, d in zip(names, directions, strict=True)}
    m, then = names.index(rule.metric), names.index(rule.then)
    top = max(sign[rule.metric] * t.values[m] for t in front)
    near = [t for t in front if sign[rule.metric] * t.values[m] >= top - rule.tolerance - 1e-12]
    return max(
        near,
        key=lambda t: (
            sign[rule.then] * t.values[then],
            sign[rule.metric] * t.values[m],
            -t.number,
        ),
    )


def rule_text(rule: PromoteRule, directions: dict[str, str]) -> str:
    """`sweep.promote` in words."""
    best = "smallest" if directions[rule.then] == "minimize" else "largest"
    return f"{best} {rule.then} within {rule.tolerance:g} of the best {rule.metric}"


def chosen_trial(study: optuna.Study, objectives: dict[str, str], rule: PromoteRule) -> Any:
    """The trial `make promote` writes: the best one, or the rule's pick from the Pareto front."""
    if len(objectives) == 1:
        return study.best_trial
    return pick(study.best_trials, list(objectives), list(objectives.values()), rule)


def best_record(study: optuna.Study, objectives: dict[str, str], rule: PromoteRule) -> dict:
    """What `best_params.yaml` holds: the chosen trial's number, values and settings (and, with
    several objectives, the rule that chose it and the trials on the front)."""
    names = list(objectives)
    best = chosen_trial(study, objectives, rule)
    record: dict[str, Any] = {"study": study.study_name, "trial": best.number}
    if len(names) == 1:
        record.update(objective=names[0], value=best.value)
    else:
        record.update(
            objectives=dict(objectives),
            values=objective_values(best, names),
            rule=rule_text(rule, objectives),
            pareto_front=sorted(t.number for t in study.best_trials),
        )
    record.update(
        mlflow_run_id=best.user_attrs.get("mlflow_run_id"),
        params=nest(best.user_attrs["overrides"]),
    )
    return record


def pareto_frame(study: optuna.Study, objectives: dict[str, str], chosen: int) -> Any:
    """The trials on the Pareto front, best first in the first objective: number, values,
    `promoted` (the rule's pick), params, MLflow run."""
    import pandas as pd

    names = list(objectives)
    first = -1.0 if objectives[names[0]] == "maximize" else 1.0
    front = sorted(study.best_trials, key=lambda t: (first * t.values[0], t.number))
    rows = [
        {
            "number": t.number,
            **objective_values(t, names),
            "promoted": t.number == chosen,
            **t.params,
            "mlflow_run_id": t.user_attrs.get("mlflow_run_id"),
        }
        for t in front
    ]
    return pd.DataFrame(rows)


def write_plots(study: optuna.Study, out: Path, names: list[str]) -> list[Path]:
    """Optimization history, parameter importances and parallel coordinates as PNGs (of the
    first objective when there are several), and the Pareto front of 2 or 3 objectives."""
    import matplotlib
    import optuna
    from optuna.visualization import matplotlib as ovm

    matplotlib.use("Agg")  # Optuna draws with pyplot: files only, never a window

    from digits.lib import plots

    written = []
    first: dict[str, Any] = {}
    if len(names) > 1:  # Optuna plots one target; the first objective is the headline
        first = {"target": lambda t: t.values[0], "target_name": names[0]}
    makers = {
        "optimization_history": lambda s: ovm.plot_optimization_history(s, **first),
        "param_importances": lambda s: ovm.plot_param_importances(s, **first),
        "parallel_coordinate": lambda s: ovm.plot_parallel_coordinate(s, **first),
    }
    if len(names) in (2, 3):
        makers["pareto_front"] = lambda s: ovm.plot_pareto_front(s, target_names=names)
    elif len(names) > 3:
        log.warning("no pareto_front plot: %d objectives (2 or 3 can be drawn)", len(names))
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


def best_metric(name: str) -> str:
    """The parent run's metric for the best value of an objective: `best/val_accuracy`."""
    return "best/" + name.replace("/", "_")


def summary_metrics(study: optuna.Study, epochs_per_trial: int, names: list[str]) -> dict:
    """The sweep's totals: best value of each objective, trials by state (and on the Pareto
    front), epochs trained and saved by pruning (`epochs_per_trial`: all seeds of a trial)."""
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
    if counts.complete and len(names) == 1:
        metrics[best_metric(names[0])] = study.best_value
    elif counts.complete:
        front = study.best_trials
        metrics["trials/pareto"] = len(front)
        for i, (name, way) in enumerate(zip(names, study.directions, strict=True)):
            best = max if way.name == "MAXIMIZE" else min
            metrics[best_metric(name)] = best(t.values[i] for t in front)
    return metrics


def write_results(
    study: optuna.Study,
    out: Path,
    epochs_per_trial: int,
    objectives: dict[str, str],
    rule: PromoteRule,
) -> dict[str, Any]:
    """trials.csv, best_params.yaml, the plots and (several objectives) pareto.csv in `out`;
    returns the summary."""
    names = list(objectives)
    out.mkdir(parents=True, exist_ok=True)
    frame = trials_frame(study, names)
    write_text(out / "trials.csv", frame.to_csv(index=False, float_format="%.6g"))
    summary: dict[str, Any] = summary_metrics(study, epochs_per_trial, names)
    if count_trials(study).complete:
        best = best_record(study, objectives, rule)
        write_text(out / "best_params.yaml", yaml.safe_dump(best, sort_keys=False))
        summary["best"] = best
        if len(names) > 1:
            pareto = pareto_frame(study, objectives, best["trial"])
            write_text(out / "pareto.csv", pareto.to_csv(index=False, float_format="%.6g"))
            for name, value in best["values"].items():
                summary[f"promoted/{name.replace('/', '_')}"] = value
    summary["plots"] = [str(p) for p in write_plots(study, out, names)]
    return summary


def count_trials_line(summary: dict[str, Any]) -> str:
    """'12 complete, 17 pruned, 1 failed'."""
    return ", ".join(
        f"{summary[k]} {k.split('/')[1]}"
        for k in ("trials/complete", "trials/pruned", "trials/failed")
    )
