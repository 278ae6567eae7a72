"""The `data:` and `train:` sections: the validation split, the optimiser and the fitting loop."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from digits.lib.config.fields import MAX_BATCH, MAX_EPOCHS, OptimizerName, Probability, Seed, Strict


class DataConfig(Strict):
    """The validation split carved off the training set (the test set is never used to select)."""

    val_size: int = Field(
        default=10_000,
        gt=0,
        le=100_000_000,
        description="Images carved off the training set, stratified, to validate on (the "
        "test set is never used to select).",
    )
    seed: Seed = Field(default=42, description="Seed of the split, 0 to 2**32 - 1.")


class TrainConfig(Strict):
    """The optimiser and fitting loop."""

    optimizer: OptimizerName = Field(default="adam", description="The optimiser.")
    learning_rate: float = Field(
        default=1e-3, gt=0, le=10, description="Peak learning rate (eta for numpy_mlp)."
    )
    momentum: float = Field(
        default=0.9, ge=0, lt=1, description="Used by the `momentum` optimizer only."
    )
    lr_schedule: Literal["constant", "cosine"] = Field(
        default="cosine",
        description="`constant`, or `cosine`: decays to 0 over all `epochs`.",
    )
    warmup: float = Field(
        default=0.0,
        ge=0,
        lt=1,
        description="Fraction of all steps spent raising the rate linearly from 0 before the "
        "cosine decay (a one-cycle schedule); needs `lr_schedule: cosine`.",
    )
    beta_1: float = Field(
        default=0.9, ge=0, lt=1, description="Adam's decay rate of the mean of gradients."
    )
    beta_2: float = Field(
        default=0.999, ge=0, lt=1, description="Adam's decay rate of their squares."
    )
    label_smoothing: Probability = Field(
        default=0.0, description="Label smoothing of the one-hot targets of the loss."
    )
    batch_size: int = Field(
        default=128, gt=0, le=MAX_BATCH, description="Images per gradient step."
    )
    epochs: int = Field(
        default=25, gt=0, le=MAX_EPOCHS, description="Most passes over the training set."
    )
    monitor: Literal["val/loss", "val/accuracy"] = Field(
        default="val/accuracy",
        description="The validation metric for early stopping and best-weights selection.",
    )
    patience: int = Field(
        default=10,
        ge=0,
        le=MAX_EPOCHS,
        description="Epochs without improvement of `monitor` before stopping (0: never stop "
        "early).",
    )
    seed: Seed = Field(
        default=42, description="Seed of weights, shuffling and dropout, 0 to 2**32 - 1."
    )
    repeats: int = Field(
        default=5,
        gt=0,
        le=1_000,
        description="`make repeat`: trains seeds train.seed, +1, ... as child runs (the train "
        "stage trains train.seed only).",
    )
    resume: bool = Field(
        default=True,
        description="A killed `train` stage continues after its last finished epoch.",
    )
    refit: bool = Field(
        default=False,
        description="The `train` stage fits on the training split as usual (the validation "
        "run), then trains again from scratch on training + validation images for the epochs "
        "that run selected: the refit is the model kept. The two MLflow runs name each other "
        "(tags `refit.of` and `refit.by`).",
    )

    @model_validator(mode="after")
    def _warmup_needs_cosine(self) -> TrainConfig:
        if self.warmup and self.lr_schedule != "cosine":
            raise ValueError(
                f"warmup {self.warmup} needs lr_schedule: cosine (got {self.lr_schedule!r})"
            )
        return self
