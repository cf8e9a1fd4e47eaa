"""GRPO with a real vLLM rollout server on the CPU (`make vllm-cpu` builds vLLM's environment).

One server on `tiny:llama-hd32` serves the in-process runs and the 2-process runs (the long-lived `url`
mode); the CLI run starts and stops its own. After a weight sync the server's log-probs of a fixed completion
must equal the trainer's to LOGP_TOL (both float32; what is left is kernel rounding), for full fine-tuning
and for LoRA (merged weights). Each completion is sampled under its own seed, so 2 processes (gloo, torchrun)
sample the first generation of 1 process: same tokens, hence the same rollout statistics (rel 1e-6).
Without vLLM's environment these tests are skipped, except in CI (`PAPERTRAIN_REQUIRE_VLLM=1`), where that
is a failure.
"""

from __future__ import annotations

import importlib.util
import io
import os
from pathlib import Path
from unittest import mock

import httpx
import pytest
import torch

from core.settings import VLLM_CPU_PYTHON
from engine.algorithms.common import TrainContext
from engine.algorithms.grpo import GRPOTrainer
from engine.events import EventWriter
from engine.logprobs import token_logprobs
from engine.models import build_tiny_model, build_tiny_tokenizer, save_model
from engine.rollout.vllm_server import ServerOptions, ServerProcess, VLLMServerRollout
from engine.spec import parse_job_spec
from tests.engine.conftest import metrics_by_step, run_subprocess
from tests.engine.test_distributed import run_procs, two_processes, zero
from tests.engine.test_distributed_online import ROLLOUT_STATS
from tests.engine.test_grpo import events_of, metrics_of

LOGP_TOL = 1e-4  # per-token log-prob, server vs trainer, after a sync
PYTHON = os.environ.get("PAPERTRAIN_VLLM_PYTHON") or str(VLLM_CPU_PYTHON)
HAVE_VLLM = Path(PYTHON).exists()
if not HAVE_VLLM and os.environ.get("PAPERTRAIN_REQUIRE_VLLM") == "1":
    raise RuntimeError(f"vLLM's environment ({PYTHON}) is missing: run `make vllm-cpu`")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not HAVE_VLLM, reason=f"no vLLM environment at {PYTHON} (make vllm-cpu)"),
]
IS_METRICS = ("rollout/is_ratio_mean", "rollout/is_ratio_min", "rollout/is_ratio_max", "rollout/sampler_kl")
PROMPT = "12+7="
COMPLETION = "19<|im_end|>"


@pytest.fixture(scope="module")
def server_url(tmp_path_factory):
    folder = tmp_path_factory.mktemp("vllm")
    save_model(build_tiny_model("tiny:llama-hd32"), build_tiny_tokenizer(), folder / "model")
    opts = ServerOptions(python=PYTHON, startup_timeout_s=600, dtype="float32")  # "auto" would be bf16
    proc = ServerProcess(
        PYTHON,
        folder / "model",
        folder / "server.log",
        opts,
        seed=0,
        max_model_len=256,
        gpu_memory_utilization=0.3,
    )
    try:
        yield proc.start()
    finally:
        proc.stop()


def grpo_job(**top) -> dict:
    return {
        "algorithm": "grpo",
        "model": "tiny:llama-hd32",
        "dataset": {"builtin": "arithmetic", "num_rows": 16},
        # repeated tokens are penalised: random completions differ, so advantages are not all zero
        "reward_funcs": [{"name": "repetition_penalty", "ngram_size": 1}],
        "config": {
            "per_device_train_batch_size": 8,
            "num_generations": 4,
            "max_completion_length": 8,
            "max_prompt_length": 64,
            "max_steps": 3,
            "learning_rate": 1e-2,
            "logging_steps": 1,
            "save_steps": 100,
            "use_vllm": True,
            "vllm_mode": "server",
            "vllm_importance_sampling_mode": "token_truncate",
            "vllm_importance_sampling_clip_max": 2.0,
        },
        **top,
    }


def train_against(url: str, tmp_path: Path, **top) -> tuple[GRPOTrainer, list[dict]]:
    spec = parse_job_spec(grpo_job(**top))
    stream = io.StringIO()
    ctx = TrainContext.for_spec(
        spec, tmp_path, events=EventWriter(stream), rollout_server=ServerOptions(url=url)
    )
    trainer = GRPOTrainer(spec, ctx)
    trainer.train()
    return trainer, metrics_of(events_of(stream))


def fixed_completion() -> tuple[list[int], list[int]]:
    tok = build_tiny_tokenizer()
    return tok(PROMPT)["input_ids"], tok(COMPLETION)["input_ids"]


def trainer_logps(model, prompt: list[int], completion: list[int]) -> list[float]:
    ids = torch.tensor([prompt + completion])
    with torch.inference_mode():
        lp, _ = token_logprobs(model, ids, torch.ones_like(ids), logits_to_keep=len(completion))
    return lp[0].tolist()


def check_metrics(metrics: list[dict]) -> None:
    assert len(metrics) == 3
    for m in metrics:
        assert set(IS_METRICS) <= set(m), sorted(m)
        assert m["rollout/policy_lag"] == 0.0  # one generation per step, synced before it
    ratios = [m[k] for m in metrics for k in ("rollout/is_ratio_min", "rollout/is_ratio_max")]
    assert any(r != 1.0 for r in ratios)  # the sampler's numerics are not the trainer's
    assert all(0.5 < r < 2.0 for r in ratios)  # ... but they are the same weights
    assert all(m["rollout/sampler_kl"] >= 0 for m in metrics)


def check_sync(url: str, model) -> None:
    prompt, completion = fixed_completion()
    client = VLLMServerRollout("", ServerOptions(url=url))
    try:
        want = trainer_logps(model, prompt, completion)
        initial = trainer_logps(build_tiny_model("tiny:llama-hd32"), prompt, completion)
        assert max(abs(a - b) for a, b in zip(initial, want, strict=True)) > 10 * LOGP_TOL  # training moved
        client.sync_weights(model, version=1000)
        got = client.score(prompt, completion)
        assert max(abs(a - b) for a, b in zip(got, want, strict=True)) < LOGP_TOL, (got, want)
        assert httpx.get(f"{url}/health").json()["version"] == 1000
    finally:
        client.close()


def test_grpo_full_weights_sync(server_url, tmp_path):
    trainer, metrics = train_against(server_url, tmp_path)
    check_metrics(metrics)
    assert trainer.counters.generations == 3
    check_sync(server_url, trainer.model)


def test_grpo_lora_sync(server_url, tmp_path):
    lora = {"r": 8, "lora_alpha": 16, "target_modules": ["q_proj", "v_proj"]}
    trainer, metrics = train_against(server_url, tmp_path, peft_config=lora)
    check_metrics(metrics)
    check_sync(server_url, trainer.model)


def run_against(url: str, spec: dict, out: Path, nproc: int) -> list[dict]:
    with mock.patch.dict(os.environ, {"PAPERTRAIN_VLLM_SERVER_URL": url}):
        code, events, stderr = run_procs(spec, out, nproc, timeout=600)
    assert code == 0, stderr[-3000:]
    assert [e["type"] for e in events].count("done") == 1
    return events


def first_samples(events: list[dict]) -> list[dict]:
    return next(e["samples"] for e in events if e["type"] == "samples" and e["step"] == 1)


@pytest.fixture(scope="module")
def one_process(server_url, tmp_path_factory):
    """A 3-step job in one process against the module's server: 2 prompts x 4 completions per generation."""
    spec = grpo_job()
    spec["config"]["save_steps"] = 2
    return spec, run_against(server_url, spec, tmp_path_factory.mktemp("one"), 1)


@pytest.mark.parametrize("distributed", [{}, zero(3)], ids=["gradient-sum", "zero3"])
def test_two_processes_sample_from_one_server(server_url, one_process, tmp_path, distributed):
    if distributed and importlib.util.find_spec("deepspeed") is None:
        pytest.skip("the deepspeed extra is not installed (make deepspeed)")
    spec, one = one_process
    # 4 completions per process: rank 0 samples the first group, rank 1 the second; rank 0 sends the weights
    two = run_against(server_url, two_processes(spec, distributed), tmp_path, 2)
    a, b = metrics_by_step(one), metrics_by_step(two)
    check_metrics(list(b.values()))  # synced before every generation: lag 0 on both ranks
    for key in ROLLOUT_STATS:  # the same completions, and global statistics of both ranks' rows
        assert b[1][key] == pytest.approx(a[1][key], rel=1e-6, abs=1e-9), key
    assert a[1]["rollout/reward_std"] > 0 and a[1]["rollout/completion_length_min"] >= 1
    assert first_samples(two) == first_samples(one)  # rank 0's share: the first group, token for token
    assert b[1]["train/loss"] == pytest.approx(a[1]["train/loss"], rel=1e-4, abs=1e-6)
    # the server holds what rank 0 sent last: the weights after step 2 (ZeRO-3: gathered), version 2
    assert httpx.get(f"{server_url}/health").json()["version"] == 2
    check_served_weights(server_url, tmp_path / "checkpoints" / "checkpoint-2")


def check_served_weights(url: str, checkpoint: Path) -> None:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(checkpoint, torch_dtype=torch.float32)
    prompt, completion = fixed_completion()
    want = trainer_logps(model, prompt, completion)
    client = VLLMServerRollout("", ServerOptions(url=url))
    try:
        got = client.score(prompt, completion)
    finally:
        client.close()
    assert max(abs(x - y) for x, y in zip(got, want, strict=True)) < LOGP_TOL, (got, want)


def test_engine_starts_and_stops_its_own_server(tmp_path):
    spec = grpo_job()
    spec["config"].update(max_steps=2, vllm_importance_sampling_mode="sequence_mask")
    env_python = {"PAPERTRAIN_VLLM_PYTHON": PYTHON, "PAPERTRAIN_VLLM_STARTUP_TIMEOUT_S": "600"}
    os.environ.update(env_python)
    try:
        code, events, stderr = run_subprocess(spec, tmp_path / "job", timeout=900)
    finally:
        for key in env_python:
            os.environ.pop(key, None)
    assert code == 0, stderr[-3000:]
    started = [e["message"] for e in events if e["type"] == "log" and "vLLM server at" in e["message"]]
    assert started, [e for e in events if e["type"] == "log"]
    url = started[0].split("vLLM server at ")[1].split()[0]
    metrics = [e["metrics"] for e in events if e["type"] == "metrics"]
    assert "rollout/is_masked_frac" in metrics[-1] and "rollout/policy_lag" in metrics[-1]
    # the server's default dtype for a float32 model is bfloat16: a mismatch the correction sees
    assert max(abs(m["rollout/is_ratio_max"] - 1) for m in metrics) > 1e-3
    with pytest.raises(httpx.TransportError):  # stopped with the job
        httpx.get(f"{url}/health", timeout=2.0)
