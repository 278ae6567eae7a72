"""The study: where it is stored, how it samples and prunes, and its trials counted by state."""

from __future__ import annotations

import logging
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from digits import PipelineError
from digits.lib.config import Params
from digits.lib.config.sweep import SweepConfig
from digits.lib.environment import Environment
from digits.lib.urls import StorageKind, StorageUrl, check_database
from digits.lib.vocab import METRIC_TO_KERAS, VAL_ACCURACY

if TYPE_CHECKING:
    import optuna

log = logging.getLogger(__name__)

DEFAULT_JOURNAL = "sweeps/optuna-journal.log"
FINISHED = ("COMPLETE", "PRUNED")  # trial states that count toward `n_trials`


def storage_url(cfg: SweepConfig, root: Path, override: str | None = None) -> StorageUrl:
    """--storage, else $OPTUNA_STORAGE, else `sweep.storage`, else the project's journal file,
    parsed once (a relative journal path anchored at `root`) and passed down as it is."""
    url = override or os.environ.get("OPTUNA_STORAGE") or cfg.storage or DEFAULT_JOURNAL
    if "://" not in url:
        url = str((root / url).resolve())
    return StorageUrl.parse(url)


def single_host(url: StorageUrl) -> bool:
    """True for the journal file: every worker of its studies runs on this machine."""
    return url.is_path


def open_storage(url: StorageUrl, heartbeat: float) -> optuna.storages.BaseStorage:
    """A SQLAlchemy URL -> RDBStorage with heartbeats (a dead worker's trial turns FAIL and is
    retried); a file path -> JournalStorage, safe for many processes on one machine."""
    import optuna

    from digits.lib.journal import journal_backend
    from digits.tools.sweep.orphans import retry_trial

    if not url.is_path:
        check_database(url.secret)  # a missing driver or a dead server: one line, no traceback
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.storages.RDBStorage(
                url.secret,
                heartbeat_interval=max(1, round(heartbeat)),
                grace_period=round(grace_seconds(heartbeat)),
                heartbeat_stale_trial_callback=retry_trial,
                engine_kwargs={"pool_pre_ping": True, **session_limits(url, heartbeat)},
            )
    Path(url.secret).parent.mkdir(parents=True, exist_ok=True)
    return optuna.storages.JournalStorage(journal_backend(url.secret))  # the default symlink lock


def grace_seconds(heartbeat: float) -> float:
    """How long a trial may go without a sign of its worker (a heartbeat, or an owner)
    before it is judged dead: two heartbeats, at least 2 seconds."""
    return max(2.0, 2 * heartbeat)


def session_limits(url: StorageUrl, heartbeat: float) -> dict:
    """PostgreSQL: end a worker's session that stays inside a transaction (its host died or
    lost its network between two statements), so the row locks it holds do not stop the other
    workers from failing its trial; Optuna's transactions hold no user code, so a live worker
    never waits that long."""
    if url.kind is not StorageKind.POSTGRESQL:
        return {}
    limit_ms = round(1000 * max(10.0, 2 * heartbeat))
    return {"connect_args": {"options": f"-c idle_in_transaction_session_timeout={limit_ms}"}}


def repair_storage(url: StorageUrl) -> None:
    """Before the launcher opens a journal file (no worker running yet): drop partial records."""
    if url.is_path:
        from digits.lib.journal import repair_journal

        repair_journal(url.secret)


def make_sampler(cfg: SweepConfig, seed: int) -> optuna.samplers.BaseSampler:
    """Seeded TPE or random sampling (each worker gets its own seed)."""
    import optuna

    if cfg.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed)


def reported_metric(cfg: SweepConfig) -> str | None:
    """The per-epoch metric trials report to Optuna (for the pruner, the dashboard and the
    intermediate values): the single objective when it has a value every epoch, else None
    (Optuna takes no intermediate values in multi-objective studies)."""
    (name, *others) = cfg.objectives
    return name if not others and name in METRIC_TO_KERAS else None


def pruning_off_reason(cfg: SweepConfig) -> str | None:
    """Why `sweep.pruner` cannot act on this study, or None when it can (or is `none`)."""
    if cfg.pruner == "none":
        return None
    if len(cfg.objectives) > 1:
        return (
            f"sweep.pruner {cfg.pruner!r} is ignored: Optuna prunes single-objective studies "
            f"only, and this one has {len(cfg.objectives)} objectives; every trial trains all "
            "its epochs (early stopping still applies)"
        )
    (name,) = cfg.objectives
    if name not in METRIC_TO_KERAS:
        return f"sweep.pruner {cfg.pruner!r} is ignored: {name} is known only when a fit ends"
    return None


def make_pruner(cfg: SweepConfig, epochs: int) -> optuna.pruners.BasePruner:
    """Median or Hyperband on the objective's per-epoch value, or none (also whenever the study
    cannot be pruned: several objectives, or one without per-epoch values)."""
    import optuna

    if reported_metric(cfg) is None:  # several objectives, or none known per epoch
        return optuna.pruners.NopPruner()
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


def open_study(params: Params, url: StorageUrl, name: str, seed: int) -> optuna.Study:
    """Create the study, or load it when it exists (safe to race from several processes). A
    study keeps the objectives and repeats it was created with: values measured otherwise
    cannot be compared, so params that disagree are an error."""
    import optuna

    cfg = params.sweep
    assert cfg is not None
    study = optuna.create_study(
        study_name=name,
        storage=open_storage(url, cfg.heartbeat),
        directions=list(cfg.objectives.values()),
        sampler=make_sampler(cfg, seed),
        pruner=make_pruner(cfg, trial_epochs(params)),
        load_if_exists=True,
    )
    check_same_objectives(study, cfg)
    return study


class StudyMismatch(PipelineError):
    """The stored study optimises other objectives, or with other repeats, than params say."""


def check_same_objectives(study: optuna.Study, cfg: SweepConfig) -> None:
    """Record `sweep.objectives` and `sweep.repeats` on a new study; on an existing one, stop
    when they differ. (Studies made before these settings existed: one objective, one seed.)"""
    wanted = {"objectives": dict(cfg.objectives), "repeats": cfg.repeats}
    stored = {k: study.user_attrs[k] for k in wanted if k in study.user_attrs}
    if not stored and study.get_trials(deepcopy=False):
        stored = {"objectives": {VAL_ACCURACY: "maximize"}, "repeats": 1}
    if stored and stored != wanted:
        raise StudyMismatch(
            f"study {study.study_name!r} was run with objectives {stored['objectives']} and "
            f"repeats {stored['repeats']}; params.yaml says sweep.objectives "
            f"{wanted['objectives']} and sweep.repeats {wanted['repeats']}. Values measured "
            "otherwise do not compare: name a new study (STUDY=, sweep.study)"
        )
    for key, value in wanted.items():
        if key not in study.user_attrs:
            study.set_user_attr(key, value)


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
    from optuna.trial import TrialState

    def count(state: TrialState) -> int:
        return len(study.get_trials(deepcopy=False, states=(state,)))

    return Counts(
        complete=count(TrialState.COMPLETE),
        pruned=count(TrialState.PRUNED),
        failed=count(TrialState.FAIL),
        running=count(TrialState.RUNNING),
    )


@dataclass(frozen=True)
class SweepOptions:
    """What a sweep and its workers run on: the command line over `sweep:` in params.yaml."""

    params_path: Path
    study: str
    storage: StorageUrl  # a SQLAlchemy URL, or the journal file's absolute path
    n_trials: int  # finished (complete or pruned) trials the study should reach
    data: Path = Path("data/processed")
    out: Path = Path("reports/sweep")
    workers: int = 1
    # seconds for this `make sweep`: no trial starts after, trials in flight stop at an epoch end
    timeout: float | None = None
    space: str | None = None  # a named space of `sweep.spaces` instead of `sweep.space`
    env: Environment = field(default_factory=Environment)  # read once by the launcher's main
