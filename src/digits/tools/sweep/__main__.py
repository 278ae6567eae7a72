"""`python -m digits.tools.sweep run|promote|storage|worker`: the sweep's command line."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from digits.lib.cli import stage_main
from digits.lib.config import ParamsError, edit_params, load_params
from digits.lib.files import project_root
from digits.tools.sweep.study import OBJECTIVE, SweepOptions, count_trials, redact, storage_url


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
    run.add_argument("--timeout", type=float, help="seconds; no new trial starts after it")
    work = commands.add_parser("worker", help="internal: one worker process, started by `run`")
    work.add_argument("--parent-run-id", required=True, help="the sweep's MLflow parent run")
    work.add_argument("--seed", type=int, required=True, help="this worker's sampler seed")
    work.add_argument("--deadline", type=float, help="Unix time after which no trial starts")
    for sub in (run, work):
        sub.add_argument(
            "--data", type=Path, default=Path("data/processed"), help="train/val .npz folder"
        )
        sub.add_argument("--n-trials", type=int, help="finished trials to reach (sweep.n_trials)")
    promote = commands.add_parser("promote", help="write the best trial into params.yaml")
    storage = commands.add_parser("storage", help="print the storage URL (for optuna-dashboard)")
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
    params = load_params(args.params)
    if params.sweep is None:
        raise ParamsError(f"{args.params}: no `sweep:` section; see the README")
    cfg = params.sweep.choose(args.space)
    params = params.model_copy(update={"sweep": cfg})
    url = storage_url(cfg, project_root(args.params), args.storage)
    if args.command == "storage":
        print(url if "://" in url else Path(url).as_posix())
        return
    if args.command == "promote":
        promote(args.params, args.study or cfg.study, url)
        return
    workers = getattr(args, "workers", None) or cfg.workers
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
    )
    from digits.tools.sweep import workers
    from digits.tools.sweep.results import count_trials_line

    if args.command == "worker":
        workers.work(params, opts, args.parent_run_id, args.seed, args.deadline)
        return
    summary = workers.sweep(params, opts)
    print(f"sweep {opts.study}: {count_trials_line(summary)}")
    if best := summary.get("best"):
        print(
            f"best trial {best['trial']}: {OBJECTIVE} {best['value']:.4f}; "
            f"`make promote` writes its settings into {args.params}"
        )


def promote(params_path: Path, study_name: str, url: str) -> None:
    """Write the best complete trial's settings into `params_path`."""
    import optuna

    from digits.tools.sweep.study import open_storage

    try:
        study = optuna.load_study(study_name=study_name, storage=open_storage(url, 60))
    except KeyError:
        raise ParamsError(f"no study {study_name!r} in {redact(url)}; check STUDY=") from None
    if not count_trials(study).complete:
        raise ParamsError(f"study {study_name!r} has no complete trial yet; run `make sweep`")
    best = study.best_trial
    edit_params(params_path, best.user_attrs["overrides"])
    print(f"trial {best.number} ({OBJECTIVE} {best.value:.4f}) written to {params_path}:")
    for key, value in best.user_attrs["overrides"].items():
        print(f"  {key}: {value}")
    print("now `dvc repro` (or `make repro`) trains it")


if __name__ == "__main__":
    main()
