"""The `model:` section: which network family to build, each family's settings, augmentation."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from digits.lib.config.fields import (
    MAX_FILTERS,
    MAX_UNITS,
    Activation,
    KernelSize,
    Probability,
    Strict,
    Units,
)


class SoftmaxConfig(Strict):
    """Multinomial logistic regression: one dense softmax layer on the 784 pixels."""


class MLPConfig(Strict):
    """Dense hidden layers; `width` is one size for all layers or one size per layer."""

    depth: int = Field(default=2, ge=0, le=16, description="Hidden layers, 0 to 16.")
    width: Units | list[Units] = Field(
        default=512,
        description="Units of every hidden layer, or a list with one size per layer "
        f"(as many as `depth`), each 1 to {MAX_UNITS}.",
    )
    activation: Activation = Field(default="relu", description="Hidden layers' activation.")
    dropout: Probability = Field(
        default=0.3, description="Fraction of units dropped after each hidden layer (0: none)."
    )
    batch_norm: bool = Field(
        default=False, description="Batch normalisation before each hidden activation."
    )

    @model_validator(mode="after")
    def _width_matches_depth(self) -> MLPConfig:
        if isinstance(self.width, list) and len(self.width) != self.depth:
            raise ValueError(
                f"width lists {len(self.width)} layer sizes but depth is {self.depth}; "
                "give one size per hidden layer or a single int"
            )
        return self

    @property
    def units(self) -> list[int]:
        """Hidden layer sizes, first to last."""
        return list(self.width) if isinstance(self.width, list) else [self.width] * self.depth


class CNNConfig(Strict):
    """Conv blocks (each `convs_per_block` convolutions then pooling), a dense head, dropout.
    `kernel_size` is one size for every block or one per block; `padding: valid` shrinks each
    map by kernel_size - 1 (fewer FLOPs); `pool_first` pools the last convolution of a block
    before its activation (the same result for max pooling and ReLU, a quarter of the work)."""

    filters: list[Annotated[int, Field(gt=0, le=MAX_FILTERS)]] = Field(
        default=[32, 64],
        min_length=1,
        max_length=4,
        description="Filters of each conv block, one block per entry (1 to 4 blocks).",
    )
    kernel_size: KernelSize | list[KernelSize] = Field(
        default=3,
        description="Kernel side in pixels (1 to 7) for every block, or a list with one per block.",
    )
    convs_per_block: int = Field(
        default=1, ge=1, le=3, description="Convolutions in each block before its pooling."
    )
    padding: Literal["same", "valid"] = Field(
        default="same",
        description="`same` keeps each map's size; `valid` shrinks it by kernel_size - 1 "
        "(fewer FLOPs).",
    )
    pooling: Literal["max", "avg"] = Field(
        default="max", description="2x2 pooling at the end of each block."
    )
    pool_first: bool = Field(
        default=False,
        description="Pool a block's last convolution before its activation (the same result "
        "for max pooling and ReLU, a quarter of the work).",
    )
    dense: int = Field(
        default=128, ge=0, le=MAX_UNITS, description="Units of the dense head (0: none)."
    )
    activation: Activation = Field(default="relu", description="Activation of every layer.")
    dropout: Probability = Field(
        default=0.25,
        description="Fraction dropped after the flattened maps and after the dense head.",
    )
    batch_norm: bool = Field(
        default=False,
        description="Batch normalisation after each convolution (which then has no bias).",
    )

    @model_validator(mode="after")
    def _kernels_match_blocks(self) -> CNNConfig:
        if isinstance(self.kernel_size, list) and len(self.kernel_size) != len(self.filters):
            raise ValueError(
                f"kernel_size lists {len(self.kernel_size)} sizes but filters has "
                f"{len(self.filters)} blocks; give one size per block or a single int"
            )
        return self

    @property
    def kernels(self) -> list[int]:
        """Kernel size of each block, first to last."""
        k = self.kernel_size
        return list(k) if isinstance(k, list) else [k] * len(self.filters)


class NumpyMLPConfig(Strict):
    """The course notes' from-scratch network in NumPy: sigmoid layers, mini-batch SGD with
    `train.learning_rate` (eta) and `train.batch_size`; e.g. sizes [784, 30, 10]."""

    hidden: list[Units] = Field(
        default=[30],
        min_length=1,
        max_length=4,
        description="Sizes of the sigmoid hidden layers (1 to 4 of them): [30] is the "
        "network [784, 30, 10].",
    )
    cost: Literal["quadratic", "cross_entropy"] = Field(
        default="quadratic", description="The cost SGD minimises."
    )


class AugmentConfig(Strict):
    """Random distortions of each training batch (Keras preprocessing layers at the model's
    input: active in `fit` only, identity at evaluation and prediction), and elastic distortion
    of the batches themselves. All 0: off."""

    rotation: float = Field(
        default=0.0, ge=0, le=45, description="Degrees of random rotation, either way (0: off)."
    )
    shift: float = Field(
        default=0.0,
        ge=0,
        le=0.3,
        description="Random translation, a fraction of the image side on each axis (0: off).",
    )
    zoom: float = Field(
        default=0.0, ge=0, le=0.3, description="Random zoom, a fraction in or out (0: off)."
    )
    crop: int = Field(
        default=0,
        ge=0,
        le=8,
        description="Whole pixels on each axis: pad-and-crop translation, no resampling so "
        "no blur (0: off).",
    )
    elastic: float = Field(
        default=0.0,
        ge=0,
        le=60,
        description="Elastic distortion (Simard et al. 2003): the scale alpha, in pixels, of "
        "each training image's own smooth random displacement field (0: off; 34 in the paper). "
        "Applied to the training batches before the layers above, not part of the model.",
    )
    elastic_sigma: float = Field(
        default=4.0,
        ge=0,
        le=10,
        description="The smoothing of the elastic displacement field, in pixels: larger is "
        "smoother and, at one alpha, gentler (above 0 when `elastic` is on).",
    )

    @model_validator(mode="after")
    def _elastic_is_smoothed(self) -> AugmentConfig:
        if self.elastic and not self.elastic_sigma:
            raise ValueError("elastic distortion needs elastic_sigma above 0 (4 in the paper)")
        return self

    @property
    def layers(self) -> bool:
        """Whether any of the model's augmentation layers is on."""
        return bool(self.rotation or self.shift or self.zoom or self.crop)

    @property
    def enabled(self) -> bool:
        """Whether any distortion is on."""
        return self.layers or bool(self.elastic)

    @property
    def elastic_field(self) -> tuple[float, float] | None:
        """Elastic distortion's (alpha, sigma); None when it is off."""
        return (self.elastic, self.elastic_sigma) if self.elastic else None


class ModelConfig(Strict):
    """Which family to build, the settings of each family, and training-time augmentation."""

    type: Literal["softmax", "mlp", "cnn", "numpy_mlp"] = Field(
        default="mlp", description="The network family to build; its section below applies."
    )
    softmax: SoftmaxConfig = Field(
        default=SoftmaxConfig(), description="Multinomial logistic regression: nothing to set."
    )
    mlp: MLPConfig = Field(default=MLPConfig(), description="Dense hidden layers.")
    cnn: CNNConfig = Field(
        default=CNNConfig(), description="Conv blocks, then a dense head, with dropout."
    )
    numpy_mlp: NumpyMLPConfig = Field(
        default=NumpyMLPConfig(),
        description="The notes' from-scratch NumPy network; needs `train.optimizer: sgd`.",
    )
    augment: AugmentConfig = Field(
        default=AugmentConfig(),
        description="Random distortions of training images only (all 0: off).",
    )
    dtype_policy: Literal["float32", "mixed_bfloat16"] = Field(
        default="float32",
        description="Keras dtype policy of every layer but the float32 softmax output; "
        "`mixed_bfloat16` computes in bfloat16 with float32 weights (faster CNNs on CPUs "
        "with AVX512-BF16 or AMX).",
    )
