"""The GPU paths: bf16, pure-bf16 and fp16 (loss-scaled) training on CUDA, chunked log-probs in bf16, vLLM generation inside a GRPO job.

Skipped without CUDA (CI has none). On a GPU machine: `python -m pytest -m gpu tests/gpu -q`; the vLLM test
also needs the `gpu` extra installed.
"""

from __future__ import annotations

import importlib.util

import pytest
import torch

from tests.engine.conftest import run_subprocess, tiny_spec

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]
GPU = {"accelerator": "gpu", "gpus": 1}


def test_bf16_sft_trains_on_cuda(tmp_path):
    spec = {**tiny_spec("sft", "chat", max_steps=5, learning_rate=3e-3), "hardware": GPU}
    code, events, stderr = run_subprocess(spec, tmp_path)
    assert code == 0, stderr[-2000:]
    started = next(e["message"] for e in events if e["type"] == "log" and "device=" in e["message"])
    assert "device=cuda" in started and "bfloat16" in started
    losses = [
        e["metrics"]["train/loss"] for e in events if e["type"] == "metrics" and "train/loss" in e["metrics"]
    ]
    assert all(loss == loss for loss in losses) and len(losses) == 5  # finite, one per step


@pytest.mark.parametrize("precision", ["fp16-autocast", "bf16-pure"])
def test_fp16_with_loss_scaling_and_pure_bf16_train_on_cuda(tmp_path, precision):
    spec = tiny_spec("dpo", "preferences", max_steps=3, learning_rate=1e-3, precision=precision)
    code, events, stderr = run_subprocess({**spec, "hardware": GPU}, tmp_path)
    assert code == 0, stderr[-2000:]
    started = next(e["message"] for e in events if e["type"] == "log" and "device=" in e["message"])
    assert "device=cuda" in started and f"precision={precision}" in started
    losses = [e["metrics"]["train/loss"] for e in events if e["type"] == "metrics"]
    assert len(losses) == 3 and all(loss == loss and abs(loss) < 1e4 for loss in losses)


def test_chunked_logprobs_in_bf16_match_float32():
    from engine.logprobs import token_logprobs
    from engine.models import build_tiny_model

    model = build_tiny_model().cuda()
    ids = torch.randint(0, model.config.vocab_size, (4, 48), device="cuda")
    attn = torch.ones_like(ids)
    ref, _ = token_logprobs(model, ids, attn, logits_to_keep=16)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        got, _ = token_logprobs(model, ids, attn, logits_to_keep=16)
    assert torch.allclose(got.float(), ref.float(), atol=0.1)


@pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vllm is not installed")
def test_grpo_with_vllm_generation_and_is_correction(tmp_path):
    spec = tiny_spec(
        "grpo",
        "arithmetic",
        max_steps=2,
        per_device_train_batch_size=8,
        num_generations=4,
        max_completion_length=8,
        use_vllm=True,
        vllm_importance_sampling_mode="token_truncate",
    )
    spec["hardware"] = GPU
    spec["model"] = "tiny:llama-hd32"
    code, events, stderr = run_subprocess(spec, tmp_path, timeout=600)
    assert code == 0, stderr[-2000:]
    metrics = [e["metrics"] for e in events if e["type"] == "metrics"]
    assert len(metrics) == 2 and all("rollout/reward_mean" in m for m in metrics)
    # colocated vLLM (sleeping between generations) sampled, and its log-probs fed the IS correction
    for m in metrics:
        assert {"rollout/is_ratio_min", "rollout/is_ratio_max", "rollout/sampler_kl"} <= set(m)
        assert m["rollout/policy_lag"] == 0.0
    assert any(m["rollout/is_ratio_min"] != m["rollout/is_ratio_max"] for m in metrics)
