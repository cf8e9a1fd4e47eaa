"""Reference-free pairwise losses: CPO / SimPO / AlphaPO (`cpo` family).

    out = cpo_loss(PreferenceBatch(chosen_logps, rejected_logps, chosen_lengths=..., rejected_lengths=...,
                                   chosen_nll=...), CPOLossConfig.from_spec(cfg), num_pairs, num_chosen_tokens)

Scores s: summed completion log-probs for `sigmoid` / `hinge`, per-token means for `ipo`, `simpo`,
`alphapo`. AlphaPO shaping (alpha != 0, any loss type): R = (1 - e^(-alpha s)) / alpha. Total =
sum of per-pair losses / global pairs + cpo_alpha * (summed chosen NLL / global chosen tokens).
Reference log-probs in the batch are ignored. `logps/chosen` and `logps/rejected` log the scores
before shaping (per-token means for ipo / simpo / alphapo), so they compare with published curves.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from engine.functional import Count, clamp_count
from engine.losses.batches import PreferenceBatch
from engine.losses.registry import LossOutput, get_loss, register

PER_TOKEN_LOSSES = ("ipo", "simpo", "alphapo")  # score = mean log-prob per completion token


@dataclass(frozen=True)
class CPOLossConfig:
    """The loss-relevant fields of a `CPOConfig` (whose `cpo_alpha` is 0 for alphapo)."""

    beta: float = 0.1
    loss_type: str = "sigmoid"
    label_smoothing: float = 0.0
    cpo_alpha: float = 1.0
    simpo_gamma: float = 0.5
    alpha: float = 0.0

    @classmethod
    def from_spec(cls, config: Any) -> CPOLossConfig:
        return cls(
            beta=config.beta,
            loss_type=config.loss_type,
            label_smoothing=config.label_smoothing,
            cpo_alpha=config.cpo_alpha,
            simpo_gamma=config.simpo_gamma,
            alpha=config.alpha,
        )


def alphapo_reward(scores: Tensor, alpha: float) -> Tensor:
    """AlphaPO reward shape (arXiv 2501.03884): (1 - p^-alpha) / alpha with p = e^s; s itself at alpha = 0."""
    if alpha == 0.0:
        return scores
    return (1 - torch.exp(-alpha * scores)) / alpha


def _logps(batch: PreferenceBatch, cfg: CPOLossConfig, per_token: bool) -> tuple[Tensor, Tensor]:
    """The sequence scores before shaping: sums, or per-token means for ipo / simpo / alphapo."""
    c, r = batch.chosen_logps, batch.rejected_logps
    if per_token:
        if batch.chosen_lengths is None or batch.rejected_lengths is None:
            raise ValueError(f"CPO loss_type {cfg.loss_type!r} needs chosen_lengths and rejected_lengths")
        c = c / batch.chosen_lengths.to(c.dtype).clamp(min=1)
        r = r / batch.rejected_lengths.to(r.dtype).clamp(min=1)
    return c, r


def _scores(batch: PreferenceBatch, cfg: CPOLossConfig, per_token: bool) -> tuple[Tensor, Tensor]:
    c, r = _logps(batch, cfg, per_token)
    return alphapo_reward(c, cfg.alpha), alphapo_reward(r, cfg.alpha)


def _finish(
    per_pair: Tensor, s_c: Tensor, s_r: Tensor, batch: PreferenceBatch, cfg: CPOLossConfig, num_pairs: Count
) -> LossOutput:
    n = clamp_count(num_pairs)
    logps_c, logps_r = _logps(batch, cfg, per_token=cfg.loss_type in PER_TOKEN_LOSSES)
    with torch.no_grad():
        rc, rr = cfg.beta * s_c.detach(), cfg.beta * s_r.detach()
        metrics = {
            "rewards/chosen": rc.sum() / n,
            "rewards/rejected": rr.sum() / n,
            "rewards/accuracies": (rc > rr).to(rc.dtype).sum() / n,
            "rewards/margins": (rc - rr).sum() / n,
            "logps/chosen": logps_c.detach().sum() / n,
            "logps/rejected": logps_r.detach().sum() / n,
        }
    return LossOutput(loss=per_pair.sum() / n, metrics=metrics)


def _smoothed(x: Tensor, eps: float) -> Tensor:
    return -(1 - eps) * F.logsigmoid(x) - eps * F.logsigmoid(-x)


@register("cpo", "sigmoid")
def sigmoid(batch: PreferenceBatch, cfg: CPOLossConfig, num_pairs: Count) -> LossOutput:
    """CPO (arXiv 2401.08417): -(1-eps) log s(b u) - eps log s(-b u), u = s+ - s- on summed log-probs."""
    s_c, s_r = _scores(batch, cfg, per_token=False)
    return _finish(_smoothed(cfg.beta * (s_c - s_r), cfg.label_smoothing), s_c, s_r, batch, cfg, num_pairs)


@register("cpo", "hinge")
def hinge(batch: PreferenceBatch, cfg: CPOLossConfig, num_pairs: Count) -> LossOutput:
    """Hinge on summed log-probs: max(0, 1 - b u)."""
    s_c, s_r = _scores(batch, cfg, per_token=False)
    return _finish(torch.relu(1 - cfg.beta * (s_c - s_r)), s_c, s_r, batch, cfg, num_pairs)


@register("cpo", "ipo")
def ipo(batch: PreferenceBatch, cfg: CPOLossConfig, num_pairs: Count) -> LossOutput:
    """IPO on per-token mean log-probs: (u - 1/(2b))^2."""
    s_c, s_r = _scores(batch, cfg, per_token=True)
    return _finish((s_c - s_r - 1 / (2 * cfg.beta)) ** 2, s_c, s_r, batch, cfg, num_pairs)


@register("cpo", "simpo", "alphapo")
def simpo(batch: PreferenceBatch, cfg: CPOLossConfig, num_pairs: Count) -> LossOutput:
    """SimPO (arXiv 2405.14734) / AlphaPO: -(1-eps) log s(b u - gamma) - eps log s(-(b u - gamma)),
    u on per-token means (AlphaPO-shaped when alpha != 0); `alphapo` is this with cpo_alpha = 0."""
    s_c, s_r = _scores(batch, cfg, per_token=True)
    x = cfg.beta * (s_c - s_r) - cfg.simpo_gamma
    return _finish(_smoothed(x, cfg.label_smoothing), s_c, s_r, batch, cfg, num_pairs)


def cpo_loss(
    batch: PreferenceBatch, cfg: CPOLossConfig, num_pairs: Count, num_chosen_tokens: Count
) -> LossOutput:
    """Pairwise CPO-family loss + cpo_alpha * NLL for one micro-batch (global counts)."""
    out = get_loss("cpo", cfg.loss_type)(batch, cfg, num_pairs)
    loss = out.loss
    metrics = dict(out.metrics)
    if cfg.cpo_alpha != 0.0:
        if batch.chosen_nll is None:
            raise ValueError("cpo_alpha != 0 needs chosen_nll (sum of -log p over chosen completion tokens)")
        nll = batch.chosen_nll.sum() / clamp_count(num_chosen_tokens)
        loss = loss + cfg.cpo_alpha * nll
        metrics["cpo/nll_loss"] = nll.detach()
    metrics["cpo/loss"] = loss.detach()
    return LossOutput(loss=loss, metrics=metrics)
