"""The networks' layers, written once against a `layers` namespace.

`models.build_model` runs them with `keras.layers` to build the model; `count_params` runs
the same code with shape-tracking stand-ins, so the schema can refuse a network too big to
train in well under a second, before TensorFlow loads, and the count cannot drift from the
builder."""

from __future__ import annotations

import math
from dataclasses import dataclass
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from digits.lib.config import AugmentConfig, CNNConfig, MLPConfig, ModelConfig

# He initialisation suits the ReLU family; SELU needs LeCun normal to self-normalise.
INITIALIZERS = {
    "relu": "he_normal",
    "elu": "he_normal",
    "gelu": "he_normal",
    "swish": "he_normal",
    "selu": "lecun_normal",
    "tanh": "glorot_uniform",
    "sigmoid": "glorot_uniform",
}


def network(
    x: Any, cfg: ModelConfig, image_shape: tuple[int, int], layers: Any, classes: int
) -> Any:
    """The layers from flattened images `x` to class probabilities: augmentation (training
    only), the family's hidden layers, a float32 softmax."""
    x = _augment(x, cfg.augment, image_shape, layers) if cfg.augment.layers else x
    if cfg.type == "mlp":
        x = _mlp(x, cfg.mlp, layers)
    elif cfg.type == "cnn":
        x = _cnn(x, cfg.cnn, image_shape, layers)
    elif cfg.type == "numpy_mlp":  # what `numpy_mlp.to_keras` exports
        for units in cfg.numpy_mlp.hidden:
            x = layers.Dense(units, activation="sigmoid")(x)
    # float32 whatever the policy: a softmax and its loss in bfloat16 lose precision
    return layers.Dense(classes, activation="softmax", name="probabilities", dtype="float32")(x)


def _augment(x: Any, cfg: AugmentConfig, image_shape: tuple[int, int], layers: Any) -> Any:
    """Random rotation, shift and zoom of the images in a training batch; the identity when
    the model is evaluated or predicts. Flat in, flat out."""
    x = layers.Reshape((*image_shape, 1))(x)
    if cfg.crop:
        # nearest-neighbour sampling of a random shift: a whole-pixel translation, the same as
        # padding by `crop` and cropping back at random, drawn per image
        side = cfg.crop / image_shape[0], cfg.crop / image_shape[1]
        x = layers.RandomTranslation(*side, fill_mode="constant", interpolation="nearest")(x)
    if cfg.rotation:
        x = layers.RandomRotation(cfg.rotation / 360, fill_mode="constant")(x)
    if cfg.shift:
        x = layers.RandomTranslation(cfg.shift, cfg.shift, fill_mode="constant")(x)
    if cfg.zoom:
        x = layers.RandomZoom(cfg.zoom, fill_mode="constant")(x)
    return layers.Flatten()(x)


def _mlp(x: Any, cfg: MLPConfig, layers: Any) -> Any:
    for units in cfg.units:
        x = layers.Dense(units, kernel_initializer=INITIALIZERS[cfg.activation])(x)
        if cfg.batch_norm:
            x = layers.BatchNormalization()(x)
        x = layers.Activation(cfg.activation)(x)
        if cfg.dropout:
            x = layers.Dropout(cfg.dropout)(x)
    return x


def _cnn(x: Any, cfg: CNNConfig, image_shape: tuple[int, int], layers: Any) -> Any:
    x = layers.Reshape((*image_shape, 1))(x)
    pool = layers.MaxPooling2D if cfg.pooling == "max" else layers.AveragePooling2D
    init = INITIALIZERS[cfg.activation]
    for filters, kernel in zip(cfg.filters, cfg.kernels, strict=True):
        for i in range(cfg.convs_per_block):
            x = layers.Conv2D(
                filters,
                kernel,
                padding=cfg.padding,
                kernel_initializer=init,
                use_bias=not cfg.batch_norm,
            )(x)
            if cfg.batch_norm:
                x = layers.BatchNormalization()(x)
            last = i == cfg.convs_per_block - 1
            if last and cfg.pool_first:
                x = pool(2)(x)
            x = layers.Activation(cfg.activation)(x)
        if not cfg.pool_first:
            x = pool(2)(x)
    x = layers.Flatten()(x)
    if cfg.dropout:
        x = layers.Dropout(cfg.dropout)(x)
    if cfg.dense:
        x = layers.Dense(cfg.dense, activation=cfg.activation, kernel_initializer=init)(x)
        if cfg.dropout:
            x = layers.Dropout(cfg.dropout)(x)
    return x


# --- counting: Keras' layer semantics for shapes and weights, nothing else -----------------


@dataclass(frozen=True)
class Counted:
    """A stand-in tensor: its shape without the batch axis, and the weights of every layer
    it has passed through."""

    shape: tuple[int, ...]
    params: int = 0


class _ShrunkToNothing(Exception):
    """A layer's output has a side below one pixel."""


class _Layer:
    """A layer without weights that keeps the shape (activation, dropout, random distortion)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args, self.kwargs = args, kwargs

    def __call__(self, x: Counted) -> Counted:
        shape, params = self.apply(x.shape)
        if min(shape) < 1:
            raise _ShrunkToNothing
        return Counted(shape, x.params + params)

    def apply(self, shape: tuple[int, ...]) -> tuple[tuple[int, ...], int]:
        return shape, 0


class _Dense(_Layer):
    def apply(self, shape: tuple[int, ...]) -> tuple[tuple[int, ...], int]:
        units = self.args[0]
        return (*shape[:-1], units), shape[-1] * units + units


class _BatchNormalization(_Layer):
    def apply(self, shape: tuple[int, ...]) -> tuple[tuple[int, ...], int]:
        return shape, 4 * shape[-1]  # gamma, beta, moving mean and variance


class _Conv2D(_Layer):
    def apply(self, shape: tuple[int, ...]) -> tuple[tuple[int, ...], int]:
        filters, kernel = self.args
        rows, cols, channels = shape
        if self.kwargs.get("padding", "valid") == "valid":
            rows, cols = rows - kernel + 1, cols - kernel + 1
        bias = filters if self.kwargs.get("use_bias", True) else 0
        return (rows, cols, filters), kernel * kernel * channels * filters + bias


class _Pooling2D(_Layer):
    def apply(self, shape: tuple[int, ...]) -> tuple[tuple[int, ...], int]:
        size = self.args[0]
        return (shape[0] // size, shape[1] // size, shape[2]), 0


class _Reshape(_Layer):
    def apply(self, shape: tuple[int, ...]) -> tuple[tuple[int, ...], int]:
        return tuple(self.args[0]), 0


class _Flatten(_Layer):
    def apply(self, shape: tuple[int, ...]) -> tuple[tuple[int, ...], int]:
        return (math.prod(shape),), 0


COUNTING_LAYERS = SimpleNamespace(
    Activation=_Layer,
    AveragePooling2D=_Pooling2D,
    BatchNormalization=_BatchNormalization,
    Conv2D=_Conv2D,
    Dense=_Dense,
    Dropout=_Layer,
    Flatten=_Flatten,
    MaxPooling2D=_Pooling2D,
    RandomRotation=_Layer,
    RandomTranslation=_Layer,
    RandomZoom=_Layer,
    Reshape=_Reshape,
)


def count_params(
    cfg: ModelConfig, image_shape: tuple[int, int] = (28, 28), classes: int = 10
) -> int:
    """The parameter count of the network `network` builds (for numpy_mlp: its Keras export),
    weights, biases and batch-norm statistics included, without TensorFlow. A ValueError says
    when the images shrink to nothing on the way."""
    try:
        out = network(
            Counted((image_shape[0] * image_shape[1],)), cfg, image_shape, COUNTING_LAYERS, classes
        )
    except _ShrunkToNothing:
        cnn = cfg.cnn
        raise ValueError(
            f"the {image_shape[0]}x{image_shape[1]} images shrink to nothing "
            f"by block {len(cnn.filters)} of kernels {cnn.kernels} "
            f"(padding {cnn.padding}); use fewer blocks, smaller kernels or padding: same"
        ) from None
    return out.params


def training_bytes(n_params: int) -> int:
    """Memory to train `n_params` float32 weights with Adam: weights, gradients, two moments."""
    return 16 * n_params
