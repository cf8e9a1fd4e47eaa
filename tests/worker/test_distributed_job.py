"""The `zero` preset (DeepSpeed ZeRO-3, 2 processes) through the worker on this CPU: the worker launches
torchrun, the job succeeds, DeepSpeed's config is among its events and the final model is a plain Hugging
Face model."""

from __future__ import annotations

import importlib.util
import sys

import pytest
from sqlalchemy import select
from worker_testkit import add_job, get_job, make_settings

from core.models import Job, JobEvent
from core.states import JobStatus
from engine.presets import apply_preset, get_preset
from engine.spec import parse_job_spec, resolve, unsupported
from worker.tasks import execute_job

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None, reason="needs the deepspeed extra"),
]


def test_zero_preset_trains_as_two_processes_through_the_worker(tmp_path, factory):
    settings = make_settings(tmp_path, engine_python=sys.executable)
    request = {
        "model": "tiny:llama",
        "dataset": {"builtin": "chat", "num_rows": 8},
        "hardware": {"accelerator": "cpu", "gpus": 0},  # the preset's GPUs, here CPU processes with gloo
        "config": {"max_steps": 2, "per_device_train_batch_size": 2, "save_steps": 1},
    }
    spec = parse_job_spec(apply_preset(get_preset("zero"), request))
    assert spec.distributed.num_processes == 2 and spec.distributed.deepspeed_config.zero_stage == 3
    assert unsupported(spec) is None
    job_id = add_job(factory, "zero")
    with factory() as session, session.begin():
        session.get(Job, job_id).spec_resolved = resolve(spec)

    outcome = execute_job(settings, job_id, session_factory=factory, tracking=False)

    job = get_job(factory, job_id)
    assert outcome == "succeeded", job.error
    assert job.status == JobStatus.succeeded and job.last_step == 2
    with factory() as session:
        messages = [
            d.get("message", "")
            for d in session.scalars(
                select(JobEvent.data).where(JobEvent.job_id == job_id, JobEvent.kind == "log")
            )
        ]
    assert any(m.startswith("deepspeed ") and '"stage": 3' in m for m in messages)
    assert any("processes=2" in m for m in messages)
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(settings.jobs_dir / job_id / "final"))
    assert sum(p.numel() for p in model.parameters()) > 0
