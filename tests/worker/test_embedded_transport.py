"""The embedded transport end to end: jobs submitted through the api reach a real worker process over the
server-less SQLite broker, run (fake engine), can be cancelled, survive a worker restart, and the
embedded launcher serves and stops cleanly."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest
from fastapi.testclient import TestClient
from worker_testkit import create_token, job_body, pid_alive, wait_for, wait_for_status

from api.main import create_app
from core.celery_app import configure_celery
from papertrain.launcher import REPO_ROOT, settings_env, start_worker, stop_worker, worker_stop_timeout

pytestmark = [pytest.mark.slow, pytest.mark.e2e]


@pytest.fixture
def api(settings, factory):
    """An api client with a token; its jobs are sent to `settings.broker_url`."""
    configure_celery(settings)
    headers = {"Authorization": f"Bearer {create_token(factory)}"}
    with TestClient(create_app(settings)) as client:
        yield client, headers
    configure_celery(None)


@pytest.fixture
def worker(settings, factory):
    procs = []

    def start():
        procs.append(start_worker(settings, "cpu"))
        return procs[-1]

    yield start
    for proc in procs:
        stop_worker(proc, worker_stop_timeout(settings))


def test_worker_process_consumes_a_job_submitted_through_the_api(settings, api, worker):
    client, headers = api
    worker()
    created = client.post("/v1/jobs", json=job_body("fake:ok"), headers=headers)
    assert created.status_code == 201, created.text
    job_id = created.json()["id"]

    job = wait_for_status(client, headers, job_id, {"succeeded", "failed"}, timeout=90)

    assert job["status"] == "succeeded", job
    assert job["attempt"] == 1 and job["last_step"] == 3
    metrics = client.get(f"/v1/jobs/{job_id}/metrics", headers=headers).json()["metrics"]
    assert [(p["step"], p["value"]) for p in metrics["train/loss"]] == [(s, 2.0 / s) for s in (1, 2, 3)]


def test_cancel_through_the_api_stops_the_running_engine(settings, api, worker):
    client, headers = api
    worker()
    job_id = client.post("/v1/jobs", json=job_body("fake:hang"), headers=headers).json()["id"]
    wait_for_status(client, headers, job_id, {"running"}, timeout=90)
    wait_for(lambda: (settings.jobs_dir / job_id / "pid").exists(), 20, what="the engine to start")
    engine_pid = int((settings.jobs_dir / job_id / "pid").read_text())

    started = time.monotonic()
    assert client.post(f"/v1/jobs/{job_id}/cancel", headers=headers).status_code == 200
    job = wait_for_status(client, headers, job_id, {"cancelled", "failed", "succeeded"}, timeout=10)

    assert job["status"] == "cancelled" and time.monotonic() - started < 10
    assert not pid_alive(engine_pid)


def test_worker_shutdown_requeues_and_the_next_worker_resumes(settings, factory, api, worker):
    client, headers = api
    first = worker()
    job_id = client.post("/v1/jobs", json=job_body("fake:slow"), headers=headers).json()["id"]
    wait_for(
        lambda: client.get(f"/v1/jobs/{job_id}", headers=headers).json()["last_checkpoint"],
        90,
        what="the first checkpoint",
    )

    assert (
        stop_worker(first, worker_stop_timeout(settings)) == 0
    )  # warm shutdown: engine stopped, job handed back
    job = client.get(f"/v1/jobs/{job_id}", headers=headers).json()
    assert job["status"] == "queued", job

    worker()
    job = wait_for_status(client, headers, job_id, {"succeeded", "failed"}, timeout=90)
    assert job["status"] == "succeeded" and job["attempt"] == 2
    assert "--resume" in (settings.jobs_dir / job_id / "argv.json").read_text()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_embedded_launcher_runs_a_job_and_stops_cleanly(tmp_path, factory):
    from worker_testkit import make_settings

    settings = make_settings(tmp_path, port=_free_port())
    token = create_token(factory)
    env = {**os.environ, **settings_env(settings), "PYTHONPATH": str(REPO_ROOT)}
    code = "from papertrain.launcher import run_embedded; from core.settings import get_settings; run_embedded(get_settings())"
    launcher = subprocess.Popen([sys.executable, "-c", code], env=env)
    base = f"http://{settings.host}:{settings.port}"
    headers = {"Authorization": f"Bearer {token}"}
    try:

        def healthy() -> bool:
            try:
                return httpx.get(f"{base}/healthz", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(healthy, 60, interval=0.5, what="the embedded api")
        with httpx.Client(base_url=base, timeout=10) as client:
            job_id = client.post("/v1/jobs", json=job_body("fake:ok"), headers=headers).json()["id"]
            job = wait_for_status(client, headers, job_id, {"succeeded", "failed"}, timeout=90)
        assert job["status"] == "succeeded", job
        worker_pid = int(job["worker_id"].rsplit(":", 1)[1])
        assert pid_alive(worker_pid)

        launcher.send_signal(signal.SIGINT)  # Ctrl-C
        assert launcher.wait(40) == 0
        wait_for(lambda: not pid_alive(worker_pid), 10, what="the worker to exit")
    finally:
        if launcher.poll() is None:
            launcher.kill()
            launcher.wait()
