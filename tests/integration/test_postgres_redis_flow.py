"""Submit -> succeeded (and cancel) against PostgreSQL and Redis with a real worker process."""

from __future__ import annotations

import time

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import sessionmaker
from worker_testkit import create_token, job_body, make_settings, pid_alive, wait_for, wait_for_status

from api.main import create_app
from core.celery_app import configure_celery
from core.db import make_engine, migrate
from papertrain.launcher import start_worker, stop_worker, worker_stop_timeout

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture
def platform(tmp_path, pg_url, redis_url):
    settings = make_settings(tmp_path, database_url=pg_url, broker_url=redis_url)
    migrate(pg_url)
    engine = make_engine(pg_url)
    token = create_token(sessionmaker(bind=engine, expire_on_commit=False))
    configure_celery(settings)
    worker = start_worker(settings, "cpu")
    try:
        with TestClient(create_app(settings)) as client:
            yield settings, client, {"Authorization": f"Bearer {token}"}
    finally:
        stop_worker(worker, worker_stop_timeout(settings))
        configure_celery(None)
        engine.dispose()


def test_job_submitted_through_the_api_succeeds_on_postgres_and_redis(platform):
    settings, client, headers = platform
    created = client.post("/v1/jobs", json=job_body("fake:ok"), headers=headers)
    assert created.status_code == 201, created.text
    job_id = created.json()["id"]

    job = wait_for_status(client, headers, job_id, {"succeeded", "failed"}, timeout=120)

    assert job["status"] == "succeeded", job
    assert job["attempt"] == 1 and job["last_step"] == 3 and job["mlflow_run_id"]
    metrics = client.get(f"/v1/jobs/{job_id}/metrics", headers=headers).json()["metrics"]
    assert [(p["step"], p["value"]) for p in metrics["train/loss"]] == [(s, 2.0 / s) for s in (1, 2, 3)]
    events = client.get(f"/v1/jobs/{job_id}/events", headers=headers, params={"limit": 200}).json()["events"]
    statuses = [e["data"]["to"] for e in events if e["kind"] == "status"]
    assert statuses == ["queued", "running", "succeeded"]
    # the live stream reads the same events from PostgreSQL, resumes after Last-Event-ID and ends by itself
    stream = client.get(
        f"/v1/jobs/{job_id}/events/stream", headers={**headers, "Last-Event-ID": str(events[0]["id"])}
    )
    ids = [int(line[4:]) for line in stream.text.splitlines() if line.startswith("id: ")]
    assert ids == [e["id"] for e in events[1:]]


def test_cancel_on_postgres_stops_the_engine_within_10s(platform):
    settings, client, headers = platform
    job_id = client.post("/v1/jobs", json=job_body("fake:hang"), headers=headers).json()["id"]
    wait_for_status(client, headers, job_id, {"running"}, timeout=120)
    pid_file = settings.jobs_dir / job_id / "pid"
    wait_for(pid_file.exists, 20, what="the engine to start")
    engine_pid = int(pid_file.read_text())

    started = time.monotonic()
    assert client.post(f"/v1/jobs/{job_id}/cancel", headers=headers).status_code == 200
    job = wait_for_status(client, headers, job_id, {"cancelled", "failed", "succeeded"}, timeout=10)

    assert job["status"] == "cancelled" and time.monotonic() - started < 10
    assert not pid_alive(engine_pid)
