"""Dotted keys (`train.learning_rate`): the names `dvc.yaml`, MLflow, `dvc params diff` and the
sweep's space use for settings in the nested `params.yaml`."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, MutableMapping
from typing import Any

import yaml

from digits.lib.config.errors import ParamsError


def set_dotted(tree: MutableMapping[str, Any], key: str, value: Any, create: bool = False) -> None:
    """Set `a.b.c` in a nested mapping (a dict or a ruamel document); a missing key is a
    ParamsError unless `create` makes the sections and the key."""
    *parents, leaf = key.split(".")
    node = tree
    for part in parents:
        if create:
            node = node.setdefault(part, {})
        elif isinstance(node.get(part), MutableMapping):
            node = node[part]
        else:
            raise ParamsError(f"{key}: no such setting")
    if leaf not in node and not create:
        raise ParamsError(f"{key}: no such setting")
    node[leaf] = value


def parse_overrides(pairs: Iterable[str]) -> dict[str, Any]:
    """`KEY=VALUE` strings (as `dvc exp run -S` takes them) as dotted overrides, each value read
    as YAML: `train.epochs=12` -> {'train.epochs': 12}."""
    overrides: dict[str, Any] = {}
    for pair in pairs:
        key, equals, value = pair.partition("=")
        if not equals:
            raise ParamsError(f"{pair}: expected KEY=VALUE")
        overrides[key] = yaml.safe_load(value)
    return overrides


def nest(flat: Mapping[str, Any]) -> dict[str, Any]:
    """{'a.b': 1} -> {'a': {'b': 1}}."""
    tree: dict[str, Any] = {}
    for key, value in flat.items():
        set_dotted(tree, key, value, create=True)
    return tree


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mapping -> {'a.b.c': value}, the names MLflow and `dvc params diff` show."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat
