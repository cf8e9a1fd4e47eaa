"""The worker drives the real engine (`python -m engine.train`) on a tiny SFT job: the event stream the
engine writes is the one the worker reads."""

from __future__ import annotations

import sys

import pytest
from sqlalchemy import func, select
from worker_testkit import add_job, get_job, make_settings

from core.models import Job, JobEvent
from core.states import JobStatus
from engine.spec import parse_job_spec, resolve
from worker.tasks import execute_job

pytestmark = pytest.mark.slow
STEPS = 3


def test_worker_runs_the_real_engine_on_a_tiny_sft_job(tmp_path, factory):
    settings = make_settings(tmp_path, engine_python=sys.executable)
    spec = resolve(
        parse_job_spec(
            {
                "algorithm": "sft",
                "model": "tiny:llama",
                "dataset": {"builtin": "chat", "num_rows": 16},
                "config": {"max_steps": STEPS, "per_device_train_batch_size": 4, "save_steps": 2},
            }
        )
    )
    job_id = add_job(factory, "real")
    with factory() as session, session.begin():
        session.get(Job, job_id).spec_resolved = spec

    outcome = execute_job(settings, job_id, session_factory=factory, tracking=False)

    job = get_job(factory, job_id)
    assert outcome == "succeeded", job.error
    assert job.status == JobStatus.succeeded
    assert (job.last_step, job.total_steps) == (STEPS, STEPS)
    assert job.last_checkpoint and job.last_checkpoint.startswith(str(settings.jobs_dir.resolve() / job_id))
    with factory() as session:
        counts = dict(
            session.execute(
                select(JobEvent.kind, func.count()).where(JobEvent.job_id == job_id).group_by(JobEvent.kind)
            ).all()
        )
        losses = session.scalars(
            select(JobEvent.data).where(JobEvent.job_id == job_id, JobEvent.kind == "metrics")
        ).all()
    assert counts["progress"] >= STEPS and counts["checkpoint"] >= 1
    assert all(
        isinstance(d["metrics"].get("train/loss"), float) for d in losses if "train/loss" in d["metrics"]
    )
    assert any("train/loss" in d["metrics"] for d in losses)
