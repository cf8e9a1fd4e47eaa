"""Rollout backends: shapes, grouping, EOS masks and truncation flags, sampling settings, vLLM laziness."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch

from engine.models import build_tiny_model, build_tiny_tokenizer
from engine.rollout import SamplingParams, completion_mask_and_truncation, make_backend

TOK = build_tiny_tokenizer()
EOS, PAD = TOK.eos_token_id, TOK.pad_token_id


def biased_model(bias: dict[int, float]):
    """A tiny model whose next-token logits are exactly `bias` (all other tokens 0): a known distribution."""
    model = build_tiny_model()
    head = torch.nn.Linear(model.config.hidden_size, model.config.vocab_size, bias=True)
    torch.nn.init.zeros_(head.weight)
    torch.nn.init.zeros_(head.bias)
    with torch.no_grad():
        for token, value in bias.items():
            head.bias[token] = value
    model.lm_head = head
    return model


def params(max_new_tokens=8, **kw):
    return SamplingParams(max_new_tokens=max_new_tokens, eos_token_ids=(EOS,), pad_token_id=PAD, **kw)


def prompts():
    return [TOK.encode("What is 1+2?"), TOK.encode("Hi"), TOK.encode("abc def")]


def test_mask_covers_tokens_through_the_first_eos():
    ids = torch.tensor([[5, EOS, 7, 7], [5, 6, 7, 8], [EOS, EOS, 3, 3]])
    mask, truncated = completion_mask_and_truncation(ids, [EOS])
    assert mask.tolist() == [[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]]
    assert truncated.tolist() == [False, True, False]


def test_hf_rollout_shapes_and_grouping():
    torch.manual_seed(0)
    model = build_tiny_model()
    out = make_backend("hf", model=model).generate(prompts(), num_generations=2, params=params(6))
    n = 3 * 2
    longest = max(len(p) for p in prompts())
    assert out.prompt_ids.shape == (n, longest) and out.prompt_mask.shape == (n, longest)
    assert out.completion_ids.shape[0] == n and 1 <= out.completion_ids.shape[1] <= 6
    assert out.completion_mask.shape == out.completion_ids.shape and out.is_truncated.shape == (n,)
    for i, p in enumerate(prompts()):  # rows 2i, 2i+1 are prompt i, left-padded
        for row in (2 * i, 2 * i + 1):
            assert out.prompt_ids[row, longest - len(p) :].tolist() == p
            assert out.prompt_mask[row].tolist() == [0] * (longest - len(p)) + [1] * len(p)
    # the widest completion fills the trimmed width; padding after the mask is the pad token
    assert out.completion_lengths.max().item() == out.completion_ids.shape[1]
    assert (out.completion_ids[out.completion_mask == 0] == PAD).all()
    assert [len(c) for c in out.completion_id_lists()] == out.completion_lengths.tolist()
    assert out.sampling_logps is None


def test_eos_and_truncation_flags_follow_the_generated_tokens():
    a = TOK.convert_tokens_to_ids("a")
    model = biased_model({a: 30.0, EOS: 30.0})  # half 'a', half EOS at every step
    torch.manual_seed(0)
    out = make_backend("hf", model=model).generate(prompts(), num_generations=8, params=params(5))
    ids, mask = out.completion_ids, out.completion_mask
    for row in range(ids.shape[0]):
        tokens = ids[row].tolist()
        end = tokens.index(EOS) + 1 if EOS in tokens[: mask[row].sum()] else None
        if end is None:  # truncated: five 'a' tokens, no EOS
            assert out.is_truncated[row] and tokens[:5] == [a] * 5 and mask[row].sum() == 5
        else:
            assert not out.is_truncated[row] and mask[row].sum() == end
            assert tokens[: end - 1] == [a] * (end - 1)
    assert out.is_truncated.any() and (~out.is_truncated).any()


def test_all_eos_and_all_truncated_extremes():
    a = TOK.convert_tokens_to_ids("a")
    out = make_backend("hf", model=biased_model({EOS: 50.0})).generate(prompts(), 2, params(4))
    assert (
        out.completion_ids.shape[1] == 1
        and out.completion_ids[:, 0].eq(EOS).all()
        and not out.is_truncated.any()
    )
    out = make_backend("hf", model=biased_model({a: 50.0})).generate(prompts(), 2, params(4))
    assert out.completion_ids.shape[1] == 4 and out.is_truncated.all() and out.completion_mask.all()


def test_sampling_logps_are_the_sampling_distributions():
    a = TOK.convert_tokens_to_ids("a")
    b = TOK.convert_tokens_to_ids("b")
    model = biased_model({a: 40.0, b: 40.0 - math.log(3.0)})  # p(a) = 3/4, p(b) = 1/4 (others ~e^-37)
    torch.manual_seed(0)
    out = make_backend("hf", model=model).generate(prompts(), 2, params(4, return_logps=True))
    expected = torch.where(out.completion_ids == a, math.log(0.75), math.log(0.25))
    assert torch.allclose(out.sampling_logps, expected, atol=1e-4)


def test_top_k_none_disables_filtering_and_top_k_limits_it():
    vocab = len(TOK)
    model = biased_model({t: 1e-3 * t for t in range(vocab)})  # near-uniform, no ties (top-k keeps ties)
    backend = make_backend("hf", model=model)
    torch.manual_seed(0)
    many = backend.generate([TOK.encode("x")], 16, params(32, top_k=None))
    few = backend.generate([TOK.encode("x")], 16, params(32, top_k=5))
    assert len(set(many.completion_ids[many.completion_mask.bool()].tolist())) > 60
    assert set(few.completion_ids[few.completion_mask.bool()].tolist()) <= set(range(vocab - 5, vocab))


def test_generation_restores_train_mode_and_outputs_feed_autograd():
    model = build_tiny_model()
    model.train()
    out = make_backend("hf", model=model).generate(prompts(), 2, params(4))
    assert model.training
    ids = torch.cat([out.prompt_ids, out.completion_ids], dim=1)
    mask = torch.cat([out.prompt_mask, out.completion_mask], dim=1)
    model(input_ids=ids, attention_mask=mask).logits.float().mean().backward()
    assert model.lm_head.weight.grad is not None


def test_sampling_params_need_an_eos_token():
    with pytest.raises(ValueError, match="EOS"):
        SamplingParams(max_new_tokens=4, eos_token_ids=(), pad_token_id=0)


def test_unknown_backend_lists_the_known_ones():
    with pytest.raises(KeyError, match="hf"):
        make_backend("sglang")


def test_vllm_backend_imports_without_vllm_and_refuses_without_a_gpu():
    code = "import sys, engine.rollout.vllm; assert 'vllm' not in sys.modules; print('ok')"
    assert (
        subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        ).stdout.strip()
        == "ok"
    )
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA"):
            make_backend("vllm", model_path="/nonexistent")


# ----------------------------------------------------------------------------- prompts and buffers


def test_prompt_sampler_covers_every_row_per_epoch_and_resumes():
    from engine.rollout.prompts import PromptSampler

    sampler = PromptSampler(num_rows=5, seed=1)
    first = sampler.take(5)
    assert sorted(first) == list(range(5)) and sampler.epoch_float == 1.0
    taken = sampler.take(3)  # wraps into epoch 1
    assert sampler.position == {"epoch": 1, "index": 3}
    again = PromptSampler(num_rows=5, seed=1)
    again.restore({"epoch": 1, "index": 0})
    assert again.take(3) == taken
    assert PromptSampler(num_rows=5, seed=1, shuffle=False).take(5) == [0, 1, 2, 3, 4]


def test_prompt_encoder_renders_chat_prompts_and_keeps_the_last_tokens():
    from engine.rollout.prompts import PromptEncoder

    prompt = [{"role": "user", "content": "What is 2+2?"}]
    full = PromptEncoder(TOK, None).encode(prompt)
    assert TOK.decode(full) == "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n"
    assert PromptEncoder(TOK, 10).encode(prompt) == full[-10:]
    assert TOK.decode(PromptEncoder(TOK, None).encode("plain text")) == "plain text"


def test_split_by_length_groups_similar_lengths():
    from engine.rollout.buffer import split_by_length

    lengths = [5, 1, 9, 3, 7, 2, 8]
    parts = split_by_length(range(7), lengths, 3)
    assert [len(p) for p in parts] == [3, 2, 2]
    assert [lengths[r] for p in parts for r in p] == sorted(lengths)
    assert split_by_length([0, 1], lengths, 5) == [[1], [0]]


def test_sampled_concat_repads_prompts_and_completions():
    import torch

    from engine.rollout import RolloutOutput
    from engine.rollout.buffer import Sampled

    def part(prompt, completion, reward):
        out = RolloutOutput(
            prompt_ids=torch.tensor([prompt]),
            prompt_mask=torch.ones(1, len(prompt), dtype=torch.long),
            completion_ids=torch.tensor([completion]),
            completion_mask=torch.ones(1, len(completion), dtype=torch.long),
            is_truncated=torch.tensor([False]),
        )
        return Sampled(out, [completion], ["t"], ["p"], torch.tensor([[reward]]), [False])

    merged = Sampled.concat([part([1, 2, 3], [4], 0.5), part([5], [6, 7], 1.0)], pad_token_id=PAD)
    assert merged.out.prompt_ids.tolist() == [[1, 2, 3], [PAD, PAD, 5]]
    assert merged.out.prompt_mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    assert merged.out.completion_ids.tolist() == [[4, PAD], [6, 7]]
    assert merged.out.completion_mask.tolist() == [[1, 0], [1, 1]]
    assert merged.rewards.tolist() == [[0.5], [1.0]]
    assert merged.select([1]).ids == [[6, 7]]


def test_token_rows_become_a_grouped_padded_trimmed_output():
    # What the vLLM backends receive: 2 prompts x 2 generations of token lists with per-token log-probs.
    from engine.rollout.base import output_from_token_rows

    params = SamplingParams(max_new_tokens=6, eos_token_ids=(2, 9), pad_token_id=0)
    rows = [[5, 6, 2], [7], [8, 8, 8, 9], []]
    logps = [[-0.1, -0.2, -0.3], [-0.4], [-0.5, -0.6, -0.7, -0.8], []]
    out = output_from_token_rows([[11, 12, 13], [14]], 2, rows, logps, params, policy_version=4)
    assert out.prompt_ids.tolist() == [[11, 12, 13], [11, 12, 13], [0, 0, 14], [0, 0, 14]]
    assert out.prompt_mask.tolist() == [[1, 1, 1], [1, 1, 1], [0, 0, 1], [0, 0, 1]]
    assert out.completion_ids.tolist() == [[5, 6, 2, 0], [7, 0, 0, 0], [8, 8, 8, 9], [0, 0, 0, 0]]
    assert out.completion_mask.tolist() == [[1, 1, 1, 0], [1, 0, 0, 0], [1, 1, 1, 1], [0, 0, 0, 0]]
    assert out.is_truncated.tolist() == [False, True, False, True]  # ends with an EOS id, or not
    torch.testing.assert_close(
        out.sampling_logps,
        torch.tensor([[-0.1, -0.2, -0.3, 0], [-0.4, 0, 0, 0], [-0.5, -0.6, -0.7, -0.8], [0, 0, 0, 0]]),
    )
    assert out.policy_version == 4
    with pytest.raises(ValueError, match="3 completions for 2 prompts x 2"):
        output_from_token_rows([[1], [2]], 2, rows[:3], logps[:3], params)
    with pytest.raises(ValueError, match="one sampling log-prob per token"):
        output_from_token_rows([[1], [2]], 2, rows, [[-0.1], *logps[1:]], params)
