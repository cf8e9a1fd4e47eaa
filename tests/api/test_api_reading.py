"""Listing jobs, paging events by cursor, metric histories and checkpoints."""

from __future__ import annotations

import pytest
from api_testkit import SFT_SPEC
from fastapi.testclient import TestClient
from sqlalchemy import update

from api.main import create_app
from core.models import Job, JobEvent
from core.transitions import transition


def _add_events(db, job_id: str, rows: list[tuple[str, int | None, dict]]) -> list[int]:
    with db() as session, session.begin():
        events = [JobEvent(job_id=job_id, kind=k, step=s, data=d) for k, s, d in rows]
        session.add_all(events)
        session.flush()
        return [e.id for e in events]


def test_list_is_newest_first_and_pages_by_cursor(client, alice, submit) -> None:
    ids = [submit(name=f"j{i}")["id"] for i in range(5)]
    page1 = client.get("/v1/jobs?limit=2", headers=alice).json()
    page2 = client.get(f"/v1/jobs?limit=2&cursor={page1['next_cursor']}", headers=alice).json()
    page3 = client.get(f"/v1/jobs?limit=2&cursor={page2['next_cursor']}", headers=alice).json()
    seen = [j["id"] for page in (page1, page2, page3) for j in page["jobs"]]
    assert seen == ids[::-1]
    assert page3["next_cursor"] is None
    assert [j["id"] for j in client.get("/v1/jobs?limit=2&offset=3", headers=alice).json()["jobs"]] == ids[
        1::-1
    ]
    assert "spec_resolved" not in page1["jobs"][0]  # the list is a summary


def test_list_filters_by_status(client, alice, submit, db) -> None:
    a, b = submit()["id"], submit()["id"]
    with db() as session, session.begin():
        transition(session, a, "running")
    assert [j["id"] for j in client.get("/v1/jobs?status=running", headers=alice).json()["jobs"]] == [a]
    assert [j["id"] for j in client.get("/v1/jobs?status=queued", headers=alice).json()["jobs"]] == [b]
    assert len(client.get("/v1/jobs?status=queued,running", headers=alice).json()["jobs"]) == 2
    res = client.get("/v1/jobs?status=paused", headers=alice)
    assert res.status_code == 422 and res.json()["error"]["param"] == "status"


def test_bad_cursor_and_limit_are_422(client, alice, tokens) -> None:
    assert client.get("/v1/jobs?cursor=garbage", headers=alice).json()["error"]["param"] == "cursor"
    assert client.get("/v1/jobs?limit=0", headers=alice).json()["error"]["param"] == "limit"


def test_events_are_cursor_paged(client, alice, submit, db) -> None:
    job_id = submit()["id"]
    other = submit()["id"]
    created = client.get(f"/v1/jobs/{job_id}/events", headers=alice).json()[
        "events"
    ]  # the "queued" status row
    ids = [e["id"] for e in created] + _add_events(
        db, job_id, [("log", None, {"message": f"m{i}"}) for i in range(5)]
    )
    _add_events(db, other, [("log", None, {"message": "not mine"})])

    seen, after, pages = [], 0, 0
    while True:
        page = client.get(f"/v1/jobs/{job_id}/events?after={after}&limit=2", headers=alice).json()
        pages += 1
        seen += [e["id"] for e in page["events"]]
        assert page["next_cursor"] == (page["events"][-1]["id"] if page["events"] else after)
        after = page["next_cursor"]
        if not page["has_more"]:
            break
    assert seen == ids and pages == 3
    empty = client.get(f"/v1/jobs/{job_id}/events?after={after}", headers=alice).json()
    assert empty == {"events": [], "next_cursor": after, "has_more": False}  # polling stays put
    (new_id,) = _add_events(db, job_id, [("progress", 1, {"step": 1, "total_steps": 10})])
    newer = client.get(f"/v1/jobs/{job_id}/events?after={after}", headers=alice).json()
    assert [e["id"] for e in newer["events"]] == [new_id] and newer["events"][0]["step"] == 1


def test_events_filter_by_kind(client, alice, submit, db) -> None:
    job_id = submit()["id"]
    _add_events(
        db, job_id, [("log", None, {"message": "a"}), ("metrics", 1, {"metrics": {"train/loss": 1.0}})]
    )
    page = client.get(f"/v1/jobs/{job_id}/events?kind=metrics", headers=alice).json()
    assert [e["kind"] for e in page["events"]] == ["metrics"]


def test_metrics_history_shape(client, alice, submit, db) -> None:
    job_id = submit()["id"]
    losses = {1: 2.5, 2: 2.0, 3: 1.25}
    rows = [
        ("metrics", s, {"step": s, "metrics": {"train/loss": v, "train/lr": s * 1e-5}})
        for s, v in losses.items()
    ]
    rows.insert(1, ("log", None, {"message": "ignored"}))
    rows.append(
        ("metrics", 4, {"step": 4, "metrics": {"rollout/reward_mean": 0.5, "note": "text", "flag": True}})
    )
    _add_events(db, job_id, rows)
    body = client.get(f"/v1/jobs/{job_id}/metrics", headers=alice).json()
    assert body == {
        "metrics": {
            "train/loss": [{"step": s, "value": v} for s, v in losses.items()],
            "train/lr": [{"step": s, "value": pytest.approx(s * 1e-5)} for s in losses],
            "rollout/reward_mean": [{"step": 4, "value": 0.5}],
        }
    }


def test_metrics_of_a_new_job_are_empty(client, alice, submit) -> None:
    assert client.get(f"/v1/jobs/{submit()['id']}/metrics", headers=alice).json() == {"metrics": {}}


def test_checkpoints(client, alice, submit, db) -> None:
    job_id = submit()["id"]
    _add_events(
        db, job_id, [("checkpoint", 5, {"step": 5, "path": "/ck/5"}), ("checkpoint", 10, {"path": "/ck/10"})]
    )
    with db() as session, session.begin():
        transition(session, job_id, "running", last_checkpoint="/ck/10")
    body = client.get(f"/v1/jobs/{job_id}/checkpoints", headers=alice).json()
    assert [(c["step"], c["path"]) for c in body["checkpoints"]] == [(5, "/ck/5"), (10, "/ck/10")]
    assert body["last_checkpoint"] == "/ck/10"


def test_a_job_links_its_mlflow_run_when_the_deployment_names_the_ui(settings, sent, alice, db) -> None:
    linked = settings.model_copy(update={"mlflow_ui_url": "https://mlflow.example.org/"})
    for deployment, expected in ((settings, None), (linked, "https://mlflow.example.org/#/runs/{run}")):
        with TestClient(create_app(deployment)) as c:
            job = c.post("/v1/jobs", json=SFT_SPEC, headers=alice).json()
            assert job["mlflow_run_url"] is None  # no MLflow run yet
            with db() as session, session.begin():
                session.execute(update(Job).where(Job.id == job["id"]).values(mlflow_run_id="0123abcd"))
            got = c.get(f"/v1/jobs/{job['id']}", headers=alice).json()["mlflow_run_url"]
            assert got == (expected and expected.format(run="0123abcd"))
            cancelled = c.post(f"/v1/jobs/{job['id']}/cancel", headers=alice).json()
            assert cancelled["mlflow_run_url"] == got
