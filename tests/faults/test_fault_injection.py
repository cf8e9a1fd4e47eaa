"""Fault injection on the production path: the api and a real Celery worker (real engine, tiny model) on a
private PostgreSQL, Redis and MLflow server. While three jobs train, the worker is killed with SIGKILL
(another one is started), Redis crashes and comes back empty (a queued job's message is lost with it),
the MLflow server stops and starts again, and PostgreSQL restarts. Every job must end `succeeded` with
each of its steps recorded exactly once (metrics and progress events, and MLflow's metric history); the
test prints a table of faults, jobs, steps lost and steps duplicated."""

from __future__ import annotations

import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import private_services
import pytest
from fastapi.testclient import TestClient
from mlflow_testkit import MlflowServer
from private_services import PrivatePostgres, PrivateRedis
from sqlalchemy.orm import sessionmaker
from worker_testkit import create_token, make_settings, pid_alive, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]

STEPS = 8


def job_body(name: str) -> dict[str, Any]:
    """A tiny SFT job with a checkpoint (and metrics) at every step."""
    return {
        "algorithm": "sft",
        "name": name,
        "model": "tiny:llama",
        "dataset": {"builtin": "chat", "num_rows": 64},
        "config": {
            "max_steps": STEPS,
            "per_device_train_batch_size": 2,
            "save_steps": 1,
            "save_total_limit": 2,
            "logging_steps": 1,
        },
    }


@dataclass
class Platform:
    folder: Path
    pg: PrivatePostgres
    redis: PrivateRedis
    mlflow: MlflowServer
    settings: Any
    client: TestClient
    headers: dict[str, str]
    worker: Any = None
    faults: list[tuple[str, str]] = field(default_factory=list)  # (fault, job name)

    def get(self, url: str, **params: Any) -> Any:
        """The api's answer, or None while it cannot answer (its database may be restarting)."""
        try:
            res = self.client.get(url, headers=self.headers, params=params)
        except Exception:
            return None
        return res.json() if res.status_code == 200 else None

    def submit(self, name: str) -> str:
        res = self.client.post("/v1/jobs", json=job_body(name), headers=self.headers)
        assert res.status_code == 201, res.text
        return res.json()["id"]

    def job(self, job_id: str) -> dict[str, Any] | None:
        return self.get(f"/v1/jobs/{job_id}")

    def wait_running_at(self, job_id: str, step: int, timeout: float = 240) -> dict[str, Any]:
        def there() -> dict[str, Any] | None:
            job = self.job(job_id)
            if job and job["status"] in ("failed", "cancelled"):
                raise AssertionError(f"job {job_id} ended {job['status']}: {job.get('error')}")
            return job if job and job["status"] == "running" and (job["last_step"] or 0) >= step else None

        return wait_for(there, timeout, interval=0.2, what=f"job {job_id} running at step {step}")

    def inject(self, fault: str, job_id: str, name: str) -> None:
        """Record a fault; it must hit a job that is still training."""
        job = self.job(job_id)
        assert job and job["status"] == "running" and job["last_step"] < STEPS, (fault, job)
        self.faults.append((fault, name))


@pytest.fixture
def platform(tmp_path):
    absent = private_services.missing()
    if absent:
        pytest.skip(f"fault injection needs {', '.join(absent)}")
    from api.main import create_app
    from core.celery_app import configure_celery
    from core.db import make_engine, migrate
    from papertrain.launcher import start_worker, stop_worker, worker_stop_timeout

    # PostgreSQL runs as its own OS user, which cannot enter pytest's private temporary folders
    folder = Path(tempfile.mkdtemp(prefix="papertrain-faults-"))
    folder.chmod(0o755)
    pg, redis = PrivatePostgres(folder / "pg"), PrivateRedis(folder / "redis")
    (folder / "mlflow").mkdir()
    mlflow = MlflowServer(
        f"sqlite:///{folder / 'mlflow' / 'mlflow.db'}", folder / "mlflow", folder / "mlflow.log"
    )
    worker = None
    engine = None
    try:
        pg.start()
        redis.start()
        mlflow.start()
        db_url = pg.create_database("papertrain")
        settings = make_settings(
            tmp_path,
            database_url=db_url,
            broker_url=redis.url,
            mlflow_tracking_uri=mlflow.url,
            engine_python=sys.executable,  # the real engine
            heartbeat_timeout_s=8,
            resend_queued_after_s=6,
            embedded=False,
        )
        migrate(db_url)
        engine = make_engine(db_url)
        token = create_token(sessionmaker(bind=engine, expire_on_commit=False))
        configure_celery(settings)
        with TestClient(create_app(settings)) as client:
            plat = Platform(folder, pg, redis, mlflow, settings, client, {"Authorization": f"Bearer {token}"})
            plat.worker = worker = start_worker(settings, "cpu")
            try:
                yield plat
            finally:
                worker = plat.worker
    finally:
        if worker is not None:
            stop_worker(worker, worker_stop_timeout(settings))
        configure_celery(None)
        if engine is not None:
            engine.dispose()
        mlflow.stop()
        redis.stop()
        pg.stop("immediate")
        shutil.rmtree(folder, ignore_errors=True)


def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def _step_counts(plat: Platform, job_id: str, kind: str) -> Counter[int]:
    page = plat.get(f"/v1/jobs/{job_id}/events", kind=kind, limit=1000)
    assert page is not None and not page["has_more"]
    return Counter(e["step"] for e in page["events"])


def _mlflow_steps(plat: Platform, run_id: str) -> Counter[int]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=plat.mlflow.url)
    return Counter(m.step for m in client.get_metric_history(run_id, "train/loss"))


def _lost_and_duplicated(counts: Counter[int]) -> tuple[int, int]:
    expected = set(range(1, STEPS + 1))
    lost = len(expected - set(counts))
    duplicated = sum(n - 1 for n in counts.values() if n > 1) + sum(1 for s in counts if s not in expected)
    return lost, duplicated


def test_jobs_survive_a_killed_worker_and_restarts_of_redis_postgres_and_mlflow(platform, capsys):
    plat = platform
    from papertrain.launcher import start_worker

    # 1. SIGKILL the worker mid-job (its engine dies with it); another worker's reaper re-queues the job,
    #    which resumes from its last recorded checkpoint.
    killed = plat.submit("worker-killed")
    plat.wait_running_at(killed, 2)
    engines = _children(plat.worker.pid)
    assert engines, "the worker runs no engine"
    plat.inject("kill -9 the worker mid-job; start another", killed, "worker-killed")
    os.kill(plat.worker.pid, signal.SIGKILL)
    plat.worker.wait(10)
    wait_for(lambda: not any(pid_alive(p) for p in engines), 15, what="the engine to die with its worker")
    plat.worker = start_worker(plat.settings, "cpu")

    # 2. Redis crashes mid-job and comes back empty: the running job goes on, the message of the job
    #    queued behind it is gone and is sent again; the worker reconnects. Then the MLflow server stops
    #    for a while (restarted in the background): the job goes on and its run catches up.
    broker = plat.submit("broker-and-tracking")
    plat.wait_running_at(broker, 1)
    waiting = plat.submit("queued-then-database")
    plat.inject("Redis crash + restart (empty) mid-job", broker, "broker-and-tracking")
    plat.faults.append(("Redis crash + restart while queued (message lost)", "queued-then-database"))
    plat.redis.crash()
    time.sleep(1)
    plat.redis.start()
    plat.inject("MLflow server stop mid-job, start again", broker, "broker-and-tracking")
    plat.mlflow.stop()
    restart = threading.Thread(target=lambda: (time.sleep(3), plat.mlflow.start()))
    restart.start()

    # 3. PostgreSQL restarts mid-job: events, heartbeats and the api wait for it.
    plat.wait_running_at(waiting, 1)
    plat.inject("PostgreSQL restart mid-job", waiting, "queued-then-database")
    plat.pg.restart(down_s=2)
    restart.join()

    jobs = {"worker-killed": killed, "broker-and-tracking": broker, "queued-then-database": waiting}
    final = {}
    for name, job_id in jobs.items():
        final[name] = wait_for(
            lambda job_id=job_id: (
                (j := plat.job(job_id)) and j["status"] in ("succeeded", "failed", "cancelled") and j
            ),
            300,
            interval=0.5,
            what=f"job {name} to end",
        )

    rows = []
    for name, job_id in jobs.items():
        job = final[name]
        metrics = _lost_and_duplicated(_step_counts(plat, job_id, "metrics"))
        progress = _lost_and_duplicated(_step_counts(plat, job_id, "progress"))
        run_id = job.get("mlflow_run_id")
        mlflow_counts = (
            wait_for(
                lambda run_id=run_id: (
                    (c := _mlflow_steps(plat, run_id)) and _lost_and_duplicated(c)[0] == 0 and c
                ),
                60,
                interval=1,
                what=f"MLflow to catch up on {name}",
            )
            if run_id
            else Counter()
        )
        mlflow = _lost_and_duplicated(mlflow_counts) if run_id else (STEPS, 0)
        faults = [fault for fault, job_name in plat.faults if job_name == name]
        rows.append((name, job["status"], job["attempt"], faults, metrics, progress, mlflow))

    table = [
        "",
        f"{'job':28} {'status':10} {'att':>3}  {'lost':>4} {'dup':>4}  {'mlflow lost/dup':>15}  faults",
    ]
    for name, status, attempt, faults, metrics, progress, mlflow in rows:
        lost, dup = metrics[0] + progress[0], metrics[1] + progress[1]
        table.append(
            f"{name:28} {status:10} {attempt:>3}  {lost:>4} {dup:>4}  {f'{mlflow[0]}/{mlflow[1]}':>15}  {'; '.join(faults)}"
        )
    total_lost = sum(r[4][0] + r[5][0] + r[6][0] for r in rows)
    total_dup = sum(r[4][1] + r[5][1] + r[6][1] for r in rows)
    table.append(
        f"faults injected: {len(plat.faults)}, jobs: {len(rows)}, steps lost: {total_lost}, "
        f"steps duplicated: {total_dup} (of {len(rows) * STEPS} steps, counted in metrics, progress and MLflow)"
    )
    with capsys.disabled():
        print("\n".join(table))

    assert [r[1] for r in rows] == ["succeeded"] * len(rows), final
    assert (total_lost, total_dup) == (0, 0), "\n".join(table)
    assert final["worker-killed"]["attempt"] >= 2  # it really was resumed by another worker
