"""Types and limits shared by the sections of the schema, and the base every section extends."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

Activation = Literal["relu", "tanh", "sigmoid", "elu", "selu", "gelu", "swish"]
OptimizerName = Literal["sgd", "momentum", "rmsprop", "adagrad", "adadelta", "adam"]
Direction = Literal["maximize", "minimize"]
Sha256 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
Probability = Annotated[float, Field(ge=0.0, lt=1.0)]
# numpy's legacy RandomState and TensorFlow's seeds take 0 .. 2**32 - 1; outside it they fail
# inside numpy after TensorFlow has loaded
Seed = Annotated[int, Field(ge=0, le=2**32 - 1)]
# Upper bounds on sizes: far above anything MNIST needs, low enough that a typo (an extra zero
# or three) is caught here instead of by the kernel's out-of-memory killer
MAX_UNITS = 65_536
MAX_FILTERS = 4_096
MAX_BATCH = 65_536
MAX_EPOCHS = 10_000
Units = Annotated[int, Field(gt=0, le=MAX_UNITS)]
KernelSize = Annotated[int, Field(ge=1, le=7)]


class Strict(BaseModel):
    """Base for every section: unknown keys (typos) are errors, not silently ignored, and
    every float is finite (`.inf` and `.nan` are refused)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)
