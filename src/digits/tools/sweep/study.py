"""The study: where it is stored, how it samples and prunes, and its trials counted by state."""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from digits.lib.config import Params, SweepConfig

if TYPE_CHECKING:
    import optuna

DEFAULT_JOURNAL = "sweeps/optuna-journal.log"
OBJECTIVE = "val/accuracy"  # what every trial reports per epoch and the study maximises
FINISHED = ("COMPLETE", "PRUNED")  # trial states that count toward `n_trials`


def storage_url(cfg: SweepConfig, root: Path, override: str | None = None) -> str:
    """--storage, else $OPTUNA_STORAGE, else `sweep.storage`, else the project's journal file."""
    url = override or os.environ.get("OPTUNA_STORAGE") or cfg.storage or DEFAULT_JOURNAL
    if "://" in url:
        return url
    return str((root / url).resolve())


def open_storage(url: str, heartbeat: float) -> optuna.storages.BaseStorage:
    """A SQLAlchemy URL -> RDBStorage with heartbeats (a dead worker's trial turns FAIL);
    a file path -> JournalStorage, safe for many processes on one machine."""
    import optuna
    from optuna.storages.journal import JournalFileBackend

    if "://" in url:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.storages.RDBStorage(
                url,
                heartbeat_interval=max(1, round(heartbeat)),
                grace_period=max(2, round(2 * heartbeat)),
                engine_kwargs={"pool_pre_ping": True},
            )
    Path(url).parent.mkdir(parents=True, exist_ok=True)
    return optuna.storages.JournalStorage(JournalFileBackend(url))  # the default symlink lock


def redact(url: str) -> str:
    """A storage URL without its password, for logs and tags."""
    from sqlalchemy.engine import make_url

    return url if "://" not in url else make_url(url).render_as_string(hide_password=True)


def make_sampler(cfg: SweepConfig, seed: int) -> optuna.samplers.BaseSampler:
    """Seeded TPE or random sampling (each worker gets its own seed)."""
    import optuna

    if cfg.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed)


def make_pruner(cfg: SweepConfig, epochs: int) -> optuna.pruners.BasePruner:
    """Median or Hyperband on validation accuracy per epoch, or none."""
    import optuna

    if cfg.pruner == "median":
        return optuna.pruners.MedianPruner(
            n_startup_trials=cfg.startup_trials, n_warmup_steps=cfg.warmup_epochs
        )
    if cfg.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(
            min_resource=max(1, cfg.warmup_epochs), max_resource=epochs, reduction_factor=3
        )
    return optuna.pruners.NopPruner()


def trial_epochs(params: Params) -> int:
    """Epochs a trial trains when not pruned."""
    epochs = params.sweep.fixed.get("train.epochs") if params.sweep else None
    return int(epochs or params.train.epochs)


def open_study(params: Params, url: str, name: str, seed: int) -> optuna.Study:
    """Create the study, or load it when it exists (safe to race from several processes)."""
    import optuna

    assert params.sweep is not None
    return optuna.create_study(
        study_name=name,
        storage=open_storage(url, params.sweep.heartbeat),
        direction="maximize",
        sampler=make_sampler(params.sweep, seed),
        pruner=make_pruner(params.sweep, trial_epochs(params)),
        load_if_exists=True,
    )


@dataclass(frozen=True)
class Counts:
    """Trials of a study by state."""

    complete: int = 0
    pruned: int = 0
    failed: int = 0
    running: int = 0

    @property
    def finished(self) -> int:
        return self.complete + self.pruned


def count_trials(study: optuna.Study) -> Counts:
    """How many trials are in each state."""
    states = [t.state.name for t in study.get_trials(deepcopy=False)]
    return Counts(
        complete=states.count("COMPLETE"),
        pruned=states.count("PRUNED"),
        failed=states.count("FAIL"),
        running=states.count("RUNNING"),
    )


@dataclass(frozen=True)
class SweepOptions:
    """What a sweep and its workers run on: the command line over `sweep:` in params.yaml."""

    params_path: Path
    study: str
    storage: str  # a SQLAlchemy URL, or the journal file's absolute path
    n_trials: int  # finished (complete or pruned) trials the study should reach
    data: Path = Path("data/processed")
    out: Path = Path("reports/sweep")
    workers: int = 1
    timeout: float | None = None  # seconds for this `make sweep`
    space: str | None = None  # a named space of `sweep.spaces` instead of `sweep.space`
