"""Cancel and retry: what each status turns into, and the 409s for the ones that cannot."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from core.models import JobTransition
from core.transitions import transition

# How a job reaches each status from `queued`, the way the worker and the reaper move it.
PATHS = {
    "queued": [],
    "running": ["running"],
    "cancelling": ["running", "cancelling"],
    "succeeded": ["running", "succeeded"],
    "failed": ["running", "failed"],
    "cancelled": ["cancelled"],
}


@pytest.fixture
def job_in(db, submit):
    def _make(status: str) -> str:
        job_id = submit()["id"]
        for step in PATHS[status]:
            with db() as session, session.begin():
                extra = {"attempt": 1, "worker_id": "w1"} if step == "running" else {}
                if step == "failed":
                    extra = {"error": {"code": "engine_error", "message": "boom", "category": "platform"}}
                transition(session, job_id, step, **extra)
        return job_id

    return _make


def test_cancel_queued_job_is_cancelled_at_once(client, alice, job_in, db) -> None:
    job_id = job_in("queued")
    res = client.post(f"/v1/jobs/{job_id}/cancel", headers=alice)
    assert res.status_code == 200, res.text
    job = res.json()
    assert job["status"] == "cancelled"
    assert job["cancel_requested_at"] is not None and job["finished_at"] is not None
    with db() as session:
        last = session.scalars(
            select(JobTransition).where(JobTransition.job_id == job_id).order_by(JobTransition.id.desc())
        ).first()
        assert (last.from_status, last.to_status) == ("queued", "cancelled")
        assert "alice" in last.reason


def test_cancel_running_job_moves_to_cancelling(client, alice, job_in) -> None:
    job_id = job_in("running")
    job = client.post(f"/v1/jobs/{job_id}/cancel", headers=alice).json()
    assert job["status"] == "cancelling"
    assert job["cancel_requested_at"] is not None and job["finished_at"] is None
    again = client.post(f"/v1/jobs/{job_id}/cancel", headers=alice)  # idempotent while it stops
    assert again.status_code == 200 and again.json()["status"] == "cancelling"
    assert again.json()["cancel_requested_at"] == job["cancel_requested_at"]


@pytest.mark.parametrize("status", ["succeeded", "failed", "cancelled"])
def test_cancel_finished_job_is_a_conflict(client, alice, job_in, status) -> None:
    job_id = job_in(status)
    res = client.post(f"/v1/jobs/{job_id}/cancel", headers=alice)
    assert res.status_code == 409
    error = res.json()["error"]
    assert (error["code"], error["category"]) == ("job_not_cancellable", "user")
    assert status in error["message"]
    assert client.get(f"/v1/jobs/{job_id}", headers=alice).json()["status"] == status


@pytest.mark.parametrize("status", ["failed", "cancelled"])
def test_retry_queues_a_new_attempt(client, alice, job_in, sent, status) -> None:
    job_id = job_in(status)
    sent.clear()
    res = client.post(f"/v1/jobs/{job_id}/retry", headers=alice)
    assert res.status_code == 200, res.text
    job = res.json()
    assert job["status"] == "queued"
    assert job["error"] is None and job["finished_at"] is None and job["worker_id"] is None
    assert job["max_attempts"] >= job["attempt"] + 1  # room for the run the worker starts next
    assert sent == [{"job_id": job_id, "queue": "cpu", "committed_status": "queued"}]


@pytest.mark.parametrize("status", ["queued", "running", "cancelling", "succeeded"])
def test_retry_is_a_conflict_unless_failed_or_cancelled(client, alice, job_in, sent, status) -> None:
    job_id = job_in(status)
    sent.clear()
    res = client.post(f"/v1/jobs/{job_id}/retry", headers=alice)
    assert res.status_code == 409
    error = res.json()["error"]
    assert error["code"] == "job_not_retryable"
    assert ("spec_submitted" in error["remediation"]) is (status == "succeeded")
    assert sent == []


def test_unknown_job_is_404(client, alice) -> None:
    res = client.post("/v1/jobs/job_000000000000/cancel", headers=alice)
    assert res.status_code == 404 and res.json()["error"]["code"] == "job_not_found"
