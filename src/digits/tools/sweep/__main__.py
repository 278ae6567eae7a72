"""`python -m digits.tools.sweep run|promote|storage|worker`: the sweep's command line."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from digits import PipelineError
from digits.lib.cli import stage_main
from digits.lib.config import ParamsError
from digits.lib.config.edit import edit_params
from digits.lib.config.sweep import SweepConfig
from digits.lib.environment import Environment
from digits.lib.urls import StorageUrl
from digits.tools.sweep.checks import load_sweep_params
from digits.tools.sweep.study import SweepOptions, count_trials, storage_url

if TYPE_CHECKING:
    from digits.tools.sweep.results import BestTrial


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The subcommands and their options; defaults come from `sweep:` in params.yaml."""
    parser = argparse.ArgumentParser(
        prog="python -m digits.tools.sweep", description="Optuna sweeps tracked in MLflow."
    )
    parser.add_argument(
        "--params", type=Path, default=Path("params.yaml"), help="the params file (its sweep:)"
    )
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run (or resume) the sweep: `make sweep`")
    run.add_argument("--workers", type=int, help="worker processes on this machine (sweep.workers)")
    run.add_argument(
        "--out", type=Path, default=Path("reports/sweep"), help="folder for trials.csv and plots"
    )
    run.add_argument(
        "--timeout",
        type=float,
        help="seconds (sweep.timeout): no trial starts after it, trials in flight stop then",
    )
    work = commands.add_parser("worker", help="internal: one worker process, started by `run`")
    work.add_argument("--parent-run-id", required=True, help="the sweep's MLflow parent run")
    work.add_argument("--seed", type=int, required=True, help="this worker's sampler seed")
    work.add_argument(
        "--deadline", type=float, help="Unix time: no trial starts after it, trials stop then"
    )
    for sub in (run, work):
        sub.add_argument(
            "--data", type=Path, default=Path("data/processed"), help="train/val .npz folder"
        )
        sub.add_argument("--n-trials", type=int, help="finished trials to reach (sweep.n_trials)")
    promote = commands.add_parser("promote", help="write the best trial into params.yaml")
    storage = commands.add_parser("storage", help="print the storage URL, password masked")
    storage.add_argument(
        "--show-password", action="store_true", help="print the password too (it is secret)"
    )
    for sub in (run, work, promote, storage):
        sub.add_argument("--study", help="study name (sweep.study)")
        sub.add_argument("--space", help="a named space of sweep.spaces, e.g. cnn (its study)")
        sub.add_argument(
            "--storage", help="SQLAlchemy URL or journal file ($OPTUNA_STORAGE, sweep.storage)"
        )
    return parser.parse_args(argv)


@stage_main
def main(argv: Sequence[str] | None = None) -> None:
    """CLI entry point (`make sweep`, `make promote`, `make dashboard`)."""
    args = parse_args(argv)
    params = load_sweep_params(args.params)
    if params.sweep is None:
        raise ParamsError(f"{args.params}: no `sweep:` section; see docs/sweeps.md")
    cfg = params.sweep.choose(args.space)
    params = params.model_copy(update={"sweep": cfg})
    env = Environment.read()
    url = storage_url(cfg, env.project_root(args.params), args.storage)
    if args.command == "storage":
        print(url.secret if args.show_password else url.redacted)
        return
    if args.command == "promote":
        promote(args.params, args.study or cfg.study, url, cfg)
        return
    workers = cfg.workers if getattr(args, "workers", None) is None else args.workers
    if workers < 1:
        raise ParamsError("--workers must be at least 1")
    opts = SweepOptions(
        params_path=args.params,
        study=args.study or cfg.study,
        storage=url,
        n_trials=args.n_trials or cfg.n_trials,
        data=args.data,
        out=getattr(args, "out", SweepOptions.out),
        workers=workers,
        space=args.space,
        timeout=getattr(args, "timeout", None) or cfg.timeout,
        env=env,
    )
    if args.command == "worker":
        from digits.tools.sweep.workers import work

        work(params, opts, args.parent_run_id, args.seed, args.deadline)
        return
    from digits.tools.sweep.launcher import sweep

    summary = sweep(params, opts)
    print(f"sweep {opts.study}: {summary.counts_line()}")
    if (best := summary.best) is not None:
        if best.multi_objective:
            print(f"Pareto front: trials {best.pareto_front}; {best.rule}:")
        print(
            f"{'' if best.multi_objective else 'best '}trial {best.number}: "
            f"{best.values_text()}; `make promote` writes its settings into {args.params}"
        )


class PromoteRefused(PipelineError):
    """The chosen trial carries settings the sweep did not search."""


def promotable(best: BestTrial, cfg: SweepConfig, params_path: Path) -> dict[str, Any]:
    """The chosen trial's settings that `make promote` may write: those of `sweep.space` and
    `sweep.fixed` only. Anyone who can write to the study's storage can write a trial's
    settings, so any other key (e.g. `mlflow.tracking_uri`, `download.mirrors`) is refused and
    nothing is written."""
    allowed = set(cfg.space) | set(cfg.fixed)
    if refused := [key for key in best.overrides if key not in allowed]:
        names = ", ".join(repr(key[:80]) for key in refused[:10])  # repr: one line, always
        more = f" and {len(refused) - 10} more" if len(refused) > 10 else ""
        raise PromoteRefused(
            f"trial {best.number} of study {best.study!r} sets {names}{more}, which "
            f"sweep.space and sweep.fixed do not hold: refused, {params_path} is unchanged. "
            "Only the searched settings are promoted; someone who can write to the study's "
            "storage may have added these: check who can"
        )
    return best.overrides


def promote(params_path: Path, study_name: str, url: StorageUrl, cfg: SweepConfig) -> None:
    """Write the chosen trial's settings into `params_path`: the best complete trial, or with
    several objectives the Pareto-front trial that `sweep.promote` picks; only the keys of
    `sweep.space` and `sweep.fixed` (`promotable`)."""
    import optuna

    from digits.tools.sweep.results import best_trial
    from digits.tools.sweep.study import check_same_objectives, open_storage, repair_storage

    repair_storage(url)
    try:
        study = optuna.load_study(study_name=study_name, storage=open_storage(url, 60))
    except KeyError:
        raise ParamsError(f"no study {study_name!r} in {url.redacted}; check STUDY=") from None
    check_same_objectives(study, cfg)
    if not count_trials(study).complete:
        raise ParamsError(f"study {study_name!r} has no complete trial yet; run `make sweep`")
    best = best_trial(study, dict(cfg.objectives), cfg.promote)
    overrides = promotable(best, cfg, params_path)
    edit_params(params_path, overrides)
    if best.multi_objective:
        print(f"Pareto front of {study_name!r}: trials {best.pareto_front}; {best.rule}:")
    print(f"trial {best.number} ({best.values_text()}) written to {params_path}:")
    for key, value in overrides.items():
        print(f"  {key}: {value}")
    print("now `dvc repro` (or `make repro`) trains it")


if __name__ == "__main__":
    main()
