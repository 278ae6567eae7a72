"""All of `params.yaml`: the sections together, and the rules that span sections."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Self, TypeVar

from pydantic import Field, ValidationError, model_validator

from digits.lib.architecture import count_params, training_bytes
from digits.lib.config.dotted import set_dotted
from digits.lib.config.download import DownloadConfig
from digits.lib.config.errors import Problem, SettingProblems, invalid, problems_of
from digits.lib.config.fields import Strict
from digits.lib.config.model import ModelConfig
from digits.lib.config.results import EvaluateConfig, MLflowConfig, PredictConfig
from digits.lib.config.train import DataConfig, TrainConfig

# A network above this many parameters is refused before TensorFlow loads: 4 bytes per weight,
# x4 when training with Adam (weights, gradients, two moments): 16 GB at this ceiling
MAX_PARAMS = 1_000_000_000


class Params(Strict):
    """All of `params.yaml`."""

    download: DownloadConfig = Field(description="Where the MNIST files come from.")
    data: DataConfig = Field(default=DataConfig(), description="The validation split.")
    model: ModelConfig = Field(default=ModelConfig(), description="The network to train.")
    train: TrainConfig = Field(default=TrainConfig(), description="The optimiser and fitting.")
    mlflow: MLflowConfig = Field(default=MLflowConfig(), description="Tracking and registry.")
    evaluate: EvaluateConfig = Field(
        default=EvaluateConfig(), description="How models turn images into predictions."
    )
    predict: PredictConfig = Field(
        default=PredictConfig(), description="Limits on each file given to `make predict`."
    )
    # read by the sweep's tools only, which load `SweepParams`: stages neither check it nor
    # depend on its schema
    sweep: dict[str, Any] | None = Field(
        default=None, description="The Optuna search, `make sweep` (null: none)."
    )

    @model_validator(mode="after")
    def _network_fits(self) -> Params:
        key = f"model.{self.model.type}"
        try:
            n = count_params(self.model)
        except ValueError as err:
            raise SettingProblems([Problem(key, str(err))]) from None
        if n > MAX_PARAMS:
            message = (
                f"the network would have ~{n:,} parameters (~{training_bytes(n) / 1e9:,.0f} GB "
                f"to train); the limit is {MAX_PARAMS:,}: make it smaller"
            )
            raise SettingProblems([Problem(key, message)])
        return self

    @model_validator(mode="after")
    def _refit_chooses_nothing_after(self) -> Params:
        if not self.train.refit:
            return self
        if self.evaluate.shifts:
            message = (
                "test-time shifts stay on only if they raise validation accuracy, and a refit "
                "trains on the validation images: set it to 0 with train.refit"
            )
            raise SettingProblems([Problem("evaluate.shifts", message)])
        if self.model.type == "numpy_mlp":
            message = "numpy_mlp has no refit mode; set it to false"
            raise SettingProblems([Problem("train.refit", message)])
        return self

    @model_validator(mode="after")
    def _numpy_mlp_trains_with_sgd(self) -> Params:
        if self.model.type != "numpy_mlp":
            return self
        problems = []
        if self.train.optimizer != "sgd":
            problems.append(
                Problem(
                    "train.optimizer",
                    "numpy_mlp trains with plain mini-batch SGD; set it to sgd "
                    f"(got {self.train.optimizer!r})",
                )
            )
        if self.train.lr_schedule != "constant":
            problems.append(
                Problem("train.lr_schedule", "numpy_mlp keeps eta constant; set it to constant")
            )
        if self.model.augment.enabled:
            problems.append(Problem("model.augment", "numpy_mlp has no augmentation; set it to 0"))
        if self.model.dtype_policy != "float32":
            problems.append(
                Problem("model.dtype_policy", "numpy_mlp computes in NumPy; set it to float32")
            )
        if problems:
            raise SettingProblems(problems)
        return self

    def with_overrides(self, overrides: Mapping[str, Any]) -> Self:
        """A copy with dotted keys (`train.learning_rate`) replaced, validated like the file
        against the same schema."""
        tree = self.model_dump()
        for key, value in overrides.items():
            set_dotted(tree, key, value)
        return parse_params(tree, "overrides", schema=type(self))


P = TypeVar("P", bound=Params)


def parse_params(
    raw: dict[str, Any],
    source: str = "params.yaml",
    lines: Mapping[str, int] | None = None,
    schema: type[P] = Params,  # type: ignore[assignment]
) -> P:
    """Validate a params mapping against `schema` (Params, or SweepParams for the sweep's
    tools), raising a ParamsError that lists every problem (with its line in `source`, given
    the `lines` of its dotted keys)."""
    try:
        return schema.model_validate(raw)
    except ValidationError as err:
        raise invalid(source, problems_of(err), lines or {}) from None
