"""`make dashboard`: optuna-dashboard on the sweep's storage.

The storage comes from $OPTUNA_STORAGE (`make dashboard STORAGE=...` puts it there) or
`sweep.storage`, and is handed to optuna-dashboard in this process: a URL with a password never
sits on a command line, where `ps` and `make` would show it.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from digits.lib.cli import stage_main
from digits.lib.config import ParamsError, load_params
from digits.lib.config.sweep import SweepParams


@stage_main
def main(argv: Sequence[str] | None = None) -> None:
    """CLI: `python -m digits.tools.dashboard [--port 8080] [--host 127.0.0.1]`."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, default=Path("params.yaml"), help="params file")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=8080, help="port to listen on")
    args = parser.parse_args(argv)
    params = load_params(args.params, SweepParams)
    if params.sweep is None:
        raise ParamsError(f"{args.params}: no `sweep:` section; see docs/sweeps.md")
    import optuna_dashboard

    from digits.lib.environment import Environment
    from digits.tools.sweep.study import open_storage, repair_storage, storage_url

    url = storage_url(params.sweep, Environment.read().project_root(args.params))
    repair_storage(url)
    print(f"optuna-dashboard on {url.redacted}: http://{args.host}:{args.port}")
    optuna_dashboard.run_server(open_storage(url, params.sweep.heartbeat), args.host, args.port)


if __name__ == "__main__":
    main()
