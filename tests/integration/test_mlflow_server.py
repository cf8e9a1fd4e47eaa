"""The MLflow server path for real: `mlflow server` (PostgreSQL backend store, artifacts served through the
server) as a process; a worker logs a job to it over HTTP. Params, metric history, samples, checkpoints and
the final model arrive, stored by the server. A stopped server neither fails nor holds a job, and the run
catches up when the server is back, tagged incomplete where something could no longer be sent."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest
from mlflow_testkit import MlflowServer
from sqlalchemy.orm import sessionmaker
from worker_testkit import add_job, get_job, make_settings, wait_for

from core.db import make_engine, migrate
from core.models import JobEvent
from core.states import JobStatus
from worker.tasks import TRACKING_TIMEOUT_S, execute_job
from worker.tracking import INCOMPLETE_TAG

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory, pg_databases):
    # One server for the module: a fresh backend store runs MLflow's migrations, the slow part of a start.
    folder = tmp_path_factory.mktemp("mlflow-server")
    artifacts = folder / "artifacts"
    artifacts.mkdir()
    server = MlflowServer(pg_databases(), artifacts, folder / "mlflow-server.log")
    try:
        server.start()
        yield server
    finally:
        server.stop()  # also when it never answered


@pytest.fixture
def running_mlflow_server(mlflow_server):
    if mlflow_server.proc is None or mlflow_server.proc.poll() is not None:  # a test before stopped it
        mlflow_server.start()
    return mlflow_server


@pytest.fixture
def worker_setup(tmp_path, pg_url, running_mlflow_server):
    settings = make_settings(tmp_path, database_url=pg_url, mlflow_tracking_uri=running_mlflow_server.url)
    migrate(pg_url)
    engine = make_engine(pg_url)
    try:
        yield settings, sessionmaker(bind=engine, expire_on_commit=False)
    finally:
        engine.dispose()


def client_for(server: MlflowServer):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=server.url)


def test_a_job_logs_params_metrics_samples_and_checkpoints_through_the_server(
    worker_setup, mlflow_server, tmp_path
):
    settings, factory = worker_setup
    job_id = add_job(factory, "fake:ok")

    assert execute_job(settings, job_id, session_factory=factory, sender=lambda *a: None) == "succeeded"

    job = get_job(factory, job_id)
    client = client_for(mlflow_server)
    run = client.get_run(job.mlflow_run_id)
    assert run.info.status == "FINISHED" and run.data.tags["papertrain.job_id"] == job_id
    assert INCOMPLETE_TAG not in run.data.tags
    assert run.data.params["config.learning_rate"] == str(job.spec_resolved["config"]["learning_rate"])
    assert run.data.params["model"] == "tiny:llama"
    history = client.get_metric_history(run.info.run_id, "train/loss")
    assert sorted((m.step, m.value) for m in history) == [(s, 2.0 / s) for s in (1, 2, 3)]
    # Artifacts went through the server into its store, not into a folder of the worker.
    assert run.info.artifact_uri.startswith("mlflow-artifacts:")
    assert not Path(settings.mlflow_artifact_root).exists() or not any(
        Path(settings.mlflow_artifact_root).iterdir()
    )
    stored = {p.relative_to(mlflow_server.artifacts).as_posix() for p in mlflow_server.artifacts.rglob("*.*")}
    run_dir = next(p for p in stored if run.info.run_id in p).split(run.info.run_id)[0] + run.info.run_id
    assert {
        f"{run_dir}/artifacts/samples/step_000003.json",
        f"{run_dir}/artifacts/checkpoints/checkpoint-2/weights.txt",
        f"{run_dir}/artifacts/model/weights.txt",
    } <= stored
    downloaded = client.download_artifacts(run.info.run_id, "model/weights.txt", str(tmp_path))
    assert Path(downloaded).read_text() == "final\n"


def test_a_stopped_server_neither_fails_nor_holds_a_job_and_the_run_catches_up(worker_setup, mlflow_server):
    settings, factory = worker_setup
    mlflow_server.stop(kill=True)  # gone, as after a crash
    job_id = add_job(factory, "fake:ok")

    started = time.monotonic()
    outcome = execute_job(settings, job_id, session_factory=factory, sender=lambda *a: None)

    assert outcome == "succeeded"
    # The job did not wait for MLflow: not for the tracking timeout, nor for MLflow's own HTTP retries.
    assert time.monotonic() - started < TRACKING_TIMEOUT_S - 15
    job = get_job(factory, job_id)
    assert job.status == JobStatus.succeeded and job.mlflow_run_id is None
    assert any("sent in the background when it answers" in m for m in log_messages(factory, job_id))

    # While the server was away the engine's checkpoint folder went away too: that copy is lost for good.
    shutil.rmtree(Path(job.output_dir) / "checkpoint-2")
    mlflow_server.start()

    # The worker's tracker is still retrying: the run appears, complete but for the checkpoint, and the
    # job row learns its id.
    run_id = wait_for(lambda: get_job(factory, job_id).mlflow_run_id, 180, interval=1, what="the late run")
    client = client_for(mlflow_server)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.tags["papertrain.job_id"] == job_id
    assert run.data.params["model"] == "tiny:llama"
    history = client.get_metric_history(run_id, "train/loss")
    assert sorted((m.step, m.value) for m in history) == [(s, 2.0 / s) for s in (1, 2, 3)]
    assert {a.path for a in client.list_artifacts(run_id)} == {"samples", "model"}
    assert "checkpoints/checkpoint-2" in run.data.tags[INCOMPLETE_TAG]
    assert any("checkpoint-2 is gone" in m for m in log_messages(factory, job_id))


def log_messages(factory, job_id: str) -> list[str]:
    with factory() as session:
        return [e.data["message"] for e in session.query(JobEvent).filter_by(job_id=job_id, kind="log")]
