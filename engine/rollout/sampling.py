"""Draw next tokens from processed logits: repetition penalty, temperature, top-k, top-p, min-p, then an exact
sample, with the log-prob of the drawn token under that processed distribution.

    tokens, logps = sample_next(logits, params, seen=None)      # logits (n, V); tokens (n,), logps (n,)

The filters mean what transformers' logits processors mean, applied in the same order (repetition penalty,
temperature, top-k keeping ties, top-p keeping the smallest head whose mass reaches `top_p`, min-p relative
to the most likely token), so the distribution is the one `torch.multinomial` would draw from after them.
The work is cheaper on a large vocabulary:
  - top-k and top-p shrink the problem to a candidate set first (top-p grows `topk` until the kept head is
    inside it instead of sorting the whole vocabulary); min-p is a threshold on the logits,
    x_i >= max(x) + log(min_p), which is p_i >= min_p * p_max without a softmax;
  - the draw is an inverse-CDF search in float64 over exp(x - max): with more than `BLOCK` candidates it
    first picks a block of `BLOCK` tokens by its mass, then a token inside it, so each row costs one pass of
    exp and one of block sums plus two uniforms, instead of a softmax and a full random vector.
    P(token) = P(block) * P(token | block), so the draw is exact; zero-mass tokens are never drawn.
"""

from __future__ import annotations

import math

import torch

from engine.rollout.base import SamplingParams

BLOCK = 256  # candidates per block in the two-stage draw
FIRST_TOP_P_GUESS = 64  # candidates tried first for top-p; grown x4 until the kept head fits


def apply_repetition_penalty(x: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """Scores of tokens already seen (`seen` (n, V) bool) divided by `penalty` (multiplied when negative)."""
    penalized = torch.where(x < 0, x * penalty, x / penalty)
    return torch.where(seen, penalized, x)


def sample_next(
    logits: torch.Tensor, params: SamplingParams, seen: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(tokens (n,) long, log-probs (n,) float32 of those tokens under the processed distribution)."""
    x = logits.float()
    if params.repetition_penalty != 1.0 and seen is not None:
        x = apply_repetition_penalty(x, seen, params.repetition_penalty)
    if params.temperature != 1.0:
        x = x / params.temperature
    index = None  # candidate -> vocabulary id, when the problem was shrunk to candidates
    is_sorted = False
    vocab = x.shape[-1]
    if params.top_k and params.top_k < vocab:
        x, index, is_sorted = _top_k(x, params.top_k)
    if params.top_p < 1.0:
        x, index, is_sorted = _top_p(x, index, params.top_p, is_sorted)
    if params.min_p is not None:
        best = x[:, :1] if is_sorted else x.amax(-1, keepdim=True)
        floor = best + (math.log(params.min_p) if params.min_p > 0 else -math.inf)
        x = x.masked_fill(x < floor, -math.inf)
    choice, logps = draw(x)
    tokens = choice if index is None else index.gather(-1, choice.unsqueeze(-1)).squeeze(-1)
    return tokens, logps


def _top_k(x: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor | None, bool]:
    values, index = x.topk(k, dim=-1)  # sorted, descending
    threshold = values[:, -1:]
    if bool(((x >= threshold).sum(-1) > k).any()):  # ties at the k-th score are kept: mask in place instead
        return x.masked_fill(x < threshold, -math.inf), None, False
    return values, index, True


def _top_p(
    x: torch.Tensor, index: torch.Tensor | None, top_p: float, is_sorted: bool
) -> tuple[torch.Tensor, torch.Tensor | None, bool]:
    """Keep each token whose more likely tokens hold less than `top_p` of the mass (the most likely always)."""
    width = x.shape[-1]
    logz = torch.logsumexp(x, dim=-1, keepdim=True)
    k = width if is_sorted else min(width, FIRST_TOP_P_GUESS)
    while True:
        values, order = (x, None) if k == width and is_sorted else x.topk(k, dim=-1)
        probs = (values - logz).exp()
        mass = probs.sum(-1)
        if k == width or bool((mass >= top_p).all()):
            break
        k = min(width, k * 4)
    before = probs.cumsum(-1) - probs  # mass of the more likely candidates
    keep = before < top_p
    keep[:, 0] = True
    values = values.masked_fill(~keep, -math.inf)
    if order is not None:
        index = order if index is None else index.gather(-1, order)
    return values, index, True


def draw(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """An exact sample from softmax(x) per row (x may hold -inf) and its log-prob: (choice (n,), logp (n,))."""
    n, width = x.shape
    top = x.amax(-1, keepdim=True)
    weights = (x - top).exp()
    if width <= 4 * BLOCK:
        choice, total = _search(weights)
    else:
        pad = -width % BLOCK
        padded = torch.nn.functional.pad(weights, (0, pad)) if pad else weights
        blocks = padded.view(n, -1, BLOCK)
        block, total = _search(blocks.sum(-1, dtype=torch.float64))
        inner = blocks[torch.arange(n, device=x.device), block]  # (n, BLOCK)
        offset, _ = _search(inner)
        choice = block * BLOCK + offset
    chosen = x.gather(-1, choice.unsqueeze(-1)).squeeze(-1)
    logps = chosen - top.squeeze(-1) - total.log().float()
    return choice, logps


def _search(weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Inverse-CDF draw of one index per row with probability proportional to `weights` (n, m) >= 0."""
    cdf = weights.to(torch.float64).cumsum(-1)
    total = cdf[:, -1:].contiguous()
    u = torch.rand(cdf.shape[0], 1, dtype=torch.float64, device=cdf.device) * total
    choice = torch.searchsorted(cdf, u, right=True)  # first index whose cdf exceeds u: zero-mass never wins
    # u rounding up to the total would run past the end: take the last index with mass instead
    last = torch.searchsorted(cdf, total)
    choice = torch.minimum(choice, last)
    return choice.squeeze(-1), total.squeeze(-1)
