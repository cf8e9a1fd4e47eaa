"""enqueue_job sends only after commit, exactly once, with nothing but the job id; a rollback sends nothing.

The messages go through a real Celery app on kombu's in-memory transport and are read back from the queue.
"""

from __future__ import annotations

import uuid
from functools import partial

import pytest
from kombu.exceptions import OperationalError
from worker_testkit import add_job, make_settings

from core.celery_app import RUN_JOB_TASK, make_celery
from core.models import Job
from core.queue import enqueue_job, send_run_job


@pytest.fixture
def app(tmp_path):
    # a fresh virtual host per test: the in-memory broker is shared by the whole process
    return make_celery(make_settings(tmp_path, broker_url=f"memory://localhost/{uuid.uuid4().hex}"))


def drain(app, queue: str = "cpu") -> list:
    messages = []
    with app.connection_for_read() as conn:
        q = conn.SimpleQueue(queue, no_ack=True)
        while True:
            try:
                messages.append(q.get(timeout=0.2))
            except q.Empty:
                return messages


def test_rollback_sends_nothing(app, factory):
    job_id = add_job(factory)
    with factory() as session:
        enqueue_job(session, session.get(Job, job_id), sender=partial(send_run_job, app=app))
        session.rollback()
        session.commit()  # a later commit in the same session must not resurrect the dropped send
    assert drain(app) == []


def test_close_without_commit_sends_nothing(app, factory):
    job_id = add_job(factory)
    session = factory()
    enqueue_job(session, session.get(Job, job_id), sender=partial(send_run_job, app=app))
    session.close()
    assert drain(app) == []


def test_commit_sends_exactly_one_message_with_only_the_job_id(app, factory):
    job_id = add_job(factory)
    with factory() as session:
        job = session.get(Job, job_id)
        enqueue_job(session, job, sender=partial(send_run_job, app=app))
        assert drain(app) == []  # nothing before the commit
        session.commit()
        session.commit()  # a second commit sends nothing more

    (message,) = drain(app)
    args, kwargs, _embed = message.payload
    assert message.headers["task"] == RUN_JOB_TASK
    assert args == [job_id] and kwargs == {}
    assert message.content_type == "application/json"
    assert message.delivery_info["routing_key"] == "cpu"


def test_job_is_sent_to_its_hardware_queue(app, factory):
    job_id = add_job(factory)
    with factory() as session, session.begin():
        job = session.get(Job, job_id)
        job.queue = "gpu-8"
        enqueue_job(session, job, sender=partial(send_run_job, app=app))
    assert drain(app, "cpu") == []
    (message,) = drain(app, "gpu-8")
    assert message.payload[0] == [job_id]


def test_a_failed_send_does_not_break_the_committed_transaction(factory, caplog):
    job_id = add_job(factory)

    def broken(job_id: str, queue: str) -> None:
        raise OperationalError("broker down")

    with factory() as session, session.begin():
        enqueue_job(session, session.get(Job, job_id), sender=broken)
    assert any(job_id in r.getMessage() and "could not be sent" in r.getMessage() for r in caplog.records)
