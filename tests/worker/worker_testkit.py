"""Shared helpers for the worker tests: settings under a temp folder, a migrated database, a fake engine,
jobs inserted the way the api inserts them, and polling.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import stat
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from core.auth import get_or_create_user
from core.db import make_engine, migrate
from core.models import Job
from core.settings import Settings
from core.states import JobStatus
from core.transitions import record_created
from engine.spec import parse_job_spec, resolve

FAKE_ENGINE = Path(__file__).with_name("fake_engine.py")


def fake_engine_python(folder: Path) -> str:
    """An executable that stands where `engine_python` goes and runs the fake engine with the same argv."""
    folder.mkdir(parents=True, exist_ok=True)
    script = folder / "fake-python"
    script.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{FAKE_ENGINE}" "$@"\n')
    script.chmod(script.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return str(script)


def make_settings(root: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "var_dir": root / "var",
        "engine_python": fake_engine_python(root / "bin"),
        "heartbeat_interval_s": 0.5,
        "heartbeat_timeout_s": 30,
        "cancel_grace_s": 2,
    }
    values.update(overrides)
    return Settings(**values)


def migrate_sqlite_template(path: Path) -> Path:
    """Migrate a SQLite file once; tests copy it (a migration costs about a second)."""
    migrate(f"sqlite:///{path}")
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return path


def sqlite_from_template(template: Path, settings: Settings) -> sessionmaker[Session]:
    target = Path(settings.database_url.removeprefix("sqlite:///"))
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(template, target)
    return sessionmaker(bind=make_engine(settings.database_url), expire_on_commit=False)


def job_spec(name: str = "fake:ok") -> dict[str, Any]:
    raw = {
        "algorithm": "sft",
        "name": name,
        "model": "tiny:llama",
        "dataset": {"builtin": "chat", "num_rows": 8},
    }
    return resolve(parse_job_spec(raw))


def add_job(factory: Callable[[], Session], name: str = "fake:ok", **fields: Any) -> str:
    """Insert a queued job the way the api does (history row included); returns its id."""
    spec = job_spec(name)
    with factory() as session, session.begin():
        user = get_or_create_user(session, "tester")
        job = Job(
            owner_id=user.id,
            name=name,
            algorithm=spec["algorithm"],
            status=JobStatus.queued,
            queue="cpu",
            spec_submitted=spec,
            spec_resolved=spec,
            **fields,
        )
        session.add(job)
        session.flush()
        record_created(session, job, reason="submitted")
        return job.id


def get_job(factory: Callable[[], Session], job_id: str) -> Job:
    with factory() as session:
        return session.get(Job, job_id)


def wait_for(
    predicate: Callable[[], Any], timeout: float, interval: float = 0.1, what: str = "condition"
) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie still answers kill(0); read its state
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def create_token(factory: Callable[[], Session], user: str = "tester") -> str:
    from core.auth import create_user_and_token

    with factory() as session, session.begin():
        _, raw = create_user_and_token(session, user)
    return raw


def job_body(name: str = "fake:ok") -> dict[str, Any]:
    """A submission the api accepts; the fake engine reads `name` to pick its behaviour."""
    return {
        "algorithm": "sft",
        "name": name,
        "model": "tiny:llama",
        "dataset": {"builtin": "chat", "num_rows": 8},
    }


def wait_for_status(
    client: Any, headers: dict[str, str], job_id: str, statuses: set[str], timeout: float
) -> dict:
    def done() -> dict | None:
        body = client.get(f"/v1/jobs/{job_id}", headers=headers).json()
        return body if body["status"] in statuses else None

    return wait_for(done, timeout, interval=0.25, what=f"job {job_id} to become one of {sorted(statuses)}")
