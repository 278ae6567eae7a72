"""The `sweep:` section: the Optuna search (`make sweep`), its space as data keyed by dotted
param names. The stages neither read nor depend on it: the sweep's tools load `SweepParams`.
Whether the space fits the rest of the schema is checked beside the sweep
(`digits.tools.sweep.checks`); this module checks the section on its own."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from digits.lib.config.errors import ParamsError, Problem, SettingProblems
from digits.lib.config.fields import Direction, Seed, Strict
from digits.lib.config.params import Params
from digits.lib.vocab import OBJECTIVES, direction


class Dimension(Strict):
    """One searched setting: a list of `choices`, or a range `low`..`high` (integers when both
    ends are integers), sampled on a log scale when `log` is true."""

    choices: list[Any] | None = Field(
        default=None, min_length=1, description="The values to choose from."
    )
    low: int | float | None = Field(
        default=None, description="Lowest value of a range (integers when both ends are)."
    )
    high: int | float | None = Field(default=None, description="Highest value of a range.")
    log: bool = Field(default=False, description="Sample the range on a log scale (low > 0).")

    @model_validator(mode="after")
    def _choices_or_range(self) -> Dimension:
        if (self.choices is None) == (self.low is None or self.high is None):
            raise ValueError("give either `choices` or both `low` and `high`")
        if self.choices is None and not self.low < self.high:  # type: ignore[operator]
            raise ValueError(f"low ({self.low}) must be below high ({self.high})")
        if self.log and (self.choices is not None or self.low <= 0):  # type: ignore[operator]
            raise ValueError("`log` needs a range with low > 0")
        return self

    @property
    def values(self) -> list[Any]:
        """The values to check against the schema: every choice, or both ends of the range."""
        return list(self.choices) if self.choices is not None else [self.low, self.high]


class PromoteRule(Strict):
    """How `make promote` picks one trial of a Pareto front (several objectives): among the
    front's trials within `tolerance` of the best `metric`, the one best in `then`."""

    metric: str = Field(
        default="val/accuracy", description="The objective the front's trials must be near."
    )
    tolerance: float = Field(
        default=0.001,
        ge=0,
        description="How near, in `metric`'s units (0.001 = 0.1 point of accuracy).",
    )
    then: str = Field(default="model.n_params", description="The objective that picks among them.")


class SearchSpace(Strict):
    """Another study over another space, `make sweep SPACE=<name>`: it replaces the study name,
    `fixed` and `space` of `sweep:` (and `n_trials` and `timeout`, when given); the rest is
    shared."""

    study: str = Field(min_length=1, description="The study's name.")
    n_trials: int | None = Field(
        default=None, gt=0, description="In place of `sweep.n_trials` (null: that)."
    )
    timeout: float | None = Field(
        default=None, gt=0, description="Seconds, in place of `sweep.timeout` (null: that)."
    )
    fixed: dict[str, Any] = Field(description="Settings (dotted keys) the same in every trial.")
    space: dict[str, Dimension] = Field(
        min_length=1, description="The searched settings (dotted keys)."
    )


class SweepConfig(Strict):
    """The Optuna search (`make sweep`): the space is data, keyed by dotted param names."""

    study: str = Field(default="mnist-mlp", min_length=1, description="The study's name.")
    storage: str | None = Field(
        default=None,
        description="null: the journal file sweeps/optuna-journal.log; or a SQLAlchemy URL "
        "(postgresql://...); $OPTUNA_STORAGE overrides.",
    )
    n_trials: int = Field(
        default=30,
        gt=0,
        description="Finished (complete or pruned) trials the study should reach.",
    )
    timeout: float | None = Field(
        default=300,
        gt=0,
        description=(
            "Seconds per `make sweep`: no trial starts after it and trials in flight stop at "
            "their next epoch's end, so a sweep's wall time is bounded whatever trials the "
            "workers draw (null: no limit; `make sweep TIMEOUT=` overrides)."
        ),
    )
    sampler: Literal["tpe", "random"] = Field(default="tpe", description="Optuna's sampler.")
    seed: Seed = Field(default=42, description="The sampler's seed, 0 to 2**32 - 1.")
    pruner: Literal["median", "hyperband", "none"] = Field(
        default="hyperband", description="Stops unpromising trials early (single objective)."
    )
    startup_trials: int = Field(
        default=5, ge=0, description="Complete trials before the median pruner prunes."
    )
    warmup_epochs: int = Field(
        default=1,
        ge=0,
        description="Epochs every trial trains before it can be pruned (hyperband: its first "
        "rung).",
    )
    heartbeat: float = Field(
        default=30.0,
        gt=0,
        description="Seconds; a dead worker's trial fails after 2 heartbeats (RDB storages).",
    )
    objectives: dict[str, Direction] = Field(
        default_factory=lambda: {"val/accuracy": "maximize"},
        min_length=1,
        description=f"Metric -> maximize | minimize, metrics among {', '.join(OBJECTIVES)}; "
        "two or more make a Pareto front (and turn pruning off).",
    )
    repeats: int = Field(
        default=1,
        gt=0,
        description="Seeds per trial (train.seed, +1, ...); each objective is their mean.",
    )
    promote: PromoteRule = Field(
        default=PromoteRule(), description="How `make promote` picks from a Pareto front."
    )
    workers: int = Field(
        default=2,
        ge=1,
        le=256,
        description="Worker processes on this machine (WORKERS= or --workers overrides; 1: "
        "in make's own process).",
    )
    threads: int = Field(
        default=0,
        ge=0,
        le=1024,
        description="TensorFlow threads per worker (0: cores / workers, so the workers' pools "
        "never fight).",
    )
    fixed: dict[str, Any] = Field(
        description="Settings (dotted keys) the same in every trial, e.g. `train.epochs: 8`."
    )
    space: dict[str, Dimension] = Field(
        min_length=1, description="The searched settings (dotted keys)."
    )
    spaces: dict[str, SearchSpace] = Field(
        description="Other studies by name: `make sweep SPACE=cnn` searches that one instead."
    )

    @model_validator(mode="after")
    def _objectives_are_known(self) -> SweepConfig:
        if problems := objective_problems(self):
            raise SettingProblems(problems)
        return self

    def choose(self, name: str | None) -> SweepConfig:
        """This sweep with the named space of `spaces` in place of its own (None: as it is)."""
        if name is None:
            return self
        if name not in self.spaces:
            raise ParamsError(f"sweep.spaces: no space {name!r}; there are {sorted(self.spaces)}")
        chosen = self.spaces[name]
        update = {"study": chosen.study, "fixed": chosen.fixed, "space": chosen.space}
        if chosen.n_trials:
            update["n_trials"] = chosen.n_trials
        if chosen.timeout:
            update["timeout"] = chosen.timeout
        return self.model_copy(update=update)


class SweepParams(Params):
    """All of `params.yaml` with its `sweep:` section validated: what the sweep's tools load
    (`load_params(path, SweepParams)`)."""

    sweep: SweepConfig | None = Field(  # type: ignore[assignment]
        default=None, description="The Optuna search, `make sweep` (null: none)."
    )


def objective_problems(sweep: SweepConfig) -> list[Problem]:
    """Why `objectives` or `promote` cannot be run, one problem per key (relative to the
    section): names outside the vocabulary, a direction that would seek the worst models, a
    promotion rule on a metric the study does not optimise."""
    known = ", ".join(OBJECTIVES)
    problems = []
    for name, way in sweep.objectives.items():
        key = f"objectives.{name}"
        if name.startswith("test/"):
            problems.append(
                Problem(key, f"the test set never selects models; use val/ (one of {known})")
            )
        elif name not in OBJECTIVES:
            problems.append(Problem(key, f"unknown objective; one of {known}"))
        elif way != direction(name):
            problems.append(Problem(key, f"{name} is to {direction(name)}, not {way}"))
    rule = sweep.promote
    for field in ("metric", "then"):
        name = getattr(rule, field)
        if name not in OBJECTIVES:
            problems.append(Problem(f"promote.{field}", f"unknown metric {name!r}; one of {known}"))
        elif len(sweep.objectives) > 1 and name not in sweep.objectives:
            problems.append(
                Problem(
                    f"promote.{field}",
                    f"{name} is not in sweep.objectives ({', '.join(sweep.objectives)}), so "
                    "the Pareto front says nothing about it",
                )
            )
    if rule.metric == rule.then:
        problems.append(Problem("promote.then", "must differ from sweep.promote.metric"))
    return problems
