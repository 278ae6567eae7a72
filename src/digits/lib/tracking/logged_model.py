"""The model a run logs: Keras flavour, loadable as pyfunc, with signature and input example."""

from __future__ import annotations

import contextlib
import io
import os
from typing import TYPE_CHECKING, Any

import mlflow
import numpy as np

if TYPE_CHECKING:
    import keras
    from mlflow.models.signature import ModelSignature


class _KerasFlavor:
    """`mlflow.keras` with its model folder created first: with an input example, MLflow 3.17's
    keras `save_model` writes the example before making the folder (mlflow/mlflow#16183)."""

    @staticmethod
    def save_model(path: str, validate_serving_input: bool = True, **kwargs: Any) -> None:
        # `validate_serving_input` is `Model.log`'s own option, which it passes on to the
        # flavor; `mlflow.keras.save_model` does not take it
        os.makedirs(path, exist_ok=True)
        mlflow.keras.save_model(path=path, **kwargs)


def model_signature(model: keras.Model, x_sample: np.ndarray) -> ModelSignature:
    """The signature `infer_signature(x_sample, model.predict(x_sample))` gives, read from the
    model's declared output instead: a first `predict` traces a graph (0.1-0.5 s) for nothing."""
    from mlflow.models.signature import ModelSignature
    from mlflow.types.schema import Schema, TensorSpec

    output = model.outputs[0]
    return ModelSignature(
        inputs=Schema([TensorSpec(x_sample.dtype, (-1, *x_sample.shape[1:]))]),
        outputs=Schema([TensorSpec(np.dtype(output.dtype), (-1, *output.shape[1:]))]),
    )


def log_keras_model(model: keras.Model, x_sample: Any, name: str = "model") -> str:
    """Log the model (Keras flavour, loadable as pyfunc) with signature and input example;
    returns its model URI. The requirements are the running Keras and TensorFlow, given rather
    than inferred (MLflow's inference reloads the model in a subprocess). MLflow does not reload
    the model to serve the input example either: the model is
    always a Keras model of one of our builders, and `tests/test_pipeline.py` serves the logged
    example through pyfunc. Nor does it predict for the signature (`model_signature`)."""
    import keras
    import tensorflow as tf
    from mlflow.models import Model

    signature = model_signature(model, x_sample)
    # MLflow checks the input example with a bare `predict`: its progress bar is not ours
    with contextlib.redirect_stdout(io.StringIO()):
        info = Model.log(
            artifact_path=None,
            name=name,
            flavor=_KerasFlavor,
            flavor_name="keras",
            model=model,
            signature=signature,
            input_example=x_sample[:2],
            pip_requirements=[f"keras=={keras.__version__}", f"tensorflow=={tf.__version__}"],
            validate_serving_input=False,
        )
    return info.model_uri
