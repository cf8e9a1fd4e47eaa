"""The fast sampler draws from exactly the processed distribution that transformers' logits processors define,
and its log-probs are the training forward's where no filter changes the distribution.

Expected probabilities come from transformers' own processors (RepetitionPenalty, Temperature, TopK, TopP,
MinP, in `generate`'s order), never from the code under test; draws are compared with a chi-square test at a
fixed seed.
"""

from __future__ import annotations

import math

import pytest
import torch
from transformers import (
    MinPLogitsWarper,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from engine.logprobs import naive_token_logprobs, token_logprobs
from engine.models import build_tiny_model, build_tiny_tokenizer
from engine.rollout import SamplingParams, make_backend
from engine.rollout.sampling import sample_next

TOK = build_tiny_tokenizer()
EOS, PAD = TOK.eos_token_id, TOK.pad_token_id


def params(max_new_tokens: int = 8, **kw) -> SamplingParams:
    return SamplingParams(max_new_tokens=max_new_tokens, eos_token_ids=(EOS,), pad_token_id=PAD, **kw)


def processed_probs(
    logits: torch.Tensor, p: SamplingParams, seen_ids: torch.Tensor | None = None
) -> torch.Tensor:
    """Probabilities after transformers' processors, applied as `generate` orders them. logits (n, V)."""
    scores = logits.float().clone()
    if p.repetition_penalty != 1.0:
        scores = RepetitionPenaltyLogitsProcessor(p.repetition_penalty)(seen_ids, scores)
    if p.temperature != 1.0:
        scores = TemperatureLogitsWarper(p.temperature)(None, scores)
    if p.top_k:
        scores = TopKLogitsWarper(p.top_k)(None, scores)
    if p.top_p < 1.0:
        scores = TopPLogitsWarper(p.top_p)(None, scores)
    if p.min_p is not None:
        scores = MinPLogitsWarper(p.min_p)(None, scores)
    return scores.softmax(-1)


def chi_square_pvalue(
    counts: torch.Tensor, expected: torch.Tensor, bins: int = 40, min_dof: int = 3
) -> float:
    """Pearson chi-square p-value over `bins` groups of tokens of about equal expected count."""
    order = expected.argsort(descending=True)
    groups = torch.zeros_like(expected, dtype=torch.long)
    cum = expected[order].cumsum(0) / expected.sum()
    groups[order] = (cum * bins).ceil().long().clamp(1, bins) - 1
    obs = torch.zeros(bins, dtype=torch.float64).index_add_(0, groups, counts.double())
    exp = torch.zeros(bins, dtype=torch.float64).index_add_(0, groups, expected.double())
    used = exp > 0
    obs, exp = obs[used], exp[used]
    assert exp.min() >= 5, "too few draws for the chi-square approximation"
    stat = ((obs - exp) ** 2 / exp).sum()
    dof = int(used.sum()) - 1
    assert dof >= min_dof, "the distribution is too concentrated for a meaningful test"
    return float(torch.special.gammaincc(torch.tensor(dof / 2, dtype=torch.float64), stat / 2))


def check_draws(
    logits: torch.Tensor, p: SamplingParams, draws: int, seen_ids=None, chunk: int = 4000, min_dof: int = 3
) -> None:
    """Draw `draws` tokens from one logits row (V,) and compare with the transformers-processed distribution."""
    V = logits.shape[-1]
    probs = processed_probs(logits.unsqueeze(0), p, None if seen_ids is None else seen_ids.unsqueeze(0))[0]
    seen = None
    if seen_ids is not None:
        seen = torch.zeros(V, dtype=torch.bool).index_fill_(0, seen_ids, True)
    counts = torch.zeros(V, dtype=torch.long)
    for start in range(0, draws, chunk):
        n = min(chunk, draws - start)
        tokens, logps = sample_next(logits.expand(n, V), p, None if seen is None else seen.expand(n, V))
        counts += torch.bincount(tokens, minlength=V)
        assert torch.allclose(logps, probs[tokens].log(), atol=1e-4), "log-prob of the processed distribution"
    assert counts[probs == 0].sum() == 0, "a filtered-out token was drawn"
    assert chi_square_pvalue(counts, probs * draws, min_dof=min_dof) > 1e-3


def prompt_logits() -> torch.Tensor:
    """The tiny model's next-token logits after a chat prompt, sharpened so the filters bite."""
    model = build_tiny_model()
    ids = torch.tensor([TOK.encode("<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n")])
    with torch.no_grad():
        return model(input_ids=ids).logits[0, -1].float() * 10.0


@pytest.mark.parametrize(
    "kw",
    [
        {},
        {"temperature": 0.7, "top_k": 20},
        {"top_p": 0.8},
        {"min_p": 0.1},
        {"temperature": 1.3, "top_k": 30, "top_p": 0.9, "min_p": 0.02},
        {"repetition_penalty": 1.5, "top_p": 0.95},
    ],
    ids=["plain", "temp+top_k", "top_p", "min_p", "all", "repetition"],
)
def test_draws_follow_the_processed_distribution_of_a_small_model(kw):
    torch.manual_seed(0)
    logits = prompt_logits()
    seen = torch.tensor(TOK.encode("2+2 abc")) if "repetition_penalty" in kw else None
    check_draws(logits, params(**kw), draws=10_000, seen_ids=seen)


@pytest.mark.parametrize(
    "kw", [{}, {"top_p": 0.5}, {"top_k": 1500, "top_p": 0.7}], ids=["blocks", "grow", "k+p"]
)
def test_large_vocabulary_paths_keep_the_distribution(kw):
    """A wide vocabulary exercises the two-stage block draw and the growing top-p candidate set."""
    torch.manual_seed(1)
    logits = torch.randn(4096) * 1.5
    check_draws(logits, params(**kw), draws=12_000, chunk=2000)


def test_top_k_keeps_ties_like_transformers():
    logits = torch.tensor([3.0, 1.0, 2.0, 2.0, 0.0])  # top_k=2 keeps 3.0 and both 2.0
    torch.manual_seed(2)
    check_draws(logits, params(top_k=2), draws=6_000, min_dof=2)


def test_decode_loop_first_tokens_follow_the_model():
    """Many completions of one prompt: the first tokens' counts match the model's processed distribution."""
    model = build_tiny_model()
    head = torch.nn.Linear(model.config.hidden_size, model.config.vocab_size, bias=False)
    with torch.no_grad():  # an untied, sharpened head: a peaked distribution, so that the filters bite
        head.weight.copy_(model.lm_head.weight * 10.0)
    model.lm_head = head
    prompt = TOK.encode("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
    p = params(2, temperature=0.8, top_k=25, top_p=0.9)
    with torch.no_grad():
        probs = processed_probs(model(input_ids=torch.tensor([prompt])).logits[:, -1], p)[0]
    torch.manual_seed(3)
    out = make_backend("hf", model=model).generate([prompt], 4000, p)
    first = out.completion_ids[:, 0]
    counts = torch.bincount(first, minlength=probs.numel())
    assert counts[probs == 0].sum() == 0
    assert chi_square_pvalue(counts, probs * first.numel(), bins=20) > 1e-3


def _rows_and_forward(model, out):
    ids = torch.cat([out.prompt_ids, out.completion_ids], dim=1)
    mask = torch.cat([out.prompt_mask, out.completion_mask], dim=1)
    return ids, mask, out.completion_ids.shape[1]


def test_sampler_logps_equal_the_training_forward_without_filters():
    model = build_tiny_model()
    prompts = [TOK.encode("What is 1+2?"), TOK.encode("Hi"), TOK.encode("abc def ghi")]
    torch.manual_seed(4)
    out = make_backend("hf", model=model).generate(prompts, 3, params(12, temperature=0.7, return_logps=True))
    ids, mask, K = _rows_and_forward(model, out)
    with torch.no_grad():
        train, _ = token_logprobs(model, ids, mask, K, temperature=0.7)
    m = out.completion_mask.bool()
    assert m.sum() > 20
    assert torch.allclose(out.sampling_logps[m], train[m], atol=1e-5)
    assert (out.sampling_logps[~m] == 0).all()


def test_sampler_logps_with_filters_are_the_processed_distributions():
    """With filters the sampler reports the processed distribution, computed here from full logits."""
    model = build_tiny_model()
    prompts = [TOK.encode("What is 1+2?"), TOK.encode("Hi")]
    p = params(10, temperature=0.8, top_k=12, top_p=0.9, min_p=0.05, return_logps=True)
    torch.manual_seed(5)
    out = make_backend("hf", model=model).generate(prompts, 4, p)
    ids, mask, K = _rows_and_forward(model, out)
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask, position_ids=position_ids).logits[:, -K - 1 : -1]
    probs = processed_probs(logits.reshape(-1, logits.shape[-1]), p).reshape(logits.shape)
    expected = probs.gather(-1, out.completion_ids.unsqueeze(-1)).squeeze(-1).log()
    m = out.completion_mask.bool()
    assert torch.allclose(out.sampling_logps[m], expected[m], atol=1e-4)
    # and the unfiltered forward is lower wherever the filters removed mass
    with torch.no_grad():
        plain = naive_token_logprobs(model, ids, mask, K, temperature=0.8)
    assert (out.sampling_logps[m] >= plain[m] - 1e-5).all()


def test_repetition_penalty_sees_the_prompt_and_the_completion():
    a = TOK.convert_tokens_to_ids("a")
    b = TOK.convert_tokens_to_ids("b")
    model = build_tiny_model()
    head = torch.nn.Linear(model.config.hidden_size, model.config.vocab_size, bias=True)
    torch.nn.init.zeros_(head.weight)
    with torch.no_grad():
        head.bias.fill_(-30.0)
        head.bias[a], head.bias[b] = 10.0, 10.0 - math.log(2.0)  # p(a) = 2/3, p(b) = 1/3
    model.lm_head = head
    torch.manual_seed(6)
    # 'a' in the prompt: penalty 2 halves its logit (10 -> 5): p(a) = e^5 / (e^5 + e^10 / 2)
    p = params(1, repetition_penalty=2.0, return_logps=True)
    out = make_backend("hf", model=model).generate([TOK.encode("xa")], 4000, p)
    share = float(out.completion_ids[:, 0].eq(a).float().mean())
    expected = math.exp(5) / (math.exp(5) + math.exp(10) / 2.0)  # about 0.013 (0.67 without the penalty)
    assert abs(share - expected) < 0.006
