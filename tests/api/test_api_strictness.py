"""Strict requests: parameters of another reward are refused; a preset's objective changes only on purpose."""

from __future__ import annotations

GRPO = {"algorithm": "grpo", "model": "tiny:llama", "dataset": {"builtin": "arithmetic"}}
DAPO = {
    "preset": "dapo",
    "model": "tiny:llama",
    "dataset": {"builtin": "arithmetic"},
    "config": {
        "per_device_train_batch_size": 8,
        "num_generations": 4,
        "max_completion_length": 64,
        "max_steps": 2,
    },
}


def _error(res) -> dict:
    assert res.status_code == 422, res.text
    return res.json()["error"]


def test_a_parameter_of_another_reward_is_refused(client, alice, sent) -> None:
    for funcs, param in (
        ([{"name": "accuracy", "url": "http://127.0.0.1:1/x"}], "reward_funcs.0.url"),
        ([{"name": "accuracy"}, {"name": "repetition_penalty", "max_len": 5}], "reward_funcs.1.max_len"),
        ([{"name": "accuracy", "extra": 1}], "reward_funcs.0.extra"),
    ):
        error = _error(client.post("/v1/jobs", json={**GRPO, "reward_funcs": funcs}, headers=alice))
        assert error["param"] == param, error
    assert sent == []


def test_changing_a_preset_objective_needs_the_flag_and_is_recorded(client, alice, sent) -> None:
    silent = {**DAPO, "config": {**DAPO["config"], "loss_type": "grpo"}}
    error = _error(client.post("/v1/jobs", json=silent, headers=alice))
    assert (error["code"], error["param"]) == ("preset_objective_override", "config.loss_type")
    assert "override_preset_objective" in error["remediation"]
    assert sent == []

    for flag in (True, ["config.loss_type"], ["loss_type"]):
        job = client.post("/v1/jobs", json={**silent, "override_preset_objective": flag}, headers=alice)
        assert job.status_code == 201, job.text
        assert job.json()["preset_overrides"] == ["config.loss_type"]
        assert job.json()["spec_resolved"]["config"]["loss_type"] == "grpo"
    wrong = {**silent, "override_preset_objective": ["config.beta"]}
    assert _error(client.post("/v1/jobs", json=wrong, headers=alice))["param"] == "config.loss_type"


def test_scaling_a_preset_needs_no_flag(client, alice) -> None:
    job = client.post("/v1/jobs", json=DAPO, headers=alice)
    assert job.status_code == 201, job.text
    assert job.json()["preset_overrides"] == []
    out = client.post(
        "/v1/jobs:validate", json={**DAPO, "config": {**DAPO["config"], "beta": 0.1}}, headers=alice
    )
    assert out.status_code == 422  # beta is part of DAPO's objective (the dry run applies the same rule)
    out = client.post(
        "/v1/jobs:validate",
        json={**DAPO, "config": {**DAPO["config"], "beta": 0.1}, "override_preset_objective": True},
        headers=alice,
    ).json()
    rows = {d["param"]: d for d in out["preset_diff"]}
    assert rows["config.beta"]["objective"] is True and rows["config.max_steps"]["objective"] is False
