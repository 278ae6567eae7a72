"""docs/benchmarks.md is rendered from the recorded results, and every figure on it carries the
command that measures it again, the machine and the day."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from digits.tools import benchpage, provenance
from digits.tools.benchsections import NAMED

from helpers import ROOT


def test_the_committed_page_is_what_the_results_give() -> None:
    page = (ROOT / benchpage.PAGE).read_text()
    assert page == benchpage.render(ROOT), "docs/benchmarks.md is stale: run `make bench-page`"


def test_every_committed_result_carries_its_command_machine_and_day() -> None:
    for path in sorted((ROOT / "reports" / "bench").glob("*.json")):
        result = json.loads(path.read_text())
        for name, entry in result.items() if path.name in NAMED else [("", result)]:
            assert provenance.read(entry), f"{path.name} {name}"
    for name, result in json.loads((ROOT / "reports" / "ladder.json").read_text()).items():
        assert provenance.read(result), name


def project(tmp_path: Path) -> Path:
    """A copy of what the page is rendered from."""
    for name in ("params.yaml", "bench/ladder.yaml", "reports/ladder.json"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / name, tmp_path / name)
    shutil.copytree(ROOT / "reports" / "bench", tmp_path / "reports" / "bench")
    return tmp_path


def test_a_figure_without_provenance_is_left_off_the_page_and_named(tmp_path: Path) -> None:
    root = project(tmp_path)
    ladder = json.loads((root / "reports" / "ladder.json").read_text())
    del ladder["softmax regression"]["machine"]
    (root / "reports" / "ladder.json").write_text(json.dumps(ladder))
    overhead = json.loads((root / "reports" / "bench" / "overhead.json").read_text())
    del overhead["provenance"]
    (root / "reports" / "bench" / "overhead.json").write_text(json.dumps(overhead))

    page = benchpage.render(root)
    assert "| softmax regression | 91.70% | not run |" in page
    assert "# softmax regression:" not in page
    assert "## Overhead" not in page and "1.034" not in page
    missing = page.split("## Not on this page")[1]
    assert "- reports/ladder.json: softmax regression\n" in missing
    assert "- reports/bench/overhead.json\n" in missing
    assert "## Speed to accuracy" in page and "## Sweep efficiency" in page


def test_a_stale_page_fails_the_check_until_it_is_rewritten(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = project(tmp_path)
    with pytest.raises(SystemExit) as failed:
        benchpage.main(["--check", "--root", str(root)])
    assert failed.value.code == 1
    assert "error: docs/benchmarks.md is not what the results give: run `make bench-page`" in (
        capsys.readouterr().err
    )
    benchpage.main(["--write", "--root", str(root)])
    benchpage.main(["--check", "--root", str(root)])
    assert (root / benchpage.PAGE).read_text() == (ROOT / benchpage.PAGE).read_text()


ORIGIN = {"machine": "x86_64, 2 CPU cores", "date": "2026-12-05", "commit": "abc1234"}


def timed_entry(seconds: list[float], codes: list[int], best: list[float] | None = None) -> dict:
    runs = [
        {"seconds": s, "returncode": c, "failed": c != 0}
        | ({"sweep": {"best_val_accuracy": best[i], "trial": 3, "complete": 9}} if best else {})
        for i, (s, c) in enumerate(zip(seconds, codes, strict=True))
    ]
    return {"command": ["make", "sweep"], "setup": "rm -rf optuna.db", "runs": runs}


def test_timed_commands_get_a_row_each_and_a_stale_page_fails(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = project(tmp_path)
    again = "python -m digits.tools.bench timed --name sweep -- make sweep"
    timed = {
        "sweep": timed_entry([300.0, 320.0, 310.0], [0, 0, 0], [0.9866, 0.9871, 0.9860])
        | {"provenance": {"command": again, **ORIGIN}},
        "repro": timed_entry([2.0, 9.0, 4.0], [0, 2, 0]) | {"provenance": ORIGIN},
        "setup": timed_entry([60.0], [1]) | {"provenance": {"command": "x", **ORIGIN}},
    }
    (root / "reports" / "bench" / "timed.json").write_text(json.dumps(timed))
    with pytest.raises(SystemExit):
        benchpage.main(["--check", "--root", str(root)])
    assert "is not what the results give" in capsys.readouterr().err

    benchpage.main(["--write", "--root", str(root)])
    page = (root / benchpage.PAGE).read_text()
    benchpage.main(["--check", "--root", str(root)])
    section = page.split("## Timed commands")[1].split("\n## ")[0]
    assert "| median wall | min-max | best validation | machine | date |" in section
    assert (
        "| sweep | `make sweep`, each run after `rm -rf optuna.db` | 3 | 310.0 s | 300.0-320.0 s "
        "| 98.66%, 98.71%, 98.60% | x86_64, 2 CPU cores | 2026-12-05 (abc1234) |"
    ) in section
    assert (
        "| setup | `make sweep`, each run after `rm -rf optuna.db` "
        "| 1 (1 failed: exit 1) | - | - | - |" in section
    )
    assert "| repro |" not in section and f"# sweep\n{again}\n" in section
    assert "- reports/bench/timed.json: repro\n" in page.split("## Not on this page")[1]


def shuffle_runs(val: list[float], test: list[float], seconds: list[float]) -> list[dict]:
    return [
        {"seed": 42 + i, "val": v, "test": t, "seconds": s}
        for i, (v, t, s) in enumerate(zip(val, test, seconds, strict=True))
    ]


def test_each_shuffle_comparison_gets_both_orders_seed_by_seed(tmp_path: Path) -> None:
    root = project(tmp_path)
    entry = {
        "set": {"model.type": "mlp"},
        "runs": {
            "keras_order": shuffle_runs([0.981, 0.979, 0.980], [0.978, 0.98, 0.977], [30, 32, 31]),
            "fresh_order": shuffle_runs([0.983, 0.984, 0.982], [0.981, 0.98, 0.982], [33, 35, 34]),
        },
    }
    again = "python bench/per_epoch_shuffle.py --name mlp --set model.type=mlp"
    shuffle = {
        "mlp": entry | {"provenance": {"command": again, **ORIGIN}},
        "cnn": entry | {"provenance": {"command": again}},
    }
    (root / "reports" / "bench" / "shuffle.json").write_text(json.dumps(shuffle))
    page = benchpage.render(root)
    section = page.split("## Per-epoch shuffle")[1].split("## Not on this page")[0]
    assert "### mlp\n\nSettings: `model.type=mlp`; seeds 42, 43, 44." in section
    assert (
        "| Keras's shuffle: one order, repeated every epoch | 98.10%, 97.90%, 98.00% "
        "| 97.80%, 98.00%, 97.70% | 98.00% | 97.80% | 31.0 s |"
    ) in section
    assert (
        "| a fresh order each epoch | 98.30%, 98.40%, 98.20% | 98.10%, 98.00%, 98.20% " in section
    )
    assert (
        f"Command: `{again}`  \n"
        "Machine: x86_64, 2 CPU cores. Measured: 2026-12-05 at commit abc1234." in section
    )
    assert "### cnn" not in section
    assert "- reports/bench/shuffle.json: cnn\n" in page.split("## Not on this page")[1]


def lever_runs(val: list[float], best: list[float], seconds: list[float]) -> list[dict]:
    return [
        {"seed": 42 + i, "val": v, "best_val": b, "best_epoch": 10 + i, "seconds": s}
        for i, (v, b, s) in enumerate(zip(val, best, seconds, strict=True))
    ]


def test_each_lever_gets_its_recipe_without_and_with_it_seed_by_seed(tmp_path: Path) -> None:
    root = project(tmp_path)
    entry = {
        "lever": "EMA of the weights, momentum 0.99",
        "set": {"train.epochs": 12},
        "runs": {
            "without": lever_runs([0.9938, 0.9944, 0.9941], [0.994, 0.9944, 0.9942], [61, 60, 62]),
            "with": lever_runs([0.9941, 0.9939, 0.9936], [0.9942, 0.9939, 0.9937], [66, 62, 65]),
        },
    }
    again = "python bench/levers.py --lever ema --name ema"
    levers = {
        "ema": entry | {"provenance": {"command": again, **ORIGIN}},
        "elastic": entry | {"provenance": {"machine": "x86_64"}},
    }
    (root / "reports" / "bench" / "levers.json").write_text(json.dumps(levers))
    page = benchpage.render(root)
    section = page.split("## Levers tried on validation")[1].split("## Not on this page")[0]
    assert "### ema\n\nSettings: `train.epochs=12`; seeds 42, 43, 44." in section
    assert (
        "| without | 99.38%, 99.44%, 99.41% | 99.40% (10), 99.44% (11), 99.42% (12) "
        "| 99.41% | 99.42% | 61 s |"
    ) in section
    assert "| EMA of the weights, momentum 0.99 | 99.41%, 99.39%, 99.36% |" in section
    assert f"Command: `{again}`" in section
    assert "### elastic" not in section
    assert "- reports/bench/levers.json: elastic\n" in page.split("## Not on this page")[1]


def test_a_rung_renamed_since_its_run_is_not_called_measured_with_other_settings() -> None:
    run = "dvc exp run --temp --name ladder-old --force -S train.epochs=2"
    assert benchpage.settings(run) == benchpage.settings(run.replace("ladder-old", "ladder-new"))
    assert benchpage.settings(run) != benchpage.settings(run.replace("=2", "=3"))


def test_the_overhead_shows_each_pair_and_their_median_beside_the_ratio_over_all_runs(
    tmp_path: Path,
) -> None:
    root = project(tmp_path)
    walls = [(44.0, 40.0), (38.0, 40.0), (42.0, 40.0)]  # pairs 1.100, 0.950, 1.050
    runs = {
        kind: [{"wall": pair[i], "fit": pair[i] - 5, "val_accuracy": 0.98} for pair in walls]
        for i, kind in enumerate(("stage", "bare"))
    }
    again = "python -m digits.tools.bench overhead --repeats 3"
    overhead = {"runs": runs, "ratio_wall": 124 / 120, "ratio_fit": 109 / 105}
    overhead |= {"same_val_accuracy": True, "provenance": {"command": again, **ORIGIN}}
    (root / "reports" / "bench" / "overhead.json").write_text(json.dumps(overhead))
    section = benchpage.render(root).split("## Overhead")[1].split("\n## ")[0]
    row = "| **1.033** | 3 | 1.100, 0.950, 1.050 | 1.050 | 1.038 | 5.0 s / 5.0 s | yes |"
    assert row in section
