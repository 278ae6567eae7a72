"""A run's name: what it trains, never MLflow's random one."""

from __future__ import annotations

from digits.lib.config import Params
from digits.lib.environment import Environment


def run_name(params: Params, env: Environment) -> str:
    """The DVC experiment's name when there is one, else a short description of what is
    trained, such as `mlp-2x512-relu`, `cnn-32-64-k3` or, with a kernel size per block,
    `cnn-32-64-k5-3`."""
    if env.exp_name:
        return env.exp_name
    model = params.model
    if model.type == "mlp":
        units = model.mlp.units
        sizes = f"{len(units)}x{units[0]}" if len(set(units)) == 1 else "-".join(map(str, units))
        name = f"mlp-{sizes or 0}-{model.mlp.activation}" + ("-bn" if model.mlp.batch_norm else "")
    elif model.type == "cnn":
        filters = "-".join(map(str, model.cnn.filters))
        kernels = model.cnn.kernels
        sizes = str(kernels[0]) if len(set(kernels)) == 1 else "-".join(map(str, kernels))
        name = f"cnn-{filters}-k{sizes}" + ("-bn" if model.cnn.batch_norm else "")
    elif model.type == "numpy_mlp":
        name = "numpy_mlp-" + "-".join(map(str, model.numpy_mlp.hidden))
    else:
        name = model.type
    if model.augment.enabled:
        name += "-aug"
    if model.dtype_policy == "mixed_bfloat16":
        name += "-bf16"
    return name
