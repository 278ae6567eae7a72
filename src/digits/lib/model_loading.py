"""Loading the model `predict` uses, and what may be loaded without `--trust-model`.

Loading a model can run code it carries: MLflow's pyfunc imports modules and unpickles objects,
and a Keras Lambda layer holds Python bytecode. So, unless the user trusts the model:
- a `.keras` file must lie inside the project and loads with Keras's `safe_mode`;
- an MLflow model (`runs:/`, `models:/` of the project's stores, or a folder inside the project)
  must be a plain Keras model as `mlflow.keras` writes it (the project's own are): its `MLmodel`
  is read first, alone, and nothing else is fetched unless it lists only the Keras flavour
  (with pyfunc's `mlflow.keras` loader) and no code, pickle or custom loader; its `.keras` file
  then loads with `safe_mode`, never through pyfunc;
- anything else (another server's URI, `s3://`, ...) is refused.
"""

from __future__ import annotations

import contextlib
import re
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from digits import PipelineError
from digits.lib.environment import Environment
from digits.lib.inputs import display_name
from digits.lib.shifts import Predictor, keras_predictor

URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+:")  # runs:/..., models:/..., s3://...; not C:\
KERAS_LOADER = "mlflow.keras"  # the pyfunc loader `mlflow.keras` writes into MLmodel
KERAS_FILE = "model.keras"  # in the flavour's data folder
KERAS_FIELDS = {"data", "keras_version", "keras_backend", "save_exported_model"}
PYFUNC_FIELDS = {"loader_module", "data", "env", "python_version", "streamable"}
PICKLES = {".pkl", ".pickle", ".cloudpickle", ".joblib", ".dill"}
TRUST_HINT = (
    "Pass --trust-model (make predict TRUST=1) if you trust whoever made it, or use the "
    "project's own: models/model.keras, runs:/<id>/model, models:/<name>@<alias>"
)


def is_model_uri(model: str) -> bool:
    """True for an MLflow model URI (`runs:/...`, `models:/...`, `s3://...`), False for a path."""
    return bool(URI.match(model))


def check_model(model: str) -> None:
    """Fail early, with the way out, when `model` is a path to nothing (URIs are not checked)."""
    if not is_model_uri(model) and not Path(model).exists():
        raise PipelineError(
            f"{display_name(model)}: no such model file. Train one with `make repro`, or pass "
            "--model with a .keras file or an MLflow model URI (runs:/<run_id>/model, "
            "models:/<name>@<alias>)"
        )


def untrusted_reason(model: str, root: Path) -> str | None:
    """Why `model` is not from the project's own places (None when it is): a `.keras` file or an
    MLflow model folder inside the project `root`, or a `runs:/` or `models:/` URI of the
    project's tracking store and registry. What an MLflow model holds is checked on loading."""
    if is_model_uri(model):
        scheme, _, rest = model.partition(":")
        if scheme.lower() in ("runs", "models") and not rest.startswith("//"):
            return None  # resolved against the project's tracking store and registry
        return "a model URI outside the project's tracking store and registry"
    path = Path(model).resolve()  # symlinks followed: a link in the project to outside is outside
    if not path.is_relative_to(root.resolve()):
        kind = "folder" if path.is_dir() else "file"
        return f"a {kind} outside the project ({root})"
    return None


def check_trust(model: str, params: Path, trust: bool, *, env: Environment) -> None:
    """Refuse a model from outside the project's own places unless the user said --trust-model."""
    reason = untrusted_reason(model, env.project_root(params))
    if reason and not trust:
        raise PipelineError(
            f"{display_name(model)}: refused: {reason}. Loading a model can run code it carries "
            "(MLflow's pyfunc imports modules and unpickles objects; a Keras Lambda layer holds "
            f"Python bytecode). {TRUST_HINT}"
        )


def unsafe_contents(mlmodel: Mapping[str, Any]) -> str | None:
    """What in an MLmodel would import or unpickle code on loading, e.g. `flavours
    python_function (loader mlflow.pyfunc.model, python_model.pkl, code paths: code)`; None for a
    plain Keras model as `mlflow.keras` writes it."""
    flavours = mlmodel.get("flavors")
    if not isinstance(flavours, Mapping) or not flavours:
        return "no flavours"
    parts, unsafe = [], "keras" not in flavours
    for name, conf in flavours.items():
        conf = conf if isinstance(conf, Mapping) else {}
        if name == "keras":
            details = _keras_details(conf)
        elif name == "python_function":
            details = _pyfunc_details(conf)
        else:
            details = ["a flavour predict does not load safely"]
        unsafe = unsafe or bool(details)
        parts.append(f"{name} ({', '.join(details)})" if details else str(name))
    return f"flavours {', '.join(parts)}" if unsafe else None


def _keras_details(conf: Mapping[str, Any]) -> list[str]:
    """What makes a keras flavour more than a `.keras` file in a data folder."""
    details = []
    if conf.get("save_exported_model"):
        details.append("a TensorFlow SavedModel export")
    data = str(conf.get("data", ""))
    if not data or Path(data).is_absolute() or ".." in Path(data).parts:
        details.append(f"data path {data!r}")
    details += [f"field {key}" for key in sorted(set(conf) - KERAS_FIELDS)]
    return details


def _pyfunc_details(conf: Mapping[str, Any]) -> list[str]:
    """What in a python_function flavour is not `mlflow.keras`'s own loader."""
    details = []
    if conf.get("loader_module") != KERAS_LOADER:
        details.append(f"loader {conf.get('loader_module')}")
    if "python_model" in conf:
        details.append(str(conf["python_model"]))
    elif "cloudpickle_version" in conf:
        details.append("cloudpickle")
    if conf.get("code"):
        details.append(f"code paths: {conf['code']}")
    named = {"python_model", "cloudpickle_version", "code"}
    details += [f"field {key}" for key in sorted(set(conf) - PYFUNC_FIELDS - named)]
    return details


def pickles_in(folder: Path) -> list[str]:
    """The pickles and code a downloaded model folder carries, as paths relative to it."""
    return [
        p.relative_to(folder).as_posix()
        for p in sorted(folder.rglob("*"))
        if p.suffix.lower() in PICKLES or (p.is_dir() and p.name == "code")
    ]


def load_keras(path: Path, trust: bool = False, name: str | None = None) -> Predictor:
    """A `.keras` file's predict; `safe_mode` stays on (no deserialised code, e.g. Lambda
    layers) unless the model is trusted. `name` is what error messages call it."""
    import keras

    name = display_name(name or str(path))
    try:
        keras_model = keras.saving.load_model(path, safe_mode=not trust)
    except (ValueError, OSError, TypeError) as err:
        if not trust and ("safe_mode" in str(err) or "Lambda" in str(err)):
            raise PipelineError(
                f"{name}: refused: the model holds Python code (a Lambda layer, or another "
                "object Keras will only deserialise with safe_mode off), which would run "
                "on loading. If you trust whoever made it, pass --trust-model (make predict "
                "TRUST=1); otherwise ask for a model without Lambda layers"
            ) from None
        raise PipelineError(f"{name}: cannot load as a Keras model ({err})") from None
    return keras_predictor(keras_model)


def load_predictor(
    model: str, params: Path = Path("params.yaml"), trust: bool = False, *, env: Environment
) -> Predictor:
    """A function from (n, 784) float32 rows to (n, classes) probabilities.

    `model` is a Keras file, a folder holding an MLflow model (an `MLmodel` file), or an MLflow
    model URI, resolved against the stores the stages use: $MLFLOW_TRACKING_URI, else
    `mlflow.tracking_uri` of `params` anchored at the project root, and $MLFLOW_REGISTRY_URI
    (else the tracking store) for `models:/`. The caller checks where it comes from
    (`check_trust`); `trust` loads MLflow models through pyfunc and turns Keras's safe mode
    off."""
    if is_model_uri(model):
        where = _connect(params, env, registry=model.lower().startswith("models:"))
        return _load_mlflow_model(model, where, trust)
    check_model(model)
    path = Path(model)
    if path.is_dir():
        if not (path / "MLmodel").is_file():
            raise PipelineError(
                f"{display_name(model)}: a folder without an MLmodel file (not an MLflow model)"
            )
        return _load_mlflow_model(str(path), str(path), trust)
    return load_keras(path, trust)


def _connect(params: Path, env: Environment, registry: bool) -> str:
    """Point MLflow at the project's tracking store (and check it, and for `models:/` the
    registry, answers); returns where the model is looked up, for messages."""
    import mlflow

    from digits.lib.config import MLflowConfig, load_params
    from digits.lib.tracking.store import TrackingError, check_reachable, tracking_uri

    # with the store named by the environment, no params.yaml is needed
    cfg = load_params(params).mlflow if params.exists() or not env.tracking_uri else MLflowConfig()
    uri = tracking_uri(cfg, env.project_root(params), env)
    check_reachable(uri)
    mlflow.set_tracking_uri(uri)
    if not registry:
        return f"tracking store {uri}"
    registry_uri = mlflow.get_registry_uri()  # $MLFLOW_REGISTRY_URI, else the tracking store
    try:
        check_reachable(registry_uri)
    except TrackingError as err:
        raise PipelineError(f"model registry: {err}") from None
    return f"model registry {registry_uri}"


def _load_mlflow_model(model_uri: str, where: str, trust: bool) -> Predictor:
    """An MLflow model's predict: through pyfunc when trusted, else its `.keras` file in safe
    mode once its MLmodel shows a plain Keras model (before anything else is fetched)."""
    if trust:
        return _pyfunc_predictor(model_uri, where)
    with tempfile.TemporaryDirectory(prefix="predict-model-") as tmp:
        local = Path(tmp)
        mlmodel = _fetch(f"{model_uri.rstrip('/')}/MLmodel", local / "mlmodel", model_uri, where)
        manifest = _read_mlmodel(mlmodel, model_uri)
        held = unsafe_contents(manifest)
        folder = local / "model"
        if held is None:
            folder = _fetch(model_uri, folder, model_uri, where)
            found = pickles_in(folder)
            held = f"files {', '.join(found)}" if found else None
        if held:
            raise PipelineError(
                f"{display_name(model_uri)}: refused: it holds {held}, code that loading it "
                "through MLflow would import or unpickle; predict loads only plain Keras models. "
                f"{TRUST_HINT}"
            )
        keras_file = folder / str(manifest["flavors"]["keras"]["data"]) / KERAS_FILE
        return load_keras(keras_file, name=model_uri)


def _fetch(uri: str, dst: Path, model_uri: str, where: str) -> Path:
    """A model's file or folder on local disk: a local path as it is, else downloaded to `dst`
    (`model_uri` and `where` name the model and its store in errors)."""
    if not is_model_uri(uri):
        return Path(uri)
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        with contextlib.redirect_stdout(sys.stderr):
            return Path(mlflow.artifacts.download_artifacts(uri, dst_path=str(dst)))
    except (MlflowException, OSError) as err:
        message = getattr(err, "message", None) or str(err)
        raise PipelineError(
            f"{display_name(model_uri)}: cannot load the model from {where} ({message})"
        ) from None


def _read_mlmodel(path: Path, model_uri: str) -> Mapping[str, Any]:
    """An MLmodel file's YAML as a mapping."""
    import yaml

    try:
        manifest = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        raise PipelineError(f"{display_name(model_uri)}: unreadable MLmodel file ({err})") from None
    if not isinstance(manifest, Mapping):
        raise PipelineError(
            f"{display_name(model_uri)}: unreadable MLmodel file (not a YAML mapping)"
        )
    return manifest


def _pyfunc_predictor(model_uri: str, where: str) -> Predictor:
    """An MLflow pyfunc model's predict, its output (array or DataFrame) as a numpy array."""
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        with contextlib.redirect_stdout(sys.stderr):
            pyfunc = mlflow.pyfunc.load_model(model_uri)
    except (MlflowException, OSError) as err:
        message = getattr(err, "message", None) or str(err)
        raise PipelineError(
            f"{display_name(model_uri)}: cannot load the model from {where} ({message})"
        ) from None
    except Exception as err:  # a trusted model's own loader may raise anything
        message = f"its loader raised {type(err).__name__}: {err}"
        raise PipelineError(
            f"{display_name(model_uri)}: cannot load the model from {where} ({message})"
        ) from None

    def predict(x: np.ndarray) -> np.ndarray:
        with contextlib.redirect_stdout(sys.stderr):  # e.g. Keras' progress bar: stdout is ours
            output = pyfunc.predict(x)
        return np.asarray(output.to_numpy() if hasattr(output, "to_numpy") else output)

    return predict
