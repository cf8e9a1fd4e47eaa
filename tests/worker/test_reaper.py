"""The reaper: a running job whose heartbeat went stale is re-queued (attempts left) or failed (none left)."""

from __future__ import annotations

import time
from datetime import timedelta

from worker_testkit import add_job, get_job

from core.models import Job, utcnow
from core.states import JobStatus
from core.transitions import transition
from worker.reaper import reap_stale_jobs, resend_waiting_jobs

TIMEOUT_S = 120


def start(factory, job_id: str, *, attempt: int, heartbeat_age_s: float, status=JobStatus.running, **fields):
    """Put the job where a worker would have left it `heartbeat_age_s` seconds ago."""
    beat = utcnow() - timedelta(seconds=heartbeat_age_s)
    with factory() as session, session.begin():
        transition(
            session,
            job_id,
            JobStatus.running,
            worker_id="gone-host:1",
            attempt=attempt,
            started_at=beat,
            heartbeat_at=beat,
            **fields,
        )
        if status == JobStatus.cancelling:
            transition(session, job_id, JobStatus.cancelling, cancel_requested_at=utcnow())


def test_stale_job_with_attempts_left_is_requeued_to_resume(settings, factory):
    job_id = add_job(factory)
    start(factory, job_id, attempt=1, heartbeat_age_s=TIMEOUT_S + 5, last_checkpoint="/jobs/x/checkpoint-2")
    sent = []

    reaped = reap_stale_jobs(factory, heartbeat_timeout_s=TIMEOUT_S, sender=lambda *a: sent.append(a))

    assert reaped == [(job_id, "queued")]
    job = get_job(factory, job_id)
    assert job.status == JobStatus.queued and job.worker_id is None and job.heartbeat_at is None
    assert job.last_checkpoint == "/jobs/x/checkpoint-2"  # the next claim passes --resume
    assert sent == [(job_id, "cpu")]


def test_requeued_job_runs_as_the_next_attempt_and_resumes(settings, factory):
    from worker.tasks import execute_job

    job_id = add_job(factory)
    checkpoint = settings.jobs_dir.resolve() / job_id / "checkpoint-2"
    checkpoint.mkdir(parents=True)
    start(factory, job_id, attempt=1, heartbeat_age_s=TIMEOUT_S + 5, last_checkpoint=str(checkpoint))
    reap_stale_jobs(factory, heartbeat_timeout_s=TIMEOUT_S, sender=lambda *a: None)

    assert execute_job(settings, job_id, session_factory=factory, tracking=False) == "succeeded"

    job = get_job(factory, job_id)
    assert job.attempt == 2
    assert "--resume" in (settings.jobs_dir / job_id / "argv.json").read_text()


def test_stale_job_out_of_attempts_fails(settings, factory):
    job_id = add_job(factory)
    start(factory, job_id, attempt=3, heartbeat_age_s=TIMEOUT_S + 5)
    sent = []

    reaped = reap_stale_jobs(factory, heartbeat_timeout_s=TIMEOUT_S, sender=lambda *a: sent.append(a))

    assert reaped == [(job_id, "failed")]
    job = get_job(factory, job_id)
    assert job.status == JobStatus.failed and job.max_attempts == 3
    assert job.error["code"] == "worker_lost" and job.error["category"] == "infra"
    assert "3 attempts" in job.error["message"]
    assert sent == []


def test_fresh_heartbeat_is_left_alone(settings, factory):
    job_id = add_job(factory)
    start(factory, job_id, attempt=1, heartbeat_age_s=TIMEOUT_S - 10)

    assert reap_stale_jobs(factory, heartbeat_timeout_s=TIMEOUT_S, sender=lambda *a: None) == []
    assert get_job(factory, job_id).status == JobStatus.running


def test_stale_cancelling_job_is_cancelled(settings, factory):
    job_id = add_job(factory)
    start(factory, job_id, attempt=1, heartbeat_age_s=TIMEOUT_S + 5, status=JobStatus.cancelling)

    assert reap_stale_jobs(factory, heartbeat_timeout_s=TIMEOUT_S, sender=lambda *a: None) == [
        (job_id, "cancelled")
    ]


def test_queued_and_finished_jobs_are_never_touched(settings, factory):
    queued = add_job(factory)
    done = add_job(factory)
    start(factory, done, attempt=1, heartbeat_age_s=10 * TIMEOUT_S)
    with factory() as session, session.begin():
        transition(session, done, JobStatus.succeeded)
        session.get(Job, queued).updated_at = utcnow() - timedelta(days=1)

    assert reap_stale_jobs(factory, heartbeat_timeout_s=TIMEOUT_S, sender=lambda *a: None) == []


RESEND_S = 600


def test_a_job_waiting_too_long_in_queued_is_sent_again_once_per_period(settings, factory):
    waiting, running = add_job(factory), add_job(factory)
    start(factory, running, attempt=1, heartbeat_age_s=0)
    sent = []
    later = utcnow() + timedelta(seconds=RESEND_S + 1)

    assert resend_waiting_jobs(factory, resend_after_s=RESEND_S, sender=lambda *a: sent.append(a)) == []
    resent = resend_waiting_jobs(
        factory, resend_after_s=RESEND_S, now=later, sender=lambda *a: sent.append(a)
    )
    assert resent == [waiting] and sent == [(waiting, "cpu")]
    # the clock restarted at the re-send: the next pass in the same period sends nothing more
    assert (
        resend_waiting_jobs(factory, resend_after_s=RESEND_S, now=later, sender=lambda *a: sent.append(a))
        == []
    )
    assert get_job(factory, waiting).status == JobStatus.queued


def test_a_job_whose_data_is_still_going_to_mlflow_keeps_its_heartbeat(settings, factory, monkeypatch):
    # The engine has finished; MLflow takes longer to answer than the heartbeat timeout. The worker still
    # owns the job while it waits, so its heartbeats go on and the reaper leaves the job alone.
    from worker import tasks

    reaper_timeout_s = 2.5  # five heartbeat intervals of the test settings
    seen: list[tuple[str, str]] = []

    class SlowMlflow:
        run_id, warnings = None, []

        def on_event(self, event):
            pass

        def close(self, status, timeout_s):
            time.sleep(4.0)
            seen.extend(
                reap_stale_jobs(factory, heartbeat_timeout_s=reaper_timeout_s, sender=lambda *a: None)
            )
            return True

    monkeypatch.setattr(tasks, "_make_tracker", lambda settings, claimed: SlowMlflow())
    job_id = add_job(factory)

    assert tasks.execute_job(settings, job_id, session_factory=factory) == "succeeded"

    assert seen == []
    job = get_job(factory, job_id)
    assert job.status == JobStatus.succeeded and job.attempt == 1
