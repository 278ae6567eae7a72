"""The configuration reference, docs/configuration.md, rendered from the schema's field
descriptions, so that the page cannot drift from what `params.yaml` accepts.

    python -m digits.tools.configdoc           # exit 1 if docs/configuration.md is stale
    python -m digits.tools.configdoc --write   # rewrite it (`make docs-config`)
"""

from __future__ import annotations

import argparse
import json
import sys
import types
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import annotated_types as at
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from digits.lib.config.sweep import SweepParams
from digits.lib.files import write_text

DOC = Path("docs/configuration.md")
HEADER = """# Configuration reference

<!-- Generated from the schema (src/digits/lib/config/) by `make docs-config`; do not edit. -->

Every setting of `params.yaml`, under its full dotted name (the name `dvc.yaml`, MLflow and
`make sweep`'s space use). Each section is validated before any stage does work: an unknown
key, a key given twice, a YAML anchor or alias, a value out of range or a float that is not
finite stops the command with an `error:` line naming the key and its line. The values in
`params.yaml` are the schema's defaults.
"""


@dataclass(frozen=True)
class Section:
    """One heading of the page: the dotted prefix of its keys, what it is, and its fields."""

    prefix: str
    model: type[BaseModel]
    description: str
    fields: list[tuple[str, FieldInfo]]


def _section(annotation: Any) -> type[BaseModel] | None:
    """The model of a field typed `Model` or `Model | None`."""
    candidates = get_args(annotation) if _is_union(annotation) else (annotation,)
    for candidate in candidates:
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


def _is_union(annotation: Any) -> bool:
    return isinstance(annotation, types.UnionType) or get_origin(annotation) is Union


def _mapped(annotation: Any) -> type[BaseModel] | None:
    """The model of the values of a field typed `dict[str, Model]`."""
    if get_origin(annotation) is dict:
        return _section(get_args(annotation)[1])
    return None


def _bounds(metadata: Sequence[Any]) -> list[str]:
    """Constraints as text: `>= 0`, `< 1`, `1 to 4 items`, `matching ^...$`."""
    words = {at.Gt: ("gt", ">"), at.Ge: ("ge", ">="), at.Lt: ("lt", "<"), at.Le: ("le", "<=")}
    out = []
    for item in metadata:
        if type(item) in words:
            attr, sign = words[type(item)]
            out.append(f"{sign} {getattr(item, attr):,}")
        elif isinstance(item, at.MinLen):
            out.append(f"at least {item.min_length}")
        elif isinstance(item, at.MaxLen):
            out.append(f"at most {item.max_length}")
        elif getattr(item, "pattern", None):
            out.append(f"matching `{item.pattern}`")
    return out


def type_text(annotation: Any, names: dict[type, str] | None = None) -> str:
    """A field's type in words: `int (> 0, <= 65,536)`, `relu | tanh`, `list of int`; a
    section by its heading in `names`."""
    names = names or {}
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Annotated:
        inner = [b for info in args[1:] for b in _bounds(getattr(info, "metadata", [info]))]
        base = type_text(args[0], names)
        return f"{base} ({', '.join(inner)})" if inner else base
    if origin is Literal:
        return " | ".join(str(a) for a in args)
    if _is_union(annotation):
        return " or ".join(type_text(a, names) for a in args)
    if origin is list:
        return f"list of {type_text(args[0], names)}"
    if origin is dict:
        return f"mapping of {type_text(args[0], names)} to {type_text(args[1], names)}"
    if annotation is type(None):
        return "null"
    if annotation is Any:
        return "any"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return f"`{names[annotation]}`" if annotation in names else "section"
    return getattr(annotation, "__name__", str(annotation))


def default_text(field: FieldInfo) -> str:
    """A field's default as it would be written in YAML, or `required`."""
    if field.is_required():
        return "required"
    value = field.get_default(call_default_factory=True)
    if isinstance(value, str):
        return value
    return json.dumps(value)


def sections(model: type[BaseModel] = SweepParams) -> list[Section]:
    """Each model reachable from `model`, depth first, with the keys that are not sections
    themselves; the model of a mapping's values (`sweep.space.<setting>`) comes once, where
    first met."""
    found: list[Section] = []
    seen: set[type[BaseModel]] = set()

    def visit(current: type[BaseModel], prefix: str, description: str) -> None:
        rows, nested = [], []
        for name, field in current.model_fields.items():
            key, text = f"{prefix}{name}", field.description or ""
            if (section := _section(field.annotation)) is not None:
                nested.append((section, f"{key}.", text))
                continue
            rows.append((key, field))
            values = _mapped(field.annotation)
            if values is not None and values not in seen:
                seen.add(values)
                nested.append(
                    (values, f"{key}.<{'setting' if name == 'space' else 'name'}>.", text)
                )
        if rows or not current.model_fields:  # an empty section (`model.softmax: {}`) too
            found.append(Section(prefix.rstrip("."), current, description, rows))
        for section, where, text in nested:
            visit(section, where, text)

    visit(model, "", "")
    return found


def undocumented(model: type[BaseModel] = SweepParams) -> list[str]:
    """Every key whose schema field has no description."""
    return [
        f"{prefix}{name}"
        for prefix, section in _sections(model)
        for name, field in section.model_fields.items()
        if not (field.description or "").strip()
    ]


def _sections(model: type[BaseModel], prefix: str = "") -> Iterator[tuple[str, type[BaseModel]]]:
    """Every model reachable from `model`, with the dotted prefix of its keys."""
    yield prefix, model
    for name, field in model.model_fields.items():
        section = _section(field.annotation) or _mapped(field.annotation)
        if section is not None:
            yield from _sections(section, f"{prefix}{name}.")


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def render(model: type[BaseModel] = SweepParams) -> str:
    """The whole page: a table per section, every key once under its full dotted name."""
    parts = [HEADER]
    found = sections(model)
    names = {s.model: s.prefix for s in found}
    for section in found:
        parts.append(f"\n## `{section.prefix}`\n\n{_cell(section.description)}\n")
        if not section.fields:
            parts.append(f"\nNo keys: `{section.prefix}: {{}}`.\n")
            continue
        parts.append("\n| Key | Type | Default | Description |\n|---|---|---|---|\n")
        for key, field in section.fields:
            bounds = _bounds(field.metadata)
            kind = type_text(field.annotation, names) + (
                f" ({', '.join(bounds)})" if bounds else ""
            )
            cells = [f"`{key}`", kind, default_text(field), field.description or ""]
            parts.append("| " + " | ".join(_cell(c) for c in cells) + " |\n")
    return "".join(parts)


def main(argv: Sequence[str] | None = None) -> None:
    """CLI: check (default) or `--write` docs/configuration.md."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path("."), help="the project (params.yaml)")
    parser.add_argument("--write", action="store_true", help="rewrite docs/configuration.md")
    args = parser.parse_args(argv)
    path = args.root / DOC
    if missing := undocumented():
        print(f"error: schema fields without a description: {', '.join(missing)}", file=sys.stderr)
        raise SystemExit(1)
    text = render()
    if args.write:
        write_text(path, text)
    elif not path.is_file() or path.read_text() != text:
        print(f"error: {path} is stale; run `make docs-config`", file=sys.stderr)
        raise SystemExit(1)
    print(f"{path}: matches the schema")


if __name__ == "__main__":
    main()
