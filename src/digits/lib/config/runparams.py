"""The settings that define a training run, as the flat dotted names MLflow logs."""

from __future__ import annotations

from typing import Any

from digits.lib.config.dotted import flatten
from digits.lib.config.params import Params


def run_params(params: Params) -> dict[str, Any]:
    """The params that define a training run, flattened; only the selected model family."""
    model = params.model
    family = getattr(model, model.type).model_dump()
    tree = {
        "data": params.data.model_dump(),
        "model": {
            "type": model.type,
            model.type: family,
            "augment": model.augment.model_dump(),
            "dtype_policy": model.dtype_policy,
        },
        "train": params.train.model_dump(exclude={"repeats"}),  # how many runs, not what each is
    }
    return flatten(tree)
