"""Splitting an optimizer step into micro-batches and ranks must not change the loss or its gradient.

The loops call the loss once per micro-batch with the global counts and sum; this checks that the
sum equals the loss on the whole batch, for every policy loss_type and with the modifiers on.
"""

import pytest
import torch

from engine.losses import (
    GlobalCounts,
    PolicyBatch,
    PolicyLossConfig,
    entropy_threshold,
    high_entropy_mask,
    policy_loss,
    registry_names,
)

D = torch.float64
B, T = 8, 6


def make_batch():
    g = torch.Generator().manual_seed(7)
    logps = -torch.rand(B, T, generator=g, dtype=D) * 2
    old = logps + 0.3 * (torch.rand(B, T, generator=g, dtype=D) - 0.5)
    ref = logps + 0.4 * (torch.rand(B, T, generator=g, dtype=D) - 0.5)
    samp = old + 0.1 * (torch.rand(B, T, generator=g, dtype=D) - 0.5)
    ent = torch.rand(B, T, generator=g, dtype=D) * 3
    lengths = torch.tensor([6, 3, 1, 0, 5, 2, 6, 4])  # includes a fully masked row and a length-1 row
    mask = (torch.arange(T).unsqueeze(0) < lengths.unsqueeze(1)).to(D)
    adv = torch.randn(B, generator=g, dtype=D)
    adv[2] = 0.0
    return logps, old, ref, samp, ent, mask, adv


VARIANTS = {
    "plain": {},
    "beta": {"beta": 0.04},
    "beta_bias_corrected": {"beta": 0.04, "use_bias_correction_kl": True},
    "entropy_mask": {"top_entropy_quantile": 0.3},
    "entropy_mask_beta": {"top_entropy_quantile": 0.3, "beta": 0.04},
    "entropy_bonus": {"entropy_coef": 0.01},
    "entropy_mask_bonus": {"top_entropy_quantile": 0.3, "entropy_coef": 0.01},
    "sequence_level": {"importance_sampling_level": "sequence"},
    "vllm_token_truncate": {
        "vllm_is_correction": True,
        "vllm_is_mode": "token_truncate",
        "vllm_is_clip_max": 1.02,
    },
    "vllm_sequence_mask": {
        "vllm_is_correction": True,
        "vllm_is_mode": "sequence_mask",
        "vllm_is_clip_max": 1.05,
    },
    "off_policy_mask": {"off_policy_mask_threshold": 0.01},
    "delta": {"delta": 1.3, "epsilon_high": 0.28},
}


def run(loss_type, variant, rows_list):
    logps, old, ref, samp, ent, mask, adv = make_batch()
    kw = dict(VARIANTS[variant])
    kw.setdefault("epsilon_high", 5.0 if loss_type == "cispo" else None)
    cfg = PolicyLossConfig(loss_type=loss_type, max_completion_length=T, **kw)
    thr, kept = None, None
    if cfg.top_entropy_quantile < 1:
        thr = entropy_threshold(ent, mask, cfg.top_entropy_quantile)
        kept = high_entropy_mask(ent, mask, cfg.top_entropy_quantile, thr).sum()
    counts = GlobalCounts(
        num_tokens=mask.sum(), num_sequences=B, entropy_threshold=thr, num_entropy_tokens=kept
    )
    leaf = logps.clone().requires_grad_(True)
    ent_leaf = ent.clone().requires_grad_(True)
    total = torch.zeros((), dtype=D)
    metrics: dict[str, torch.Tensor] = {}
    for rows in rows_list:
        b = PolicyBatch(
            logps=leaf[rows],
            mask=mask[rows],
            advantages=adv[rows],
            old_logps=old[rows],
            ref_logps=ref[rows],
            sampling_logps=samp[rows],
            entropies=ent_leaf[rows],
        )
        out = policy_loss(b, cfg, counts)
        out.loss.backward()
        total = total + out.loss.detach()
        for k, v in out.metrics.items():
            metrics[k] = metrics.get(k, 0) + v
    return total, leaf.grad, ent_leaf.grad, metrics


SPLITS = {
    "micro_batches": [slice(0, 3), slice(3, 5), slice(5, 8)],
    # two simulated ranks x two micro-batches, interleaved rows: groups are spread over ranks
    "ranks": [torch.tensor([0, 4]), torch.tensor([2, 6]), torch.tensor([1, 5]), torch.tensor([3, 7])],
}


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("loss_type", registry_names("policy"))
def test_split_sum_equals_full_batch(loss_type, variant):
    if loss_type == "vespo" and variant == "vllm_sequence_mask":
        with pytest.raises(ValueError, match="token_"):
            run(loss_type, variant, [slice(0, B)])
        return
    full_loss, full_grad, full_egrad, full_metrics = run(loss_type, variant, [slice(0, B)])
    for split in SPLITS.values():
        loss, grad, egrad, metrics = run(loss_type, variant, split)
        assert torch.allclose(loss, full_loss, atol=1e-12, rtol=1e-10)
        assert torch.allclose(grad, full_grad, atol=1e-12, rtol=1e-10)
        assert torch.allclose(
            egrad if egrad is not None else torch.zeros(1, dtype=D),
            full_egrad if full_egrad is not None else torch.zeros(1, dtype=D),
            atol=1e-12,
        )
        for k in full_metrics:
            if k != "policy/loss" and k != "policy/policy_loss":
                assert torch.allclose(metrics[k], full_metrics[k], atol=1e-12), k
    assert torch.isfinite(full_loss)
