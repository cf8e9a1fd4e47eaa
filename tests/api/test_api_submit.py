"""POST /v1/jobs: full specs and presets, 422s that name the field, enqueue only after the commit."""

from __future__ import annotations

import pytest
from api_testkit import SFT_SPEC
from fastapi.testclient import TestClient
from sqlalchemy import func, select

import api.services.jobs
import engine.presets
from api.main import create_app
from core.models import Job, JobTransition
from engine.presets import Preset
from engine.spec import ALGORITHMS, RUNNABLE_ALGORITHMS
from engine.spec.job import BUILTIN_DATASET_ALGORITHMS

GRPO_SPEC = {"algorithm": "grpo", "model": "tiny:llama", "dataset": {"builtin": "arithmetic"}}


def _error(res, status: int = 422) -> dict:
    assert res.status_code == status, res.text
    error = res.json()["error"]
    assert {"code", "message", "param", "category", "retryable", "remediation"} <= set(error)
    return error


def test_full_spec_is_stored_resolved_and_enqueued(client, alice, sent, settings) -> None:
    res = client.post("/v1/jobs", json=SFT_SPEC, headers=alice)
    assert res.status_code == 201, res.text
    job = res.json()
    assert job["id"].startswith("job_") and job["status"] == "queued" and job["queue"] == "cpu"
    assert job["spec_submitted"] == SFT_SPEC
    resolved = job["spec_resolved"]
    assert resolved["algorithm"] == "sft" and resolved["model"] == "tiny:llama"
    assert resolved["config"]["max_steps"] == 3  # the user's value
    assert resolved["config"]["per_device_train_batch_size"] == 8  # HF TrainingArguments default, written out
    assert resolved["config"]["learning_rate"] == 2e-5  # TRL SFTConfig default
    assert resolved["hardware"] == {"accelerator": "cpu", "gpus": 0}
    assert job["output_dir"] == str(settings.jobs_dir / job["id"])
    assert job["attempt"] == 0 and job["preset_id"] is None
    assert sent == [{"job_id": job["id"], "queue": "cpu", "committed_status": "queued"}]


def test_creation_is_the_first_history_row(client, alice, db, submit) -> None:
    job_id = submit()["id"]
    with db() as session:
        (row,) = session.scalars(select(JobTransition).where(JobTransition.job_id == job_id)).all()
        assert (row.from_status, row.to_status) == (None, "queued")
    events = client.get(f"/v1/jobs/{job_id}/events", headers=alice).json()["events"]
    assert [(e["kind"], e["data"]["to"]) for e in events] == [("status", "queued")]


def test_gpu_hardware_picks_the_gpu_queue(client, alice, sent) -> None:
    res = client.post(
        "/v1/jobs", json={**SFT_SPEC, "hardware": {"accelerator": "gpu", "gpus": 1}}, headers=alice
    )
    assert res.status_code == 201, res.text
    assert res.json()["queue"] == "gpu-1"
    assert sent[-1]["queue"] == "gpu-1"


@pytest.fixture
def test_preset(monkeypatch):
    preset = Preset(
        id="paper-x",
        version=3,
        title="Paper X",
        paper_url="https://example.org/x",
        section="Group Relative Policy Optimization",
        algorithm="grpo",
        config={"loss_type": "grpo", "epsilon": 3e-4, "epsilon_high": 4e-4, "steps_per_generation": 4},
        job={"reward_funcs": [{"name": "format"}]},
        notes="test preset",
    )
    monkeypatch.setattr(engine.presets, "load_presets", lambda: {preset.id: preset})
    return preset


def test_preset_with_overrides(client, alice, sent, test_preset) -> None:
    body = {
        "preset": "paper-x",
        "model": "tiny:llama",
        "dataset": {"builtin": "arithmetic"},
        "config": {"epsilon_high": 5e-4, "max_steps": 2},
        "override_preset_objective": ["config.epsilon_high"],  # epsilon_high is part of the objective
    }
    res = client.post("/v1/jobs", json=body, headers=alice)
    assert res.status_code == 201, res.text
    job = res.json()
    assert (job["algorithm"], job["preset_id"], job["preset_version"]) == ("grpo", "paper-x", 3)
    assert job["preset_overrides"] == ["config.epsilon_high"]
    assert job["spec_submitted"] == body
    config = job["spec_resolved"]["config"]
    assert config["loss_type"] == "grpo" and config["epsilon"] == 3e-4 and config["steps_per_generation"] == 4
    assert config["epsilon_high"] == 5e-4 and config["max_steps"] == 2  # overrides win
    assert config["num_generations"] == 8  # not in the preset: the default, written out
    assert job["spec_resolved"]["reward_funcs"][0]["name"] == "format"  # the preset's job-level field
    assert len(sent) == 1


def test_unknown_preset(client, alice, test_preset) -> None:
    error = _error(client.post("/v1/jobs", json={"preset": "nope", "model": "tiny:llama"}, headers=alice))
    assert (error["code"], error["param"]) == ("unknown_preset", "preset")
    assert "paper-x" in error["message"]


def test_preset_of_another_algorithm(client, alice, test_preset) -> None:
    body = {
        "preset": "paper-x",
        "algorithm": "dpo",
        "model": "tiny:llama",
        "dataset": {"builtin": "preferences"},
    }
    assert _error(client.post("/v1/jobs", json=body, headers=alice))["param"] == "algorithm"


def test_preset_override_error_names_the_config_field(client, alice, test_preset) -> None:
    body = {"preset": "paper-x", "model": "tiny:llama", "dataset": {"builtin": "arithmetic"}}
    body["config"] = {"gradient_accumulation_steps": 3}  # preset's steps_per_generation=4 is no multiple of 3
    assert _error(client.post("/v1/jobs", json=body, headers=alice))["param"] == "config.steps_per_generation"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({**SFT_SPEC, "colour": "blue"}, "colour"),
        ({**SFT_SPEC, "config": {"max_step": 3}}, "config.max_step"),
        ({**SFT_SPEC, "dataset": {"builtin": "chat", "rows": 3}}, "dataset.rows"),
    ],
)
def test_unknown_field_is_named(client, alice, sent, body, param) -> None:
    error = _error(client.post("/v1/jobs", json=body, headers=alice))
    assert (error["code"], error["param"], error["category"]) == ("invalid_spec", param, "user")
    assert param.split(".")[-1] in error["message"]
    assert sent == []


def test_unknown_field_suggests_the_close_name(client, alice) -> None:
    error = _error(
        client.post("/v1/jobs", json={**SFT_SPEC, "config": {"learning_rat": 1e-4}}, headers=alice)
    )
    assert "learning_rate" in error["message"]


@pytest.mark.parametrize(
    "body",
    [
        {
            "algorithm": "dpo",
            "model": "tiny:llama",
            "dataset": {"builtin": "preferences"},
            "config": {"loss_type": "nope"},
        },
        {**GRPO_SPEC, "config": {"loss_type": "nope"}},
    ],
    ids=["dpo", "grpo"],
)
def test_unknown_loss_type(client, alice, body) -> None:
    error = _error(client.post("/v1/jobs", json=body, headers=alice))
    assert error["param"] == "config.loss_type"
    assert "nope" in error["message"] or "sigmoid" in error["message"] or "dapo" in error["message"]


def test_steps_per_generation_must_be_a_multiple(client, alice) -> None:
    body = {**GRPO_SPEC, "config": {"gradient_accumulation_steps": 2, "steps_per_generation": 3}}
    error = _error(client.post("/v1/jobs", json=body, headers=alice))
    assert error["param"] == "config.steps_per_generation"
    assert "gradient_accumulation_steps" in error["message"]


def test_job_level_cross_field_error(client, alice) -> None:
    body = {**GRPO_SPEC, "config": {"use_vllm": True}}  # colocated vLLM needs a GPU worker
    assert _error(client.post("/v1/jobs", json=body, headers=alice))["param"] == "config.vllm_mode"


def test_fp16_on_a_cpu_job_is_a_422_and_the_resolved_spec_names_the_precision(client, alice) -> None:
    body = {**GRPO_SPEC, "config": {"fp16": True}}
    err = _error(client.post("/v1/jobs", json=body, headers=alice))
    assert err["param"] == "config.fp16" and "GPUs only" in err["message"]
    body = {**GRPO_SPEC, "config": {"precision": "bf16-pure"}}
    res = client.post("/v1/jobs", json=body, headers=alice)
    assert res.status_code == 201, res.text
    assert res.json()["spec_resolved"]["config"]["precision"] == "bf16-pure"


@pytest.mark.parametrize(
    ("body", "param"),
    [({"model": "tiny:llama"}, "algorithm"), ({"algorithm": "ppo", "model": "tiny:llama"}, "algorithm")],
)
def test_missing_or_unknown_algorithm(client, alice, body, param) -> None:
    assert _error(client.post("/v1/jobs", json=body, headers=alice))["param"] == param


def test_body_must_be_an_object(client, alice) -> None:
    error = _error(client.post("/v1/jobs", json=[1, 2], headers=alice))
    assert error["code"] == "invalid_request"


def test_algorithm_that_is_not_runnable_yet(client, alice, sent, monkeypatch) -> None:
    # every algorithm trains today; a job class without a loop is what an algorithm on its way in looks like
    runnable = RUNNABLE_ALGORITHMS - {"papo"}
    monkeypatch.setattr("engine.spec.job.RUNNABLE_ALGORITHMS", runnable)
    waiting = [a for a in ALGORITHMS if a not in runnable]
    assert waiting == ["papo"]
    # a built-in set that fits the algorithm, so the spec is valid and only runnability is refused
    builtin = next(name for name, algos in BUILTIN_DATASET_ALGORITHMS.items() if waiting[0] in algos)
    body = {"algorithm": waiting[0], "model": "tiny:llama", "dataset": {"builtin": builtin}}
    error = _error(client.post("/v1/jobs", json=body, headers=alice))
    assert (error["code"], error["param"]) == ("algorithm_not_runnable", "algorithm")
    assert waiting[0] in error["message"] and sorted(runnable)[0] in error["message"]
    assert sent == []


def test_nothing_is_sent_when_the_transaction_does_not_commit(app, alice, sent, db, monkeypatch) -> None:
    original = api.services.jobs.enqueue

    def enqueue_then_fail(session, job):
        original(session, job)  # registers the send for after the commit
        raise RuntimeError("failure between enqueue and commit")

    monkeypatch.setattr(api.services.jobs, "enqueue", enqueue_then_fail)
    with TestClient(app, raise_server_exceptions=False) as client:
        res = client.post("/v1/jobs", json=SFT_SPEC, headers=alice)
    error = _error(res, 500)
    assert (error["code"], error["category"]) == ("internal_error", "platform")
    assert sent == []
    with db() as session:
        assert session.scalar(select(func.count()).select_from(Job)) == 0


def test_send_happens_after_commit_not_before(client, alice, sent, monkeypatch) -> None:
    """The sender runs once, and by then another connection already sees the committed job."""
    job = client.post("/v1/jobs", json=SFT_SPEC, headers=alice).json()
    assert [m["committed_status"] for m in sent] == ["queued"]
    assert sent[0]["job_id"] == job["id"]


@pytest.mark.parametrize(
    "extra,param",
    [
        (
            {  # DeepSpeed's zero.Init at model construction is not wired into the engine
                "distributed": {
                    "distributed_type": "DEEPSPEED",
                    "num_processes": 2,
                    "deepspeed_config": {"zero_stage": 3, "zero3_init_flag": True},
                },
            },
            "distributed.deepspeed_config.zero3_init_flag",
        ),
        (
            {
                "algorithm": "grpo",
                "dataset": {"builtin": "arithmetic"},
                "eval_dataset": {"builtin": "arithmetic"},
            },
            "eval_dataset",
        ),
    ],
)
def test_valid_options_the_engine_cannot_honour_are_refused(client, alice, sent, extra, param) -> None:
    body = {"algorithm": "sft", "model": "tiny:llama", "dataset": {"builtin": "chat"}, **extra}
    error = _error(client.post("/v1/jobs", json=body, headers=alice))
    assert (error["code"], error["param"]) == ("option_not_available", param)
    assert sent == []


def test_placeholder_teacher_is_refused_with_a_request_to_name_a_real_model(client, alice, sent) -> None:
    body = {"preset": "on-policy-distillation-gkd", "model": "tiny:llama", "dataset": {"builtin": "chat"}}
    response = client.post("/v1/jobs", json=body, headers=alice)
    assert response.status_code == 422
    error = _error(response)
    assert error["param"] == "config.teacher_model_name_or_path"
    assert "'teacher-model' is a placeholder" in error["message"] and "name a real model" in error["message"]
    assert sent == []


def test_dataset_paths_outside_the_data_roots_are_refused(settings, sent, tokens, tmp_path) -> None:
    allowed = tmp_path / "datasets"
    allowed.mkdir()
    app = create_app(settings.model_copy(update={"data_roots": str(allowed)}))
    headers = {"Authorization": f"Bearer {tokens['alice']}"}
    body = {"algorithm": "sft", "model": "tiny:llama", "dataset": {"path": "/etc/passwd"}}
    with TestClient(app) as client:
        error = _error(client.post("/v1/jobs", json=body, headers=headers))
        assert (error["code"], error["param"]) == ("path_not_allowed", "dataset.path")
        inside = {**body, "dataset": {"path": str(allowed / "train.jsonl")}}
        assert client.post("/v1/jobs", json=inside, headers=headers).status_code == 201
    assert len(sent) == 1


def test_dry_run_resolves_like_a_submission_and_stores_nothing(client, alice, db, sent) -> None:
    body = {
        "preset": "dapo",
        "model": "tiny:llama",
        "dataset": {"builtin": "arithmetic", "num_rows": 16},
        "config": {
            "per_device_train_batch_size": 8,
            "num_generations": 4,
            "max_completion_length": 1,
            "max_steps": 2,
        },
    }
    res = client.post("/v1/jobs:validate", json=body, headers=alice)
    assert res.status_code == 200, res.text
    out = res.json()
    stored = client.post("/v1/jobs", json=body, headers=alice).json()
    assert out["spec"] == stored["spec_resolved"]
    assert out["preset"] == {"id": "dapo", "version": stored["preset_version"]}
    preset = engine.presets.get_preset("dapo")
    changed = {d["param"]: (d["preset_value"], d["value"]) for d in out["preset_diff"]}
    assert changed["config.max_steps"] == (preset.config.get("max_steps"), 2)
    assert changed["config.num_generations"] == (preset.config.get("num_generations"), 4)
    assert "model" not in changed
    assert any(w["code"] == "completions_truncated" for w in out["warnings"])
    assert out["estimate"]["steps"] == 2 and out["estimate"]["steps_exact"] is True
    with db() as session:
        assert session.scalar(select(func.count()).select_from(Job)) == 1  # only the real submission
    assert len(sent) == 1


def test_dry_run_errors_are_the_submission_422(client, alice) -> None:
    body = {**SFT_SPEC, "config": {"max_steps": 3, "learnin_rate": 1e-3}}
    error = _error(client.post("/v1/jobs:validate", json=body, headers=alice))
    assert error["param"] == "config.learnin_rate" and "learning_rate" in error["message"]
    error = _error(
        client.post("/v1/jobs:validate", json={**SFT_SPEC, "dataset": {"file_id": "file_x"}}, headers=alice)
    )
    assert error["param"] == "dataset.file_id"


def test_dry_run_counts_an_uploaded_files_rows(client, alice) -> None:
    data = b"".join(
        b'{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}\n'
        for _ in range(30)
    )
    file_id = client.post("/v1/files", files={"file": ("d.jsonl", data)}, headers=alice).json()["id"]
    body = {
        **SFT_SPEC,
        "dataset": {"file_id": file_id},
        "config": {"num_train_epochs": 1, "per_device_train_batch_size": 10},
    }
    est = client.post("/v1/jobs:validate", json=body, headers=alice).json()["estimate"]
    assert (est["rows"], est["steps"], est["steps_exact"]) == (30, 3, False)


@pytest.mark.parametrize(
    ("vllm", "status"),
    [({"vllm_python": "/nonexistent/python"}, 422), ({"vllm_server_url": "http://127.0.0.1:9"}, 201)],
)
def test_use_vllm_needs_a_worker_with_vllm(settings, sent, alice, vllm, status) -> None:
    body = {**GRPO_SPEC, "model": "tiny:llama-hd32", "config": {"use_vllm": True, "vllm_mode": "server"}}
    deployment = settings.model_copy(update={"vllm_python": "/nonexistent/python", **vllm})
    with TestClient(create_app(deployment)) as c:
        res = c.post("/v1/jobs", json=body, headers=alice)
    if status == 422:
        error = _error(res)
        assert error["param"] == "config.use_vllm" and "make vllm-cpu" in error["remediation"]
        assert sent == []  # nothing stranded on a queue
    else:
        assert res.status_code == 201, res.text
        assert len(sent) == 1


def test_a_body_that_is_not_json_is_named_as_the_body(client, alice) -> None:
    res = client.post(
        "/v1/jobs", headers={**alice, "Content-Type": "application/json"}, content=b'{"algorithm": '
    )
    error = res.json()["error"]
    assert res.status_code == 422 and error["param"] == "body"
    assert (
        error["message"].startswith("body: the request body is not valid JSON (")
        and "at character" in error["message"]
    )
