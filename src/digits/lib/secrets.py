"""Passwords and tokens (an Optuna storage, an MLflow tracking server or its backend store, a
tracking user's password) never printed, logged or recorded.

Secrets reach child processes through the environment or 0600 files, never a command line (which
`ps` shows and `make` echoes). Redaction works two ways: every secret this process knows (from
the environment, or remembered when a URL is parsed) is masked wherever it appears, in any
spelling (raw or percent-encoded); and any other URL in a text is parsed (`urllib.parse`) and its
password, a token used as its whole user-info, and secret query values are masked.
"""

from __future__ import annotations

import logging
import os
import stat
import sys
import traceback
import warnings
from pathlib import Path
from urllib.parse import quote, quote_plus, unquote, urlsplit, urlunsplit

MASK = "***"
# query keys whose values are secrets (SQLAlchemy's and libpq's, tokens)
SECRET_KEYS = {
    "password", "passwd", "pwd", "sslpassword", "token", "secret", "api_key", "access_token",
}  # fmt: skip
# schemes where user-info without a password is itself the secret (`https://TOKEN@host`)
TOKEN_SCHEMES = {"http", "https"}
# variables that hold a URL with a password, or a password
URL_VARIABLES = (
    "OPTUNA_STORAGE", "MLFLOW_TRACKING_URI", "MLFLOW_BACKEND_STORE_URI",
    "SERVER_DB", "SERVER_AUTH_DB",
)  # fmt: skip
PASSWORD_VARIABLES = (
    "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN", "MLFLOW_AUTH_ADMIN_PASSWORD", "PGPASSWORD",
)  # fmt: skip
TRAILING = set(",;:.)]}'\"")
SCHEME_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789+.-")

_known: set[str] = set()


def remember(secret: str | None) -> None:
    """Mask `secret` from now on in everything `redact_text` sees, raw and percent-encoded."""
    if not secret or len(secret) < 4:  # a two-letter "password" would mask half of every line
        return
    _known.update({secret, quote(secret, safe=""), quote_plus(secret), quote(secret)})


def url_secrets(url: str) -> list[str]:
    """The secrets in `url`: its password (decoded and as written), or a token user-info."""
    try:
        parts = urlsplit(url.strip())
    except ValueError:
        return []
    userinfo, at, _ = parts.netloc.rpartition("@")
    if not at:
        return []
    user, colon, password = userinfo.partition(":")
    if colon:
        return [password, unquote(password)]
    return [user, unquote(user)] if parts.scheme in TOKEN_SCHEMES else []


def remember_environment(environ: os._Environ | dict[str, str] = os.environ) -> None:
    """Remember the secrets held by the variables this project reads."""
    for name in URL_VARIABLES:
        for secret in url_secrets(environ.get(name, "")):
            remember(secret)
    for name in PASSWORD_VARIABLES:
        remember(environ.get(name))


def redact_url(url: str) -> str:
    """`url` with its password, token user-info and secret query values masked (a path, or
    anything with none of them, is returned as it is)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return url.split("://", 1)[0] + "://..."
    netloc = parts.netloc
    userinfo, at, host = netloc.rpartition("@")
    if at:
        user, colon, _ = userinfo.partition(":")
        if colon:
            netloc = f"{user}:{MASK}@{host}"
        elif parts.scheme.lower() in TOKEN_SCHEMES:
            netloc = f"{MASK}@{host}"
    query = "&".join(
        f"{key}={MASK}" if key.lower() in SECRET_KEYS else item
        for item in parts.query.split("&")
        for key in [item.split("=", 1)[0]]
    )
    if (netloc, query) == (parts.netloc, parts.query):
        return url
    return urlunsplit(parts._replace(netloc=netloc, query=query))


def _redact_urls(text: str) -> str:
    """Every `scheme://...` token of `text` (up to white space, less trailing punctuation)
    through `redact_url`."""
    out, start = [], 0
    while (mark := text.find("://", start)) != -1:
        begin = mark
        while begin > start and text[begin - 1] in SCHEME_CHARS:
            begin -= 1
        end = mark + 3
        while end < len(text) and not text[end].isspace():
            end += 1
        while end > mark + 3 and text[end - 1] in TRAILING:  # prose around the URL
            end -= 1
        out.append(text[start:begin])
        out.append(redact_url(text[begin:end]) if begin < mark else text[begin:end])
        start = end
    out.append(text[start:])
    return "".join(out)


def redact_text(text: str) -> str:
    """`text` with every known secret and every password inside a URL replaced by `***`."""
    for secret in sorted(_known, key=len, reverse=True):
        text = text.replace(secret, MASK)
    return _redact_urls(text)


def redact_logging() -> None:
    """Protect this process's output, once: remember the environment's secrets; redact every
    log record (whatever logger or handler emits it, Optuna's own included: records are made
    with their message redacted), every warning and every uncaught exception's traceback."""
    remember_environment()
    sys.excepthook = _redacted_excepthook
    warnings.showwarning = _redacted_showwarning
    factory = logging.getLogRecordFactory()
    if getattr(factory, "redacting", False):
        return

    def make_record(*args, **kwargs) -> logging.LogRecord:
        record = factory(*args, **kwargs)
        message = record.getMessage()
        redacted = redact_text(message)
        if redacted != message:
            record.msg, record.args = redacted, ()
        if record.exc_info and not record.exc_text:
            record.exc_text = redact_text("".join(traceback.format_exception(*record.exc_info)))
            record.exc_text = record.exc_text.rstrip("\n")
            record.exc_info = None
        return record

    make_record.redacting = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(make_record)


def _redacted_excepthook(kind, value, tb) -> None:
    """sys.excepthook: the usual traceback, secrets masked."""
    sys.stderr.write(redact_text("".join(traceback.format_exception(kind, value, tb))))


def _redacted_showwarning(message, category, filename, lineno, file=None, line=None) -> None:
    """warnings.showwarning: the usual line, secrets masked."""
    text = warnings.formatwarning(message, category, filename, lineno, line)
    (file or sys.stderr).write(redact_text(text))


def read_private_file(path: Path) -> str:
    """The contents of a file holding a secret, refused when others may read it (a password
    file must be mode 0600, like ~/.ssh's keys)."""
    from digits import PipelineError

    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as err:
        raise PipelineError(f"{path}: cannot read it ({err.strerror})") from None
    with os.fdopen(fd) as f:
        mode = os.fstat(f.fileno()).st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise PipelineError(
                f"{path} holds a secret but others may read it (mode {stat.S_IMODE(mode):04o}); "
                f"run: chmod 600 {path}"
            )
        text = f.read()
    remember(text.strip())
    return text


def write_private_file(path: Path, text: str) -> None:
    """Create `path` with `text`, readable by its owner only from the start (0600): never
    a moment when others could read it. Refuses to overwrite."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)
