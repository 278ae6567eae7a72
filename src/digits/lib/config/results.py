"""The `mlflow:`, `evaluate:` and `predict:` sections: where runs go, and how a trained model
turns images into predictions."""

from __future__ import annotations

from pydantic import Field

from digits.lib.config.fields import Strict


class EvaluateConfig(Strict):
    """How `evaluate` and `predict` turn a trained model into predictions."""

    shifts: int = Field(
        default=0,
        ge=0,
        le=2,
        description="Test-time shifts: each image is also predicted moved by every whole-pixel "
        "offset up to this far along each axis ((2n + 1)^2 views), probabilities averaged "
        "(0: off).",
    )


class PredictConfig(Strict):
    """Limits on each file given to `predict`, checked before it is decoded: every input is
    treated as hostile (a decompression bomb, a `.npy` header that lies)."""

    max_bytes: int = Field(
        default=100_000_000, gt=0, le=2**40, description="Bytes per file, image or `.npy`."
    )
    max_pixels: int = Field(
        default=50_000_000,
        gt=0,
        le=2**40,
        description="Width x height of an image (Pillow's own warning starts at 89 M).",
    )


class MLflowConfig(Strict):
    """Where runs go when MLFLOW_TRACKING_URI is not set."""

    experiment: str = Field(default="mnist", min_length=1, description="The experiment's name.")
    tracking_uri: str = Field(
        default="sqlite:///mlflow.db",
        description="The tracking store, used when $MLFLOW_TRACKING_URI is not set.",
    )
    artifact_location: str = Field(
        default="mlartifacts",
        description="Where a new experiment keeps its artifacts (a folder or URL).",
    )
    registered_model: str = Field(
        default="mnist-digits",
        min_length=1,
        description="`evaluate` registers every model as a new version of this name.",
    )
    champion_alias: str = Field(
        default="champion",
        pattern=r"^[a-zA-Z_][a-zA-Z0-9_-]*$",
        description="The alias moved to a version only when it beats the champion on the same "
        "test images.",
    )
    significance: float = Field(
        default=0.05,
        gt=0,
        lt=1,
        description="Level of McNemar's exact test on paired test predictions a challenger "
        "must beat to take the alias.",
    )
