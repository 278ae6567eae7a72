"""`python -m digits.tools.bench overhead|sweep|speed|timed`: parse, measure, write the
results."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from digits import PipelineError
from digits.lib.cli import stage_main
from digits.lib.config import load_params
from digits.lib.config.sweep import SweepParams
from digits.lib.files import write_text
from digits.tools import provenance
from digits.tools.bench.entries import merge_entry
from digits.tools.bench.overhead import measure_overhead, overhead_markdown
from digits.tools.bench.speed import measure_speed, speed_markdown
from digits.tools.bench.sweep_efficiency import compare_sweeps, sweep_markdown
from digits.tools.bench.timed import measure_timed
from digits.tools.bench.timing import spread


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """The four benchmarks and their options."""
    parser = argparse.ArgumentParser(
        prog="python -m digits.tools.bench",
        description="`make bench`: what the pipeline costs over plain Keras, and what pruning "
        "buys a sweep.",
    )
    parser.add_argument("--params", type=Path, default=Path("params.yaml"), help="params file")
    parser.add_argument(
        "--data", type=Path, default=Path("data/processed"), help="processed .npz folder"
    )
    parser.add_argument("--raw", type=Path, default=Path("data/raw"), help="the IDX files")
    parser.add_argument(
        "--out", type=Path, default=Path("reports/bench"), help="folder for the results"
    )
    commands = parser.add_subparsers(dest="command", required=True)
    over = commands.add_parser("overhead", help="train stage vs bare Keras")
    over.add_argument("--repeats", type=int, default=4, help="runs of each (ABBA order)")
    sweeps = commands.add_parser("sweep", help="TPE + pruning vs random without pruning")
    sweeps.add_argument("--workers", type=int, default=2, help="worker processes per sweep")
    sweeps.add_argument("--n-trials", type=int, help="finished trials per variant")
    fast = commands.add_parser("speed", help="ladder rungs vs keras-io's mnist_convnet")
    fast.add_argument(
        "--rungs", type=Path, default=Path("bench/ladder.yaml"), help="the ladder's rungs"
    )
    fast.add_argument(
        "--only", nargs="+", default=["99."], help="rungs whose name contains any of these"
    )
    add_timed(commands)
    return parser.parse_args(argv)


def add_timed(commands: argparse._SubParsersAction) -> None:
    """`timed`: any command's wall time, merged by name into timed.json."""
    timed = commands.add_parser("timed", help="time a command (after -- ), merged by --name")
    timed.add_argument("--name", required=True, help="the entry's name in timed.json")
    timed.add_argument("--repeats", type=int, default=3, help="runs of the command")
    timed.add_argument("--setup", help="bash line run before each run, not timed")
    timed.add_argument(
        "--sweep-results", type=Path, help="the sweep's output folder: record its best val accuracy"
    )
    timed.add_argument(
        "argv", nargs="+", metavar="COMMAND", help="the command, run without a shell"
    )


def run(args: argparse.Namespace) -> tuple[dict[str, Any], str]:
    """The chosen benchmark: its results file's contents and its Markdown section."""
    params = load_params(args.params, SweepParams)
    if args.command == "overhead":
        result = measure_overhead(args.params, args.data, args.raw, args.repeats)
        return result.as_json(), overhead_markdown(result, args.params)
    if args.command == "speed":
        speed = measure_speed(args.params, args.data, args.rungs, args.only)
        return speed.as_json(), speed_markdown(speed)
    assert params.sweep is not None
    n_trials = args.n_trials or params.sweep.n_trials
    variants = compare_sweeps(args.params, args.workers, n_trials)
    text = sweep_markdown(variants, args.workers, n_trials)
    return {name: v.as_json() for name, v in variants.items()}, text


@stage_main
def main(argv: Sequence[str] | None = None) -> None:
    """CLI entry point (`make bench`)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    if args.command == "timed":
        record_timed(args, argv)
        return
    result, text = run(args)
    # the command, machine and day go with the figures, for docs/benchmarks.md
    origin = provenance.now(["python", "-m", "digits.tools.bench", *argv])
    record = {**result, "provenance": origin.as_json()}
    write_text(args.out / f"{args.command}.json", json.dumps(record, indent=2))
    write_text(args.out / f"{args.command}.md", text)
    print(text)


def record_timed(args: argparse.Namespace, argv: list[str]) -> None:
    """Time the command and merge its entry into timed.json; exit 1 when any run failed."""
    timed = measure_timed(args.argv, args.repeats, args.setup, args.sweep_results)
    origin = provenance.now(["python", "-m", "digits.tools.bench", *argv])
    path = args.out / "timed.json"
    merge_entry(path, args.name, {**timed.as_json(), "provenance": origin.as_json()})
    if timed.seconds:
        print(f"{args.name}: {spread(timed.seconds)}")
    if failed := [str(r.returncode) for r in timed.runs if r.failed]:
        raise PipelineError(
            f"{len(failed)} of {len(timed.runs)} runs of {args.argv[0]} failed (exit "
            f"{', '.join(failed)}): recorded as failed under {args.name!r} in {path}"
        )
