"""`alembic upgrade head` builds exactly the schema the models describe, on SQLite and on PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect

from core.db import check_migrated, make_engine, migrate
from core.models import Base

TABLES = {
    "users",
    "api_tokens",
    "jobs",
    "job_transitions",
    "job_events",
    "uploaded_files",
    "idempotency_keys",
    "workers",
    "alembic_version",
}


def _assert_schema_matches_models(url: str) -> None:
    eng = make_engine(url)
    try:
        check_migrated(eng)
        assert set(inspect(eng).get_table_names()) == TABLES
        with eng.connect() as conn:
            diff = compare_metadata(
                MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata
            )
        assert diff == [], f"migrations and models disagree: {diff}"
        indexes = {ix["name"] for t in ("jobs", "job_events") for ix in inspect(eng).get_indexes(t)}
        assert {"ix_jobs_owner_created", "ix_jobs_status", "ix_job_events_job"} <= indexes
    finally:
        eng.dispose()


def test_upgrade_head_on_a_fresh_sqlite_file(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/nested/fresh.db"
    migrate(url)
    _assert_schema_matches_models(url)
    migrate(url)  # idempotent


@pytest.mark.integration
def test_upgrade_head_on_postgresql(pg_url: str) -> None:
    migrate(pg_url)
    _assert_schema_matches_models(pg_url)
