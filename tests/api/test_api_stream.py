"""GET /v1/jobs/{id}/events/stream: server-sent events with resume, heartbeats and an end at a terminal state."""

from __future__ import annotations

import threading
import time

import pytest

import api.services.stream
from core.models import JobEvent
from core.transitions import transition


@pytest.fixture(autouse=True)
def fast_polls(monkeypatch):
    monkeypatch.setattr(api.services.stream, "POLL_S", 0.05)


def _frames(text: str) -> list[dict[str, str]]:
    """Parse an SSE body into frames ({"id", "event", "data"} or {"comment"})."""
    frames = []
    for block in text.split("\n\n"):
        if not block.strip():
            continue
        frame: dict[str, str] = {}
        for line in block.split("\n"):
            if line.startswith(":"):
                frame["comment"] = line[1:].strip()
            else:
                key, _, value = line.partition(": ")
                frame[key] = value
        frames.append(frame)
    return frames


def _finish(db, job_id: str, logs: int = 3) -> list[int]:
    with db() as session, session.begin():
        transition(session, job_id, "running")
        rows = [JobEvent(job_id=job_id, kind="log", data={"message": f"m{i}"}) for i in range(logs)]
        session.add_all(rows)
        session.flush()
        transition(session, job_id, "succeeded")
        return [r.id for r in rows]


def test_stream_sends_every_event_and_ends_at_the_terminal_state(client, alice, submit, db) -> None:
    job_id = submit()["id"]
    log_ids = _finish(db, job_id)
    page = client.get(f"/v1/jobs/{job_id}/events?limit=1000", headers=alice).json()["events"]

    res = client.get(f"/v1/jobs/{job_id}/events/stream", headers=alice)
    assert res.status_code == 200 and res.headers["content-type"].startswith("text/event-stream")
    events = [f for f in _frames(res.text) if "id" in f]
    assert [int(f["id"]) for f in events] == [e["id"] for e in page]
    assert [f["event"] for f in events] == [e["kind"] for e in page]
    assert events[-1]["event"] == "status" and '"to":"succeeded"' in events[-1]["data"]
    assert set(log_ids) <= {int(f["id"]) for f in events}


def test_last_event_id_resumes_after_it(client, alice, submit, db) -> None:
    job_id = submit()["id"]
    log_ids = _finish(db, job_id)
    headers = {**alice, "Last-Event-ID": str(log_ids[0])}
    ids = [
        int(f["id"])
        for f in _frames(client.get(f"/v1/jobs/{job_id}/events/stream", headers=headers).text)
        if "id" in f
    ]
    assert ids and min(ids) == log_ids[1]
    ids_q = [
        int(f["id"])
        for f in _frames(
            client.get(f"/v1/jobs/{job_id}/events/stream?after={log_ids[0]}", headers=alice).text
        )
        if "id" in f
    ]
    assert ids_q == ids
    bad = client.get(f"/v1/jobs/{job_id}/events/stream", headers={**alice, "Last-Event-ID": "x"})
    assert bad.status_code == 422 and bad.json()["error"]["param"] == "Last-Event-ID"


def test_live_stream_sends_heartbeats_then_new_events(client, alice, submit, db) -> None:
    job_id = submit()["id"]

    def later() -> None:
        time.sleep(1.5)
        _finish(db, job_id, logs=1)

    thread = threading.Thread(target=later)
    thread.start()
    try:
        res = client.get(f"/v1/jobs/{job_id}/events/stream?heartbeat_s=0.5", headers=alice)
    finally:
        thread.join()
    frames = _frames(res.text)
    kinds = ["comment" if "comment" in f else f.get("event") for f in frames if "retry" not in f]
    first_log = kinds.index("log")
    assert "comment" in kinds[:first_log]  # idle before the job moved: heartbeats
    assert kinds[-1] == "status"


def test_stream_of_someone_elses_job_is_404(client, bob, submit) -> None:
    job_id = submit()["id"]
    res = client.get(f"/v1/jobs/{job_id}/events/stream", headers=bob)
    assert res.status_code == 404 and res.json()["error"]["param"] == "job_id"
