"""A job's error and error events as the api shows them: typed, no tracebacks, no log tail, no server paths."""

from __future__ import annotations

from core.models import JobEvent
from core.transitions import transition


def test_failed_job_shows_a_typed_error_without_traceback_or_paths(client, alice, submit, db) -> None:
    job_id = submit()["id"]
    error = {
        "code": "engine_error",
        "category": "platform",
        "message": "OSError: cannot open /srv/papertrain/var/jobs/job_x/final/model.safetensors",
        "remediation": "retry the job",
        "log_tail": ["Traceback (most recent call last):", '  File "/srv/papertrain/engine/train.py"'],
        "exit_code": 1,
    }
    with db() as session, session.begin():
        transition(session, job_id, "running")
        transition(session, job_id, "failed", error=error)
        session.add(
            JobEvent(
                job_id=job_id,
                kind="error",
                data={"message": "boom", "traceback": 'File "/srv/papertrain/engine/train.py"', "code": "x"},
            )
        )
    for body in (
        client.get(f"/v1/jobs/{job_id}", headers=alice).json(),
        client.get("/v1/jobs", headers=alice).json()["jobs"][0],
    ):
        shown = body["error"]
        assert shown["code"] == "engine_error" and shown["category"] == "platform"
        assert "log_tail" not in shown and "/srv" not in shown["message"]
        assert shown["message"].endswith(".../model.safetensors") and shown["remediation"]
    events = client.get(f"/v1/jobs/{job_id}/events?kind=error", headers=alice).json()["events"]
    assert events and all("traceback" not in e["data"] for e in events)
