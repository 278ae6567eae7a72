"""keras-io's `mnist_convnet` example, as published, on the pipeline's split: the yardstick of
`python -m digits.tools.bench speed` (no DVC, MLflow or project code).

The example's model (conv 32 3x3, pool, conv 64 3x3, pool, dropout 0.5, softmax), Adam, batch
128, up to 15 epochs, trained on the same 50,000 training images. It reports the fit seconds
until the first epoch whose weights reach `--target` test accuracy: the test set is read only
to time this yardstick, never to choose anything of ours.

    python bench/keras_convnet.py --data data/processed [--target 0.99]
"""

import argparse
import json
import time

import keras
import numpy as np

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--data", default="data/processed")
parser.add_argument("--target", type=float, default=0.99, help="test accuracy to reach")
parser.add_argument("--epochs", type=int, default=15, help="the example's 15")
parser.add_argument("--seed", type=int, default=42)
args = parser.parse_args()

arrays = {s: np.load(f"{args.data}/{s}.npz") for s in ("train", "val", "test")}
x, y = arrays["train"]["x"].reshape(-1, 28, 28, 1), arrays["train"]["y"]
x_val, y_val = arrays["val"]["x"].reshape(-1, 28, 28, 1), arrays["val"]["y"]
x_test, y_test = arrays["test"]["x"].reshape(-1, 28, 28, 1), arrays["test"]["y"]

keras.utils.set_random_seed(args.seed)
model = keras.Sequential(
    [
        keras.Input(shape=(28, 28, 1)),
        keras.layers.Conv2D(32, kernel_size=(3, 3), activation="relu"),
        keras.layers.MaxPooling2D(pool_size=(2, 2)),
        keras.layers.Conv2D(64, kernel_size=(3, 3), activation="relu"),
        keras.layers.MaxPooling2D(pool_size=(2, 2)),
        keras.layers.Flatten(),
        keras.layers.Dropout(0.5),
        keras.layers.Dense(10, activation="softmax"),
    ]
)
model.compile(loss="categorical_crossentropy", optimizer="adam", metrics=["accuracy"])

fit_seconds, epochs = 0.0, []
for epoch in range(1, args.epochs + 1):
    started = time.perf_counter()
    # the example validates on a held-out tenth; here, on the pipeline's validation split
    model.fit(x, y, batch_size=128, epochs=1, validation_data=(x_val, y_val), verbose=0)
    fit_seconds += time.perf_counter() - started
    test = model.evaluate(x_test, y_test, batch_size=1024, verbose=0)[1]
    epochs.append({"epoch": epoch, "fit_seconds": round(fit_seconds, 2), "test_accuracy": test})
    print(json.dumps(epochs[-1]), flush=True)
    if test >= args.target:
        break
reached = epochs[-1]["test_accuracy"] >= args.target
print(json.dumps({"seconds_to_target": fit_seconds if reached else None, "epochs": epochs}))
