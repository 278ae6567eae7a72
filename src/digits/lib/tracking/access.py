"""Who may do what on a tracking server with MLflow's basic-auth app: a 401 (no or wrong
credentials) or 403 (the user lacks a permission) becomes one `error:` line that says what to set
or whom to ask, instead of MLflow's RestException and its traceback.

`stage_main` (every stage and tool) turns an uncaught 401/403 into that line; code that knows
what it was doing wraps its calls with `explain_denied(uri, action)`; evaluate asks
`is_permission_denied(err)` to log its metrics and say in one line why it did not register.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterator
from pathlib import Path

from digits import PipelineError

UNAUTHENTICATED = "UNAUTHENTICATED"  # HTTP 401
PERMISSION_DENIED = "PERMISSION_DENIED"  # HTTP 403
CREDENTIALS_FILE = Path("~/.mlflow/credentials")
ADMIN_TOOL = "python -m digits.tools.server user add NAME --role reader|logger|registrar"


class AccessError(PipelineError):
    """The tracking server refused this user: no credentials, wrong ones, or no permission."""


def _status(err: BaseException) -> int | None:
    """The HTTP status of an MLflow RestException (None for anything else)."""
    code = getattr(err, "error_code", None)
    if code == UNAUTHENTICATED:
        return 401
    if code == PERMISSION_DENIED:
        return 403
    return None


def is_unauthenticated(err: BaseException) -> bool:
    """Whether `err` is the server's 401: no credentials, or wrong ones."""
    return _status(err) == 401


def is_permission_denied(err: BaseException) -> bool:
    """Whether `err` is the server's 403: the user is known but lacks the permission."""
    return _status(err) == 403


def current_user() -> str | None:
    """The user name MLflow sends ($MLFLOW_TRACKING_USERNAME, else ~/.mlflow/credentials)."""
    from mlflow.utils.credentials import read_mlflow_creds

    return read_mlflow_creds().username


def endpoint_of(err: BaseException) -> str | None:
    """The REST endpoint a RestException names ('runs/create'), if it names one."""
    words = str(err).split()
    for i, word in enumerate(words[:-1]):
        if word == "endpoint" and "/mlflow/" in words[i + 1]:
            return words[i + 1].split("/mlflow/", 1)[1]
    return None


def denied_message(
    err: BaseException, uri: str | None = None, action: str | None = None
) -> str | None:
    """The one line a user needs for a 401/403 while doing `action` (else the endpoint the
    error names) on server `uri` (else $MLFLOW_TRACKING_URI); None when `err` is neither."""
    status = _status(err)
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI", "(MLFLOW_TRACKING_URI)")
    action = action or f"call {endpoint_of(err) or 'this API'}"
    if status == 401:
        return (
            f"the tracking server {uri} did not accept your credentials (to {action}): set "
            "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (or [mlflow] "
            "mlflow_tracking_username/mlflow_tracking_password in ~/.mlflow/credentials, mode "
            f"0600) to your account; the server's admin creates one with `{ADMIN_TOOL}`"
        )
    if status == 403:
        user = current_user() or "(unknown user)"
        return (
            f"user {user!r} may not {action} on the tracking server {uri}: ask its admin to "
            f"grant the role that allows it (`{ADMIN_TOOL}`: reader reads, logger logs runs, "
            "registrar also registers models and moves aliases)"
        )
    return None


@contextlib.contextmanager
def explain_denied(uri: str, action: str) -> Iterator[None]:
    """Turn a 401/403 raised in the block into an AccessError with its one-line message."""
    try:
        yield
    except Exception as err:
        message = denied_message(err, uri, action)
        if message is None:
            raise
        raise AccessError(message) from None


def check_credentials_file(path: Path = CREDENTIALS_FILE) -> None:
    """Refuse ~/.mlflow/credentials when others may read it (it holds a password)."""
    path = path.expanduser()
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise AccessError(
            f"{path} holds your tracking password but others may read it "
            f"(mode {stat.S_IMODE(mode):04o}); run: chmod 600 {path}"
        )
