"""Database URLs as users type them (`postgresql://`, `postgresql+psycopg2://`, ...): checked
before Optuna, MLflow or `mlflow server` use one, so a missing driver or a server that does not
answer is a one-line error in seconds, naming host and database (never the password)."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field, replace

from digits import PipelineError
from digits.lib import secrets

# The pip package that provides each SQLAlchemy driver a user is likely to name.
DRIVER_PACKAGES = {
    "psycopg": "psycopg[binary]",
    "psycopg2": "psycopg2-binary",
    "pg8000": "pg8000",
    "asyncpg": "asyncpg",
    "pymysql": "pymysql",
    "mysqldb": "mysqlclient",
}
# Backends whose drivers take `connect_timeout` (seconds) as a connect argument.
TIMEOUT_BACKENDS = {"postgresql", "mysql"}
DEFAULT_PORTS = {"postgresql": 5432, "mysql": 3306}


class DatabaseError(PipelineError):
    """A database URL that cannot be used: malformed, its driver missing, or no server."""


def is_database_url(url: str) -> bool:
    """Whether `url` is a SQLAlchemy database URL (rather than a file path or http://)."""
    scheme = url.split("://", 1)[0] if "://" in url else ""
    return scheme.split("+", 1)[0] in {"postgresql", "postgres", "mysql", "sqlite", "mssql"}


def redact(url: str) -> str:
    """The URL without its password or secret query values, for messages, logs and tags."""
    return StorageUrl.parse(url).redacted


class StorageKind(enum.Enum):
    """What a storage or tracking URL points at."""

    SQLITE = "sqlite"
    POSTGRESQL = "postgresql"
    MYSQL = "mysql"
    DATABASE = "database"  # another SQLAlchemy backend
    HTTP = "http"  # a tracking server
    FILE = "file"  # a path: an Optuna journal file, a local MLflow folder


@dataclass(frozen=True)
class StorageUrl:
    """A storage URL parsed once, at the entry point, and passed down: its kind, a redacted
    form to show, and the original (`secret`, with its password) only for the code that
    connects. Parsing remembers the password, so `secrets.redact_text` masks it anywhere."""

    kind: StorageKind
    redacted: str
    secret: str = field(repr=False)

    def __str__(self) -> str:
        return self.redacted

    @classmethod
    def parse(cls, text: str) -> StorageUrl:
        """Parse `text` (SQLAlchemy's `make_url` for databases, `urllib.parse` otherwise)."""
        for secret in secrets.url_secrets(text):
            secrets.remember(secret)
        if is_database_url(text):
            return cls(*_parse_database(text), secret=text)
        scheme = text.split("://", 1)[0].lower() if "://" in text else ""
        kind = StorageKind.HTTP if scheme in ("http", "https") else StorageKind.FILE
        return cls(kind, secrets.redact_url(text), text)

    def with_database(self, name: str) -> StorageUrl:
        """The same server, user and password, another database (a server's auth store)."""
        from sqlalchemy.engine import make_url

        text = make_url(self.secret).set(database=name).render_as_string(hide_password=False)
        return replace(self, secret=text, redacted=_parse_database(text)[1])

    @property
    def is_path(self) -> bool:
        """A plain file path, no scheme: an Optuna journal file, a local MLflow folder."""
        return "://" not in self.secret

    @property
    def database(self) -> str | None:
        """The database name (SQLite: the file), None for a path or a server."""
        if self.kind in (StorageKind.FILE, StorageKind.HTTP):
            return None
        from sqlalchemy.engine import make_url

        return make_url(self.secret).database


def _parse_database(text: str) -> tuple[StorageKind, str]:
    """The kind and the redacted form of a SQLAlchemy URL (password and secret query values
    masked); an unparseable one shows only its scheme."""
    from sqlalchemy.engine import make_url

    try:
        parsed = make_url(text)
    except Exception:  # unparseable: show only the scheme
        return StorageKind.DATABASE, text.split("://", 1)[0] + "://..."
    secrets.remember(parsed.password)
    for key, value in parsed.query.items():
        if key.lower() in secrets.SECRET_KEYS:
            for one in [value] if isinstance(value, str) else value:
                secrets.remember(one)
    shown = secrets.redact_url(parsed.render_as_string(hide_password=True))
    backend = parsed.get_backend_name()
    kinds = {k.value: k for k in (StorageKind.SQLITE, StorageKind.POSTGRESQL, StorageKind.MYSQL)}
    return kinds.get(backend, StorageKind.DATABASE), shown


def where(url: str) -> str:
    """'database D on HOST:PORT' (SQLite: the file), for error messages."""
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        return f"SQLite file {parsed.database or ':memory:'}"
    port = parsed.port or DEFAULT_PORTS.get(parsed.get_backend_name(), "default port")
    host = f"{parsed.host or 'localhost'}:{port}"
    return f"database {parsed.database or '(none)'} on {host}"


def check_database(url: str, timeout: float = 5.0, purpose: str = "") -> None:
    """Raise DatabaseError unless `url` parses, its driver imports and the server answers a
    connection within `timeout` seconds; `purpose` says in the error what it is for."""
    from sqlalchemy import create_engine
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError, SQLAlchemyError
    from sqlalchemy.pool import NullPool

    shown = redact(url)
    try:
        parsed = make_url(url)
        dialect = parsed.get_dialect()
    except NoSuchModuleError:
        raise DatabaseError(
            f"{shown}: SQLAlchemy knows no driver {parsed.drivername!r}; write e.g. "
            "postgresql:// (psycopg 3), postgresql+psycopg2:// or postgresql+psycopg://"
        ) from None
    except (ArgumentError, ValueError) as err:
        raise DatabaseError(f"{shown}: not a database URL ({err})") from None
    driver = dialect.driver
    try:
        dialect.import_dbapi()
    except ImportError as err:
        package = DRIVER_PACKAGES.get(driver, driver)
        raise DatabaseError(
            f"{shown} needs the Python driver {driver!r}, which is not installed ({err}); "
            f"install it into the venv (.venv/bin/pip install '{package}') or use a spelling "
            "whose driver is installed (postgresql:// and postgresql+psycopg2:// are)"
        ) from None
    backend = parsed.get_backend_name()
    connect_args = (
        {"connect_timeout": max(1, round(timeout))} if backend in TIMEOUT_BACKENDS else {}
    )
    engine = create_engine(parsed, connect_args=connect_args, poolclass=NullPool)
    try:
        with engine.connect():
            pass
    except SQLAlchemyError as err:
        reason = str(getattr(err, "orig", None) or err).strip().splitlines()
        raise DatabaseError(
            f"cannot connect to {where(url)} ({shown}{', ' + purpose if purpose else ''}): "
            f"{reason[0] if reason else type(err)}; "
            "check that the server runs and accepts connections from this host, and the URL"
        ) from None
    finally:
        engine.dispose()
