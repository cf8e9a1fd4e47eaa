"""Model invariants: ids, UTC timestamps on SQLite, validated status and event kinds."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import pytest
from sqlalchemy.exc import StatementError

from core.auth import get_or_create_user
from core.models import Job, JobEvent, new_file_id


def test_ids_have_the_documented_shape(add_job) -> None:
    assert re.fullmatch(r"job_[0-9a-f]{12}", add_job())
    assert re.fullmatch(r"file_[0-9a-f]{12}", new_file_id())


def test_timestamps_read_back_as_aware_utc(add_job, make_session) -> None:
    job_id = add_job()
    with make_session() as session:
        created = session.get(Job, job_id).created_at
    assert created.tzinfo is not None and created.utcoffset().total_seconds() == 0
    assert abs((datetime.now(UTC) - created).total_seconds()) < 60


def test_naive_datetimes_are_refused(add_job, make_session) -> None:
    job_id = add_job()
    with make_session() as session:
        session.get(Job, job_id).heartbeat_at = datetime(2026, 1, 1)  # naive on purpose
        with pytest.raises(StatementError, match="naive datetime"):
            session.flush()


def test_status_and_event_kind_are_validated(add_job) -> None:
    with pytest.raises(ValueError):
        Job(status="paused")
    with pytest.raises(ValueError, match="unknown event kind"):
        JobEvent(job_id="job_x", kind="telemetry")
    assert JobEvent(job_id="job_x", kind="metrics").kind == "metrics"


def test_user_names_are_unique(make_session) -> None:
    with make_session() as session, session.begin():
        a = get_or_create_user(session, "alice")
        assert get_or_create_user(session, "alice").id == a.id
