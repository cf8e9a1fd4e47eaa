"""The `zero` preset (DeepSpeed ZeRO-3, 2 processes) submitted through the HTTP API on this CPU: a real
worker process claims it, launches torchrun with the real engine, the job succeeds, DeepSpeed's config is
among the job's events and the final model reloads as a plain Hugging Face model."""

from __future__ import annotations

import importlib.util
import sys

import pytest
from fastapi.testclient import TestClient
from worker_testkit import create_token, make_settings, wait_for_status

from api.main import create_app
from core.celery_app import configure_celery
from papertrain.launcher import start_worker, stop_worker, worker_stop_timeout

pytestmark = [
    pytest.mark.slow,
    pytest.mark.e2e,
    pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None, reason="needs the deepspeed extra"),
]


@pytest.fixture
def settings(tmp_path):
    return make_settings(tmp_path, engine_python=sys.executable)  # the real engine


def test_zero_preset_through_the_api_succeeds_with_deepspeed_and_an_hf_model(settings, factory):
    configure_celery(settings)
    headers = {"Authorization": f"Bearer {create_token(factory)}"}
    worker = start_worker(settings, "cpu")
    try:
        with TestClient(create_app(settings)) as client:
            body = {
                "preset": "zero",
                "model": "tiny:llama",
                "dataset": {"builtin": "chat", "num_rows": 8},
                "hardware": {"accelerator": "cpu", "gpus": 0},  # the preset's 2 GPUs as 2 CPU processes
                "config": {"max_steps": 2, "per_device_train_batch_size": 2},
            }
            created = client.post("/v1/jobs", json=body, headers=headers)
            assert created.status_code == 201, created.text
            job_id = created.json()["id"]
            resolved = created.json()["spec_resolved"]["distributed"]
            assert resolved["num_processes"] == 2 and resolved["deepspeed_config"]["zero_stage"] == 3

            job = wait_for_status(client, headers, job_id, {"succeeded", "failed", "cancelled"}, timeout=600)
            assert job["status"] == "succeeded", job
            assert job["last_step"] == 2
            events = client.get(
                f"/v1/jobs/{job_id}/events", params={"kind": "log", "limit": 1000}, headers=headers
            ).json()["events"]
    finally:
        stop_worker(worker, worker_stop_timeout(settings))
        configure_celery(None)
    messages = [e["data"].get("message", "") for e in events]
    assert any(m.startswith("deepspeed ") and '"stage": 3' in m for m in messages), messages
    assert any("processes=2" in m for m in messages)
    from transformers import AutoModelForCausalLM

    final = settings.jobs_dir / job_id / "final"
    model = AutoModelForCausalLM.from_pretrained(str(final))
    assert model.config.model_type == "llama" and sum(p.numel() for p in model.parameters()) > 0
