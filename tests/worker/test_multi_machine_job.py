"""A job over two machines (`distributed.num_machines: 2`) run by two worker processes of one queue on
127.0.0.1: the worker that claims it is node 0 and hosts the rendezvous, the other joins through
`papertrain.join_job`, and together they complete the job (one process each, gloo)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from fastapi.testclient import TestClient
from worker_testkit import create_token, make_settings, wait_for_status

from api.main import create_app
from core.celery_app import configure_celery
from papertrain.launcher import REPO_ROOT, settings_env, stop_worker, worker_command, worker_stop_timeout
from worker.runner import engine_command

pytestmark = [pytest.mark.slow, pytest.mark.e2e]


def test_static_rendezvous_command_puts_node_zero_first(tmp_path):
    spec, out = tmp_path / "spec.json", tmp_path / "out"
    cmd = engine_command(
        "py", spec, out, resume=False, processes=4, machines=2, rendezvous="10.0.0.5:2950", node_rank=1
    )
    assert cmd[:4] == ["py", "-m", "torch.distributed.run", "--nproc-per-node=2"]
    assert cmd[4:8] == ["--nnodes=2", "--node-rank=1", "--master-addr=10.0.0.5", "--master-port=2950"]
    assert cmd[8:] == ["-m", "engine.train", "--spec", str(spec), "--out", str(out)]


@pytest.fixture
def settings(tmp_path):
    return make_settings(tmp_path, engine_python=sys.executable, node_address="127.0.0.1")


def test_two_workers_complete_a_two_machine_job(settings, factory, tmp_path):
    configure_celery(settings)
    headers = {"Authorization": f"Bearer {create_token(factory)}"}
    env = {**os.environ, **settings_env(settings), "OMP_NUM_THREADS": "1"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    workers = [
        subprocess.Popen(worker_command("cpu", tmp_path / f"worker-{name}.lock"), env=env) for name in "ab"
    ]
    try:
        with TestClient(create_app(settings)) as client:
            body = {
                "algorithm": "sft",
                "model": "tiny:llama",
                "dataset": {"builtin": "chat", "num_rows": 8},
                "distributed": {"num_processes": 2, "num_machines": 2},
                "config": {"max_steps": 2, "per_device_train_batch_size": 2, "save_steps": 1},
            }
            created = client.post("/v1/jobs", json=body, headers=headers)
            assert created.status_code == 201, created.text
            job_id = created.json()["id"]
            job = wait_for_status(client, headers, job_id, {"succeeded", "failed", "cancelled"}, timeout=600)
            events = client.get(
                f"/v1/jobs/{job_id}/events", params={"kind": "log", "limit": 1000}, headers=headers
            ).json()["events"]
    finally:
        for proc in workers:
            stop_worker(proc, worker_stop_timeout(settings))
        configure_celery(None)
    messages = [e["data"].get("message", "") for e in events]
    assert job["status"] == "succeeded", (job, messages)
    assert job["last_step"] == 2
    node0 = next(m for m in messages if m.startswith("node 0 of 2 on worker "))
    node1 = next(m for m in messages if m.startswith("node 1 of 2 on worker "))
    assert "rendezvous at 127.0.0.1:" in node0
    assert node0.split("on worker ")[1].split(";")[0] == job["worker_id"]  # node 0 owns the job
    assert node1.removeprefix("node 1 of 2 on worker ") != job["worker_id"]  # another worker joined
    assert any("processes=2" in m for m in messages)  # one job of 2 processes over the 2 nodes
    assert (settings.jobs_dir / job_id / "final" / "model.safetensors").exists()
