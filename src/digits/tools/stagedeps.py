"""The code each DVC stage depends on, derived from its imports, so `dvc.yaml` never drifts.

    python -m digits.tools.stagedeps           # list the differences; exit 1 if any
    python -m digits.tools.stagedeps --write   # rewrite the `src/` deps of dvc.yaml

A stage's code deps are the files Python runs to import its module (`python -m digits.X` in the
stage's `cmd`): the module, every first-party module it imports anywhere (inside functions too,
but not under `if TYPE_CHECKING:`), transitively, and the packages' `__init__.py` on the way.
Editing a module reruns exactly the stages that import it; `tests/test_structure.py` fails
when `dvc.yaml` disagrees with the imports.
"""

from __future__ import annotations

import argparse
import ast
import re
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

from digits.lib.files import write_text

PACKAGE = "digits"
CMD_MODULE = re.compile(r"python -m (digits(?:\.\w+)+)")


def module_file(src: Path, module: str) -> Path | None:
    """`digits.lib.config.load` -> src/digits/lib/config/load.py (or a package's __init__.py)."""
    base = src.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _runtime_imports(tree: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every import statement that can run: anywhere but under `if TYPE_CHECKING:`."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            yield from _runtime_imports(ast.Module(body=node.orelse, type_ignores=[]))
            continue
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        yield from _runtime_imports(node)


def imported_modules(src: Path, module: str) -> set[str]:
    """The first-party modules `module`'s own source imports (not transitively)."""
    path = module_file(src, module)
    assert path is not None, module
    found = set()
    for node in _runtime_imports(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif node.level == 0 and node.module:
            # `from digits.lib import tracking` names a module; `... import stage_main` does not
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        found |= {n for n in names if n.split(".")[0] == PACKAGE and module_file(src, n)}
    return found


def closure(src: Path, module: str) -> set[str]:
    """`module`, what it imports, transitively, and every package on the way."""
    seen: set[str] = set()
    todo = [module]
    while todo:
        name = todo.pop()
        parts = name.split(".")
        for end in range(1, len(parts) + 1):  # importing a.b.c runs a, a.b and a.b.c
            prefix = ".".join(parts[:end])
            if prefix not in seen:
                seen.add(prefix)
                todo.append(prefix)
        todo += [m for m in imported_modules(src, name) if m not in seen]
    return seen


def stage_code(root: Path, module: str) -> list[str]:
    """The files, relative to `root`, that a stage running `python -m module` depends on."""
    src = root / "src"
    files = {module_file(src, m) for m in closure(src, module)}
    return sorted(p.relative_to(root).as_posix() for p in files if p is not None)


def expected_deps(root: Path, pipeline: dict) -> dict[str, list[str]]:
    """{stage: its code deps} for every stage whose command runs a `digits` module."""
    expected = {}
    for name, stage in pipeline["stages"].items():
        if match := CMD_MODULE.search(" ".join(str(stage["cmd"]).split())):
            expected[name] = stage_code(root, match.group(1))
    return expected


def code_deps(stage: dict) -> list[str]:
    """The `src/` entries of a stage's deps, as listed."""
    return [d for d in stage.get("deps", []) if str(d).startswith("src/")]


def differences(root: Path) -> dict[str, tuple[list[str], list[str]]]:
    """{stage: (missing, extra)} where dvc.yaml's code deps and the imports disagree."""
    import yaml

    pipeline = yaml.safe_load((root / "dvc.yaml").read_text())
    diffs = {}
    for name, want in expected_deps(root, pipeline).items():
        have = code_deps(pipeline["stages"][name])
        missing, extra = sorted(set(want) - set(have)), sorted(set(have) - set(want))
        if missing or extra:
            diffs[name] = (missing, extra)
    return diffs


def write(root: Path) -> None:
    """Replace the `src/` deps of every stage with the derived list, keeping everything else
    in dvc.yaml (comments, data deps, order) as it is."""
    import io

    from ruamel.yaml import YAML

    yaml_rt = YAML()
    yaml_rt.width = 4096
    yaml_rt.indent(mapping=2, sequence=4, offset=2)
    path = root / "dvc.yaml"
    document = yaml_rt.load(path.read_text())
    for name, want in expected_deps(root, document).items():
        deps = document["stages"][name].setdefault("deps", [])
        kept = [d for d in deps if not str(d).startswith("src/")]
        deps.clear()
        deps.extend([*kept, *want])
    buffer = io.StringIO()
    yaml_rt.dump(document, buffer)
    write_text(path, buffer.getvalue())


def main(argv: Sequence[str] | None = None) -> None:
    """CLI: check (default) or `--write` the code deps of dvc.yaml."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path("."), help="the project (dvc.yaml)")
    parser.add_argument("--write", action="store_true", help="rewrite dvc.yaml's code deps")
    args = parser.parse_args(argv)
    if args.write:
        write(args.root)
    diffs = differences(args.root)
    for stage, (missing, extra) in diffs.items():
        for path in missing:
            print(f"{stage}: missing {path}")
        for path in extra:
            print(f"{stage}: not imported {path}")
    if diffs:
        print("run `python -m digits.tools.stagedeps --write` to fix dvc.yaml", file=sys.stderr)
        raise SystemExit(1)
    print("dvc.yaml: every stage's code deps match its imports")


if __name__ == "__main__":
    main()
