"""The benchmark tools' own logic: ladder rungs are validated and rendered honestly, and the
sweep comparison counts trials and epochs to the target the way it says."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import time
from datetime import date
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from digits import PipelineError
from digits.lib.config import ParamsError, parse_params
from digits.tools import bench, ladder, provenance
from digits.tools.bench import cli, overhead, speed, sweep_efficiency, timed
from digits.tools.bench.overhead import Overhead, Run
from digits.tools.bench.speed import Speed
from digits.tools.bench.sweep_efficiency import Reach, VariantResult

from helpers import GIT_IDENTITY, ROOT, real_params, stage_env


def test_every_committed_rung_is_valid_and_becomes_a_dvc_command() -> None:
    rungs = ladder.load_rungs(ROOT / "bench" / "ladder.yaml", parse_params(real_params()))
    assert len({r.exp_name for r in rungs}) == len(rungs)
    fast = next(r for r in rungs if r.max_seconds)
    command = ladder.exp_command(fast)
    assert command[:3] == ["dvc", "exp", "run"] and "--temp" in command
    assert "model.cnn.filters=[16,32]" in command  # one shell word when pasted


def test_a_rung_outside_the_schema_fails_before_anything_runs(tmp_path: Path) -> None:
    rungs = {"rungs": [{"name": "bad", "reference": 90, "set": {"model.mlp.widht": 3}}]}
    (tmp_path / "ladder.yaml").write_text(yaml.safe_dump(rungs))
    with pytest.raises(ParamsError, match=r"model\.mlp\.widht: no such setting"):
        ladder.load_rungs(tmp_path / "ladder.yaml", parse_params(real_params()))


def test_the_table_says_no_below_the_reference_or_over_the_time_limit() -> None:
    rungs = [
        ladder.Rung(name="exact", reference=99.23, set={"train.epochs": 1}),
        ladder.Rung(name="short", reference=99.6, set={"train.epochs": 1}),
        ladder.Rung(name="slow", reference=99.0, max_seconds=30, set={"train.epochs": 1}),
        ladder.Rung(name="missing", reference=90, set={"train.epochs": 1}),
    ]
    figures = {"epochs": 5, "selected": 5, "wall": 60.0, "date": "before 2f5e76c"}
    results = {
        "exact": {**figures, "accuracy": 0.9923 * 100, "seconds": 10.0},  # 99.22999...
        "short": {**figures, "accuracy": 99.5, "seconds": 10.0},
        "slow": {**figures, "accuracy": 99.1, "seconds": 31.0, "date": "2026-11-22"},
    }
    rows = {line.split(" | ")[0][2:]: line for line in ladder.table(rungs, results).splitlines()}
    assert rows["exact"].endswith("| yes |")
    assert rows["short"].endswith("| NO |")
    assert rows["slow"].endswith("| NO |") and "(limit 30 s)" in rows["slow"]
    assert "not run" in rows["missing"]
    assert "| 2026-11-22 |" in rows["slow"] and "| before 2f5e76c |" in rows["short"]


def test_a_repeated_rung_holds_only_when_every_seed_reaches_the_reference() -> None:
    long = "99.0% in 10 s, a name longer than the forty characters a slug keeps"
    rung = ladder.Rung(
        name="fast", reference=99.0, max_seconds=10, repeats=3, set={"train.epochs": 2}
    )
    runs = rung.model_copy(update={"name": long}).seeded(42)
    assert [r.set["train.seed"] for r in runs] == [42, 43, 44]
    assert all(r.repeats == 1 for r in runs)
    assert [r.exp_name[-7:] for r in runs] == ["-seed42", "-seed43", "-seed44"]
    assert rung.model_copy(update={"set": {"train.seed": 7}}).seeded(42)[0].set["train.seed"] == 7

    def result(accuracy: float, seconds: float) -> dict:
        figures = {"epochs": 2, "selected": 2, "wall": 30.0, "run_id": "r"}
        return {**figures, "accuracy": accuracy, "seconds": seconds}

    good = ladder.summarise([result(99.1, 9.0), result(99.3, 12.0), result(99.2, 8.0)], [1, 2, 3])
    assert (good["accuracy"], good["accuracy_min"], good["seconds"]) == (99.2, 99.1, 9.0)
    one_low = ladder.summarise([result(98.9, 5.0), result(99.5, 5.0), result(99.4, 5.0)], [1, 2, 3])
    slow = ladder.summarise([result(99.5, 11.0), result(99.5, 12.0), result(99.5, 5.0)], [1, 2, 3])
    rows = ladder.table(
        [rung, rung.model_copy(update={"name": "low"}), rung.model_copy(update={"name": "slow"})],
        {
            "fast": {**good, "date": "d"},
            "low": {**one_low, "date": "d"},
            "slow": {**slow, "date": "d"},
        },
    ).splitlines()[2:]
    assert rows[0].endswith("| yes |") and "median of 3 seeds (min 99.10%" in rows[0]
    assert "9.0 s median (8.0-12.0) (limit 10 s)" in rows[0]
    assert rows[1].endswith("| NO |"), "one seed under the reference"
    assert rows[2].endswith("| NO |"), "the median run over the time limit"


def test_a_refit_rung_shows_the_run_that_chose_its_epochs_beside_its_own_time() -> None:
    rung = ladder.Rung(
        name="refit", reference=99.7, max_seconds=900, repeats=2, set={"train.refit": True}
    )
    runs = [
        {"epochs": 34, "selected": 34, "wall": 900.0, "run_id": f"r{i}", "accuracy": a,
         "seconds": s, "validation_run_id": f"v{i}", "validation_seconds": v}
        for i, (a, s, v) in enumerate([(99.7, 450.0, 380.0), (99.72, 470.0, 400.0)])
    ]  # fmt: skip
    summary = ladder.summarise(runs, [42, 43])
    assert summary["validation_seconds_all"] == [380.0, 400.0]
    (row,) = ladder.table([rung], {"refit": {**summary, "date": "d"}}).splitlines()[2:]
    assert "460.0 s median (450.0-470.0) (limit 900 s), after a validation run of 390 s" in row
    assert row.endswith("| yes |")


def trial(number: int, curve: list[float]) -> SimpleNamespace:
    return SimpleNamespace(number=number, intermediate_values=dict(enumerate(curve, 1)))


def test_trials_and_epochs_are_counted_up_to_the_first_trial_at_the_target() -> None:
    trials = [trial(2, [0.97, 0.985]), trial(0, [0.9, 0.95, 0.96]), trial(1, [0.8])]
    assert sweep_efficiency.to_target(trials, 0.984) == Reach(trials=3, epochs=6, trial=2)
    assert sweep_efficiency.to_target(trials, 0.99).trials is None


def variant(reach: Reach, trials: int, epochs: int) -> VariantResult:
    return VariantResult({}, 1.0, trials, epochs, 0.98, 0, reach)


def test_the_ratio_is_a_lower_bound_when_random_search_never_gets_there() -> None:
    tpe = variant(Reach(trials=4, epochs=40, trial=3), 20, 200)
    both = variant(Reach(trials=8, epochs=120, trial=7), 20, 300)
    never = variant(Reach(trials=None, epochs=None, trial=None), 20, 300)
    ratio = sweep_efficiency.efficiency_ratio
    assert "**3.00x** the epochs (2.00x the trials)" in ratio(tpe, both)
    assert "**more than 7.50x**" in ratio(tpe, never)
    assert "no ratio" in ratio(never, both)


def two_pairs() -> Overhead:
    stage = [Run(wall=110.0, fit=100.0, val_accuracy=0.98), Run(121.0, 110.0, 0.98)]
    bare = [Run(wall=104.0, fit=100.0, val_accuracy=0.98), Run(116.0, 110.0, 0.98)]
    return Overhead(stage, bare, preprocess_seconds=[2.0], noop_repro_seconds=[])


def test_the_overhead_section_splits_fixed_costs_from_the_fit() -> None:
    result = two_pairs()
    assert result.ratio_wall == 231 / 220 and result.ratio_fit == 1.0 and result.same_val_accuracy
    text = " ".join(overhead.overhead_markdown(result, Path("params.yaml")).split())
    assert "Wall-time ratio stage / bare: **1.050** over all runs (fit only: 1.000)" in text
    assert "run by run: 1.058, 1.043 (median 1.050)" in text
    assert "stage 10.50 s (runs: 10.00, 11.00), bare 5.00 s (runs: 4.00, 6.00)" in text
    assert "median 105.0 s in the stage, 105.0 s bare (ratio 1.000)" in text
    assert "No-op `dvc repro` (nothing changed): not timed." in text


def test_the_stage_and_bare_keras_alternate_in_abba_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    order: list[str] = []

    def fake(kind: str):
        def run(*args: object) -> Run:
            order.append(kind)
            return Run(wall=float(len(order)), fit=1.0, val_accuracy=0.5)

        return run

    monkeypatch.setattr(overhead, "stage_run", fake("stage"))
    monkeypatch.setattr(overhead, "bare_run", fake("bare"))
    runs = overhead.alternate(Path("p"), Path("d"), tmp_path, {}, repeats=4)
    assert order == ["stage", "bare", "bare", "stage", "stage", "bare", "bare", "stage"]
    assert [r.wall for r in runs["stage"]] == [1.0, 4.0, 5.0, 8.0]
    assert [r.wall for r in runs["bare"]] == [2.0, 3.0, 6.0, 7.0]


@pytest.mark.parametrize(
    ("name", "read"),
    [
        ("overhead", Overhead.from_json),
        ("speed", Speed.from_json),
        ("sweep", lambda d: {k: VariantResult.from_json(v) for k, v in d.items()}),
    ],
)
def test_the_typed_results_write_the_committed_files_layout(name: str, read) -> None:
    """benchpage renders docs/benchmarks.md from these files: same keys, nesting and order."""
    recorded = json.loads((ROOT / "reports" / "bench" / f"{name}.json").read_text())
    del recorded["provenance"]
    result = read(recorded)
    written = result.as_json() if name != "sweep" else {k: v.as_json() for k, v in result.items()}
    assert json.dumps(written, indent=2) == json.dumps(recorded, indent=2)


def test_flops_of_the_keras_example_cnn() -> None:
    """keras-io's mnist_convnet, built by our builder: 2.44 million multiply-adds an image."""
    pytest.importorskip("keras")
    raw = real_params()
    raw["model"]["type"] = "cnn"
    raw["model"]["cnn"].update(filters=[32, 64], kernel_size=3, padding="valid", dense=0)
    from digits.lib.models import build_model

    params = parse_params(raw)
    macs = 26 * 26 * 32 * 9 + 11 * 11 * 64 * 9 * 32 + 5 * 5 * 64 * 10
    assert speed.forward_flops(build_model(params.model)) == 2 * macs
    flops = speed.run_flops(params, n_train=100, n_val=10, epochs=2)
    assert flops.train_mflop_per_image == pytest.approx(3 * 2 * macs / 1e6)
    assert flops.run_tflop == pytest.approx(2 * (100 * 6 * macs + 10 * 2 * macs) / 1e12)


def test_bench_records_the_command_machine_and_day_with_its_figures(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cli, "measure_overhead", lambda *args: two_pairs())
    monkeypatch.setattr(cli, "overhead_markdown", lambda *args: "table\n")
    argv = ["--params", str(ROOT / "params.yaml"), "--out", str(tmp_path)]
    argv += ["overhead", "--repeats", "2"]
    bench.main.__wrapped__(argv)
    record = json.loads((tmp_path / "overhead.json").read_text())
    assert record["runs"]["bare"][1] == {"wall": 116.0, "fit": 110.0, "val_accuracy": 0.98}
    assert record["ratio_wall"] == 231 / 220 and record["noop_repro_seconds"] == []
    assert (tmp_path / "overhead.md").read_text() == "table\n"
    found = provenance.read(record)
    assert found is not None
    assert shlex.split(found.command) == ["python", "-m", "digits.tools.bench", *argv]
    assert (found.machine, found.date) == (provenance.machine(), date.today().isoformat())


def test_a_rung_records_the_dvc_command_it_ran(monkeypatch: pytest.MonkeyPatch) -> None:
    rung = ladder.Rung(name="quick", reference=90, set={"train.epochs": 1})
    monkeypatch.setattr(ladder, "run_rung", lambda run, promote: 30.0)
    monkeypatch.setattr(ladder, "rung_result", lambda run, experiment: {"accuracy": 95.0})
    result = ladder.measure(rung, parse_params(real_params()))
    found = provenance.read(result)
    assert result["accuracy"] == 95.0 and found is not None
    assert shlex.split(found.command) == ladder.exp_command(rung)
    assert found.date == date.today().isoformat() and "CPU cores" in found.machine


def test_a_refit_rung_takes_only_validation_accuracy_from_its_validation_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlflow import MlflowClient

    from digits.lib.tracking.provenance import REFIT_OF

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    rung = ladder.Rung(name="refit", reference=99.7, set={"train.refit": True})
    client = MlflowClient(uri)
    experiment = client.create_experiment("mnist")

    def finished(metrics: dict[str, float], tags: dict[str, str]) -> str:
        run = client.create_run(experiment, tags=tags)
        for key, value in metrics.items():
            client.log_metric(run.info.run_id, key, value)
        client.set_terminated(run.info.run_id, "FINISHED")
        return run.info.run_id

    chooser = finished(
        {"selected/val_accuracy": 0.9952, "selected/epoch": 33, "train/epochs": 36,
         "train/seconds": 372.0, "train/peak_memory_mb": 1500},
        {},
    )  # fmt: skip
    refit = finished(
        {"test/accuracy": 0.9961, "selected/epoch": 33, "train/epochs": 33,
         "train/seconds": 313.0},
        {"dvc.exp_name": rung.exp_name, REFIT_OF: chooser},
    )  # fmt: skip
    result = ladder.rung_result(rung, "mnist")
    assert result["run_id"] == refit and result["validation_run_id"] == chooser
    assert result["val_accuracy"] == pytest.approx(99.52)
    assert (result["epochs"], result["seconds"], result["validation_seconds"]) == (33, 313, 372)
    assert result["peak_memory_mb"] is None  # the refit logged none: not the validation run's


def test_the_sweep_command_writes_each_variant_under_its_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    recorded = json.loads((ROOT / "reports" / "bench" / "sweep.json").read_text())
    del recorded["provenance"]
    calls = []

    def compare(params: Path, workers: int, n_trials: int) -> dict[str, VariantResult]:
        calls.append((workers, n_trials))
        return {k: VariantResult.from_json(v) for k, v in recorded.items()}

    monkeypatch.setattr(cli, "compare_sweeps", compare)
    argv = ["--params", str(ROOT / "params.yaml"), "--out", str(tmp_path), "sweep"]
    bench.main.__wrapped__([*argv, "--workers", "3", "--n-trials", "7"])
    written = json.loads((tmp_path / "sweep.json").read_text())
    assert calls == [(3, 7)]
    assert list(written) == [*recorded, "provenance"]
    assert {k: written[k] for k in recorded} == recorded
    assert "| tpe-pruned | 40 (18 pruned) | 399 |" in (tmp_path / "sweep.md").read_text()


def timed_argv(out: Path, name: str, *rest: str) -> list[str]:
    return ["--out", str(out), "timed", "--name", name, *rest]


def test_timed_runs_the_command_after_its_setup_and_merges_by_name(tmp_path: Path) -> None:
    log = tmp_path / "log"
    setup = f"echo setup >> {log}"
    command = ["python", "-c", f"open({str(log)!r}, 'a').write('run\\n')"]
    bench.main.__wrapped__(
        timed_argv(tmp_path, "a", "--repeats", "2", "--setup", setup, "--", *command)
    )
    bench.main.__wrapped__(timed_argv(tmp_path, "b", "--repeats", "1", "--", "true"))
    bench.main.__wrapped__(timed_argv(tmp_path, "b", "--repeats", "1", "--", "true", "again"))
    assert log.read_text().split() == ["setup", "run", "setup", "run"]
    recorded = json.loads((tmp_path / "timed.json").read_text())
    assert list(recorded) == ["a", "b"] and recorded["b"]["command"] == ["true", "again"]
    entry = recorded["a"]
    assert entry["command"] == command and entry["setup"] == setup
    assert [(r["returncode"], r["failed"]) for r in entry["runs"]] == [(0, False), (0, False)]
    assert entry["median"] == (entry["runs"][0]["seconds"] + entry["runs"][1]["seconds"]) / 2
    found = provenance.read(entry)
    assert found is not None and found.date == date.today().isoformat()
    assert shlex.split(found.command)[-4:] == ["--", *command]


def test_a_failed_run_is_recorded_as_failed_and_the_command_exits_1(tmp_path: Path) -> None:
    fail = ["python", "-c", "import sys; sys.exit(3)"]
    with pytest.raises(PipelineError, match=r"1 of 1 runs of python failed \(exit 3\)"):
        bench.main.__wrapped__(timed_argv(tmp_path, "bad", "--repeats", "1", "--", *fail))
    entry = json.loads((tmp_path / "timed.json").read_text())["bad"]
    assert entry["runs"][0]["returncode"] == 3 and entry["runs"][0]["failed"] is True
    assert entry["median"] is None
    with pytest.raises(PipelineError, match="no such command"):
        bench.main.__wrapped__(timed_argv(tmp_path, "x", "--", "no-such-command-here"))
    with pytest.raises(PipelineError, match="--setup 'exit 4' failed"):
        bench.main.__wrapped__(timed_argv(tmp_path, "x", "--setup", "exit 4", "--", "true"))
    assert list(json.loads((tmp_path / "timed.json").read_text())) == ["bad"]


SWEEP_WRITER = """
import sys, pathlib
out = pathlib.Path(sys.argv[1]); out.mkdir(exist_ok=True)
best = "study: s\\ntrial: 2\\nobjective: val/accuracy\\nvalue: 0.98\\n"
(out / "best_params.yaml").write_text(best)
(out / "trials.csv").write_text(
    "number,state,value,duration\\n0,COMPLETE,0.97,1\\n1,PRUNED,0.99,1\\n2,COMPLETE,0.98,1\\n"
    "3,RUNNING,,1\\n"
)
"""


def test_a_timed_sweep_records_the_best_complete_trial_it_wrote(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    writer = ["python", "-c", SWEEP_WRITER, str(sweep)]
    argv = timed_argv(tmp_path, "sweep", "--repeats", "1", "--sweep-results", str(sweep))
    bench.main.__wrapped__([*argv, "--", *writer])
    run = json.loads((tmp_path / "timed.json").read_text())["sweep"]["runs"][0]
    assert run["sweep"] == {"best_val_accuracy": 0.98, "trial": 2, "complete": 2}
    for path in sweep.iterdir():  # a minute old, as a former sweep's files would be
        os.utime(path, (time.time() - 60, time.time() - 60))
    with pytest.raises(PipelineError, match=r"best_params\.yaml: not written by this run"):
        bench.main.__wrapped__([*argv, "--", "true"])  # a sweep that wrote nothing new
    several = (sweep / "best_params.yaml").read_text().replace("objective: val/accuracy", "")
    (sweep / "best_params.yaml").write_text(
        several + "objectives: {val/accuracy: maximize, model.n_params: minimize}\n"
    )
    (sweep / "trials.csv").write_text(
        "number,state,val/accuracy,model.n_params,pareto\n0,COMPLETE,0.95,10,True\n"
        "1,COMPLETE,0.985,90,True\n"
    )
    assert timed.sweep_best(sweep, since=0.0) == timed.SweepBest(0.985, 1, 2)


def test_the_commit_is_marked_changed_by_code_not_by_the_results_a_benchmark_writes(
    tmp_path: Path,
) -> None:
    def git(*args: str) -> None:
        subprocess.run(["git", *args], cwd=tmp_path, env=stage_env(**GIT_IDENTITY), check=True)

    (tmp_path / "reports").mkdir()
    (tmp_path / "reports/ladder.md").write_text("old table\n")
    (tmp_path / "params.yaml").write_text("a: 1\n")
    git("init", "-q")
    git("add", "-A")
    git("commit", "-qm", "one")
    head = provenance.commit(tmp_path)
    assert head and not head.endswith("+")
    (tmp_path / "reports/ladder.md").write_text("new table\n")
    assert provenance.commit(tmp_path) == head
    (tmp_path / "params.yaml").write_text("a: 2\n")
    assert provenance.commit(tmp_path) == f"{head}+"


def test_a_repeated_rung_shows_its_median_validation_and_each_seeds() -> None:
    rung = ladder.Rung(name="r", reference=99.0, repeats=3, set={"train.epochs": 2})

    def result(accuracy: float, val: float, shifted: float | None = None) -> dict:
        figures = {"epochs": 2, "selected": 2, "wall": 30.0, "run_id": "r", "seconds": 5.0}
        extra = {} if shifted is None else {"shifted_val_accuracy": shifted}
        return {**figures, "accuracy": accuracy, "val_accuracy": val, **extra}

    plain = ladder.summarise(
        [result(99.1, 99.3), result(99.2, 99.1), result(99.3, 99.2)], [1, 2, 3]
    )
    assert plain["val_accuracy"] == 99.2 and plain["val_accuracies"] == [99.3, 99.1, 99.2]
    shifted = ladder.summarise(
        [result(99.1, 99.3, 99.4), result(99.2, 99.1, 99.5), result(99.3, 99.2, 99.6)], [1, 2, 3]
    )
    old = {k: v for k, v in plain.items() if k != "val_accuracies"}  # kept only seed 1's
    rows = ladder.table(
        [rung, rung.model_copy(update={"name": "s"}), rung.model_copy(update={"name": "old"})],
        {"r": {**plain, "date": "d"}, "s": {**shifted, "date": "d"}, "old": {**old, "date": "d"}},
    ).splitlines()[2:]
    cells = [row.split(" | ")[3] for row in rows]
    assert cells[0] == "99.20% (99.30, 99.10, 99.20)"
    assert cells[1] == "99.20% (99.30, 99.10, 99.20); shifted 99.50% (99.40, 99.50, 99.60)"
    assert cells[2] == "-"
    single = {**result(99.1, 99.25), "date": "d"}
    assert ladder.validation(single) == "99.25%"


def test_a_rung_timed_on_every_seed_fails_on_its_slowest_run() -> None:
    rung = ladder.Rung(
        name="fast", reference=99.0, max_seconds=5, repeats=3, set={"train.epochs": 2}
    )
    runs = [
        {"epochs": 2, "selected": 2, "wall": 30.0, "run_id": "r", "accuracy": 99.2, "seconds": t}
        for t in (3.9, 3.8, 5.2)
    ]
    result = {**ladder.summarise(runs, [1, 2, 3]), "date": "d"}
    median = ladder.table([rung], {"fast": result}).splitlines()[2]
    every = ladder.table(
        [rung.model_copy(update={"every_in_time": True})], {"fast": result}
    ).splitlines()[2]
    assert median.endswith("| yes |")
    assert every.endswith("| NO |") and "(limit 5 s, every seed)" in every
