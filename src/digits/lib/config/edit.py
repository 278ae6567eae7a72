"""Writing settings into `params.yaml` (`make promote`, the benchmarks' variants) without
losing its comments or layout."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from digits.lib.config.dotted import set_dotted
from digits.lib.config.load import read_yaml
from digits.lib.config.params import parse_params
from digits.lib.files import atomic_path


def edit_params(path: Path, overrides: Mapping[str, Any]) -> None:
    """Write dotted-key settings into a params file, keeping its comments and layout. The file
    is read strictly first (no duplicate keys, anchors or aliases, which the round trip would
    keep); the result is validated before it replaces the file; an unknown key changes
    nothing."""
    from ruamel.yaml import YAML

    text = path.read_text()
    read_yaml(text, str(path))
    yaml_rt = YAML()
    yaml_rt.preserve_quotes = True
    yaml_rt.width = 4096  # never wrap a line
    yaml_rt.indent(mapping=2, sequence=4, offset=2)  # lists indented under their key
    yaml_rt.representer.add_representer(
        type(None), lambda r, _: r.represent_scalar("tag:yaml.org,2002:null", "null")
    )
    document = yaml_rt.load(text)
    for key, value in overrides.items():
        set_dotted(document, key, value)
    with atomic_path(path) as tmp:
        with tmp.open("w") as f:
            yaml_rt.dump(document, f)
        written = read_yaml(tmp.read_text(), str(path))
        parse_params(written.data, str(path), written.lines)
