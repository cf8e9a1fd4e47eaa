"""Tensor primitives of engine.functional against direct computations."""

import math
import statistics

import pytest
import torch
import torch.nn.functional as F

from engine.functional import (
    GlobalCounts,
    aggregate,
    chunked_selective_log_softmax,
    entropy_from_logits,
    k3_kl,
    masked_mean,
    nanstd,
    selective_log_softmax,
)

D = torch.float64


def test_masked_mean_with_empty_mask_is_zero():
    x = torch.tensor([[1.0, 2.0], [3.0, 4.0]], dtype=D)
    assert masked_mean(x, torch.tensor([[1, 0], [1, 1]])).item() == pytest.approx(8 / 3)
    assert masked_mean(x, torch.zeros(2, 2)).item() == 0.0
    assert masked_mean(x, torch.tensor([[1, 0], [0, 0]]), dim=-1).tolist() == [1.0, 0.0]


def test_nanstd_is_bessel_corrected_and_nan_below_two_values():
    x = torch.tensor([1.0, float("nan"), 4.0, 2.0], dtype=D)
    assert nanstd(x).item() == pytest.approx(statistics.stdev([1.0, 4.0, 2.0]))
    assert math.isnan(nanstd(torch.tensor([1.0, float("nan")], dtype=D)).item())
    rows = nanstd(torch.tensor([[1.0, 3.0], [2.0, float("nan")]], dtype=D), dim=1)
    assert rows[0].item() == pytest.approx(math.sqrt(2)) and math.isnan(rows[1].item())


def test_selective_log_softmax_matches_log_softmax_in_every_dtype():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 11, generator=g, dtype=D)
    idx = torch.randint(0, 11, (2, 3), generator=g)
    ref = F.log_softmax(logits, -1).gather(-1, idx.unsqueeze(-1)).squeeze(-1)
    assert torch.allclose(selective_log_softmax(logits, idx), ref)
    assert torch.allclose(selective_log_softmax(logits.bfloat16(), idx).double(), ref, atol=0.1)
    assert torch.allclose(chunked_selective_log_softmax(logits, idx, chunk_size=2), ref)


def test_entropy_from_logits():
    logits = torch.log(torch.tensor([[0.5, 0.25, 0.25]], dtype=D))
    assert entropy_from_logits(logits, chunk_size=1).item() == pytest.approx(
        -(0.5 * math.log(0.5) + 0.5 * math.log(0.25))
    )


def test_k3_kl_is_nonnegative_and_zero_at_equality():
    lp = torch.tensor([-1.0, -2.0], dtype=D)
    ref = torch.tensor([-1.0, -1.5], dtype=D)
    assert k3_kl(lp, ref).tolist() == pytest.approx([0.0, math.exp(0.5) - 0.5 - 1])


def test_aggregate_modes_and_unknown_mode():
    per = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], dtype=D)
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]], dtype=D)
    c = GlobalCounts(num_tokens=6, num_sequences=4)
    assert aggregate(per, mask, "token_mean", c).item() == pytest.approx(7 / 6)
    assert aggregate(per, mask, "sequence_mean", c).item() == pytest.approx((1.5 + 4) / 4)
    assert aggregate(per, mask, "sequence_sum", c).item() == pytest.approx(7 / 4)
    assert aggregate(per, mask, "fixed_length", c, max_completion_length=5).item() == pytest.approx(7 / 20)
    seq = torch.tensor([[2.0], [3.0]], dtype=D)  # (B, 1) broadcast over tokens
    assert aggregate(seq, mask, "sequence_sum", c).item() == pytest.approx((2 * 2 + 3) / 4)
    with pytest.raises(ValueError, match="known"):
        aggregate(per, mask, "mean", c)
    with pytest.raises(ValueError, match="max_completion_length"):
        aggregate(per, mask, "fixed_length", c)


def test_zero_counts_do_not_divide_by_zero():
    per = torch.ones(1, 2, dtype=D)
    mask = torch.zeros(1, 2, dtype=D)
    c = GlobalCounts(num_tokens=torch.tensor(0.0, dtype=D), num_sequences=0)
    for mode in ("token_mean", "sequence_mean", "sequence_sum"):
        assert aggregate(per, mask, mode, c).item() == 0.0
