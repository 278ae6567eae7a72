"""digits: a reproducible MNIST pipeline (DVC stages, Keras 3, MLflow, Optuna)."""


class PipelineError(Exception):
    """A problem the user can fix (bad params, bad data, a source down): no traceback needed."""
