"""The default model of params.yaml trained by plain Keras: no DVC, MLflow or project code.

It takes one name from the project, the Keras name of `train.monitor` (`digits.lib.vocab`,
which imports nothing), so metric names are translated in one place.

The yardstick of `make bench` (overhead): the same arrays, model, optimizer, callbacks, epochs,
batch size and batches per call into TensorFlow as the train stage, so the wall-time difference
is what the pipeline adds, its fresh order of batches each epoch included (plain Keras repeats one
order, so the two validation accuracies differ slightly). Only the MLP family is reproduced here.

    python bench/bare_keras.py --params params.yaml --data data/processed --out /tmp/bare.keras
"""

import argparse
import json
import math
import time

import keras
import numpy as np
import yaml

from digits.lib.vocab import keras_name

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--params", default="params.yaml")
parser.add_argument("--data", default="data/processed")
parser.add_argument("--out", required=True)
args = parser.parse_args()

with open(args.params) as f:
    params = yaml.safe_load(f)
mlp, train = params["model"]["mlp"], params["train"]
assert params["model"]["type"] == "mlp" and not mlp["batch_norm"], "only a plain MLP"
assert train["optimizer"] == "adam" and train["lr_schedule"] == "cosine", "only Adam + cosine"
init = {"relu": "he_normal", "tanh": "glorot_uniform", "sigmoid": "glorot_uniform"}

arrays = {s: np.load(f"{args.data}/{s}.npz") for s in ("train", "val")}
(x, y), (x_val, y_val) = [(arrays[s]["x"], arrays[s]["y"]) for s in ("train", "val")]

keras.utils.set_random_seed(train["seed"])
widths = mlp["width"] if isinstance(mlp["width"], list) else [mlp["width"]] * mlp["depth"]
model = keras.Sequential([keras.Input((x.shape[1],))])
for width in widths:
    model.add(keras.layers.Dense(width, kernel_initializer=init[mlp["activation"]]))
    model.add(keras.layers.Activation(mlp["activation"]))
    if mlp["dropout"]:
        model.add(keras.layers.Dropout(mlp["dropout"]))
model.add(keras.layers.Dense(10, activation="softmax"))
steps = math.ceil(len(x) / train["batch_size"])
schedule = keras.optimizers.schedules.CosineDecay(train["learning_rate"], train["epochs"] * steps)
model.compile(
    keras.optimizers.Adam(schedule),
    "categorical_crossentropy",
    metrics=["accuracy"],
    steps_per_execution=32,  # as the pipeline's compile (digits.lib.models.STEPS_PER_EXECUTION)
)
monitor = keras_name(train["monitor"])
callbacks = [keras.callbacks.TerminateOnNaN()]
if train["patience"]:
    callbacks.append(
        keras.callbacks.EarlyStopping(
            monitor, patience=train["patience"], restore_best_weights=True
        )
    )

started = time.perf_counter()
history = model.fit(
    x,
    y,
    validation_data=(x_val, y_val),
    epochs=train["epochs"],
    batch_size=train["batch_size"],
    callbacks=callbacks,
    verbose=2,
)
seconds = time.perf_counter() - started
val_loss, val_accuracy = model.evaluate(x_val, y_val, batch_size=1024, verbose=0)
model.save(args.out)
print(
    json.dumps({"fit_seconds": seconds, "epochs": len(history.epoch), "val_accuracy": val_accuracy})
)
