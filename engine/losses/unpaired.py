"""Unpaired-feedback losses: KTO (`kto` family) and BCO (`bco` family)

    out = kto_loss(UnpairedBatch(logps, ref_logps, labels), KTOLossConfig.from_spec(cfg),
                   UnpairedCounts.from_labels(labels), kl_reference=z0)
    out = bco_loss(UnpairedBatch(...), BCOLossConfig.from_spec(cfg), counts, state=BCOState())

Log-probs are sums over completion tokens. Losses are sums over the micro-batch's rows divided by
the global row count of the optimizer step; reward metrics divide by the global count of rows with
that label. Not here: building the KL rows (rotated completions) or the UDM classifier.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from engine.functional import Count, clamp_count
from engine.losses.batches import UnpairedBatch
from engine.losses.registry import LossOutput, get_loss, register
from engine.losses.state import RunningMean


@dataclass(frozen=True)
class UnpairedCounts:
    """Global totals over the optimizer step: all rows, desirable rows, undesirable rows."""

    num_rows: Count
    num_desirable: Count
    num_undesirable: Count

    @classmethod
    def from_labels(cls, labels: Tensor) -> UnpairedCounts:
        """Counts of one (B,) bool label tensor (single process, single micro-batch)."""
        d = labels.bool().sum()
        return cls(num_rows=labels.numel(), num_desirable=d, num_undesirable=labels.numel() - d)


def _reward_metrics(
    batch: UnpairedBatch, rewards: Tensor, counts: UnpairedCounts, prefix: str
) -> dict[str, Tensor]:
    with torch.no_grad():
        des = batch.labels.bool()
        und = ~des
        r = rewards.detach()
        lp = batch.logps.detach()
        chosen = (r * des).sum() / clamp_count(counts.num_desirable)
        rejected = (r * und).sum() / clamp_count(counts.num_undesirable)
        return {
            "rewards/chosen": chosen,
            "rewards/rejected": rejected,
            "rewards/margins": chosen - rejected,
            "logps/chosen": (lp * des).sum() / clamp_count(counts.num_desirable),
            "logps/rejected": (lp * und).sum() / clamp_count(counts.num_undesirable),
            f"{prefix}/loss": torch.zeros((), dtype=r.dtype, device=r.device),
        }


# --- KTO ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class KTOLossConfig:
    """The loss-relevant fields of a `KTOConfig`."""

    beta: float = 0.1
    loss_type: str = "kto"
    desirable_weight: float = 1.0
    undesirable_weight: float = 1.0

    @classmethod
    def from_spec(cls, config: Any) -> KTOLossConfig:
        return cls(
            beta=config.beta,
            loss_type=config.loss_type,
            desirable_weight=config.desirable_weight,
            undesirable_weight=config.undesirable_weight,
        )


def kto_reference_point(kl_logps: Tensor, kl_ref_logps: Tensor) -> Tensor:
    """KTO's z0 = max(0, mean(log pi(y'|x) - log ref(y'|x))) over mismatched pairs (x, y'), detached.

    kl_logps, kl_ref_logps: (B,) sums over completion tokens. To average over ranks, average the
    per-rank means before clamping (the loop all-reduces).
    """
    return (kl_logps.detach() - kl_ref_logps.detach()).mean().clamp(min=0)


def _kto_terms(
    batch: UnpairedBatch, cfg: KTOLossConfig, counts: UnpairedCounts, des_loss: Tensor, und_loss: Tensor
) -> Tensor:
    des = batch.labels.bool()
    per_row = torch.where(des, cfg.desirable_weight * des_loss, cfg.undesirable_weight * und_loss)
    return per_row.sum() / clamp_count(counts.num_rows)


@register("kto", "kto")
def kto(
    batch: UnpairedBatch,
    cfg: KTOLossConfig,
    counts: UnpairedCounts,
    kl_reference: Tensor | float | None = None,
) -> LossOutput:
    """KTO (arXiv 2402.01306): desirable 1 - s(b(D - z0)), undesirable 1 - s(b(z0 - D)), weighted by
    lambda_D / lambda_U (not renormalised); D = log pi - log ref, z0 = `kl_reference` (a constant)."""
    if kl_reference is None:
        raise ValueError("loss_type 'kto' needs kl_reference (z0, see kto_reference_point)")
    delta = batch.logps - batch.ref_logps.detach()
    z0 = torch.as_tensor(kl_reference, dtype=delta.dtype, device=delta.device).detach()
    loss = _kto_terms(
        batch,
        cfg,
        counts,
        1 - torch.sigmoid(cfg.beta * (delta - z0)),
        1 - torch.sigmoid(cfg.beta * (z0 - delta)),
    )
    metrics = _reward_metrics(batch, cfg.beta * delta, counts, "kto")
    metrics["kto/loss"] = loss.detach()
    metrics["kto/kl"] = z0 * batch.logps.shape[0] / clamp_count(counts.num_rows)
    return LossOutput(loss=loss, metrics=metrics)


@register("kto", "apo_zero_unpaired")
def apo_zero_unpaired(
    batch: UnpairedBatch,
    cfg: KTOLossConfig,
    counts: UnpairedCounts,
    kl_reference: Tensor | float | None = None,
) -> LossOutput:
    """APO-zero, unpaired (arXiv 2408.06266): desirable 1 - s(b D), undesirable s(b D); no KL rows."""
    delta = batch.logps - batch.ref_logps.detach()
    s = torch.sigmoid(cfg.beta * delta)
    loss = _kto_terms(batch, cfg, counts, 1 - s, s)
    metrics = _reward_metrics(batch, cfg.beta * delta, counts, "kto")
    metrics["kto/loss"] = loss.detach()
    return LossOutput(loss=loss, metrics=metrics)


def kto_loss(
    batch: UnpairedBatch,
    cfg: KTOLossConfig,
    counts: UnpairedCounts,
    kl_reference: Tensor | float | None = None,
) -> LossOutput:
    """The KTO-family loss `cfg.loss_type` for one micro-batch."""
    return get_loss("kto", cfg.loss_type)(batch, cfg, counts, kl_reference)


# --- BCO ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BCOLossConfig:
    """The loss-relevant fields of a `BCOConfig`."""

    beta: float = 0.1
    loss_type: str = "bco"

    @classmethod
    def from_spec(cls, config: Any) -> BCOLossConfig:
        return cls(beta=config.beta)


@dataclass
class BCOState:
    """BCO's running reward mean delta (checkpoint it with `state_dict`)."""

    running: RunningMean = field(default_factory=RunningMean)

    def state_dict(self) -> dict[str, Any]:
        return {"running": self.running.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.running.load_state_dict(state["running"])


def udm_density_weights(prob_desirable: Tensor, min_ratio: float = 0.5, max_ratio: float = 10.0) -> Tensor:
    """BCO underlying-distribution matching weight for undesirable rows: clamp(p / (1 - p + 1e-8), min, max).

    prob_desirable: (B,) classifier probability that the prompt comes from the desirable set.
    """
    return (prob_desirable / (1 - prob_desirable + 1e-8)).clamp(min_ratio, max_ratio).detach()


@register("bco", "bco")
def bco(
    batch: UnpairedBatch,
    cfg: BCOLossConfig,
    counts: UnpairedCounts,
    state: BCOState,
    update_state: bool = True,
) -> LossOutput:
    """BCO (arXiv 2404.04656): r = b (log pi - log ref); delta = running mean of every r seen in
    training (updated with this micro-batch's vector of rewards first, when `update_state`);
    desirable -log s(r - delta), undesirable w * -log s(-(r - delta)) with w = batch.weights or 1."""
    if state is None:
        raise ValueError("BCO keeps a running reward mean: pass state=BCOState()")
    rewards = cfg.beta * (batch.logps - batch.ref_logps.detach())
    delta = state.running.update(rewards.detach()) if update_state else state.running.value(rewards)
    des = batch.labels.bool()
    w = torch.ones_like(rewards) if batch.weights is None else batch.weights.detach().to(rewards.dtype)
    per_row = torch.where(des, -F.logsigmoid(rewards - delta), w * -F.logsigmoid(-(rewards - delta)))
    loss = per_row.sum() / clamp_count(counts.num_rows)
    metrics = _reward_metrics(batch, rewards, counts, "bco")
    metrics["bco/loss"] = loss.detach()
    metrics["bco/delta"] = delta.detach() * batch.logps.shape[0] / clamp_count(counts.num_rows)
    return LossOutput(loss=loss, metrics=metrics)


def bco_loss(
    batch: UnpairedBatch,
    cfg: BCOLossConfig,
    counts: UnpairedCounts,
    state: BCOState,
    update_state: bool = True,
) -> LossOutput:
    """The BCO loss for one micro-batch (`update_state=False` during evaluation)."""
    return get_loss("bco", cfg.loss_type)(batch, cfg, counts, state, update_state)
