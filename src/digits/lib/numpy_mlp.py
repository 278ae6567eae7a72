"""The course notes' from-scratch network: sigmoid layers trained by mini-batch SGD and
backpropagation in plain NumPy (vectorised over the mini-batch), the tracked baseline
`model.type: numpy_mlp`.

Trained here, it is handed to the rest of the pipeline as a Keras model with the same weights
(`to_keras`): evaluation, prediction, MLflow and serving then treat it like any other model. The
exported output layer reads the trained pre-activations through softmax instead of sigmoid, so
the predicted labels are identical and the outputs are probabilities that sum to one.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from digits.lib.config import NumpyMLPConfig, TrainConfig
from digits.lib.vocab import is_better, keras_name

if TYPE_CHECKING:
    import keras

    from digits.lib.data import Split


def sigmoid(z: np.ndarray) -> np.ndarray:
    """The logistic function, without overflow warnings for large negative inputs."""
    return 0.5 * (1.0 + np.tanh(0.5 * z))


@dataclass
class Network:
    """Layer sizes, e.g. [784, 30, 10]; weights[l] has shape (sizes[l], sizes[l+1]) so a batch
    of row vectors X goes forward as sigmoid(X @ W + b)."""

    sizes: list[int]
    weights: list[np.ndarray] = field(default_factory=list)
    biases: list[np.ndarray] = field(default_factory=list)

    @classmethod
    def initialised(cls, sizes: Sequence[int], rng: np.random.Generator) -> Network:
        """Gaussian weights and biases, N(0, 1), as in the notes' network."""
        pairs = list(itertools.pairwise(sizes))
        return cls(
            list(sizes),
            [rng.standard_normal((n_in, n_out)) for n_in, n_out in pairs],
            [rng.standard_normal(n_out) for _, n_out in pairs],
        )

    def forward(self, x: np.ndarray) -> list[np.ndarray]:
        """The activations of every layer, input first, for a batch of rows."""
        activations = [x]
        for w, b in zip(self.weights, self.biases, strict=True):
            activations.append(sigmoid(activations[-1] @ w + b))
        return activations

    def predict(self, x: np.ndarray, batch: int = 10_000) -> np.ndarray:
        """Output-layer activations (n, 10)."""
        return np.concatenate([self.forward(x[i : i + batch])[-1] for i in range(0, len(x), batch)])

    def copy(self) -> Network:
        """An independent copy of the parameters."""
        return Network(
            self.sizes, [w.copy() for w in self.weights], [b.copy() for b in self.biases]
        )


def cost(output: np.ndarray, y: np.ndarray, kind: str) -> float:
    """Mean per-example cost: quadratic 0.5 * ||a - y||^2, or cross-entropy summed over the
    sigmoid outputs."""
    if kind == "quadratic":
        return float(0.5 * ((output - y) ** 2).sum(axis=1).mean())
    a = np.clip(output, 1e-12, 1 - 1e-12)
    return float(-(y * np.log(a) + (1 - y) * np.log(1 - a)).sum(axis=1).mean())


def gradients(
    net: Network, x: np.ndarray, y: np.ndarray, kind: str
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Backpropagation: the gradient of the mini-batch's mean cost for every weight and bias."""
    activations = net.forward(x)
    output = activations[-1]
    delta = output - y  # cross-entropy with sigmoid outputs: the sigmoid' factor cancels
    if kind == "quadratic":
        delta = delta * output * (1 - output)
    grad_w: list[np.ndarray] = [np.empty(0)] * len(net.weights)
    grad_b: list[np.ndarray] = [np.empty(0)] * len(net.biases)
    for layer in range(len(net.weights) - 1, -1, -1):
        grad_w[layer] = activations[layer].T @ delta / len(x)
        grad_b[layer] = delta.mean(axis=0)
        if layer:
            a = activations[layer]
            delta = (delta @ net.weights[layer].T) * a * (1 - a)
    return grad_w, grad_b


def sgd_epoch(
    net: Network,
    x: np.ndarray,
    y: np.ndarray,
    eta: float,
    batch_size: int,
    kind: str,
    rng: np.random.Generator,
    after_batch: Callable[[int], None] = lambda batch: None,
) -> None:
    """One pass over shuffled mini-batches, each step `w -= eta * mean gradient`."""
    order = rng.permutation(len(x))
    for batch, start in enumerate(range(0, len(x), batch_size)):
        rows = order[start : start + batch_size]
        grad_w, grad_b = gradients(net, x[rows], y[rows], kind)
        for w, b, gw, gb in zip(net.weights, net.biases, grad_w, grad_b, strict=True):
            w -= eta * gw
            b -= eta * gb
        after_batch(batch)


def epoch_logs(net: Network, train: Split, val: Split, kind: str) -> dict[str, float]:
    """Keras-named metrics of one epoch (loss is the configured cost)."""
    logs = {}
    for prefix, split in (("", train), ("val_", val)):
        output = net.predict(split.x)
        logs[f"{prefix}loss"] = cost(output, split.y, kind)
        logs[f"{prefix}accuracy"] = float((output.argmax(1) == split.y.argmax(1)).mean())
    return logs


def to_keras(net: Network) -> keras.Model:
    """The network as a Keras model with the same weights (softmax read-out, same labels)."""
    import keras
    from keras import layers

    inputs = keras.Input(shape=(net.sizes[0],), name="pixels")
    x = inputs
    for units in net.sizes[1:-1]:
        x = layers.Dense(units, activation="sigmoid")(x)
    outputs = layers.Dense(net.sizes[-1], activation="softmax", name="probabilities")(x)
    model = keras.Model(inputs, outputs, name="numpy_mlp")
    model.set_weights([p for pair in zip(net.weights, net.biases, strict=True) for p in pair])
    model.compile(optimizer="sgd", loss="categorical_crossentropy", metrics=["accuracy"])
    return model


def fit(
    cfg: NumpyMLPConfig,
    train_cfg: TrainConfig,
    train: Split,
    val: Split,
    callbacks: Sequence[keras.callbacks.Callback] = (),
    verbose: int = 0,
) -> tuple[keras.Model, list[dict[str, float]]]:
    """Train with mini-batch SGD (`train.learning_rate` = eta, `train.batch_size`,
    `train.epochs`, `train.seed`), early stopping on `train.monitor` like the Keras models;
    Keras callbacks get the epoch and batch events. Returns the Keras export and the per-epoch
    logs (Keras names)."""
    rng = np.random.default_rng(train_cfg.seed)
    net = Network.initialised([train.x.shape[1], *cfg.hidden, train.y.shape[1]], rng)
    model = to_keras(net)
    for callback in callbacks:
        callback.set_model(model)
    monitor = keras_name(train_cfg.monitor)
    best: tuple[float, Network] | None = None
    waited = 0
    history: list[dict[str, float]] = []

    def after_batch(batch: int) -> None:
        for callback in callbacks:
            callback.on_train_batch_end(batch)

    x, y = train.x.astype(np.float64), train.y.astype(np.float64)
    for epoch in range(train_cfg.epochs):
        sgd_epoch(
            net, x, y, train_cfg.learning_rate, train_cfg.batch_size, cfg.cost, rng, after_batch
        )
        logs = epoch_logs(net, train, val, cfg.cost)
        history.append(logs)
        if verbose:
            print(
                f"epoch {epoch + 1}/{train_cfg.epochs}: "
                + ", ".join(f"{k} {v:.4f}" for k, v in logs.items()),
                flush=True,
            )
        if not math.isfinite(logs["loss"]):
            break  # like Keras' TerminateOnNaN: the caller reports the divergence
        model.set_weights([p for pair in zip(net.weights, net.biases, strict=True) for p in pair])
        for callback in callbacks:
            callback.on_epoch_end(epoch, dict(logs))
        if best is None or is_better(train_cfg.monitor, logs[monitor], best[0]):
            best, waited = (logs[monitor], net.copy()), 0
        else:
            waited += 1
        if model.stop_training or (train_cfg.patience and waited >= train_cfg.patience):
            break
    if train_cfg.patience and best is not None:
        net = best[1]
    return to_keras(net), history
