"""The parts of docs/benchmarks.md (`benchpage`): a section and its origin lines, and the
sections of the results files keyed by name, one entry per measurement:

- reports/bench/timed.json (`bench timed`): a command's wall time over a few runs;
- reports/bench/shuffle.json (bench/per_epoch_shuffle.py): Keras's one repeated order against
  a fresh order each epoch, seed by seed;
- reports/bench/levers.json (bench/levers.py): a training lever against the same recipe without
  it, seed by seed, on validation only.

An entry without its command, machine and day is left off and named.
"""

from __future__ import annotations

import shlex
import statistics
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from digits.tools import provenance
from digits.tools.bench.entries import read_entries
from digits.tools.bench.timed import Timed
from digits.tools.provenance import Provenance

NAMED = ("timed.json", "shuffle.json", "levers.json")  # under reports/bench/, one entry per name
ORDERS = {
    "keras_order": "Keras's shuffle: one order, repeated every epoch",
    "fresh_order": "a fresh order each epoch",
}


@dataclass
class Section:
    """A benchmark's part of the page, and the results it had to leave out."""

    text: str
    left_out: list[str] = field(default_factory=list)


def origin(found: Provenance) -> str:
    """Where a table's figures come from, as the lines under it."""
    commit = f" at commit {found.commit}" if found.commit else ""
    recovered = f" ({found.source})" if found.source else ""
    return (
        f"Command: `{found.command}`  \n"
        f"Machine: {found.machine}. Measured: {found.date}{commit}{recovered}."
    )


def with_origin(root: Path, file: str) -> tuple[dict[str, tuple[Any, Provenance]], list[str]]:
    """A named results file's entries that carry their origin, and the names of those that do
    not (as the page's last section lists them)."""
    found, left_out = {}, []
    for name, entry in read_entries(root / "reports" / "bench" / file).items():
        origin_ = provenance.read(entry) if isinstance(entry, Mapping) else None
        if origin_ is None:
            left_out.append(f"reports/bench/{file}: {name}")
        else:
            found[name] = (entry, origin_)
    return found, left_out


def cell(text: str) -> str:
    """Text for a Markdown table cell."""
    return text.replace("|", "\\|")


def timed_row(name: str, timed: Timed, found: Provenance, sweeps: bool) -> str:
    """One timed command: its runs, median and range, and where it ran."""
    command = f"`{cell(shlex.join(timed.command))}`"
    if timed.setup:
        command += f", each run after `{cell(timed.setup)}`"
    failed = [str(r.returncode) for r in timed.runs if r.failed]
    runs = f"{len(timed.runs)}" + (
        f" ({len(failed)} failed: exit {', '.join(failed)})" * bool(failed)
    )
    median = f"{timed.median:.1f} s" if timed.median is not None else "-"
    spread = f"{min(timed.seconds):.1f}-{max(timed.seconds):.1f} s" if timed.seconds else "-"
    best = [f"{100 * r.sweep.best_val_accuracy:.2f}%" for r in timed.runs if r.sweep]
    extra = f" {', '.join(best) or '-'} |" if sweeps else ""
    commit = f" ({found.commit})" if found.commit else ""
    return (
        f"| {cell(name)} | {command} | {runs} | {median} | {spread} |{extra} "
        f"{found.machine} | {found.date}{commit} |"
    )


def timed_section(root: Path) -> Section:
    """Wall times of whole commands (set-up, an experiment, a no-op repro, a sweep)."""
    entries, left_out = with_origin(root, "timed.json")
    if not entries:
        return Section("", left_out)
    typed = {name: (Timed.from_json(e), found) for name, (e, found) in entries.items()}
    sweeps = any(r.sweep for t, _ in typed.values() for r in t.runs)
    extra = (" best validation |", "---|") if sweeps else ("", "")
    rows = [timed_row(name, t, found, sweeps) for name, (t, found) in typed.items()]
    again = [f"# {name}\n{found.command}" for name, (_, found) in typed.items()]
    best = " Best validation: the highest `val/accuracy` of the sweep's complete trials, per run."
    text = f"""## Timed commands

Wall seconds of whole commands, each run from the same starting state (the untimed set-up
shown with it), by `python -m digits.tools.bench timed`. Median and range: the runs that
succeeded.{best * sweeps}

| name | command | runs | median wall | min-max |{extra[0]} machine | date |
|---|---|---|---|---|{extra[1]}---|---|
{chr(10).join(rows)}

Each row's measurement again:

```bash
{chr(10).join(again)}
```
"""
    return Section(text, left_out)


def percents(values: list[float]) -> str:
    return ", ".join(f"{100 * v:.2f}%" for v in values)


def shuffle_table(name: str, entry: Mapping[str, Any], found: Provenance) -> str:
    """One comparison: the two orders, seed by seed, and their medians."""
    runs = entry["runs"]
    seeds = ", ".join(str(r["seed"]) for r in runs["keras_order"])
    rows = []
    for key, label in ORDERS.items():
        rs = runs[key]
        medians = [statistics.median(r[k] for r in rs) for k in ("val", "test", "seconds")]
        rows.append(
            f"| {label} | {percents([r['val'] for r in rs])} | {percents([r['test'] for r in rs])} "
            f"| {100 * medians[0]:.2f}% | {100 * medians[1]:.2f}% | {medians[2]:.1f} s |"
        )
    settings = ", ".join(f"`{k}={v}`" for k, v in entry.get("set", {}).items())
    return f"""### {name}

Settings: {settings or "params.yaml as committed"}; seeds {seeds}.

| order | validation, per seed | test, per seed | median validation | median test | median fit |
|---|---|---|---|---|---|
{chr(10).join(rows)}

{origin(found)}
"""


def tables_section(
    root: Path, file: str, table: Callable[[str, Any, Provenance], str], heading: str
) -> Section:
    """`heading`, then one table per entry of a named results file that carries its origin."""
    entries, left_out = with_origin(root, file)
    if not entries:
        return Section("", left_out)
    tables = [table(name, entry, found) for name, (entry, found) in entries.items()]
    return Section(heading + "\n".join(tables), left_out)


def shuffle_section(root: Path) -> Section:
    """Keras's repeated order against a fresh one each epoch, one table per comparison."""
    return tables_section(
        root,
        "shuffle.json",
        shuffle_table,
        """## Per-epoch shuffle

Keras's `fit(shuffle=True)` with a fixed seed trains every epoch in one order; the train stage
draws a fresh order each epoch (`digits.lib.batches`). Both on the same seeds, alternating in
one process (`bench/per_epoch_shuffle.py`). Validation decides; test is reported, not used.

""",
    )


def lever_table(name: str, entry: Mapping[str, Any], found: Provenance) -> str:
    """One lever: the recipe without and with it, seed by seed, and their medians."""
    runs = entry["runs"]
    seeds = ", ".join(str(r["seed"]) for r in runs["without"])
    rows = []
    for key, label in (("without", "without"), ("with", entry["lever"])):
        rs = runs[key]
        best = ", ".join(f"{100 * r['best_val']:.2f}% ({r['best_epoch']})" for r in rs)
        medians = [statistics.median(r[k] for r in rs) for k in ("val", "best_val", "seconds")]
        rows.append(
            f"| {cell(label)} | {percents([r['val'] for r in rs])} | {best} "
            f"| {100 * medians[0]:.2f}% | {100 * medians[1]:.2f}% | {medians[2]:.0f} s |"
        )
    settings = ", ".join(f"`{k}={v}`" for k, v in entry.get("set", {}).items())
    return f"""### {name}

Settings: {settings or "params.yaml as committed"}; seeds {seeds}.

| variant | last epoch, per seed | best (epoch), per seed | median last | median best | median fit |
|---|---|---|---|---|---|
{chr(10).join(rows)}

{origin(found)}
"""


def levers_section(root: Path) -> Section:
    """Levers tried against a recipe without them, one table per comparison."""
    return tables_section(
        root,
        "levers.json",
        lever_table,
        """## Levers tried on validation

A training lever against the same recipe without it, alternating on the same seeds in one
process (`bench/levers.py`). A lever is kept or dropped on validation; the test set is not
read. Validation accuracy of the last epoch and of the best one (what early stopping with
`restore_best_weights` would keep); every fit runs all its epochs.

""",
    )


def named_sections(root: Path) -> list[Section]:
    """The sections of the results files keyed by name."""
    return [timed_section(root), shuffle_section(root), levers_section(root)]
