"""Reading `params.yaml` strictly: a key given twice, an anchor or alias (`&a`, `*a`), a
file that is not a mapping are refused with their lines, before the schema sees the values."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from digits.lib.config.errors import ParamsError
from digits.lib.config.params import P, Params, parse_params


class _AnchorFound(yaml.YAMLError):
    """An anchor or alias where the loader refuses them; `line` is 1-based."""

    def __init__(self, line: int) -> None:
        super().__init__(f"line {line}")
        self.line = line


class _StrictLoader(yaml.SafeLoader):
    """PyYAML's safe loader refusing anchors and aliases before it follows one: no shared or
    self-referencing nodes, no alias bomb (nine levels of aliases expand a billion times)."""

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None):
            raise _AnchorFound(event.start_mark.line + 1)
        return super().compose_node(parent, index)  # type: ignore[misc]


@dataclass(frozen=True)
class Document:
    """A YAML file's content, and the line of each of its keys (dotted, 1-based)."""

    data: Any
    lines: dict[str, int]


def _keys(node: yaml.Node, path: str, lines: dict[str, int], duplicates: list[str]) -> None:
    """Record the line of every key under `node` and every key given twice in one mapping."""
    if isinstance(node, yaml.MappingNode):
        seen: dict[str, int] = {}
        for key_node, value_node in node.value:
            key, line = str(key_node.value), key_node.start_mark.line + 1
            name = f"{path}{key}"
            if key in seen:
                duplicates.append(f"{name}: lines {seen[key]} and {line}")
            else:
                seen[key] = lines[name] = line
            _keys(value_node, f"{name}.", lines, duplicates)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            lines[f"{path}{i}"] = item.start_mark.line + 1
            _keys(item, f"{path}{i}.", lines, duplicates)


def read_yaml(text: str, source: str) -> Document:
    """`text` parsed strictly: a ParamsError names every key given twice in one mapping
    (PyYAML, like most loaders, would silently keep the last) or the first anchor or alias."""
    loader = _StrictLoader(text)
    try:
        node = loader.get_single_node()
        lines: dict[str, int] = {}
        duplicates: list[str] = []
        if node is not None:
            _keys(node, "", lines, duplicates)
        if duplicates:
            raise ParamsError(
                f"{source}: {len(duplicates)} duplicate key(s); YAML would silently keep the "
                "last, delete the one you do not mean:\n" + "\n".join(f"  {d}" for d in duplicates)
            )
        return Document(None if node is None else loader.construct_document(node), lines)
    except _AnchorFound as err:
        raise ParamsError(
            f"{source}: line {err.line}: YAML anchors and aliases (&name, *name) are not "
            "allowed; write the value out"
        ) from None
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise ParamsError(f"{source}: not valid YAML: {err}") from None
    except RecursionError:
        raise ParamsError(f"{source}: nested too deeply to be a params file") from None
    finally:
        loader.dispose()


def load_yaml(path: Path) -> Document:
    """A YAML file read strictly (`read_yaml`)."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ParamsError(f"{path}: not found; run from the project root") from None
    except UnicodeDecodeError as err:
        raise ParamsError(f"{path}: not valid YAML: {err}") from None
    return read_yaml(text, str(path))


def load_params(path: str | Path = "params.yaml", schema: type[P] = Params) -> P:  # type: ignore[assignment]
    """Read and validate `params.yaml` against `schema` (Params; SweepParams for the sweep's
    tools); every problem is named with its key and line."""
    path = Path(path)
    document = load_yaml(path)
    if not isinstance(document.data, dict):
        raise ParamsError(
            f"{path}: expected a mapping of sections, got {type(document.data).__name__}"
        )
    return parse_params(document.data, str(path), document.lines, schema)
