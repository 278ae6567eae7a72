"""Predict the digit in image files or `.npy` batches with a trained model.

Images of any size, dark-on-light or light-on-dark, are normalised the way MNIST itself was
made (`digits.lib.images`); `.npy` batches are taken to be MNIST-format already
(`digits.lib.inputs`). The model is a local Keras file or an MLflow model
(`digits.lib.model_loading`, which also says what loads without --trust-model).
"""

from __future__ import annotations

import argparse
import io
import sys
from collections.abc import Sequence
from pathlib import Path

from digits.lib.cli import stage_main
from digits.lib.environment import Environment
from digits.lib.images import LIMITS
from digits.lib.inputs import Unreadable, iter_rows
from digits.lib.model_loading import check_model, check_trust, load_predictor
from digits.lib.predictions import predict_inputs
from digits.lib.shifts import Predictor, describe, shifted

DEFAULT_MODEL = "models/model.keras"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line; usage errors exit 2."""
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog="Example: python -m digits.tools.predict seven.png scan.jpg batch.npy "
        "--model models:/mnist-digits@champion",
    )
    parser.add_argument(
        "files",
        nargs="+",
        metavar="FILE",
        help="an image (PNG, JPEG, BMP, TIFF, GIF or WebP, told by its bytes) or a .npy batch",
    )
    parser.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help="a .keras file, an MLflow model folder or URI: runs:/<run_id>/model, "
        f"models:/<name>@<alias>, models:/<name>/<version> (default: {DEFAULT_MODEL})",
    )
    parser.add_argument(
        "--trust-model",
        action="store_true",
        help="load a model from outside the project's own places (a file or folder elsewhere, "
        "another server's URI), an MLflow model through pyfunc whatever it holds, and Keras "
        "files with safe mode off: loading can run code the model carries (pyfunc imports "
        "modules and unpickles objects), so only for a model whose maker you trust",
    )
    parser.add_argument(
        "--top", type=int, default=3, help="how many probabilities to print (1-10, default 3)"
    )
    parser.add_argument(
        "--params",
        type=Path,
        default=Path("params.yaml"),
        help="where the MLflow tracking store, the `predict:` limits and `evaluate.shifts` (the "
        "test-time shifts evaluate scored the model with) are configured",
    )
    args = parser.parse_args(argv)
    if not 1 <= args.top <= 10:
        parser.error(f"--top must be between 1 and 10, got {args.top}")
    return args


@stage_main
def main(argv: Sequence[str] | None = None) -> None:
    """CLI: `python -m digits.tools.predict FILE... [--model PATH_OR_URI] [--top 3]`: one line
    per input on stdout; exits 1 when any file could not be predicted (each named on stderr),
    2 on usage errors."""
    args = parse_args(argv)
    check_model(args.model)  # before reading any file or importing TensorFlow
    env = Environment.read()
    check_trust(args.model, args.params, args.trust_model, env=env)
    from digits.lib.config import load_params

    params = load_params(args.params) if args.params.exists() else None
    shifts = params.evaluate.shifts if params else 0
    if shifts:
        print(describe(shifts), file=sys.stderr)
    if isinstance(sys.stdout, io.TextIOWrapper):  # a name the locale cannot encode: escaped
        sys.stdout.reconfigure(errors="backslashreplace")

    def load() -> Predictor:  # with the first rows: not when no input can be read
        return shifted(load_predictor(args.model, args.params, args.trust_model, env=env), shifts)

    inputs = iter_rows(args.files, params.predict if params else LIMITS)
    failed = False
    for result in predict_inputs(load, inputs, args.top):
        if isinstance(result, Unreadable):
            print(f"error: {result}", file=sys.stderr)
            failed = True
        else:
            print(result.line())
    if failed:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
