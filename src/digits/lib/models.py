"""The one model builder, used by `train` and the sweep: softmax regression, MLP or CNN."""

from __future__ import annotations

from typing import TYPE_CHECKING

from digits.lib.config import AugmentConfig, CNNConfig, MLPConfig, ModelConfig, TrainConfig
from digits.lib.idx import NUM_CLASSES

if TYPE_CHECKING:
    import keras

# Batches per TensorFlow call in `fit`: less Python between batches, the same updates in the
# same order (BENCHMARKS.md has the gain)
STEPS_PER_EXECUTION = 32

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


def _augment(
    x: keras.KerasTensor, cfg: AugmentConfig, image_shape: tuple[int, int]
) -> keras.KerasTensor:
    """Random rotation, shift and zoom of the images in a training batch; the identity when
    the model is evaluated or predicts. Flat in, flat out."""
    from keras import layers

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


def _mlp(x: keras.KerasTensor, cfg: MLPConfig) -> keras.KerasTensor:
    from keras import layers

    for units in cfg.units:
        x = layers.Dense(units, kernel_initializer=INITIALIZERS[cfg.activation])(x)
        if cfg.batch_norm:
            x = layers.BatchNormalization()(x)
        x = layers.Activation(cfg.activation)(x)
        if cfg.dropout:
            x = layers.Dropout(cfg.dropout)(x)
    return x


def _cnn(x: keras.KerasTensor, cfg: CNNConfig, image_shape: tuple[int, int]) -> keras.KerasTensor:
    from keras import layers

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


def build_model(cfg: ModelConfig, image_shape: tuple[int, int] = (28, 28)) -> keras.Model:
    """An uncompiled Keras model from flattened images (n, rows*cols) to class probabilities,
    its layers under `cfg.dtype_policy` (saved with the model) and Keras's global policy left
    as it was."""
    import keras

    if cfg.type == "numpy_mlp":
        raise ValueError("numpy_mlp is trained and exported by digits.lib.numpy_mlp")
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(cfg.dtype_policy)
    try:
        return _build(cfg, image_shape)
    finally:
        keras.config.set_dtype_policy(previous)


def _build(cfg: ModelConfig, image_shape: tuple[int, int]) -> keras.Model:
    import keras
    from keras import layers

    inputs = keras.Input(shape=(image_shape[0] * image_shape[1],), name="pixels")
    x = _augment(inputs, cfg.augment, image_shape) if cfg.augment.enabled else inputs
    if cfg.type == "mlp":
        x = _mlp(x, cfg.mlp)
    elif cfg.type == "cnn":
        x = _cnn(x, cfg.cnn, image_shape)
    # float32 whatever the policy: a softmax and its loss in bfloat16 lose precision
    outputs = layers.Dense(
        NUM_CLASSES, activation="softmax", name="probabilities", dtype="float32"
    )(x)
    return keras.Model(inputs, outputs, name=cfg.type)


def learning_rate(
    cfg: TrainConfig, steps_per_epoch: int
) -> float | keras.optimizers.schedules.LearningRateSchedule:
    """`train.learning_rate` held constant, or decayed to zero over all steps along a cosine,
    after a linear rise from zero over the first `train.warmup` of them (one-cycle)."""
    from keras import optimizers

    if cfg.lr_schedule == "constant":
        return cfg.learning_rate
    total = cfg.epochs * steps_per_epoch
    if not cfg.warmup:
        return optimizers.schedules.CosineDecay(cfg.learning_rate, decay_steps=total)
    warmup = max(1, round(cfg.warmup * total))
    return optimizers.schedules.CosineDecay(
        0.0, decay_steps=total - warmup, warmup_target=cfg.learning_rate, warmup_steps=warmup
    )


def make_optimizer(cfg: TrainConfig, steps_per_epoch: int) -> keras.optimizers.Optimizer:
    """The optimiser named in `train.optimizer`, at `learning_rate(cfg, steps_per_epoch)`."""
    from keras import optimizers

    lr = learning_rate(cfg, steps_per_epoch)
    match cfg.optimizer:
        case "sgd":
            return optimizers.SGD(lr)
        case "momentum":
            return optimizers.SGD(lr, momentum=cfg.momentum)
        case "rmsprop":
            return optimizers.RMSprop(lr)
        case "adagrad":
            return optimizers.Adagrad(lr)
        case "adadelta":
            return optimizers.Adadelta(lr)
        case "adam":
            return optimizers.Adam(lr, beta_1=cfg.beta_1, beta_2=cfg.beta_2)
    raise ValueError(f"unknown optimizer {cfg.optimizer!r}")


def compile_model(model: keras.Model, cfg: TrainConfig, steps_per_epoch: int) -> keras.Model:
    """Compile with cross-entropy on one-hot labels and accuracy. Keras runs
    `STEPS_PER_EXECUTION` batches per call into TensorFlow: the same updates in the same order,
    less Python between them (batch-level callbacks see every 32nd batch). The setting is saved
    with the model, so `predict` on a loaded model batches the same way."""
    import keras

    loss = "categorical_crossentropy"
    if cfg.label_smoothing:
        loss = keras.losses.CategoricalCrossentropy(label_smoothing=cfg.label_smoothing)
    model.compile(
        optimizer=make_optimizer(cfg, steps_per_epoch),
        loss=loss,
        metrics=["accuracy"],
        steps_per_execution=STEPS_PER_EXECUTION,
    )
    return model
