"""Production-shaped services for the integration tests: a throwaway PostgreSQL database and a free Redis
database number, both removed afterwards. Skips (with the reason) when the services do not answer."""

from __future__ import annotations

import secrets
import sys
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "worker"))  # worker_testkit

PG_SERVER = "postgresql+psycopg://postgres@127.0.0.1:5432"
PG_ADMIN_DB = "test"
REDIS_SERVER = "redis://127.0.0.1:6379"
REDIS_LOCK_KEY = "papertrain-tests:lock"


def _pg_admin():
    import psycopg

    return psycopg.connect(
        PG_SERVER.replace("+psycopg", "") + f"/{PG_ADMIN_DB}", autocommit=True, connect_timeout=3
    )


@contextmanager
def throwaway_database() -> Iterator[str]:
    """A new, empty PostgreSQL database (its SQLAlchemy URL), dropped afterwards."""
    try:
        admin = _pg_admin()
    except Exception as exc:
        pytest.skip(f"PostgreSQL does not answer at {PG_SERVER}/{PG_ADMIN_DB}: {exc}")
    name = f"papertrain_it_{secrets.token_hex(4)}"
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"{PG_SERVER}/{name}"
    finally:
        with _pg_admin() as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def pg_url() -> Iterator[str]:
    with throwaway_database() as url:
        yield url


@pytest.fixture(scope="module")
def pg_databases() -> Iterator[Callable[[], str]]:
    """`pg_databases()` makes one more throwaway database per call (all dropped after the test module)."""
    with ExitStack() as stack:
        yield lambda: stack.enter_context(throwaway_database())


@pytest.fixture
def redis_url() -> Iterator[str]:
    import redis

    try:
        redis.Redis.from_url(f"{REDIS_SERVER}/0", socket_connect_timeout=3).ping()
    except Exception as exc:
        pytest.skip(f"Redis does not answer at {REDIS_SERVER}: {exc}")
    # An empty database that no other test run holds: Celery's queue keys ("cpu", ...) must not be shared.
    for number in range(15, 0, -1):
        client = redis.Redis.from_url(f"{REDIS_SERVER}/{number}")
        if client.dbsize() == 0 and client.set(REDIS_LOCK_KEY, "1", nx=True, ex=3600):
            break
    else:
        pytest.skip("no empty Redis database (1-15) is free for this test run")
    try:
        yield f"{REDIS_SERVER}/{number}"
    finally:
        client.flushdb()  # it was empty when we took it
