"""Stage `report`: one Markdown page a person reads: what was trained, how well, the pictures."""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from digits.lib.cli import stage_main
from digits.lib.config import load_params
from digits.lib.config.runparams import run_params
from digits.lib.files import write_text
from digits.lib.run_info import RunInfo
from digits.lib.shifts import describe
from digits.lib.vocab import (
    SELECTED_EPOCH,
    SELECTED_VAL_ACCURACY,
    SHIFTED_VAL_ACCURACY,
    TEST_ACCURACY,
    TEST_ECE,
    TEST_ERRORS,
    TEST_LOSS,
    TRAIN_EPOCHS,
    TRAIN_SECONDS,
)

FIGURES = (
    ("Learning curves", "learning_curves"),
    ("Confusion matrix", "confusion_matrix"),
    ("Most confident mistakes", "misclassified"),
    ("Correctly classified", "correct"),
    ("Reliability diagram (calibration)", "reliability"),
    ("Learned softmax weights", "softmax_weights"),
)
COMPARISON = (
    ("Confusion matrix against the champion", "champion_vs_challenger"),
    ("Test digits fixed and broken", "fixed_and_broke"),
)
TABLE_ROWS = (
    40  # fixed and broken digits, half each; the run's comparison/fixed_and_broke.json has all
)


def _table(rows: Sequence[Sequence[Any]], header: Sequence[str]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def render(
    params: dict[str, Any],
    metrics: dict[str, Any],
    train_metrics: dict[str, Any],
    per_class: pd.DataFrame,
    images: dict[str, str],
    run_id: str,
    registry: dict[str, Any] | None = None,
    spread: dict[str, Any] | None = None,
    shifts: int = 0,
) -> str:
    """The report's Markdown; `images` maps figure keys to paths relative to the report;
    `registry` is what `evaluate` did in the model registry; `spread` is `make repeat`'s
    record, shown when it is of this configuration; `shifts` is `evaluate.shifts`."""
    accuracy = metrics[TEST_ACCURACY]
    epochs, selected = train_metrics[TRAIN_EPOCHS], train_metrics[SELECTED_EPOCH]
    parts = [
        "# MNIST training report",
        f"**Test accuracy {accuracy:.2%}** ({metrics[TEST_ERRORS]} errors), "
        f"test loss {metrics[TEST_LOSS]:.4f}; model `{params['model.type']}`, "
        f"{epochs} epochs (weights of epoch {selected}) in "
        f"{train_metrics[TRAIN_SECONDS]:.0f} s{REFIT_NOTE if params.get('train.refit') else ''}. "
        f"MLflow run `{run_id}`.",
        prediction_line(shifts, metrics, train_metrics),
        "## Metrics",
        _table(
            [(k, _fmt(v)) for k, v in {**metrics, **train_metrics}.items()], ("metric", "value")
        ),
        "## Parameters",
        _table([(k, f"`{v}`") for k, v in params.items()], ("param", "value")),
        "## Per digit",
        _table(per_class.itertuples(index=False), per_class.columns),
    ]
    parts += [
        "## Calibration",
        f"Expected calibration error {metrics[TEST_ECE]:.4f}: the mean gap between confidence "
        "(the top softmax probability) and accuracy over 15 equal-width confidence bins, "
        "weighted by the images in each (0 is perfectly calibrated).",
    ]
    parts += spread_section(params, spread, shifts)
    for title, key in FIGURES:
        if key in images:
            parts += [f"## {title}", f"![{title}]({images[key]})"]
    if registry:
        parts += registry_section(registry, images)
    return "\n\n".join(parts) + "\n"


# `train.refit`: `train.epochs` in the params below is what the validation run was allowed
REFIT_NOTE = (
    ", on the training and validation images together, for the epochs that a validation run "
    "chose (`train.refit`; tag `refit.of` names that run)"
)


def prediction_line(shifts: int, metrics: dict[str, Any], train_metrics: dict[str, Any]) -> str:
    """How the test predictions were made; with test-time shifts, what they did to the
    validation accuracy of the kept weights (the check made without the test set)."""
    text = f"Predictions: {describe(shifts)}."
    shifted, plain = metrics.get(SHIFTED_VAL_ACCURACY), train_metrics.get(SELECTED_VAL_ACCURACY)
    if shifts and shifted is not None and plain is not None:
        text += (
            f" Validation accuracy {plain:.2%} in one view, {shifted:.2%} with the shifts. "
            "`predict` applies the same shifts; a model served by `mlflow models serve` answers "
            "in one view."
        )
    return text


def spread_section(
    params: dict[str, Any], spread: dict[str, Any] | None, shifts: int = 0
) -> list[str]:
    """`make repeat`'s mean, sd, min and max over seeds, if it measured this very configuration
    (every setting but the seed, and the same test-time shifts); nothing otherwise, so a stale
    spread is never shown."""
    config = {k: v for k, v in params.items() if k != "train.seed"}
    config["evaluate.shifts"] = shifts
    if not spread or spread.get("config") != config:
        return []
    from digits.lib.seeds import describe

    seeds = spread["seeds"]
    own = " (this report's model is seed {}, one of them)".format(params["train.seed"])
    return [
        "## Spread over seeds",
        f"`make repeat`: this configuration trained with {len(seeds)} seeds "
        f"({', '.join(map(str, seeds))}){own if params['train.seed'] in seeds else ''}, "
        f"each evaluated on the test set; MLflow parent run `{spread['run_id']}`. "
        "sd is the sample standard deviation over seeds.",
        _table(describe(spread["spread"]), ("metric", "mean", "sd", "min", "max")),
    ]


def registry_section(registry: dict[str, Any], images: dict[str, str]) -> list[str]:
    """The registry's decision, and champion against challenger when there was a champion."""
    parts = ["## Model registry", registry["line"] + "."]
    test = registry.get("test")
    if test:
        parts.append(
            _table(
                [
                    ("fixed (challenger right, champion wrong): c", test["c"]),
                    ("broke (champion right, challenger wrong): b", test["b"]),
                    ("McNemar exact p-value", f"{test['p_value']:.4g}"),
                    *_level_row(test),
                    ("decision", registry["decision"]),
                ],
                ("champion against challenger", "value"),
            )
        )
    for title, key in COMPARISON:
        if key in images:
            parts += [f"### {title}", f"![{title}]({images[key]})"]
    rows = registry.get("fixed_and_broke") or []
    if rows:
        header = ("test index", "digit", f"champion v{registry['previous']}", "challenger", "")
        half = TABLE_ROWS // 2
        shown = [r for r in rows if r["change"] == "fixed"][:half]
        shown += [r for r in rows if r["change"] == "broke"][:half]
        cells = [(r["test_index"], r["digit"], r["champion"], r["challenger"], r["change"])
                 for r in shown]  # fmt: skip
        more = f" ({len(shown)} of {len(rows)}; all in the run)" if len(shown) < len(rows) else ""
        parts += [f"### Fixed and broken test digits{more}", _table(cells, header)]
    return parts


def _level_row(test: dict[str, Any]) -> list[tuple[str, str]]:
    """The level the p-value had to beat: significance / k, k = the champion's challengers."""
    if test.get("level") is None:  # written before the level was shared
        return []
    return [("level: significance / k", f"{test['level']:.4g} (k = {test['challengers']})")]


@stage_main
def main(argv: Sequence[str] | None = None) -> None:
    """CLI: `python -m digits.stages.report --metrics ... --figures ... --out reports/report.md`."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, default=Path("params.yaml"), help="params file")
    parser.add_argument("--metrics", type=Path, required=True, help="test metrics (evaluate)")
    parser.add_argument(
        "--train-metrics", type=Path, required=True, help="training summary (train)"
    )
    parser.add_argument("--per-class", type=Path, required=True, help="per-digit scores CSV")
    parser.add_argument("--run-info", type=Path, required=True, help="JSON with the MLflow run")
    parser.add_argument(
        "--registry", type=Path, required=True, help="the registry decision JSON (evaluate)"
    )
    parser.add_argument("--figures", type=Path, required=True, help="folder of evaluate's PNGs")
    parser.add_argument("--out", type=Path, required=True, help="the Markdown report to write")
    parser.add_argument(
        "--spread", type=Path, help="`make repeat`'s spread.json, shown when present and matching"
    )
    args = parser.parse_args(argv)
    params = load_params(args.params)

    pngs = sorted(args.figures.glob("*.png"))
    images = {p.stem: os.path.relpath(p, args.out.parent) for p in pngs}
    text = render(
        run_params(params),
        json.loads(args.metrics.read_text()),
        json.loads(args.train_metrics.read_text()),
        pd.read_csv(args.per_class),
        images,
        RunInfo.read(args.run_info).run_id,
        json.loads(args.registry.read_text()),
        json.loads(args.spread.read_text()) if args.spread and args.spread.is_file() else None,
        params.evaluate.shifts,
    )
    write_text(args.out, text)


if __name__ == "__main__":
    main()
