"""Fixtures for the API tests: a migrated SQLite database per test, two users with tokens, a TestClient,
and a recording stand-in for the broker (`core.queue.send_run_job`)."""

from __future__ import annotations

import shutil
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from api_testkit import SFT_SPEC
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from api.main import create_app
from core.auth import create_user_and_token
from core.db import make_engine, migrate
from core.settings import Settings


@pytest.fixture(scope="session")
def migrated_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("api-template") / "papertrain.db"
    migrate(f"sqlite:///{path}")
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return path


@pytest.fixture
def settings(tmp_path: Path, migrated_template: Path) -> Settings:
    s = Settings(var_dir=tmp_path / "var")
    db_file = Path(s.database_url.removeprefix("sqlite:///"))
    db_file.parent.mkdir(parents=True)
    shutil.copyfile(migrated_template, db_file)
    return s


@pytest.fixture
def db(settings: Settings) -> Iterator[sessionmaker[Session]]:
    """Direct database access for arranging and checking state (as the worker would)."""
    eng = make_engine(settings.database_url)
    yield sessionmaker(bind=eng, expire_on_commit=False)
    eng.dispose()


@pytest.fixture(autouse=True)
def cpu_worker(db: sessionmaker[Session]) -> None:
    """A live worker on the `cpu` queue, as on a running platform (test_api_workers covers the others)."""
    from core.workers import record_worker

    with db() as session, session.begin():
        record_worker(session, "test-worker@localhost", ["cpu"], {"gpus": 0})


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch, settings: Settings) -> list[dict[str, Any]]:
    """Every message the api sends, with the job's status as a separate connection saw it at send time."""
    import core.queue

    messages: list[dict[str, Any]] = []
    db_file = settings.database_url.removeprefix("sqlite:///")

    def record(job_id: str, queue: str) -> None:
        with sqlite3.connect(db_file) as conn:
            row = conn.execute("SELECT status FROM jobs WHERE id = ?", (job_id,)).fetchone()
        messages.append({"job_id": job_id, "queue": queue, "committed_status": row[0] if row else None})

    monkeypatch.setattr(core.queue, "send_run_job", record)
    return messages


@pytest.fixture
def app(settings: Settings, sent: list[dict[str, Any]]):
    return create_app(settings)


@pytest.fixture
def client(app) -> Iterator[TestClient]:
    with TestClient(app) as c:
        yield c


@pytest.fixture
def tokens(db: sessionmaker[Session]) -> dict[str, str]:
    out = {}
    with db() as session, session.begin():
        for name in ("alice", "bob"):
            _, out[name] = create_user_and_token(session, name)
    return out


@pytest.fixture
def alice(tokens: dict[str, str]) -> dict[str, str]:
    return {"Authorization": f"Bearer {tokens['alice']}"}


@pytest.fixture
def bob(tokens: dict[str, str]) -> dict[str, str]:
    return {"Authorization": f"Bearer {tokens['bob']}"}


@pytest.fixture
def submit(client: TestClient, alice: dict[str, str]):
    """POST a job as alice (SFT_SPEC merged with overrides); returns the created job body."""

    def _submit(headers: dict[str, str] | None = None, **overrides: Any) -> dict[str, Any]:
        res = client.post("/v1/jobs", json={**SFT_SPEC, **overrides}, headers=headers or alice)
        assert res.status_code == 201, res.text
        return res.json()

    return _submit
