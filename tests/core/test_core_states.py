"""The job state machine: every (from, to) pair of the status table, the history it writes, the row lock."""

from __future__ import annotations

import sqlite3
import threading
import time
from itertools import product
from pathlib import Path

import pytest
from sqlalchemy import select, text

from core.models import Job, JobEvent, JobTransition
from core.states import ALLOWED, CANCELLABLE, TERMINAL, InvalidTransition, JobStatus
from core.transitions import JobNotFound, record_created, transition

# The platform contract, written out edge by edge (independent of core.states.ALLOWED).
EXPECTED_EDGES = {
    ("validating", "queued"),
    ("validating", "failed"),
    ("validating", "cancelled"),
    ("queued", "running"),
    ("queued", "cancelled"),
    ("queued", "failed"),
    ("running", "succeeded"),
    ("running", "failed"),
    ("running", "cancelling"),
    ("running", "queued"),  # re-queued after a worker crash
    ("cancelling", "cancelled"),
    ("cancelling", "failed"),
    ("cancelling", "succeeded"),
    ("failed", "queued"),  # user retry
    ("cancelled", "queued"),  # user retry
}
STATUSES = [s.value for s in JobStatus]
PAIRS = list(product(STATUSES, STATUSES))


def test_status_values_are_the_contract() -> None:
    assert STATUSES == ["validating", "queued", "running", "cancelling", "succeeded", "failed", "cancelled"]
    assert {s.value for s in TERMINAL} == {"succeeded", "failed", "cancelled"}
    assert {s.value for s in CANCELLABLE} == {"validating", "queued", "running"}
    assert set(ALLOWED) == set(JobStatus)


def test_table_matches_contract() -> None:
    table = {(a.value, b.value) for a, targets in ALLOWED.items() for b in targets}
    assert table == EXPECTED_EDGES


@pytest.mark.parametrize(("src", "dst"), PAIRS, ids=[f"{a}->{b}" for a, b in PAIRS])
def test_transition(src: str, dst: str, add_job, make_session) -> None:
    job_id = add_job(JobStatus(src), attempt=2)
    with make_session() as session:
        before = session.get(Job, job_id).updated_at
    allowed = (src, dst) in EXPECTED_EDGES
    with make_session() as session:
        if allowed:
            job = transition(session, job_id, dst, reason="because")
            assert job.status == JobStatus(dst)
            session.commit()
        else:
            with pytest.raises(InvalidTransition) as info:
                transition(session, job_id, dst, reason="because")
            assert (info.value.from_status, info.value.to_status) == (JobStatus(src), JobStatus(dst))
            assert src in str(info.value) and dst in str(info.value)
            session.rollback()

    with make_session() as session:
        job = session.get(Job, job_id)
        history = session.scalars(select(JobTransition).where(JobTransition.job_id == job_id)).all()
        events = session.scalars(select(JobEvent).where(JobEvent.job_id == job_id)).all()
        if allowed:
            assert job.status == dst
            assert job.updated_at >= before
            assert [(h.from_status, h.to_status, h.reason, h.attempt) for h in history] == [
                (src, dst, "because", 2)
            ]
            assert [(e.kind, e.data["from"], e.data["to"]) for e in events] == [("status", src, dst)]
            assert (job.finished_at is not None) == (dst in {"succeeded", "failed", "cancelled"})
        else:
            assert job.status == src
            assert history == [] and events == []


def test_transition_sets_fields_and_keeps_history_in_order(add_job, make_session) -> None:
    job_id = add_job(JobStatus.queued)
    with make_session() as session, session.begin():
        transition(session, job_id, "running", worker_id="w1", attempt=1)
    with make_session() as session, session.begin():
        transition(session, job_id, "failed", error={"code": "oom", "message": "out of memory"})
    with make_session() as session, session.begin():
        transition(session, job_id, "queued", reason="retry", error=None, finished_at=None)
    with make_session() as session:
        job = session.get(Job, job_id)
        assert (job.status, job.worker_id, job.attempt, job.error, job.finished_at) == (
            "queued",
            "w1",
            1,
            None,
            None,
        )
        history = session.scalars(
            select(JobTransition).where(JobTransition.job_id == job_id).order_by(JobTransition.id)
        ).all()
        assert [(h.from_status, h.to_status) for h in history] == [
            ("queued", "running"),
            ("running", "failed"),
            ("failed", "queued"),
        ]


def test_transition_rejects_unknown_fields_and_jobs(add_job, make_session) -> None:
    job_id = add_job(JobStatus.queued)
    with make_session() as session:
        with pytest.raises(TypeError, match="status"):
            transition(session, job_id, "running", status="succeeded")
        with pytest.raises(JobNotFound):
            transition(session, "job_000000000000", "running")
        with pytest.raises(ValueError):
            transition(session, job_id, "paused")


def test_record_created_opens_history(make_session) -> None:
    from core.auth import get_or_create_user

    with make_session() as session, session.begin():
        user = get_or_create_user(session, "u")
        job = Job(owner_id=user.id, algorithm="sft", status="queued", spec_submitted={}, spec_resolved={})
        session.add(job)
        session.flush()
        record_created(session, job, reason="submitted")
        job_id = job.id
    with make_session() as session:
        (row,) = session.scalars(select(JobTransition).where(JobTransition.job_id == job_id)).all()
        assert (row.from_status, row.to_status, row.reason) == (None, "queued", "submitted")


def test_transition_holds_the_write_lock_until_commit(add_job, make_session, db_path: Path) -> None:
    job_id = add_job(JobStatus.queued)
    other = sqlite3.connect(db_path, timeout=0)  # no waiting: a held lock fails at once
    with make_session() as session:
        transition(session, job_id, "running")
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            other.execute("UPDATE jobs SET name = 'x' WHERE id = ?", (job_id,))
        session.commit()
    other.execute("UPDATE jobs SET name = 'x' WHERE id = ?", (job_id,))
    other.commit()
    other.close()


def test_concurrent_claims_serialise_and_only_one_wins(add_job, make_session) -> None:
    """Two workers claim the same queued job at once: the second waits for the lock, re-reads, and fails."""
    job_id = add_job(JobStatus.queued)
    results: dict[str, str] = {}
    first_locked = threading.Event()

    def claim(name: str, hold_s: float) -> None:
        with make_session() as session:
            try:
                transition(session, job_id, "running", worker_id=name)
                first_locked.set()
                time.sleep(hold_s)  # keep the lock while the other one tries
                session.commit()
                results[name] = "claimed"
            except InvalidTransition:
                session.rollback()
                results[name] = "refused"

    a = threading.Thread(target=claim, args=("a", 0.5))
    a.start()
    assert first_locked.wait(5)
    b = threading.Thread(target=claim, args=("b", 0.0))
    b.start()
    a.join()
    b.join()
    assert results == {"a": "claimed", "b": "refused"}
    with make_session() as session:
        assert session.get(Job, job_id).worker_id == "a"


@pytest.mark.integration
def test_transition_locks_the_row_on_postgresql(pg_url: str) -> None:
    from sqlalchemy.exc import OperationalError
    from sqlalchemy.orm import sessionmaker

    from core.auth import get_or_create_user
    from core.db import make_engine, migrate

    migrate(pg_url)
    eng = make_engine(pg_url)
    make = sessionmaker(bind=eng, expire_on_commit=False)
    try:
        with make() as session, session.begin():
            user = get_or_create_user(session, "pg")
            job = Job(owner_id=user.id, algorithm="sft", status="queued", spec_submitted={}, spec_resolved={})
            session.add(job)
            session.flush()
            job_id = job.id
        with make() as holder, make() as other:
            transition(holder, job_id, "running", worker_id="a")
            with pytest.raises(OperationalError, match="could not obtain lock"):
                other.execute(text("SELECT id FROM jobs WHERE id = :id FOR UPDATE NOWAIT"), {"id": job_id})
            other.rollback()
            holder.commit()
            with pytest.raises(InvalidTransition):  # the second claim sees the committed row
                transition(other, job_id, "running", worker_id="b")
    finally:
        eng.dispose()
