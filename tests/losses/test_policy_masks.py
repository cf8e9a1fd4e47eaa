"""Masks and importance weights of the GRPO pipeline, against hand-computed values."""

import math

import pytest
import torch

from engine.losses import (
    entropy_threshold,
    high_entropy_mask,
    mask_truncated_completions,
    off_policy_mask,
    truncated_rows,
    vllm_is_metrics,
    vllm_is_weights,
)

D = torch.float64
OLD = torch.tensor([[-1.0, -2.0, -0.5], [-0.2, -0.4, 0.0]], dtype=D)
SAMP = torch.tensor([[-1.5, -1.0, -0.5], [-0.2, -0.1, -9.0]], dtype=D)
MASK = torch.tensor([[1, 1, 1], [1, 1, 0]], dtype=D)
# d = (old - samp) * mask = [[0.5, -1.0, 0], [0, -0.3, 0]]


def test_token_truncate_clamps_each_token():
    w = vllm_is_weights(OLD, SAMP, MASK, "token_truncate", clip_min=0.5, clip_max=1.5)
    expected = [[1.5, 0.5, 1.0], [1.0, math.exp(-0.3), 1.0]]
    assert torch.allclose(w, torch.tensor(expected, dtype=D))


def test_token_mask_zeroes_out_of_range_and_keeps_ratio_values():
    w = vllm_is_weights(OLD, SAMP, MASK, "token_mask", clip_min=0.5, clip_max=1.5)
    expected = [[0.0, 0.0, 1.0], [1.0, math.exp(-0.3), 1.0]]
    assert torch.allclose(w, torch.tensor(expected, dtype=D))


def test_sequence_modes_use_the_product_over_the_sequence():
    trunc = vllm_is_weights(OLD, SAMP, MASK, "sequence_truncate", clip_max=0.7)
    assert trunc.shape == (2, 1)
    assert torch.allclose(trunc.squeeze(1), torch.tensor([min(math.exp(-0.5), 0.7), 0.7], dtype=D))
    masked = vllm_is_weights(OLD, SAMP, MASK, "sequence_mask", clip_min=0.7, clip_max=3.0)
    assert torch.allclose(masked.squeeze(1), torch.tensor([0.0, math.exp(-0.3)], dtype=D))


def test_is_metrics_token_mode_from_the_formula():
    m = vllm_is_metrics(OLD, SAMP, MASK, "token_truncate", clip_min=0.5, clip_max=1.5)
    # counted tokens: d = 0.5, -1.0, 0, 0, -0.3 (the masked third token of row 2 is left out)
    d = [0.5, -1.0, 0.0, 0.0, -0.3]
    rho = [math.exp(x) for x in d]
    assert m["rollout/is_ratio_mean"] == pytest.approx(sum(rho) / 5)
    assert m["rollout/is_ratio_min"] == pytest.approx(math.exp(-1.0))
    assert m["rollout/is_ratio_max"] == pytest.approx(math.exp(0.5))
    assert m["rollout/is_clipped_frac"] == pytest.approx(2 / 5)  # e^0.5 > 1.5 and e^-1 < 0.5
    k3 = [r - 1 - x for r, x in zip(rho, d, strict=True)]
    assert m["rollout/sampler_kl"] == pytest.approx(sum(k3) / 5)
    assert m["rollout/sampler_kl"] > 0


def test_is_metrics_sequence_mask_mode_counts_masked_sequences():
    m = vllm_is_metrics(OLD, SAMP, MASK, "sequence_mask", clip_min=0.7, clip_max=3.0)
    rho = [math.exp(-0.5), math.exp(-0.3)]
    assert m["rollout/is_ratio_mean"] == pytest.approx(sum(rho) / 2)
    assert m["rollout/is_ratio_min"] == pytest.approx(rho[0])
    assert m["rollout/is_masked_frac"] == pytest.approx(1 / 2)  # e^-0.5 < 0.7 is dropped
    same = vllm_is_metrics(OLD, OLD, MASK, "sequence_mask", clip_max=3.0)
    assert same["rollout/is_ratio_min"] == same["rollout/is_ratio_max"] == 1.0
    assert same["rollout/sampler_kl"] == 0.0 and same["rollout/is_masked_frac"] == 0.0


def test_is_mode_errors_are_clear():
    with pytest.raises(ValueError, match="clip_max"):
        vllm_is_weights(OLD, SAMP, MASK, "token_truncate", clip_min=None, clip_max=None)
    with pytest.raises(ValueError, match="below"):
        vllm_is_weights(OLD, SAMP, MASK, "token_mask", clip_min=2.0, clip_max=1.0)
    with pytest.raises(ValueError, match="known"):
        vllm_is_weights(OLD, SAMP, MASK, "token", clip_max=2.0)


def test_entropy_threshold_ignores_padding_and_handles_empty():
    ent = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 100.0]], dtype=D)
    assert entropy_threshold(ent, MASK, 0.0).item() == 5.0
    assert entropy_threshold(ent, MASK, 1.0).item() == 1.0
    assert entropy_threshold(ent, MASK, 0.5).item() == 3.0
    assert entropy_threshold(ent, torch.zeros_like(MASK), 0.5).item() == math.inf
    assert high_entropy_mask(ent, torch.zeros_like(MASK), 0.5).sum() == 0


def test_high_entropy_mask_with_given_threshold():
    ent = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 100.0]], dtype=D)
    e = high_entropy_mask(ent, MASK, 0.2, threshold=torch.tensor(3.5, dtype=D))
    assert e.tolist() == [[0, 0, 0], [1, 1, 0]]


def test_off_policy_mask_padding_is_ignored_in_the_mean_kl():
    logps = torch.tensor([[-1.0, -1.0, -1.0], [-1.0, -1.0, -50.0]], dtype=D)
    behaviour = torch.tensor([[-0.8, -0.8, -0.8], [-1.0, -1.0, 0.0]], dtype=D)
    adv = torch.tensor([[-1.0], [-1.0]], dtype=D)
    keep = off_policy_mask(logps, behaviour, MASK, adv, threshold=0.1)
    assert keep.squeeze(1).tolist() == [
        0.0,
        1.0,
    ]  # row 0: KL 0.2 > 0.1 with A < 0; row 1: KL 0 (padding ignored)
    keep_pos = off_policy_mask(logps, behaviour, MASK, -adv, threshold=0.1)
    assert keep_pos.squeeze(1).tolist() == [1.0, 1.0]  # non-negative advantages are always kept


def test_truncated_rows_and_mask():
    ids = torch.tensor([[5, 6, 2], [5, 2, 0], [7, 8, 9], [0, 0, 0]])
    cmask = torch.tensor([[1, 1, 1], [1, 1, 0], [1, 1, 1], [0, 0, 0]])
    trunc = truncated_rows(ids, cmask, eos_token_ids=[2], pad_token_id=0)
    assert trunc.tolist() == [False, False, True, False]
    masked = mask_truncated_completions(cmask.to(D), trunc)
    assert masked.tolist() == [[1, 1, 1], [1, 1, 0], [0, 0, 0], [0, 0, 0]]
