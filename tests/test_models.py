"""The model builder: every family, activation and optimizer builds, trains a step, and predicts
probabilities; training on learnable data lowers the loss."""

from __future__ import annotations

import numpy as np
import pytest

from digits.lib.config import parse_params, set_dotted
from digits.lib.data import Split
from digits.stages.preprocess import one_hot, to_features

from helpers import real_params, synthetic_digits

keras = pytest.importorskip("keras")

from digits.lib.models import (  # noqa: E402
    STEPS_PER_EXECUTION,
    build_model,
    compile_model,
    learning_rate,
    make_optimizer,
)
from digits.lib.training import fit  # noqa: E402

X = np.random.default_rng(0).random((32, 784), dtype=np.float32)
Y = one_hot(np.arange(32) % 10)


def params_with(**sections):
    raw = real_params()
    for section, values in sections.items():
        for key, value in values.items():
            set_dotted(raw, f"{section}.{key}", value)
    return parse_params(raw)


def check(params) -> keras.Model:
    model = compile_model(build_model(params.model), params.train, steps_per_epoch=1)
    model.fit(X, Y, epochs=1, batch_size=16, verbose=0)
    probabilities = model.predict(X[:4], verbose=0)
    assert probabilities.shape == (4, 10)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1, rtol=1e-5)
    return model


def test_softmax_is_one_dense_layer() -> None:
    model = check(params_with(model={"type": "softmax"}))
    assert model.count_params() == 784 * 10 + 10


@pytest.mark.parametrize("activation", ["relu", "tanh", "sigmoid", "elu", "selu", "gelu", "swish"])
def test_mlp_activations(activation: str) -> None:
    model = check(params_with(model={"type": "mlp", "mlp.activation": activation, "mlp.width": 16}))
    used = {layer.activation.__name__ for layer in model.layers if hasattr(layer, "activation")}
    assert {"swish": "silu"}.get(activation, activation) in used, used  # keras: swish is silu


def test_mlp_layer_sizes_and_batch_norm() -> None:
    model = check(
        params_with(
            model={
                "type": "mlp",
                "mlp.depth": 4,
                "mlp.width": [20, 10, 6, 3],
                "mlp.batch_norm": True,
                "mlp.dropout": 0.25,
            }
        )
    )
    dense = [layer.units for layer in model.layers if isinstance(layer, keras.layers.Dense)]
    assert dense == [20, 10, 6, 3, 10]
    assert sum(isinstance(layer, keras.layers.BatchNormalization) for layer in model.layers) == 4
    assert sum(isinstance(layer, keras.layers.Dropout) for layer in model.layers) == 4


def test_cnn_reshapes_flat_input() -> None:
    model = check(
        params_with(
            model={
                "type": "cnn",
                "cnn.filters": [4, 8],
                "cnn.dense": 16,
                "cnn.convs_per_block": 2,
                "cnn.batch_norm": True,
                "cnn.pooling": "avg",
            }
        )
    )
    assert model.input_shape == (None, 784)
    assert sum(isinstance(layer, keras.layers.Conv2D) for layer in model.layers) == 4


def test_mixed_bfloat16_computes_in_bfloat16_and_learns(tmp_path) -> None:
    images, labels = synthetic_digits(400, seed=3)
    train = Split(to_features(images[:300]), one_hot(labels[:300]), np.arange(300))
    val = Split(to_features(images[300:]), one_hot(labels[300:]), np.arange(300, 400))
    params = params_with(
        model={
            "type": "cnn",
            "cnn.filters": [8],
            "cnn.dense": 32,
            "dtype_policy": "mixed_bfloat16",
        },
        train={"epochs": 4, "batch_size": 32},
    )
    model, history = fit(params.model, params.train, train, val)
    conv = next(layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D))
    assert (conv.compute_dtype, conv.variable_dtype) == ("bfloat16", "float32")
    assert model.get_layer("probabilities").compute_dtype == "float32"
    assert keras.config.dtype_policy().name == "float32"  # the global policy is left alone
    assert history["val/accuracy"].iloc[-1] > 0.9  # float32: 1.0; chance is 0.1

    model.save(tmp_path / "model.keras")
    loaded = keras.saving.load_model(tmp_path / "model.keras")
    assert loaded.get_layer(conv.name).compute_dtype == "bfloat16"
    np.testing.assert_array_equal(loaded.predict(val.x, verbose=0), model.predict(val.x, verbose=0))


@pytest.mark.parametrize("optimizer", ["sgd", "momentum", "rmsprop", "adagrad", "adadelta", "adam"])
def test_optimizers(optimizer: str) -> None:
    params = params_with(model={"mlp.width": 8}, train={"optimizer": optimizer})
    model = check(params)
    expected = {
        "sgd": "SGD",
        "momentum": "SGD",
        "rmsprop": "RMSprop",
        "adagrad": "Adagrad",
        "adadelta": "Adadelta",
        "adam": "Adam",
    }[optimizer]
    assert type(model.optimizer).__name__ == expected
    if optimizer == "momentum":
        assert model.optimizer.momentum == pytest.approx(params.train.momentum)


def test_fit_learns_and_reports_history() -> None:
    images, labels = synthetic_digits(400, seed=3)
    train = Split(to_features(images[:300]), one_hot(labels[:300]), np.arange(300))
    val = Split(to_features(images[300:]), one_hot(labels[300:]), np.arange(300, 400))
    params = params_with(
        model={"mlp.width": 32, "mlp.depth": 1},
        train={"epochs": 3, "batch_size": 32, "lr_schedule": "cosine"},
    )
    _, history = fit(params.model, params.train, train, val)
    assert list(history.columns) == [
        "epoch",
        "train/accuracy",
        "train/loss",
        "val/accuracy",
        "val/loss",
    ]
    assert history["epoch"].tolist() == [1, 2, 3]
    assert history["train/loss"].iloc[-1] < history["train/loss"].iloc[0]
    assert history["val/accuracy"].iloc[-1] > 0.5  # chance is 0.1


def test_many_steps_per_execution_train_exactly_like_one() -> None:
    """The builder's compile runs 32 batches per TensorFlow call; the weights (dropout's random
    masks included) end the same as with Keras's default of one."""
    images, labels = synthetic_digits(400, seed=3)
    x, y = to_features(images), one_hot(labels)
    params = params_with(
        model={"mlp.width": 32, "mlp.depth": 2, "mlp.dropout": 0.3},
        train={"epochs": 2, "batch_size": 8},  # 50 batches: one full execution and a remainder
    )
    weights = []
    for steps in (STEPS_PER_EXECUTION, 1):
        keras.utils.set_random_seed(0)
        model = build_model(params.model)
        if steps == 1:
            optimizer = make_optimizer(params.train, steps_per_epoch=50)
            model.compile(optimizer, "categorical_crossentropy", metrics=["accuracy"])
        else:
            compile_model(model, params.train, steps_per_epoch=50)
        assert model.steps_per_execution == steps
        model.fit(x, y, epochs=2, batch_size=8, verbose=0)
        weights.append(model.get_weights())
    for ours, default in zip(*weights, strict=True):
        np.testing.assert_allclose(ours, default, rtol=1e-5, atol=1e-6)


def test_nan_loss_stops_training_with_a_clear_error() -> None:
    from digits.lib.training import TrainingDiverged

    y = Y.copy()
    y[5, 3] = np.nan  # one poisoned label makes the first batch's loss NaN
    data = Split(X, y, np.arange(32))
    params = params_with(model={"mlp.width": 8, "mlp.depth": 1}, train={"epochs": 3})
    with pytest.raises(TrainingDiverged, match="loss became nan in epoch 1"):
        fit(params.model, params.train, data, Split(X, Y, np.arange(32)), verbose=0)


@pytest.mark.parametrize(
    "model",
    [
        {"type": "softmax"},
        {"type": "mlp", "mlp.depth": 3, "mlp.width": [100, 60, 30], "mlp.batch_norm": True},
        {"type": "mlp", "mlp.depth": 0},
        {"type": "cnn"},
        {
            "type": "cnn",
            "cnn.filters": [8, 16, 32, 64],
            "cnn.convs_per_block": 2,
            "cnn.batch_norm": True,
            "cnn.kernel_size": 5,
            "cnn.dense": 0,
        },
        {"type": "cnn", "cnn.filters": [16, 32], "cnn.dense": 7, "augment.rotation": 5},
        {
            "type": "cnn",
            "cnn.filters": [24, 32],
            "cnn.kernel_size": [5, 3],
            "cnn.padding": "valid",
            "cnn.pool_first": True,
            "cnn.convs_per_block": 2,
            "cnn.dense": 256,
        },
    ],
)
def test_parameter_estimate_is_exact(model: dict) -> None:
    """The count that refuses a network too big (before TensorFlow) is Keras's own count."""
    from digits.lib.architecture import count_params

    params = params_with(model=model)
    assert count_params(params.model) == build_model(params.model).count_params()


def test_speed_options_build_the_fast_cnn_and_learn() -> None:
    """Issue 15's options: per-block kernels, valid padding, pooling before the activation,
    pad-and-crop translation, Adam's betas, warm-up then cosine (one-cycle), label smoothing."""
    images, labels = synthetic_digits(400, seed=5)
    train = Split(to_features(images[:300]), one_hot(labels[:300]), np.arange(300))
    val = Split(to_features(images[300:]), one_hot(labels[300:]), np.arange(300, 400))
    params = params_with(
        model={
            "type": "cnn",
            "cnn.filters": [8, 16],
            "cnn.kernel_size": [5, 3],
            "cnn.padding": "valid",
            "cnn.pool_first": True,
            "cnn.dense": 32,
            "cnn.dropout": 0.0,
            "augment.crop": 2,
        },
        train={
            "epochs": 4,
            "batch_size": 32,
            "learning_rate": 0.01,
            "beta_1": 0.7,
            "beta_2": 0.9,
            "warmup": 0.25,
            "label_smoothing": 0.1,
        },
    )
    model, history = fit(params.model, params.train, train, val)
    convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    assert [c.kernel_size for c in convs] == [(5, 5), (3, 3)]
    # valid: 28 -5+1 = 24, pool 12, -3+1 = 10, pool 5
    assert convs[1].output.shape[1:] == (10, 10, 16)
    names = [type(layer).__name__ for layer in model.layers]
    assert names.index("MaxPooling2D") < names.index("Activation")  # pooled, then ReLU
    assert "RandomTranslation" in names
    assert (model.optimizer.beta_1, model.optimizer.beta_2) == (0.7, 0.9)
    assert model.loss.get_config()["label_smoothing"] == pytest.approx(0.1)
    assert history["train/loss"].iloc[-1] < history["train/loss"].iloc[0]
    assert history["val/accuracy"].iloc[-1] > 0.9  # chance is 0.1


def test_warmup_rises_linearly_then_decays_along_a_cosine() -> None:
    params = params_with(train={"epochs": 10, "learning_rate": 0.01, "warmup": 0.2})
    schedule = learning_rate(params.train, steps_per_epoch=10)  # 100 steps
    lr = [float(schedule(step)) for step in (0, 10, 20, 60, 100)]
    assert lr[0] == pytest.approx(0.0)
    assert lr[1] == pytest.approx(0.005)  # half-way up
    assert lr[2] == pytest.approx(0.01)  # the peak at 20% of the steps
    assert lr[3] == pytest.approx(0.005, rel=1e-3)  # half-way down the cosine
    assert lr[4] == pytest.approx(0.0, abs=1e-9)


def test_pool_first_gives_the_same_outputs_as_pooling_after_relu() -> None:
    """Max pooling and ReLU commute: pooling first does a quarter of the activations' work and
    changes nothing."""
    cnn = {"type": "cnn", "cnn.filters": [4], "cnn.dense": 0, "cnn.dropout": 0.0}
    after = build_model(params_with(model=cnn).model)
    first = build_model(params_with(model={**cnn, "cnn.pool_first": True}).model)
    first.set_weights(after.get_weights())
    np.testing.assert_allclose(first.predict(X, verbose=0), after.predict(X, verbose=0), rtol=1e-6)
