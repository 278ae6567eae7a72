"""The one schema for `params.yaml`, validated before any stage does work.

Importing it is cheap (no TensorFlow), so a typo in `params.yaml` fails in well under a second
with one message that lists every problem. One job per module: `fields` (shared types), one
module per group of sections (`download`, `train`, `model`, `results`, `sweep`), `params` (all
of them, and the rules across sections), `errors` (problems as values), `load` (strict YAML),
`dotted` (`a.b.c` keys). Imported from their own modules, so that a stage depends only on what
it uses: `sweep` (the `sweep:` section and `SweepParams`, which only the sweep's tools load),
`edit` (`edit_params`, rewriting the file), `runparams` (what MLflow logs). The sweep's checks
of its space against the schema live beside the sweep (`digits.tools.sweep.checks`).
"""

from digits.lib.config.dotted import flatten, nest, parse_overrides, set_dotted
from digits.lib.config.download import IDX_KINDS, MNIST_SIZES, DownloadConfig
from digits.lib.config.errors import ParamsError, Problem
from digits.lib.config.load import load_params
from digits.lib.config.model import (
    AugmentConfig,
    CNNConfig,
    MLPConfig,
    ModelConfig,
    NumpyMLPConfig,
    SoftmaxConfig,
)
from digits.lib.config.params import MAX_PARAMS, Params, parse_params
from digits.lib.config.results import EvaluateConfig, MLflowConfig, PredictConfig
from digits.lib.config.train import DataConfig, TrainConfig

__all__ = [
    "IDX_KINDS",
    "MAX_PARAMS",
    "MNIST_SIZES",
    "AugmentConfig",
    "CNNConfig",
    "DataConfig",
    "DownloadConfig",
    "EvaluateConfig",
    "MLPConfig",
    "MLflowConfig",
    "ModelConfig",
    "NumpyMLPConfig",
    "Params",
    "ParamsError",
    "PredictConfig",
    "Problem",
    "SoftmaxConfig",
    "TrainConfig",
    "flatten",
    "load_params",
    "nest",
    "parse_overrides",
    "parse_params",
    "set_dotted",
]
