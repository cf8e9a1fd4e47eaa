"""The live-worker registry and what submission does with it: a job whose queue no live worker consumes
is queued with a warning (in the response and as an event), or refused when the settings say so."""

from __future__ import annotations

from datetime import timedelta

from api_testkit import SFT_SPEC
from fastapi.testclient import TestClient

from api.main import create_app
from core.models import WorkerRecord, utcnow
from core.workers import can_run, forget_worker, live_capabilities, record_worker

GPU_JOB = {**SFT_SPEC, "hardware": {"accelerator": "gpu", "gpus": 8}}


def test_registry_reports_live_queues_and_capabilities(db):
    with db() as session:
        record_worker(session, "w1@host", ["cpu"], {"gpus": 0, "deepspeed": True, "vllm": False})
        record_worker(session, "w2@host", ["gpu-1"], {"gpus": 1, "deepspeed": True, "vllm": True})
        session.commit()
        assert can_run(session, "cpu", 60) and can_run(session, "cpu", 60, deepspeed=True)
        assert not can_run(session, "cpu", 60, vllm=True)
        assert can_run(session, "gpu-1", 60, gpus=1, vllm=True)
        assert not can_run(session, "gpu-1", 60, gpus=2)
        assert not can_run(session, "gpu-8", 60)
        assert sorted(live_capabilities(session, 60)) == ["cpu", "gpu-1"]
        # a worker not heard from within the window no longer counts; one that stopped is gone
        session.get(WorkerRecord, "w2@host").heartbeat_at = utcnow() - timedelta(seconds=120)
        forget_worker(session, "w1@host")
        forget_worker(session, "test-worker@localhost")  # the fixture's
        session.commit()
        assert live_capabilities(session, 60) == {}


def test_job_on_an_unserved_queue_is_queued_with_a_warning(client, alice):
    served = client.post("/v1/jobs", json=SFT_SPEC, headers=alice)
    assert served.status_code == 201 and served.json()["warnings"] == []
    res = client.post("/v1/jobs", json=GPU_JOB, headers=alice)
    assert res.status_code == 201, res.text
    body = res.json()
    assert body["status"] == "queued"
    assert [w["message"] for w in body["warnings"]] == ["waiting for a worker on queue gpu-8"]
    events = client.get(f"/v1/jobs/{body['id']}/events", headers=alice).json()["events"]
    assert any(e["data"].get("message") == "waiting for a worker on queue gpu-8" for e in events)


def test_setting_refuses_a_job_no_live_worker_can_take(settings, alice, sent):
    strict = settings.model_copy(update={"refuse_unserved_queues": True})
    with TestClient(create_app(strict)) as client:
        res = client.post("/v1/jobs", json=GPU_JOB, headers=alice)
    assert res.status_code == 422, res.text
    assert res.json()["error"]["code"] == "no_worker_for_queue"
    assert res.json()["error"]["param"] == "hardware"
    assert sent == []  # nothing was queued


def test_a_job_over_more_machines_than_live_workers_is_queued_with_a_warning(client, alice, db):
    spec = {**SFT_SPEC, "distributed": {"num_processes": 4, "num_machines": 2}}
    res = client.post("/v1/jobs", json=spec, headers=alice)  # one live worker on `cpu` (the fixture's)
    assert res.status_code == 201, res.text
    assert [(w["code"], w["param"]) for w in res.json()["warnings"]] == [
        ("too_few_workers", "distributed.num_machines")
    ]
    assert "2 workers of queue cpu at once; 1 live" in res.json()["warnings"][0]["message"]
    with db() as session, session.begin():
        record_worker(session, "w2@host", ["cpu"], {"gpus": 0})
    assert client.post("/v1/jobs", json=spec, headers=alice).json()["warnings"] == []


def test_processes_must_split_evenly_over_the_machines(client, alice):
    spec = {**SFT_SPEC, "distributed": {"num_processes": 3, "num_machines": 2}}
    res = client.post("/v1/jobs", json=spec, headers=alice)
    assert res.status_code == 422 and res.json()["error"]["param"].startswith("distributed")
    assert "multiple of num_machines" in res.json()["error"]["message"]
