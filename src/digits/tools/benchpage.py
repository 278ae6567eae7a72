"""`make bench-page`: docs/benchmarks.md, rendered from the recorded results, never by hand.

    python -m digits.tools.benchpage --write    # rewrite docs/benchmarks.md
    python -m digits.tools.benchpage --check    # exit 1 when the committed page is stale

One table per benchmark, from reports/ladder.json and reports/bench/{speed,overhead,sweep}.json
(and reports/bench/{timed,shuffle}.json, by name: `benchsections`), each with the command that
measures it again, the machine and the day (`tools.provenance`). A result without all three is
left off the page and named at its end.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from digits.lib.config import load_params
from digits.lib.files import write_text
from digits.tools import ladder, provenance
from digits.tools.bench.sweep_efficiency import TARGET, VARIANTS, VariantResult, efficiency_ratio
from digits.tools.benchsections import Section, named_sections, origin
from digits.tools.provenance import Provenance

PAGE = Path("docs/benchmarks.md")
DIARY = "07e2d4a"  # the last commit whose BENCHMARKS.md held the measurements written as prose


def read_json(path: Path) -> dict[str, Any] | None:
    """A results file, or None when it does not exist."""
    return json.loads(path.read_text()) if path.exists() else None


def settings(command: str) -> list[str]:
    """A `dvc exp run` command without its experiment's name, a label that a renamed rung
    changes."""
    words = shlex.split(command)
    if "--name" in words:
        at = words.index("--name")
        del words[at : at + 2]
    return words


def ladder_section(root: Path) -> Section:
    """The ladder's table (`ladder.table`, the rule for `holds` included) and each rung's
    recorded command, day and machine."""
    rungs = ladder.load_rungs(root / "bench" / "ladder.yaml", load_params(root / "params.yaml"))
    recorded = read_json(root / "reports" / "ladder.json") or {}
    results, lines, left_out, changed = {}, [], [], []
    for rung in rungs:
        result = recorded.get(rung.name)
        found = provenance.read(result) if result else None
        if result and found is None:
            left_out.append(f"reports/ladder.json: {rung.name}")
        if found is None:
            continue
        results[rung.name] = result
        commit = f", commit {found.commit}" if found.commit else ""
        lines += [f"# {rung.name}: {found.date}, {found.machine}{commit}", found.command]
        if settings(found.command) != settings(shlex.join(ladder.exp_command(rung))):
            changed.append(rung.name)
    note = "".join(
        f"\nMeasured with other settings than `bench/ladder.yaml` gives it today: {name}.\n"
        for name in changed
    )
    commands = "\n".join(lines)
    text = f"""## The accuracy ladder

Real MNIST test accuracy of the course notes' configurations and of the speed rungs, each
trained by the pipeline as a DVC experiment (50,000 training images, the kept epoch chosen on
the 10,000 validation images, then scored once on the 10,000 test images). Training =
`train/seconds`, the fit only; exp run wall = the whole `dvc exp run`. A repeated rung shows its
median run, and holds only when every seed reaches the reference. Validation = the kept epoch's
validation accuracy, what recipes are chosen by (the median, then each seed's; with test-time
shifts, theirs too); "-" where a row kept only its first seed's. A refit rung (`train.refit`)
chooses its epoch count that way, then trains from scratch on all 60,000 training images:
its training time is the refit's, the model kept, next to that of the run that chose.

{ladder.table(rungs, results)}
{note}
Each row's command, day and machine (a repeated rung adds `-S train.seed=<seed>` per seed).
`MNIST_MIRROR=../shared/data/mnist make ladder ONLY="<part of a name>"` runs rungs again and
rewrites their rows:

```bash
{commands}
```
"""
    return Section(text, left_out)


def speed_section(result: Mapping[str, Any], found: Provenance) -> Section:
    """The speed rungs against keras-io's mnist_convnet, FLOPs and memory."""
    rows = []
    convnet = result["convnet"]["seconds_to_target"]
    for r in result["rungs"]:
        test, seconds = f"{r['accuracy']:.2f}%", f"{r['seconds']:.1f} s"
        if "seeds" in r:
            test += f" (min {r['accuracy_min']:.2f}%, {len(r['seeds'])} seeds)"
            seconds += f" ({min(r['seconds_all']):.1f}-{max(r['seconds_all']):.1f})"
        ratio = f"{r['convnet_ratio']:.1f}x" if r["convnet_ratio"] else "-"
        rows.append(
            f"| {r['rung']} | {test} | {seconds} | {r['train_mflop_per_image']:.1f} "
            f"| {r['run_tflop']:.2f} | {r['gflop_per_s']:.0f} "
            f"| {r.get('peak_memory_mb') or 0:.0f} | {ratio} |"
        )
    text = f"""## Speed to accuracy, against keras-io's mnist_convnet

Training = `train/seconds` (a repeated rung: the median, and the range over its seeds); MFLOP
per training image = 3x the forward pass of the convolutions and dense layers; GFLOP/s = the
run's FLOPs (training and each epoch's validation pass) / training seconds; peak = the train
stage's resident memory. Ratio = the seconds keras-io's `mnist_convnet` needed to reach 99.0%
test on the same split ({convnet:.1f} s, run once right before the rungs) / ours.

| rung | test | training | MFLOP / image | TFLOP / run | GFLOP/s | peak MiB | ratio |
|---|---|---|---|---|---|---|---|
{chr(10).join(rows)}

{origin(found)}
"""
    return Section(text)


def overhead_section(result: Mapping[str, Any], found: Provenance) -> Section:
    """The train stage against bare Keras: the ratio and where the difference lies."""
    stage, bare = result["runs"]["stage"], result["runs"]["bare"]
    ratios = [s["wall"] / b["wall"] for s, b in zip(stage, bare, strict=True)]
    pairs = ", ".join(f"{r:.3f}" for r in ratios)
    outside = [statistics.median(r["wall"] - r["fit"] for r in runs) for runs in (stage, bare)]
    same = "yes" if result["same_val_accuracy"] else "no"
    text = f"""## Overhead: the train stage against bare Keras

`python -m digits.stages.train`, with all its MLflow logging, against `bench/bare_keras.py`
(the same model, optimizer, callbacks, epochs and arrays in plain Keras), alternating runs
(ABBA), `params.yaml` as committed. Wall = the whole process; fit = `train/seconds` in the
stage, `model.fit` in the bare script. One fit's time varies from run to run here (see the pairs),
so the ratio moves by a few points between measurements; the time outside the fit is the
steady part. Full output: `reports/bench/overhead.md`.

| wall ratio, all runs | pairs | pair by pair | median pair | fit ratio \
| outside the fit, stage / bare (median) | same validation accuracy |
|---|---|---|---|---|---|---|
| **{result["ratio_wall"]:.3f}** | {len(stage)} | {pairs} | {statistics.median(ratios):.3f} \
| {result["ratio_fit"]:.3f} | {outside[0]:.1f} s / {outside[1]:.1f} s | {same} |

{origin(found)}
"""
    return Section(text)


def sweep_section(result: Mapping[str, Any], found: Provenance) -> Section:
    """TPE with pruning against random search without: trials and epochs to the target."""
    target = f"{100 * TARGET:.1f}%"
    rows = []
    for name in VARIANTS:
        r, reach = result[name], result[name]["to_target"]
        reached = f"trial {reach['trial']}: {reach['trials']} trials, {reach['epochs']} epochs"
        rows.append(
            f"| {name} | {r['trials']} ({r['pruned']} pruned) | {r['epochs']} "
            f"| {100 * r['best_val_accuracy']:.2f}% | {reached if reach['trials'] else 'never'} |"
        )
    typed = {name: VariantResult.from_json(result[name]) for name in VARIANTS}
    ratio = efficiency_ratio(typed["tpe-pruned"], typed["random-unpruned"])
    text = f"""## Sweep efficiency: TPE with median pruning against random search without

The same `sweep:` settings and seed for both studies; only the sampler and the pruner differ.
"To {target}": trials in start order, and the epochs they trained, until the first trial
whose validation accuracy reached {target} at some epoch. One pair of studies: where random
search first lands above the target is largely luck. Trials and plots: `reports/bench/sweep-*/`.

| variant | trials | epochs trained | best validation | to {target} |
|---|---|---|---|---|
{chr(10).join(rows)}

{ratio}

{origin(found)}
"""
    return Section(text)


BENCHES = {"speed": speed_section, "overhead": overhead_section, "sweep": sweep_section}


def render(root: Path) -> str:
    """The whole page, from the results under `root`."""
    sections = [ladder_section(root)]
    for name, section in BENCHES.items():
        result = read_json(root / "reports" / "bench" / f"{name}.json")
        found = provenance.read(result) if result else None
        if result and found is None:
            sections.append(Section("", [f"reports/bench/{name}.json"]))
        elif result and found:
            sections.append(section(result, found))
    sections += named_sections(root)
    left_out = [name for s in sections for name in s.left_out]
    missing = "".join(f"- {name}\n" for name in left_out) or "- none\n"
    body = "\n".join(s.text for s in sections if s.text)
    return f"""# Benchmarks

<!-- Generated by `make bench-page` (python -m digits.tools.benchpage --write) from
reports/ladder.json and reports/bench/*.json: rerun the benchmarks, do not edit this page. -->

Each figure is the latest recorded, on real MNIST, with the command that measures it again,
the machine and the day. Wall times on a shared 2-core VM vary by up to 2x from run to run;
accuracies do not depend on load: the same params and seed give the same digits on one
machine. Not across machines: the VMs here are not all alike (the machine column names the
processor where it was recorded), and the same code, params and seeds 42-44 of the 99.0% rung
gave 99.20/99.13/99.09% on an earlier VM and 99.21/99.10/99.22% on an AMD EPYC.

{body}
## Not on this page

Results without a recorded command, machine and day:

{missing}
Measurements kept only as prose before this page was generated (resume after `kill -9`,
predict's memory, the two-host sweep, `dvc pull` on a second clone, the registry on real data,
`make repeat`, the multi-objective and seed sweeps, the `make sweep` runs, the fast preset in
bfloat16 and float32): `git show {DIARY}:BENCHMARKS.md`.
"""


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """--write or --check, and where the project is."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--write", action="store_true", help=f"rewrite {PAGE}")
    action.add_argument("--check", action="store_true", help=f"exit 1 when {PAGE} is stale")
    parser.add_argument("--root", type=Path, default=Path("."), help="the project folder")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    """CLI entry point (`make bench-page`)."""
    args = parse_args(argv)
    page = render(args.root)
    path = args.root / PAGE
    if args.write:
        write_text(path, page)
    elif not path.exists() or path.read_text() != page:
        print(f"error: {PAGE} is not what the results give: run `make bench-page`", file=sys.stderr)
        raise SystemExit(1)


if __name__ == "__main__":
    main()
