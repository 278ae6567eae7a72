"""docs/benchmarks.md is rendered from the recorded results, and every figure on it carries the
command that measures it again, the machine and the day."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from digits.tools import benchpage, provenance

from helpers import ROOT


def test_the_committed_page_is_what_the_results_give() -> None:
    page = (ROOT / benchpage.PAGE).read_text()
    assert page == benchpage.render(ROOT), "docs/benchmarks.md is stale: run `make bench-page`"


def test_every_committed_result_carries_its_command_machine_and_day() -> None:
    for path in sorted((ROOT / "reports" / "bench").glob("*.json")):
        assert provenance.read(json.loads(path.read_text())), path.name
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
