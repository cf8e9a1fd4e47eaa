"""The OpenAI-compatible surface driven by the official `openai` package (in-process: no training here)."""

from __future__ import annotations

import json
from pathlib import Path

import openai
import pytest

ROWS = "".join(
    json.dumps({"messages": [{"role": "user", "content": f"say {w}"}, {"role": "assistant", "content": w}]})
    + "\n"
    for w in ("cat", "dog", "sun")
).encode()
DPO_ROWS = (
    json.dumps(
        {
            "input": {"messages": [{"role": "user", "content": "2+2?"}]},
            "preferred_output": [{"role": "assistant", "content": "4"}],
            "non_preferred_output": [{"role": "assistant", "content": "5"}],
        }
    )
    + "\n"
).encode()
RL_ROWS = (json.dumps({"messages": [{"role": "user", "content": "2+2?"}], "answer": "4"}) + "\n").encode()


@pytest.fixture
def oai(client, tokens) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=f"{client.base_url}/openai/v1", api_key=tokens["alice"], http_client=client, max_retries=0
    )


def _upload(oai, data: bytes, name: str = "d.jsonl") -> str:
    return oai.files.create(file=(name, data), purpose="fine-tune").id


def test_supervised_job_maps_to_sft_with_hyperparameters(oai, client, alice, sent) -> None:
    file_id = _upload(oai, ROWS)
    job = oai.fine_tuning.jobs.create(
        model="tiny:llama",
        training_file=file_id,
        suffix="demo",
        seed=7,
        method={
            "type": "supervised",
            "supervised": {
                "hyperparameters": {
                    "n_epochs": 2,
                    "batch_size": 4,
                    "learning_rate_multiplier": 10,
                    "max_steps": 3,
                }
            },
        },
    )
    assert job.object == "fine_tuning.job" and job.status == "queued" and job.training_file == file_id
    assert job.hyperparameters.n_epochs == 2 and job.hyperparameters.batch_size == 4
    assert job.hyperparameters.learning_rate_multiplier == pytest.approx(10)
    stored = client.get(f"/v1/jobs/{job.id}", headers=alice).json()
    cfg = stored["spec_resolved"]["config"]
    assert stored["algorithm"] == "sft" and stored["name"] == "demo"
    assert (cfg["num_train_epochs"], cfg["per_device_train_batch_size"], cfg["max_steps"], cfg["seed"]) == (
        2,
        4,
        3,
        7,
    )
    assert cfg["learning_rate"] == pytest.approx(10 * 2e-5)  # 10 x SFT's default
    assert len(sent) == 1
    assert oai.fine_tuning.jobs.retrieve(job.id).id == job.id
    assert job.id in [j.id for j in oai.fine_tuning.jobs.list(limit=5).data]
    cancelled = oai.fine_tuning.jobs.cancel(job.id)
    assert cancelled.status == "cancelled"
    events = oai.fine_tuning.jobs.list_events(job.id).data
    assert events[0].message.startswith("Job status: cancelled") and events[-1].message.startswith(
        "Job status: queued"
    )


def test_dpo_rows_are_converted_and_reinforcement_uses_the_accuracy_grader(oai, client, alice) -> None:
    dpo = oai.fine_tuning.jobs.create(
        model="tiny:llama",
        training_file=_upload(oai, DPO_ROWS),
        method={"type": "dpo", "dpo": {"hyperparameters": {"beta": 0.2}}},
    )
    stored = client.get(f"/v1/jobs/{dpo.id}", headers=alice).json()
    assert stored["algorithm"] == "dpo" and stored["spec_resolved"]["config"]["beta"] == 0.2
    rows = [
        json.loads(line) for line in Path(stored["spec_resolved"]["dataset"]["path"]).read_text().splitlines()
    ]
    assert rows == [
        {
            "prompt": [{"role": "user", "content": "2+2?"}],
            "chosen": [{"role": "assistant", "content": "4"}],
            "rejected": [{"role": "assistant", "content": "5"}],
        }
    ]

    grader = {
        "type": "string_check",
        "name": "exact",
        "operation": "eq",
        "input": "{{sample.output_text}}",
        "reference": "{{item.answer}}",
    }
    rl = oai.fine_tuning.jobs.create(
        model="tiny:llama",
        training_file=_upload(oai, RL_ROWS),
        method={
            "type": "reinforcement",
            "reinforcement": {
                "grader": grader,
                "hyperparameters": {"per_device_train_batch_size": 4, "num_generations": 4},
            },
        },
    )
    stored = client.get(f"/v1/jobs/{rl.id}", headers=alice).json()
    assert stored["algorithm"] == "grpo"
    assert [r["name"] for r in stored["spec_resolved"]["reward_funcs"]] == ["accuracy"]
    assert rl.method.type == "reinforcement"


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"integrations": [{"type": "wandb", "wandb": {"project": "x"}}]}, "integrations"),
        ({"metadata": {"team": "a"}}, "metadata"),
        ({"method": {"type": "distill"}}, "method.type"),
        (
            {"method": {"type": "reinforcement", "reinforcement": {"grader": {"type": "score_model"}}}},
            "method.reinforcement.grader.type",
        ),
        (
            {
                "method": {
                    "type": "reinforcement",
                    "reinforcement": {
                        "grader": {"type": "string_check", "operation": "eq", "reference": "{{item.answer}}"},
                        "hyperparameters": {"reasoning_effort": "high"},
                    },
                }
            },
            "method.reinforcement.hyperparameters.reasoning_effort",
        ),
        (
            {"method": {"type": "supervised", "supervised": {"hyperparameters": {"max_stepz": 3}}}},
            "method.supervised.hyperparameters.max_stepz",
        ),
        (
            {"method": {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": -1}}}},
            "method.supervised.hyperparameters.n_epochs",
        ),
    ],
)
def test_unsupported_options_are_openai_errors_naming_the_field(oai, kwargs, param) -> None:
    with pytest.raises(openai.BadRequestError) as exc:
        oai.fine_tuning.jobs.create(model="tiny:llama", training_file=_upload(oai, ROWS), **kwargs)
    body = exc.value.body
    assert body["param"] == param and body["type"] == "invalid_request_error" and body["message"]


def test_unknown_file_job_and_bad_token_are_openai_errors(oai, client) -> None:
    with pytest.raises(openai.BadRequestError) as exc:
        oai.fine_tuning.jobs.create(model="tiny:llama", training_file="file_nope")
    assert exc.value.body["param"] == "training_file"
    with pytest.raises(openai.NotFoundError):
        oai.fine_tuning.jobs.retrieve("job_nope")
    with pytest.raises(openai.BadRequestError) as exc:
        oai.files.create(file=("d.jsonl", ROWS), purpose="batch")
    assert exc.value.body["param"] == "purpose"
    bad = openai.OpenAI(
        base_url=f"{client.base_url}/openai/v1", api_key="nope", http_client=client, max_retries=0
    )
    with pytest.raises(openai.AuthenticationError):
        bad.fine_tuning.jobs.list()


def test_a_body_that_is_not_json_is_an_openai_error_naming_the_body(client, alice) -> None:
    res = client.post(
        "/openai/v1/fine_tuning/jobs",
        headers={**alice, "Content-Type": "application/json"},
        content=b'{"model": ',
    )
    error = res.json()["error"]
    assert res.status_code == 400 and error["param"] == "body" and error["type"] == "invalid_request_error"
    assert error["message"].startswith("body: the request body is not valid JSON (")
