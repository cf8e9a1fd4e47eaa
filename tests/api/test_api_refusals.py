"""Every option the engine cannot honour is refused at submission (422 naming the field), never on a worker.

Each case is a valid spec that the training loops would otherwise have to refuse or quietly change; its
base (the same request without the option) is accepted, so each 422 is the option's alone."""

from __future__ import annotations

from typing import Any

import pytest

GKD = {
    "algorithm": "gkd",
    "model": "tiny:llama",
    "dataset": {"builtin": "chat"},
    "config": {"teacher_model_name_or_path": "tiny:llama"},
}
GOLD = {**GKD, "algorithm": "gold"}
DPO = {"algorithm": "dpo", "model": "tiny:llama", "dataset": {"builtin": "preferences"}}
GRPO = {"algorithm": "grpo", "model": "tiny:llama", "dataset": {"builtin": "arithmetic"}}
RLOO = {**GRPO, "algorithm": "rloo"}
LORA = {"peft_config": {"r": 4}}
TEACHER_BUNDLED = {"teacher_model_name_or_path": "bundled:smollm2-135m-instruct"}
ZERO3 = {"distributed_type": "DEEPSPEED", "num_processes": 2, "deepspeed_config": {"zero_stage": 3}}


def _with(base: dict[str, Any], config: dict[str, Any], **job: Any) -> dict[str, Any]:
    return {**base, **job, "config": {**base.get("config", {}), **config}}


REFUSED = [
    ("gold-uld", _with(GOLD, {"use_uld_loss": True}), "config.use_uld_loss"),
    ("gold-vllm", _with(GOLD, {"use_vllm": True}), "config.use_vllm"),
    ("gold-split-group", _with(GOLD, {"num_generations": 3}), "config.num_generations"),
    ("gkd-bema", _with(GKD, {"bema": {}}), "config.bema"),
    ("gkd-sft-loss", _with(GKD, {"loss_type": "dft"}), "config.loss_type"),
    ("gkd-prompt-loss", _with(GKD, {"completion_only_loss": False}), "config.completion_only_loss"),
    (
        "gkd-other-tokenizer",
        _with(GKD, {}, model="bundled:smollm2-135m-instruct"),
        "config.teacher_model_name_or_path",
    ),
    (
        "minillm-other-tokenizer",
        _with(GRPO, TEACHER_BUNDLED, algorithm="minillm"),
        "config.teacher_model_name_or_path",
    ),
    ("gkd-assistant-loss", _with(GKD, {"assistant_only_loss": True}), "config.assistant_only_loss"),
    (
        "dpo-sync-reference-free",
        _with(DPO, {"sync_ref_model": True, "reference_free": True}),
        "config.sync_ref_model",
    ),
    (
        "dpo-sync-precomputed",
        _with(DPO, {"sync_ref_model": True, "precompute_ref_log_probs": True}),
        "config.sync_ref_model",
    ),
    ("dpo-sync-lora", _with(DPO, {"sync_ref_model": True}, **LORA), "config.sync_ref_model"),
    ("grpo-sync-beta-0", _with(GRPO, {"sync_ref_model": True, "beta": 0.0}), "config.sync_ref_model"),
    ("grpo-sync-lora", _with(GRPO, {"sync_ref_model": True, "beta": 0.04}, **LORA), "config.sync_ref_model"),
    ("rloo-sync-beta-0", _with(RLOO, {"sync_ref_model": True, "beta": 0.0}), "config.sync_ref_model"),
    ("grpo-vllm-narrow-heads", _with(GRPO, {"use_vllm": True, "vllm_mode": "server"}), "model"),
]


@pytest.mark.parametrize(("body", "param"), [c[1:] for c in REFUSED], ids=[c[0] for c in REFUSED])
def test_an_option_the_engine_cannot_honour_is_a_422_naming_it(client, alice, sent, body, param) -> None:
    res = client.post("/v1/jobs", json=body, headers=alice)
    assert res.status_code == 422, res.text
    error = res.json()["error"]
    assert error["param"] == param and error["code"] == "option_not_available", error
    assert sent == []


@pytest.mark.parametrize(
    "body",
    [
        GKD,
        GOLD,
        _with(DPO, {"sync_ref_model": True}),
        _with(GRPO, {"sync_ref_model": True, "beta": 0.04}),
        _with(RLOO, {"sync_ref_model": True}),
        _with(GOLD, {"num_generations": 2}),
        _with(GKD, {"teacher_model_name_or_path": "tiny:llama-hd32"}),
        _with(GKD, {"packing": True}),
        _with(GOLD, {"padding_free": True}),
        _with(GKD, {"lmbda": 0.5}, distributed=ZERO3),
    ],
    ids=[
        "gkd",
        "gold",
        "dpo-sync",
        "grpo-sync",
        "rloo-sync",
        "gold-whole-groups",
        "gkd-same-tokenizer",
        "gkd-packing",
        "gold-padding-free",
        "gkd-zero3",
    ],
)
def test_the_same_jobs_without_the_option_are_accepted(client, alice, body) -> None:
    res = client.post("/v1/jobs", json=body, headers=alice)
    assert res.status_code == 201, res.text
