"""The one model builder, used by `train` and the sweep: softmax regression, MLP or CNN (their
layers are described in `digits.lib.architecture`), and the optimiser that trains them."""

from __future__ import annotations

from typing import TYPE_CHECKING

from digits.lib.architecture import network
from digits.lib.idx import NUM_CLASSES

if TYPE_CHECKING:
    import keras

    from digits.lib.config import ModelConfig, TrainConfig

# Batches per TensorFlow call in `fit`: less Python between batches, the same updates in the
# same order (measured in `git show 07e2d4a:BENCHMARKS.md`)
STEPS_PER_EXECUTION = 32


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

    inputs = keras.Input(shape=(image_shape[0] * image_shape[1],), name="pixels")
    outputs = network(inputs, cfg, image_shape, keras.layers, NUM_CLASSES)
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
