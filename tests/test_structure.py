"""What keeps the codebase easy to take over: `dvc.yaml`'s code deps follow the imports, the
schema's defaults are `params.yaml`'s, every option explains itself, importing does nothing."""

from __future__ import annotations

import argparse
import importlib
import json
import pkgutil
import subprocess
import sys
import types
from pathlib import Path
from typing import Any, Union, get_args, get_origin

import pytest
import yaml
from pydantic import BaseModel

import digits
from digits.lib.config.sweep import SweepParams
from digits.tools import stagedeps

from helpers import ROOT


def test_dvc_yaml_code_deps_are_the_stages_imports() -> None:
    assert stagedeps.differences(ROOT) == {}, "run `python -m digits.tools.stagedeps --write`"


def test_a_new_import_shows_up_as_a_missing_dep(tmp_path: Path) -> None:
    """The check can fail: a stage that starts importing a module is caught."""
    (tmp_path / "src").mkdir()
    (tmp_path / "dvc.yaml").write_text((ROOT / "dvc.yaml").read_text())
    package = tmp_path / "src" / "digits"
    (package / "stages").mkdir(parents=True)
    (package / "lib").mkdir()
    for name in ("__init__.py", "stages/__init__.py", "lib/__init__.py", "lib/extra.py"):
        (package / name).write_text("")
    for stage in ("download", "preprocess", "train", "evaluate", "report"):
        (package / "stages" / f"{stage}.py").write_text("")
    (package / "stages" / "report.py").write_text("def f():\n    from digits.lib import extra\n")
    diffs = stagedeps.differences(tmp_path)
    assert "src/digits/lib/extra.py" in diffs["report"][0]
    assert "src/digits/lib/cli.py" in diffs["report"][1]  # listed, no longer imported


PIPELINE_SECTIONS = ("download", "data", "model", "train", "mlflow")  # the rest: tools only
# `make repeat`'s K, and whether a killed run resumes: neither changes what a stage outputs
TOOLS_ONLY = {"train.repeats", "train.resume"}


def test_every_pipeline_setting_is_a_param_of_some_stage() -> None:
    """A key the stages read but no stage lists would change results without a rerun."""
    pipeline = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    families = [k for k, v in raw["model"].items() if isinstance(v, dict) and k != "augment"]
    listed = set()
    for stage in pipeline["stages"].values():
        for key in stage.get("params", []):
            names = [key.replace("${model.type}", f) for f in families] if "${" in key else [key]
            listed.update(names)
    keys = [
        f"{section}.{key}"
        for section in PIPELINE_SECTIONS
        for key in raw[section]
        if not (section == "model" and key in families) and f"{section}.{key}" not in TOOLS_ONLY
    ] + [f"model.{family}" for family in families]
    unlisted = [k for k in keys if not any(k == n or k.startswith(f"{n}.") for n in listed)]
    assert unlisted == []


def _model_class(annotation: Any) -> type[BaseModel] | None:
    """The section class of a field typed `Section` or `Section | None`."""
    union = isinstance(annotation, types.UnionType) or get_origin(annotation) is Union
    for candidate in (annotation, *(get_args(annotation) if union else ())):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


def default_drift(model: type[BaseModel], data: dict[str, Any], prefix: str = "") -> list[str]:
    """Every key where the schema's default is not the file's value, or the file lacks a key
    that has a default (required keys have no default to drift)."""
    problems = []
    for name, field in model.model_fields.items():
        key = f"{prefix}{name}"
        if field.is_required():
            nested = _model_class(field.annotation)
            if nested and isinstance(data.get(name), dict):
                problems += default_drift(nested, data[name], f"{key}.")
            continue
        if name not in data:
            problems.append(f"{key}: has a default but is not in params.yaml")
            continue
        default = field.get_default(call_default_factory=True)
        nested = _model_class(field.annotation)
        if nested and isinstance(data[name], dict):
            problems += default_drift(nested, data[name], f"{key}.")
        elif default != data[name]:
            problems.append(f"{key}: schema default {default!r}, params.yaml {data[name]!r}")
    return problems


def test_schema_defaults_are_params_yaml() -> None:
    assert default_drift(SweepParams, yaml.safe_load((ROOT / "params.yaml").read_text())) == []


def test_a_drifted_default_is_named() -> None:
    data = yaml.safe_load((ROOT / "params.yaml").read_text())
    data["train"]["epochs"] += 1
    del data["model"]["mlp"]["dropout"]
    assert default_drift(SweepParams, data) == [
        "model.mlp.dropout: has a default but is not in params.yaml",
        f"train.epochs: schema default 25, params.yaml {data['train']['epochs']}",
    ]


CLIS = [
    "digits.stages.download",
    "digits.stages.preprocess",
    "digits.stages.train",
    "digits.stages.evaluate",
    "digits.stages.report",
    "digits.tools.predict",
    "digits.tools.repeat",
    "digits.tools.ladder",
    "digits.tools.bench",
    "digits.tools.dashboard",
    "digits.tools.stagedeps",
    "digits.tools.server",
    "digits.tools.sweep.__main__",
]


@pytest.mark.parametrize("module", CLIS)
def test_every_option_has_help(module: str, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    seen: list[tuple[str, str | None]] = []
    original = argparse._ActionsContainer.add_argument

    def record(self: Any, *args: Any, **kwargs: Any) -> Any:
        action = original(self, *args, **kwargs)
        seen.append((action.dest, action.help))
        return action

    monkeypatch.setattr(argparse._ActionsContainer, "add_argument", record)
    with pytest.raises(SystemExit) as exit_:
        importlib.import_module(module).main(["--help"])
    assert exit_.value.code == 0
    assert seen, "the parser was built"
    assert [dest for dest, text in seen if not text] == []


def all_modules() -> list[str]:
    return [m.name for m in pkgutil.walk_packages(digits.__path__, "digits.")]


def test_importing_any_module_does_nothing(tmp_path: Path) -> None:
    """No files, folders, logging set-up, tracking URI or TensorFlow at import time."""
    code = f"""
import importlib, json, logging, os, sys
for name in {all_modules()!r}:
    importlib.import_module(name)
print(json.dumps({{
    "handlers": len(logging.root.handlers),
    "heavy": sorted({{"tensorflow", "keras"}} & set(sys.modules)),
    "uri": os.environ.get("MLFLOW_TRACKING_URI"),
}}))
"""
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"handlers": 0, "heavy": [], "uri": None}
    assert list(tmp_path.iterdir()) == []


def test_the_fit_loop_imports_no_mlflow_and_no_cycle() -> None:
    code = "import sys, digits.lib.training; print(sorted({'mlflow', 'keras'} & set(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_no_module_imports_one_that_imports_it_back() -> None:
    src = ROOT / "src"
    graph = {m: stagedeps.imported_modules(src, m) for m in all_modules()}
    cycles = [(a, b) for a, deps in graph.items() for b in deps if a in graph.get(b, ())]
    assert cycles == []


def test_no_module_over_400_lines_and_no_function_over_60() -> None:
    """A module past 400 lines, or a function past 60, is doing more than one job (ruff's C901
    and PLR0915 bound branches and statements, not lines)."""
    import ast

    too_long = []
    for path in sorted((ROOT / "src").rglob("*.py")):
        text = path.read_text()
        if (lines := len(text.splitlines())) > 400:
            too_long.append(f"{path.relative_to(ROOT)}: {lines} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = node.end_lineno - node.lineno + 1
                if length > 60:
                    too_long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}: {length}")
    assert too_long == []


def test_stage_modules_live_in_stages_and_tools_outside_the_graph() -> None:
    pipeline = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    commands = " ".join(str(s["cmd"]) for s in pipeline["stages"].values())
    stages = {m.name.split(".")[-1] for m in pkgutil.iter_modules(_path("digits.stages"))}
    assert {f"digits.stages.{s}" in commands for s in stages} == {True}
    assert "digits.tools" not in commands and "digits.lib" not in commands


def _path(package: str) -> list[str]:
    module = importlib.import_module(package)
    assert isinstance(module, types.ModuleType)
    return list(module.__path__)


def test_xdist_keeps_a_group_on_one_worker(tmp_path: Path) -> None:
    """`make test` relies on `--dist loadgroup` to keep one DVC project's tests on one worker
    (test_pipeline.py); pytest 9.2 with xdist 3.8 silently stopped doing so (xdist#1386)."""
    body = "import pytest\n\n@pytest.mark.parametrize('i', range(4))\ndef test_it(i):\n    pass\n"
    (tmp_path / "test_grouped.py").write_text(
        "pytestmark = __import__('pytest').mark.xdist_group('g')\n" + body
    )
    (tmp_path / "test_free.py").write_text(body)
    cmd = [sys.executable, "-m", "pytest", "-n", "2", "--dist", "loadgroup", "-v", "-p"]
    cmd += ["no:cacheprovider", "--rootdir", str(tmp_path), str(tmp_path)]
    done = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    ran = [line.split() for line in done.stdout.splitlines() if line.startswith("[gw")]
    workers = {words[0] for words in ran if "test_grouped.py" in words[-1]}
    assert len(ran) == 8 and len(workers) == 1, done.stdout
