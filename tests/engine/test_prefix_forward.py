"""The shared-prompt forward (`engine.prefix`) against the plain padded forward on tiny:llama: log-probs,
entropies and gradients, with prompts of different lengths (left padding) and completions of different
lengths (right padding), plain and LoRA; and the GRPO loop taking it (counters, decoder tokens)."""

from __future__ import annotations

import io
import json

import pytest
import torch

from engine.algorithms.common import TrainContext
from engine.algorithms.grpo import GRPOTrainer
from engine.events import EventWriter
from engine.logprobs import naive_token_logprobs, token_logprobs
from engine.prefix import SharedPrompts, decoder_tokens, shared_prompt_stats, unsupported
from engine.rollout.buffer import split_by_prompt
from engine.spec import parse_job_spec

ATOL = RTOL = 1e-5  # float32: the two paths differ only in the order of reductions
PROMPTS = (7, 4, 6)  # prompt lengths: the batch's prompt width is 7, the others left-padded
ROW_PROMPT = [0, 1, 0, 2, 1, 0]  # rows 0, 2, 5 share prompt 0, rows 1, 4 prompt 1; prompt 2 is alone
ROW_COMPLETION = [5, 2, 3, 1, 5, 4]  # completion lengths: width 5, the others right-padded


def batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(input_ids, attention_mask, K): rows [left-padded prompt | right-padded completion]."""
    g = torch.Generator().manual_seed(seed)
    prompts = [torch.randint(4, 100, (n,), generator=g) for n in PROMPTS]
    P, K = max(PROMPTS), max(ROW_COMPLETION)
    ids = torch.zeros(len(ROW_PROMPT), P + K, dtype=torch.long)
    attn = torch.zeros_like(ids)
    for r, (p, c) in enumerate(zip(ROW_PROMPT, ROW_COMPLETION, strict=True)):
        ids[r, P - len(prompts[p]) : P] = prompts[p]
        attn[r, P - len(prompts[p]) : P] = 1
        ids[r, P : P + c] = torch.randint(4, 100, (c,), generator=g)
        attn[r, P : P + c] = 1
    return ids, attn, K


def shared() -> SharedPrompts:
    out = SharedPrompts.of(ROW_PROMPT)
    assert out is not None
    return out


def test_shared_prompts_index_the_distinct_prompts():
    s = shared()
    assert s.first.tolist() == [0, 1, 3] and s.owner.tolist() == ROW_PROMPT and s.num_prompts == 3
    assert SharedPrompts.of(["a", "b", "c"]) is None  # nothing repeats: nothing to share


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_log_probs_and_entropies_equal_the_padded_forward(tiny_model, temperature):
    ids, attn, K = batch()
    mask = attn[:, -K:].float()
    with torch.no_grad():
        want_lp, want_ent = token_logprobs(
            tiny_model, ids, attn, K, temperature, with_entropy=True, mask=mask
        )
        naive = naive_token_logprobs(tiny_model, ids, attn, K, temperature) * mask
        got = shared_prompt_stats(
            tiny_model, ids, attn, K, shared(), temperature=temperature, with_entropy=True, mask=mask
        )
    assert got["logps"].shape == (6, K) and got["logps"].dtype == torch.float32
    assert bool((got["logps"][mask.bool()] < 0).all()) and bool((got["logps"][~mask.bool()] == 0).all())
    torch.testing.assert_close(got["logps"], want_lp, atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(got["logps"], naive, atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(got["entropies"], want_ent, atol=ATOL, rtol=RTOL)


def test_without_a_mask_every_real_completion_token_matches(tiny_model):
    ids, attn, K = batch(1)
    with torch.no_grad():
        want = naive_token_logprobs(tiny_model, ids, attn, K)
        got = shared_prompt_stats(tiny_model, ids, attn, K, shared())["logps"]
    real = attn[:, -K:].bool()  # padded positions score padding: neither path defines them alike
    torch.testing.assert_close(got[real], want[real], atol=ATOL, rtol=RTOL)


def test_one_completion_token_needs_only_the_prompt_forward(tiny_model):
    ids, attn, _ = batch(2)
    ids, attn = ids[:, :8], attn[:, :8].clone()
    attn[:, 7] = 1  # every row: its prompt, then one completion token
    with torch.no_grad():
        want = naive_token_logprobs(tiny_model, ids, attn, 1)
        got = shared_prompt_stats(tiny_model, ids, attn, 1, shared())["logps"]
    torch.testing.assert_close(got, want, atol=ATOL, rtol=RTOL)


def _grads(model, stats) -> torch.Tensor:
    """Gradient of a policy-style loss (advantage-weighted log-probs plus an entropy term)."""
    ids, attn, K = batch(3)
    mask = attn[:, -K:].float()
    adv = torch.linspace(-1, 1, ids.shape[0]).unsqueeze(1)
    model.zero_grad(set_to_none=True)
    logps, ents = stats(model, ids, attn, K, mask)
    (-(logps * adv * mask).sum() - 0.1 * (ents * mask).sum()).backward()
    return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])


def padded(model, ids, attn, K, mask):
    return token_logprobs(model, ids, attn, K, with_entropy=True, mask=mask)


def sharing(model, ids, attn, K, mask):
    out = shared_prompt_stats(model, ids, attn, K, shared(), with_entropy=True, mask=mask)
    return out["logps"], out["entropies"]


def test_gradients_equal_the_padded_forward(tiny_model):
    want, got = _grads(tiny_model, padded), _grads(tiny_model, sharing)
    assert want.abs().max() > 1e-3  # the loss reaches the weights
    torch.testing.assert_close(got, want, atol=ATOL, rtol=1e-4)


def test_lora_log_probs_and_gradients_equal_the_padded_forward(tiny_model):
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(tiny_model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    for name, p in model.named_parameters():  # LoRA B starts at 0: give the adapter an effect
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.05)
    want, got = _grads(model, padded), _grads(model, sharing)
    assert want.numel() == sum(p.numel() for p in model.parameters() if p.requires_grad)
    torch.testing.assert_close(got, want, atol=ATOL, rtol=1e-4)
    ids, attn, K = batch()
    mask = attn[:, -K:].float()
    with torch.no_grad():
        with model.disable_adapter():  # the reference of a LoRA job: the base model
            base_lp, _ = token_logprobs(model, ids, attn, K, mask=mask)
            got_lp = shared_prompt_stats(model, ids, attn, K, shared(), mask=mask)["logps"]
        with_adapter = shared_prompt_stats(model, ids, attn, K, shared(), mask=mask)["logps"]
    torch.testing.assert_close(got_lp, base_lp, atol=ATOL, rtol=RTOL)
    assert not torch.allclose(with_adapter, base_lp, atol=1e-3)  # the adapter counts outside the context


def test_bf16_autocast_stays_close_to_the_padded_forward(tiny_model):
    ids, attn, K = batch(4)
    mask = attn[:, -K:].float()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        want, _ = token_logprobs(tiny_model, ids, attn, K, mask=mask)
        got = shared_prompt_stats(tiny_model, ids, attn, K, shared(), mask=mask)["logps"]
    torch.testing.assert_close(got, want, atol=0.05, rtol=0.05)  # bf16 rounds at 8 bits of mantissa


def test_models_that_cannot_share_a_prompt_say_why(tiny_model):
    assert unsupported(tiny_model) is None
    tiny_model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    try:
        assert "activation checkpointing" in unsupported(tiny_model)
    finally:
        tiny_model.gradient_checkpointing_disable()
    tiny_model.config.layer_types = ["sliding_attention"] * tiny_model.config.num_hidden_layers
    try:
        assert "other than full attention" in unsupported(tiny_model)
    finally:
        del tiny_model.config.layer_types


def test_decoder_tokens_count_each_shared_prompt_once():
    assert decoder_tokens(16, 71, 32, None) == 16 * 71
    assert decoder_tokens(16, 71, 32, 4) == 4 * 39 + 16 * 31


def test_split_by_prompt_keeps_groups_together():
    keys = [0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2]
    lengths = [5, 9, 7, 6, 3, 4, 2, 3, 8, 8, 8, 9]
    parts = split_by_prompt(list(range(12)), keys, lengths, 3)
    assert [sorted({keys[r] for r in p}) for p in parts] == [[1], [0], [2]]  # shortest group first
    assert parts[1] == [0, 3, 2, 1] and sorted(r for p in parts for r in p) == list(range(12))


# ------------------------------------------------------------------------------------------- the GRPO loop


def grpo_trainer(tmp_path, **config) -> tuple[GRPOTrainer, io.StringIO]:
    cfg = {
        "per_device_train_batch_size": 8,
        "num_generations": 4,
        "max_completion_length": 4,
        "max_steps": 1,
        "beta": 0.05,
        "logging_steps": 1,
        "save_steps": 100,
        **config,
    }
    spec = parse_job_spec(
        {
            "algorithm": "grpo",
            "model": "tiny:llama",
            "dataset": {"builtin": "arithmetic", "num_rows": 16},
            "config": cfg,
        }
    )
    stream = io.StringIO()
    return GRPOTrainer(spec, TrainContext.for_spec(spec, tmp_path, events=EventWriter(stream))), stream


def test_grpo_runs_each_prompt_once_and_counts_decoder_tokens(tmp_path):
    t, stream = grpo_trainer(tmp_path)
    t.train()
    c = t.counters
    rollout = t.last_rollout
    assert rollout is not None and rollout.prompt_keys is not None and len(set(rollout.prompt_keys)) == 2
    # one reference forward and one policy forward, both on the shared prompts
    assert c.ref_logp_forwards == 1 and c.policy_forwards == 1 and c.shared_prompt_forwards == 2
    mb = rollout.micro_batch(list(range(len(rollout))))
    width, K = mb.input_ids.shape[1], mb.logits_to_keep
    expected = 2 * (2 * (width - K) + 8 * (K - 1))
    assert c.decoder_tokens == expected < 2 * 8 * width
    events = [json.loads(line) for line in stream.getvalue().splitlines()]
    metrics = [e["metrics"] for e in events if e["type"] == "metrics"]
    assert metrics[0]["train/decoder_tokens"] == expected
    assert not [e for e in events if "no shared-prompt forward" in e.get("message", "")]


def test_grpo_with_activation_checkpointing_runs_padded_and_says_why(tmp_path):
    t, stream = grpo_trainer(tmp_path, gradient_checkpointing=True)
    t.train()
    assert t.counters.shared_prompt_forwards == 0 and t.counters.policy_forwards == 1
    assert t.last_rollout is not None and t.last_rollout.prompt_keys is None
    logs = [json.loads(line).get("message", "") for line in stream.getvalue().splitlines()]
    said = [m for m in logs if "no shared-prompt forward" in m]
    assert len(said) == 1 and "activation checkpointing" in said[0]
