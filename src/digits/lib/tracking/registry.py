"""The model registry: every evaluated model becomes a version, and the champion alias moves
only to a better one."""

from __future__ import annotations

from dataclasses import dataclass

import mlflow

from digits.lib.config import MLflowConfig


@dataclass(frozen=True)
class Registration:
    """A model version registered by `evaluate`, and whether it took the champion alias."""

    name: str
    version: str
    alias: str
    champion: bool
    previous: str | None  # the champion version before, if any
    previous_accuracy: float | None


def beats(accuracy: float, champion_accuracy: float | None) -> bool:
    """Whether a new model takes the alias: strictly better test accuracy, or no champion yet."""
    return champion_accuracy is None or accuracy > champion_accuracy


def register(model_uri: str, accuracy: float, cfg: MLflowConfig) -> Registration:
    """Register a logged model (`models:/m-...` or `runs:/<id>/model`) as a new version of
    `cfg.registered_model` and move the `cfg.champion_alias` alias to it only when it beats
    the current champion's test accuracy."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient()
    previous = previous_accuracy = None
    try:
        current = client.get_model_version_by_alias(cfg.registered_model, cfg.champion_alias)
    except MlflowException:  # no registered model yet, or no version holds the alias
        current = None
    if current is not None:
        previous = str(current.version)
        if "test_accuracy" in current.tags:
            previous_accuracy = float(current.tags["test_accuracy"])
        elif current.run_id:
            previous_accuracy = client.get_run(current.run_id).data.metrics.get("test/accuracy")
    version = mlflow.register_model(
        model_uri, cfg.registered_model, tags={"test_accuracy": str(accuracy)}
    )
    champion = beats(accuracy, previous_accuracy)
    if champion:
        client.set_registered_model_alias(
            cfg.registered_model, cfg.champion_alias, str(version.version)
        )
    return Registration(
        cfg.registered_model,
        str(version.version),
        cfg.champion_alias,
        champion,
        previous,
        previous_accuracy,
    )


def registration_line(reg: Registration, accuracy: float) -> str:
    """What happened in the registry, in one sentence."""
    head = f"registered {reg.name} version {reg.version}"
    uri = f"models:/{reg.name}@{reg.alias}"
    if reg.previous is None:
        return f"{head}: the first {reg.alias} ({uri})"
    before = f"version {reg.previous}"
    if reg.previous_accuracy is not None:
        before += f" at {reg.previous_accuracy:.4f}"
    if reg.champion:
        return f"{head}: the new {reg.alias} ({uri}), beating {before}"
    return f"{head}: {accuracy:.4f} does not beat the {reg.alias}, {before}; alias unchanged"
