"""Passwords in URLs (an Optuna storage, an MLflow tracking server) never printed or logged.

A storage or tracking URL may carry `user:password@`. It reaches child processes through the
environment ($OPTUNA_STORAGE, $MLFLOW_TRACKING_URI), never a command line (which `ps` shows
and `make` echoes), and every line the project prints, logs or records passes `redact_text`.
"""

from __future__ import annotations

import logging
import re

MASK = "***"
# scheme://user:password@host: the password runs to the last `@` before the path, so a raw `@`
# inside it is masked too
_USERINFO = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^:/?#@\s]*):(?P<password>[^/?#\s]*)@")
# ?password=... and the like in a query string (e.g. SQLAlchemy's, or a token)
_QUERY = re.compile(
    r"(?i)(?P<head>[?&;](?:password|passwd|pwd|token|secret|api_key|access_token)=)[^&;#\s]*"
)


def redact_text(text: str) -> str:
    """`text` with every password inside a URL replaced by `***` (the user name is kept)."""
    text = _USERINFO.sub(lambda m: f"{m['head']}:{MASK}@", text)
    return _QUERY.sub(lambda m: f"{m['head']}{MASK}", text)


def redact_url(url: str) -> str:
    """A URL without its password (a path, with none, is returned as it is)."""
    return redact_text(url)


def redact_logging() -> None:
    """Redact every log record of this process, whatever logger or handler emits it (Optuna's
    own handler included): records are made with their message already redacted. Once."""
    factory = logging.getLogRecordFactory()
    if getattr(factory, "redacting", False):
        return

    def make_record(*args, **kwargs) -> logging.LogRecord:
        record = factory(*args, **kwargs)
        message = record.getMessage()
        redacted = redact_text(message)
        if redacted != message:
            record.msg, record.args = redacted, ()
        return record

    make_record.redacting = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(make_record)
