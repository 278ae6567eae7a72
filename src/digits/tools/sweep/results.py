"""What a sweep leaves behind: trials.csv, best_params.yaml and the study's plots; with several
objectives also the Pareto front (pareto.csv, pareto_front.png) and the one trial `make promote`
picks from it by the rule in `sweep.promote`."""

from __future__ import annotations

import dataclasses
import logging
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from digits import PipelineError
from digits.lib.config import nest
from digits.lib.config.sweep import PromoteRule
from digits.lib.files import write_text
from digits.tools.sweep.study import Counts, count_trials

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

    several = len(study.directions) > 1
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


class UntrustedTrial(PipelineError):
    """A trial's recorded settings are not a mapping of dotted keys: not written anywhere."""


def trial_overrides(trial: optuna.trial.FrozenTrial, study: str) -> dict[str, Any]:
    """The settings a trial trained (its `overrides` user attr), checked to be a mapping of
    dotted keys: anyone who can write to the study's storage can write user attrs."""
    overrides = trial.user_attrs.get("overrides")
    if not isinstance(overrides, Mapping) or not all(isinstance(k, str) for k in overrides):
        raise UntrustedTrial(
            f"trial {trial.number} of study {study!r} records its settings (user attr "
            "`overrides`) as something other than a mapping of dotted keys: `make sweep` never "
            "writes that; nothing was written: check who can write to the study's storage"
        )
    return dict(overrides)


@dataclasses.dataclass(frozen=True)
class BestTrial:
    """The trial `make promote` writes: the best one, or with several objectives the one the
    rule in `sweep.promote` picks from the Pareto front."""

    study: str
    number: int
    values: dict[str, float]  # objective -> its value
    overrides: dict[str, Any]  # the settings it trained, by dotted key
    mlflow_run_id: str | None
    rule: str | None = None  # several objectives: how the trial was picked, in words
    pareto_front: list[int] | None = None  # several objectives: the front's trials

    @property
    def multi_objective(self) -> bool:
        return self.pareto_front is not None

    @property
    def params(self) -> dict[str, Any]:
        """The settings as a params tree."""
        return nest(self.overrides)

    def values_text(self) -> str:
        """'val/accuracy 0.9861' or 'val/accuracy 0.9850, model.n_params 203530'."""
        return ", ".join(
            f"{k} {v:.4f}" if abs(v) < 100 else f"{k} {v:g}" for k, v in self.values.items()
        )

    def record(self, directions: Mapping[str, str]) -> dict[str, Any]:
        """What `best_params.yaml` holds: the trial's number, values and settings (and, with
        several objectives, the rule that chose it and the trials on the front)."""
        record: dict[str, Any] = {"study": self.study, "trial": self.number}
        if not self.multi_objective:
            ((objective, value),) = self.values.items()
            record.update(objective=objective, value=value)
        else:
            record.update(
                objectives=dict(directions),
                values=self.values,
                rule=self.rule,
                pareto_front=self.pareto_front,
            )
        return {**record, "mlflow_run_id": self.mlflow_run_id, "params": self.params}


def best_trial(study: optuna.Study, objectives: dict[str, str], rule: PromoteRule) -> BestTrial:
    """The study's `BestTrial`; several objectives (the study's directions decide) pick one
    trial of the Pareto front by `rule`."""
    names = list(objectives)
    if len(study.directions) == 1:
        best = study.best_trial
        front, text = None, None
    else:
        best = pick(study.best_trials, names, list(objectives.values()), rule)
        front, text = sorted(t.number for t in study.best_trials), rule_text(rule, objectives)
    return BestTrial(
        study=study.study_name,
        number=best.number,
        values=objective_values(best, names),
        overrides=trial_overrides(best, study.study_name),
        mlflow_run_id=best.user_attrs.get("mlflow_run_id"),
        rule=text,
        pareto_front=front,
    )


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


@dataclasses.dataclass(frozen=True)
class SweepSummary:
    """A sweep's outcome: trials by state, epochs trained and saved by pruning, the best value
    of each objective (on the Pareto front, with several), the trial to promote, the plots."""

    counts: Counts
    epochs_trained: int
    epochs_saved_by_pruning: int  # the epochs pruned trials would have trained on
    best_values: dict[str, float]
    best: BestTrial | None = None
    plots: tuple[Path, ...] = ()

    def metrics(self) -> dict[str, float]:
        """The parent run's metrics: `trials/*`, `epochs/*`, `best/*` and, with several
        objectives, `trials/pareto` and the promoted trial's values (`promoted/*`)."""
        metrics: dict[str, float] = {
            "trials/complete": self.counts.complete,
            "trials/pruned": self.counts.pruned,
            "trials/failed": self.counts.failed,
            "epochs/trained": self.epochs_trained,
            "epochs/saved_by_pruning": self.epochs_saved_by_pruning,
        }
        metrics.update({best_metric(k): v for k, v in self.best_values.items()})
        if self.best is not None and self.best.pareto_front is not None:
            metrics["trials/pareto"] = len(self.best.pareto_front)
            metrics.update(
                {f"promoted/{k.replace('/', '_')}": v for k, v in self.best.values.items()}
            )
        return metrics

    def counts_line(self) -> str:
        """'12 complete, 17 pruned, 1 failed'."""
        c = self.counts
        return f"{c.complete} complete, {c.pruned} pruned, {c.failed} failed"


def summarize(study: optuna.Study, epochs_per_trial: int, names: list[str]) -> SweepSummary:
    """The sweep's totals (`epochs_per_trial`: all seeds of a trial), without the best trial
    and the plots."""
    from optuna.trial import TrialState

    def epochs(state: TrialState) -> int:
        trials = study.get_trials(deepcopy=False, states=(state,))
        return sum(t.user_attrs.get("epochs", len(t.intermediate_values)) for t in trials)

    counts = count_trials(study)
    best: dict[str, float] = {}
    if counts.complete and len(study.directions) == 1:
        best[names[0]] = study.best_value
    elif counts.complete:
        front = study.best_trials
        for i, (name, way) in enumerate(zip(names, study.directions, strict=True)):
            pick_best = max if way.name == "MAXIMIZE" else min
            best[name] = pick_best(t.values[i] for t in front)
    pruned = epochs(TrialState.PRUNED)
    return SweepSummary(
        counts=counts,
        epochs_trained=epochs(TrialState.COMPLETE) + pruned,
        epochs_saved_by_pruning=epochs_per_trial * counts.pruned - pruned,
        best_values=best,
    )


def write_results(
    study: optuna.Study,
    out: Path,
    epochs_per_trial: int,
    objectives: dict[str, str],
    rule: PromoteRule,
) -> SweepSummary:
    """trials.csv, best_params.yaml, the plots and (several objectives) pareto.csv in `out`;
    returns the summary."""
    names = list(objectives)
    out.mkdir(parents=True, exist_ok=True)
    frame = trials_frame(study, names)
    write_text(out / "trials.csv", frame.to_csv(index=False, float_format="%.6g"))
    summary = summarize(study, epochs_per_trial, names)
    best = None
    if summary.counts.complete:
        best = best_trial(study, objectives, rule)
        record = yaml.safe_dump(best.record(objectives), sort_keys=False)
        write_text(out / "best_params.yaml", record)
        if best.multi_objective:
            pareto = pareto_frame(study, objectives, best.number)
            write_text(out / "pareto.csv", pareto.to_csv(index=False, float_format="%.6g"))
    plots = tuple(write_plots(study, out, names))
    return dataclasses.replace(summary, best=best, plots=plots)
