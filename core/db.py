"""Database access: one engine per URL, sessions with commit/rollback, migrations and the "is this database
migrated?" check that the api and worker run before serving.

SQLite (embedded mode) is shared by the api and the worker processes: every connection gets WAL, foreign
keys and a busy timeout so concurrent writers wait instead of failing. The schema comes from Alembic only.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

# Alembic finds the migration scripts through the installed `core` package, wherever it is installed.
MIGRATIONS = "core:migrations"
MIGRATE_COMMAND = "papertrain migrate"
SQLITE_BUSY_TIMEOUT_MS = 30_000

# Unbound: `session_scope()` binds it to an engine; tests and the api bind their own.
SessionLocal = sessionmaker(expire_on_commit=False)


class NotMigratedError(RuntimeError):
    """The database schema is missing or older than the code: run `papertrain migrate` (or `make migrate`)."""


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
    cur.execute("PRAGMA foreign_keys = ON")
    cur.execute("PRAGMA journal_mode = WAL")
    cur.execute("PRAGMA synchronous = NORMAL")
    cur.close()


def make_engine(url: str, **kwargs: Any) -> Engine:
    """A new engine for `url`; SQLite files get their folder created and the pragmas above."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        kwargs.setdefault("connect_args", {}).setdefault("timeout", SQLITE_BUSY_TIMEOUT_MS / 1000)
        engine = create_engine(url, **kwargs)
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    kwargs.setdefault("pool_pre_ping", True)
    return create_engine(url, **kwargs)


@lru_cache(maxsize=8)
def _cached_engine(url: str) -> Engine:
    return make_engine(url)


def get_engine(url: str | None = None) -> Engine:
    """The process-wide engine for `url` (default: the settings' database_url)."""
    if url is None:
        from core.settings import get_settings

        url = get_settings().database_url
    return _cached_engine(url)


@contextmanager
def session_scope(engine: Engine | None = None) -> Iterator[Session]:
    """A session that commits when the block ends normally and rolls back if it raises."""
    session = SessionLocal(bind=engine or get_engine())
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def alembic_config(url: str | None = None) -> Any:
    """Alembic's Config for the platform's migrations (`core/migrations`), pointed at `url` when given."""
    from alembic.config import Config

    cfg = Config()  # no ini file: called from our processes, whose logging stays as it is
    cfg.attributes["configure_logger"] = False
    cfg.set_main_option("script_location", MIGRATIONS)
    if url is not None:
        cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))  # configparser interpolation
    return cfg


def migrate(url: str, revision: str = "head") -> None:
    """`alembic upgrade head` for `url` (creates a SQLite file's folder first)."""
    from alembic import command

    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database and parsed.database != ":memory:":
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    command.upgrade(alembic_config(url), revision)


def check_migrated(engine: Engine) -> None:
    """Raise `NotMigratedError` unless the database is at the migrations' head revision."""
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    expected = set(ScriptDirectory.from_config(alembic_config()).get_heads())
    try:
        with engine.connect() as conn:
            current = set(MigrationContext.configure(conn).get_current_heads())
    except Exception as exc:  # any connection failure is reported with the URL
        raise NotMigratedError(
            f"cannot read the schema version of {engine.url.render_as_string(hide_password=True)}: {exc}"
        ) from exc
    if current != expected:
        state = f"at revision {sorted(current)}" if current else "empty (no tables)"
        raise NotMigratedError(
            f"database {engine.url.render_as_string(hide_password=True)} is {state}, but this code needs "
            f"revision {sorted(expected)}: run `{MIGRATE_COMMAND}` (or `make migrate`) first"
        )
