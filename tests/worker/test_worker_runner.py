"""The worker's job lifecycle against a fake engine: events become rows, exits become statuses, cancel and
shutdown stop the engine in time, an MLflow outage never fails a job."""

from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import select
from worker_testkit import add_job, get_job, make_settings, pid_alive, wait_for

from core.models import JobEvent, JobTransition, utcnow
from core.states import JobStatus
from core.transitions import transition
from worker.runner import LOG_TAIL_LINES, engine_command
from worker.tasks import execute_job

FAKE_STEPS = 3


def events_of(factory, job_id: str, kind: str | None = None) -> list[JobEvent]:
    with factory() as session:
        query = select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.id)
        if kind:
            query = query.where(JobEvent.kind == kind)
        return list(session.scalars(query))


def history(factory, job_id: str) -> list[tuple[str | None, str]]:
    with factory() as session:
        rows = session.scalars(
            select(JobTransition).where(JobTransition.job_id == job_id).order_by(JobTransition.id)
        )
        return [(r.from_status and r.from_status.value, r.to_status.value) for r in rows]


def request_cancel(factory, job_id: str) -> None:
    """What the api does for a running job."""
    with factory() as session, session.begin():
        transition(session, job_id, JobStatus.cancelling, reason="test", cancel_requested_at=utcnow())


def run_in_thread(settings, job_id: str, **kwargs) -> tuple[threading.Thread, dict]:
    out: dict = {}

    def target() -> None:
        out["outcome"] = execute_job(settings, job_id, **kwargs)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, out


def test_engine_events_become_job_events_and_job_fields(settings, factory):
    job_id = add_job(factory, "fake:ok")

    assert execute_job(settings, job_id, session_factory=factory, tracking=False) == "succeeded"

    job = get_job(factory, job_id)
    out_dir = Path(settings.jobs_dir).resolve() / job_id
    assert job.status == JobStatus.succeeded
    assert (job.last_step, job.total_steps) == (FAKE_STEPS, FAKE_STEPS)
    assert job.last_checkpoint == str(out_dir / "checkpoint-2")
    assert job.attempt == 1 and job.worker_id and job.started_at and job.finished_at and job.error is None
    assert history(factory, job_id) == [(None, "queued"), ("queued", "running"), ("running", "succeeded")]
    # the engine saw the resolved spec
    assert json.loads((out_dir / "spec.json").read_text()) == job.spec_resolved

    metrics = events_of(factory, job_id, "metrics")
    assert [(e.step, e.data["metrics"]["train/loss"]) for e in metrics] == [
        (step, 2.0 / step) for step in range(1, FAKE_STEPS + 1)
    ]
    progress = events_of(factory, job_id, "progress")
    assert [e.step for e in progress] == [1, 2, 3] and progress[-1].data["total_steps"] == FAKE_STEPS
    (checkpoint,) = events_of(factory, job_id, "checkpoint")
    assert (checkpoint.step, checkpoint.data["path"]) == (2, str(out_dir / "checkpoint-2"))
    (samples,) = events_of(factory, job_id, "samples")
    assert samples.data["samples"][0]["completion"] == "12"
    logs = events_of(factory, job_id, "log")
    assert any(e.data.get("final_path") == str(out_dir / "final") for e in logs)
    statuses = [e.data["to"] for e in events_of(factory, job_id, "status")]
    assert statuses == ["queued", "running", "succeeded"]


def test_crashing_engine_fails_the_job_with_message_and_log_tail(settings, factory):
    job_id = add_job(factory, "fake:crash")

    assert execute_job(settings, job_id, session_factory=factory, tracking=False) == "failed"

    job = get_job(factory, job_id)
    assert job.status == JobStatus.failed
    assert job.error["code"] == "engine_error"
    assert job.error["message"] == "RuntimeError: boom"
    assert job.error["category"] == "platform"
    assert job.error["exit_code"] == 3
    tail = job.error["log_tail"]
    assert len(tail) == LOG_TAIL_LINES  # the fake wrote more than that: only the last ones are kept
    assert "RuntimeError: boom" in tail and "stderr line 59" in tail and "stderr line 0" not in tail
    assert tail[-1] == "RuntimeError: boom"  # the traceback's last line
    (error_event,) = events_of(factory, job_id, "error")
    assert error_event.data["message"] == "RuntimeError: boom"


def test_engine_that_cannot_start_fails_the_job(tmp_path, factory):
    settings = make_settings(tmp_path, engine_python=str(tmp_path / "no-such-python"))
    job_id = add_job(factory)

    assert execute_job(settings, job_id, session_factory=factory, tracking=False) == "failed"

    error = get_job(factory, job_id).error
    assert error["code"] == "engine_spawn_failed" and "no-such-python" in error["message"]


def test_cancel_running_job_stops_engine_within_10s(settings, factory):
    job_id = add_job(factory, "fake:hang")
    thread, out = run_in_thread(settings, job_id, session_factory=factory, tracking=False)
    pid_file = Path(settings.jobs_dir).resolve() / job_id / "pid"
    wait_for(lambda: len(events_of(factory, job_id, "progress")) >= 2, 20, what="the engine to make progress")
    pid = int(pid_file.read_text())

    started = time.monotonic()
    request_cancel(factory, job_id)
    thread.join(10)
    elapsed = time.monotonic() - started

    assert not thread.is_alive(), "the worker did not stop the engine within 10 s"
    assert elapsed < 10
    assert out["outcome"] == "cancelled"
    assert get_job(factory, job_id).status == JobStatus.cancelled
    assert not pid_alive(pid)
    assert history(factory, job_id)[-2:] == [("running", "cancelling"), ("cancelling", "cancelled")]
    # the engine's own goodbye made it into the stream
    assert any("SIGTERM" in e.data.get("message", "") for e in events_of(factory, job_id, "log"))


@pytest.mark.slow
def test_engine_ignoring_sigterm_is_killed_after_grace(settings, factory):
    job_id = add_job(factory, "fake:stubborn")
    thread, out = run_in_thread(settings, job_id, session_factory=factory, tracking=False)
    wait_for(lambda: events_of(factory, job_id, "progress"), 20, what="the engine to start")
    pid = int((Path(settings.jobs_dir).resolve() / job_id / "pid").read_text())

    started = time.monotonic()
    request_cancel(factory, job_id)
    thread.join(10)

    assert not thread.is_alive()
    assert settings.cancel_grace_s <= time.monotonic() - started < 10
    assert out["outcome"] == "cancelled" and not pid_alive(pid)


def test_worker_shutdown_stops_engine_and_requeues_job(settings, factory):
    job_id = add_job(factory, "fake:hang")
    sent: list[tuple[str, str]] = []
    stop = threading.Event()
    thread, out = run_in_thread(
        settings,
        job_id,
        session_factory=factory,
        tracking=False,
        stop_event=stop,
        sender=lambda *a: sent.append(a),
    )
    wait_for(lambda: events_of(factory, job_id, "progress"), 20, what="the engine to start")

    stop.set()
    thread.join(10)

    assert not thread.is_alive() and out["outcome"] == "interrupted"
    job = get_job(factory, job_id)
    assert job.status == JobStatus.queued and job.worker_id is None
    assert sent == [(job_id, "cpu")]


def test_message_for_a_job_that_is_not_queued_does_nothing(settings, factory):
    job_id = add_job(factory)
    with factory() as session, session.begin():
        transition(session, job_id, JobStatus.cancelled, reason="cancelled while queued")

    assert execute_job(settings, job_id, session_factory=factory, tracking=False) == "skipped"
    assert execute_job(settings, "job_000000000000", session_factory=factory, tracking=False) == "skipped"

    assert not (Path(settings.jobs_dir) / job_id).exists()
    assert get_job(factory, job_id).status == JobStatus.cancelled


def test_job_with_a_checkpoint_is_resumed(settings, factory):
    """A job re-queued after a lost worker carries last_checkpoint: the engine gets --resume."""
    out_dir = Path(settings.jobs_dir).resolve()
    job_id = add_job(factory, attempt=1)
    checkpoint = out_dir / job_id / "checkpoint-2"
    checkpoint.mkdir(parents=True)
    with factory() as session, session.begin():
        job = session.get(type(get_job(factory, job_id)), job_id)
        job.last_checkpoint = str(checkpoint)

    assert execute_job(settings, job_id, session_factory=factory, tracking=False) == "succeeded"

    argv = json.loads((out_dir / job_id / "argv.json").read_text())
    assert argv == engine_command("-", out_dir / job_id / "spec.json", out_dir / job_id, resume=True)[1:]
    assert [e.step for e in events_of(factory, job_id, "progress")] == [3]  # continued after step 2
    assert get_job(factory, job_id).attempt == 2


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_mlflow_down_job_still_succeeds_with_a_warning(tmp_path, factory, caplog):
    settings = make_settings(tmp_path, mlflow_tracking_uri=f"http://127.0.0.1:{_closed_port()}")
    job_id = add_job(factory)

    started = time.monotonic()
    with caplog.at_level("WARNING"):
        outcome = execute_job(settings, job_id, session_factory=factory, tracking_timeout_s=5)

    assert outcome == "succeeded"
    assert time.monotonic() - started < 30
    assert get_job(factory, job_id).status == JobStatus.succeeded
    assert any("MLflow" in r.getMessage() for r in caplog.records if r.levelname == "WARNING")
    warnings = [e for e in events_of(factory, job_id, "log") if e.data.get("level") == "warning"]
    assert any("MLflow" in e.data["message"] for e in warnings)
    # the metrics are still in the job's own events
    assert len(events_of(factory, job_id, "metrics")) == FAKE_STEPS
