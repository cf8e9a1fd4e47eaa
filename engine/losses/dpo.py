"""DPO-family pairwise losses, registered in the `dpo` family.

    out = dpo_loss(PreferenceBatch(...), DPOLossConfig.from_spec(cfg), num_pairs, num_chosen_tokens, state)

Semantics: the seed era (TRL 0.27) for every name the paper index uses: `sigmoid` carries cDPO label
smoothing, `ipo` compares per-token-mean log-ratios, `bco_pair` shifts by a running reward mean,
`rpo_alpha` adds an NLL term, `reference_free` sets the reference log-probs to 0, and only
`sigmoid`, `hinge`, `ipo`, `exo_pair`, `robust` use the f-divergence score g; the other losses use
raw log-ratios. Names that only exist later (`sigmoid_norm`, `forward_kl`) follow HEAD.

Each registered function takes `(terms: PairTerms, cfg, state)` and returns a `LossOutput` whose loss
is the *sum* over the micro-batch's pairs divided by the global `num_pairs` of the optimizer step
(the `sft` term: summed NLL / global chosen tokens), so micro-batch losses add up to the step loss.
Exception: `aot` / `aot_pair` sort within the micro-batch, so they depend on how pairs are split.

Not here: log-prob computation from logits (the loop), reference models.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from engine.functional import Count, clamp_count
from engine.losses.batches import PreferenceBatch
from engine.losses.registry import LossOutput, get_loss, register
from engine.losses.state import RunningMean

# --- f-divergence scores g(Delta) -----------------------------------------------------------------


def _reverse_kl(delta: Tensor, coef: float) -> Tensor:
    return delta


def _forward_kl(delta: Tensor, coef: float) -> Tensor:
    return -torch.exp(-delta)


def _js_divergence(delta: Tensor, coef: float) -> Tensor:
    return F.logsigmoid(delta)


def _alpha_divergence(delta: Tensor, coef: float) -> Tensor:
    if abs(coef - 1.0) < 1e-6:
        return delta
    cap = 11.0 if delta.dtype == torch.float16 else 80.0
    return torch.exp(((coef - 1.0) * delta).clamp(max=cap)) / (coef - 1.0)


F_DIVERGENCES: dict[str, Callable[[Tensor, float], Tensor]] = {
    "reverse_kl": _reverse_kl,
    "forward_kl": _forward_kl,
    "js_divergence": _js_divergence,
    "alpha_divergence": _alpha_divergence,
}


def f_divergence_score(delta: Tensor, f_divergence_type: str, alpha_coef: float = 0.5) -> Tensor:
    """g(Delta) for a log-ratio Delta = log pi - log ref (arXiv 2309.16240).

    reverse_kl: Delta; forward_kl: -e^-Delta; js_divergence: log sigmoid(Delta); alpha_divergence with
    coefficient a: e^min((a-1) Delta, c) / (a - 1), c = 80 (11 in fp16), Delta when |a - 1| < 1e-6.
    `a` has the HEAD meaning and default 0.5: the seed-era coefficient is alpha = 1 - a,
    so its old default alpha = 1.0 would be a = 0 here.
    """
    try:
        fn = F_DIVERGENCES[f_divergence_type]
    except KeyError:
        raise ValueError(
            f"unknown f_divergence_type {f_divergence_type!r}; known: {sorted(F_DIVERGENCES)}"
        ) from None
    return fn(delta, alpha_coef)


# --- config, state, per-pair terms -----------------------------------------------------------------


@dataclass(frozen=True)
class DPOLossConfig:
    """The loss-relevant fields of a `DPOConfig`. `label_smoothing` is already the effective value."""

    beta: float = 0.1
    loss_type: tuple[str, ...] = ("sigmoid",)
    loss_weights: tuple[float, ...] | None = None
    label_smoothing: float = 0.0
    discopop_tau: float = 0.05
    f_divergence_type: str = "reverse_kl"
    f_alpha_divergence_coef: float = 0.5
    rpo_alpha: float | None = None
    reference_free: bool = False
    use_weighting: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.loss_type, str):
            object.__setattr__(self, "loss_type", (self.loss_type,))
        if not self.loss_type:
            raise ValueError("loss_type must name at least one DPO loss")
        if self.loss_weights is not None and len(self.loss_weights) != len(self.loss_type):
            raise ValueError(
                f"loss_weights has {len(self.loss_weights)} entries but loss_type has {len(self.loss_type)}"
            )
        if self.f_divergence_type not in F_DIVERGENCES:
            raise ValueError(
                f"unknown f_divergence_type {self.f_divergence_type!r}; known: {sorted(F_DIVERGENCES)}"
            )

    @property
    def weights(self) -> tuple[float, ...]:
        return self.loss_weights if self.loss_weights is not None else (1.0,) * len(self.loss_type)

    @classmethod
    def from_spec(cls, config: Any) -> DPOLossConfig:
        """Build from an `engine.spec` DPOConfig."""
        smoothing = getattr(config, "effective_label_smoothing", None)
        if smoothing is None:
            smoothing = getattr(config, "label_smoothing", 0.0) or 0.0
        weights = getattr(config, "loss_weights", None)
        loss_type = config.loss_type
        return cls(
            beta=config.beta,
            loss_type=(loss_type,) if isinstance(loss_type, str) else tuple(loss_type),
            loss_weights=tuple(weights) if weights is not None else None,
            label_smoothing=smoothing,
            discopop_tau=getattr(config, "discopop_tau", 0.05),
            f_divergence_type=getattr(config, "f_divergence_type", "reverse_kl"),
            f_alpha_divergence_coef=getattr(config, "f_alpha_divergence_coef", 0.5),
            rpo_alpha=getattr(config, "rpo_alpha", None),
            reference_free=getattr(config, "reference_free", False),
            use_weighting=getattr(config, "use_weighting", False),
        )


@dataclass
class DPOState:
    """Running statistics that survive across calls (checkpoint them): `bco_pair`'s reward mean delta."""

    bco: RunningMean = field(default_factory=RunningMean)

    def state_dict(self) -> dict[str, Any]:
        return {"bco": self.bco.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.bco.load_state_dict(state["bco"])


@dataclass
class PairTerms:
    """Per-pair quantities every DPO loss reads; all (B,) except the counts.

    chosen_logratios = chosen_logps - ref_chosen_logps (Delta+), rejected_logratios likewise (Delta-).
    weights: WPO weight per pair (detached) or None.
    """

    chosen_logps: Tensor
    rejected_logps: Tensor
    ref_chosen_logps: Tensor
    ref_rejected_logps: Tensor
    chosen_lengths: Tensor | None
    rejected_lengths: Tensor | None
    chosen_nll: Tensor | None
    weights: Tensor | None
    num_pairs: Count
    num_chosen_tokens: Count

    @property
    def chosen_logratios(self) -> Tensor:
        return self.chosen_logps - self.ref_chosen_logps

    @property
    def rejected_logratios(self) -> Tensor:
        return self.rejected_logps - self.ref_rejected_logps


def _reduce(per_pair: Tensor, t: PairTerms) -> Tensor:
    if t.weights is not None:
        per_pair = per_pair * t.weights
    return per_pair.sum() / clamp_count(t.num_pairs)


def _z(t: PairTerms, cfg: DPOLossConfig) -> Tensor:
    """g(Delta+) - g(Delta-) (the f-transformed logit; reverse_kl: the plain DPO logit)."""
    g = F_DIVERGENCES[cfg.f_divergence_type]
    return g(t.chosen_logratios, cfg.f_alpha_divergence_coef) - g(
        t.rejected_logratios, cfg.f_alpha_divergence_coef
    )


def _lengths(t: PairTerms, name: str) -> tuple[Tensor, Tensor]:
    if t.chosen_lengths is None or t.rejected_lengths is None:
        raise ValueError(
            f"DPO loss_type {name!r} needs chosen_lengths and rejected_lengths (completion token counts)"
        )
    dtype = t.chosen_logps.dtype
    return t.chosen_lengths.to(dtype).clamp(min=1), t.rejected_lengths.to(dtype).clamp(min=1)


def _smoothed_logistic(x: Tensor, eps: float) -> Tensor:
    return -(1 - eps) * F.logsigmoid(x) - eps * F.logsigmoid(-x)


def _out(per_pair: Tensor, t: PairTerms) -> LossOutput:
    return LossOutput(loss=_reduce(per_pair, t))


# --- the losses --------------------------------------------------------------------------------------


@register("dpo", "sigmoid")
def sigmoid(t: PairTerms, cfg: DPOLossConfig, state: DPOState | None = None) -> LossOutput:
    """DPO (arXiv 2305.18290) with cDPO label smoothing eps (seed era): -(1-eps) log s(b z) - eps log s(-b z)."""
    return _out(_smoothed_logistic(cfg.beta * _z(t, cfg), cfg.label_smoothing), t)


@register("dpo", "hinge")
def hinge(t: PairTerms, cfg: DPOLossConfig, state: DPOState | None = None) -> LossOutput:
    """SLiC (arXiv 2305.10425): max(0, 1 - beta z)."""
    return _out(torch.relu(1 - cfg.beta * _z(t, cfg)), t)


@register("dpo", "ipo")
def ipo(t: PairTerms, cfg: DPOLossConfig, state: DPOState | None = None) -> LossOutput:
    """IPO (arXiv 2310.12036): (g(Delta+/n+) - g(Delta-/n-) - 1/(2 beta))^2 on per-token-mean log-ratios
    (seed era: policy and reference log-probs divided by the completion length before the loss)."""
    n_c, n_r = _lengths(t, "ipo")
    g = F_DIVERGENCES[cfg.f_divergence_type]
    a = cfg.f_alpha_divergence_coef
    z = g(t.chosen_logratios / n_c, a) - g(t.rejected_logratios / n_r, a)
    return _out((z - 1 / (2 * cfg.beta)) ** 2, t)


@register("dpo", "exo_pair")
def exo_pair(t: PairTerms, cfg: DPOLossConfig, state: DPOState | None = None) -> LossOutput:
    """EXO (arXiv 2402.00856), pairwise: s(bz)[log s(bz) - log(1-eps)] + s(-bz)[log s(-bz) - log eps].

    Needs label_smoothing eps in (0, 1) (log 0 otherwise); the spec resolves an unset value to 1e-3.
    """
    eps = cfg.label_smoothing
    if not 0.0 < eps < 1.0:
        raise ValueError(
            f"DPO loss_type 'exo_pair' needs 0 < label_smoothing < 1 (got {eps}); the paper uses 1e-3"
        )
    x = cfg.beta * _z(t, cfg)
    per_pair = torch.sigmoid(x) * (F.logsigmoid(x) - math.log(1 - eps)) + torch.sigmoid(-x) * (
        F.logsigmoid(-x) - math.log(eps)
    )
    return _out(per_pair, t)


@register("dpo", "nca_pair")
def nca_pair(t: PairTerms, cfg: DPOLossConfig, state: DPOState | None = None) -> LossOutput:
    """NCA (arXiv 2402.05369), pairwise: -log s(b D+) - 1/2 log s(-b D+) - 1/2 log s(-b D-) (raw log-ratios)."""
    c, r = cfg.beta * t.chosen_logratios, cfg.beta * t.rejected_logratios
    return _out(-F.logsigmoid(c) - 0.5 * F.logsigmoid(-c) - 0.5 * F.logsigmoid(-r), t)


@register("dpo", "robust")
def robust(t: PairTerms, cfg: DPOLossConfig, state: DPOState | None = None) -> LossOutput:
    """Robust DPO (arXiv 2403.00409): (-(1-eps) log s(bz) + eps log s(-bz)) / (1 - 2 eps), eps < 0.5."""
    eps = cfg.label_smoothing
    if not 0.0 <= eps < 0.5:
        raise ValueError(f"DPO loss_type 'robust' needs 0 <= label_smoothing < 0.5 (got {eps})")
    x = cfg.beta * _z(t, cfg)
    return _out((-(1 - eps) * F.logsigmoid(x) + eps * F.logsigmoid(-x)) / (1 - 2 * eps), t)


@register("dpo", "bco_pair")
def bco_pair(t: PairTerms, cfg: DPOLossConfig, state: DPOState | None = None) -> LossOutput:
    """BCO, paired (arXiv 2404.04656), seed era: -log s(b D+ - delta) - log s(-(b D- - delta)).

    delta = running mean (`state.bco`) of the micro-batch mean of [b D+; b D-], updated with it
    (counted as one sample) before the loss on every call. Needs `state`.
    """
    if state is None:
        raise ValueError("DPO loss_type 'bco_pair' keeps a running reward mean: pass state=DPOState()")
    c, r = cfg.beta * t.chosen_logratios, cfg.beta * t.rejected_logratios
    delta = state.bco.update(torch.cat([c, r]).detach().mean(), count=1)
    per_pair = -F.logsigmoid(c - delta) - F.logsigmoid(-(r - delta))
    share = c.shape[0] / clamp_count(t.num_pairs)  # so the metric also sums over micro-batches
    return LossOutput(loss=_reduce(per_pair, t), metrics={"dpo/bco_delta": delta.detach() * share})


@register("dpo", "sppo_hard")
def sppo_hard(t: PairTerms, cfg: DPOLossConfig, state: DPOState | None = None) -> LossOutput:
    """SPPO, hard labels (arXiv 2405.00675): (D+ - 1/(2b))^2 + (D- + 1/(2b))^2 (raw log-ratios)."""
    half = 1 / (2 * cfg.beta)
    return _out((t.chosen_logratios - half) ** 2 + (t.rejected_logratios + half) ** 2, t)


def _aot(u: Tensor, v: Tensor, t: PairTerms, cfg: DPOLossConfig) -> LossOutput:
    d = torch.sort(u).values - torch.sort(v).values
    return _out(_smoothed_logistic(cfg.beta * d, cfg.label_smoothing), t)


@register("dpo", "aot")
def aot(t: PairTerms, cfg: DPOLossConfig, state: DPOState | None = None) -> LossOutput:
    """AOT, paired (arXiv 2406.05882): sort u = log pi(y+) - log pi(y-) and v (same for the reference)
    independently over the micro-batch; smoothed logistic loss of b (u_(k) - v_(k)). B = 1 is DPO."""
    u = t.chosen_logps - t.rejected_logps
    v = t.ref_chosen_logps - t.ref_rejected_logps
    return _aot(u, v, t, cfg)


@register("dpo", "aot_pair", "aot_unpaired")
def aot_unpaired(t: PairTerms, cfg: DPOLossConfig, state: DPOState | None = None) -> LossOutput:
    """AOT, unpaired (arXiv 2406.05882; seed name `aot_pair`, HEAD `aot_unpaired`): sort D+ and D-
    independently over the micro-batch; smoothed logistic loss of b (D+_(k) - D-_(k))."""
    return _aot(t.chosen_logratios, t.rejected_logratios, t, cfg)


@register("dpo", "apo_zero")
def apo_zero(t: PairTerms, cfg: DPOLossConfig, state: DPOState | None = None) -> LossOutput:
    """APO-zero (arXiv 2408.06266): (1 - s(b D+)) + s(b D-)."""
    return _out(
        1 - torch.sigmoid(cfg.beta * t.chosen_logratios) + torch.sigmoid(cfg.beta * t.rejected_logratios), t
    )


@register("dpo", "apo_down")
def apo_down(t: PairTerms, cfg: DPOLossConfig, state: DPOState | None = None) -> LossOutput:
    """APO-down (arXiv 2408.06266): s(b D+) + (1 - s(b (D+ - D-)))."""
    c = cfg.beta * t.chosen_logratios
    z = cfg.beta * (t.chosen_logratios - t.rejected_logratios)
    return _out(torch.sigmoid(c) + 1 - torch.sigmoid(z), t)


@register("dpo", "discopop")
def discopop(t: PairTerms, cfg: DPOLossConfig, state: DPOState | None = None) -> LossOutput:
    """DiscoPOP (arXiv 2406.08414, eq. 5): s = b (D+ - D-), w = s(s / tau); (1 - w)(-log s(s)) + w e^-s."""
    s = cfg.beta * (t.chosen_logratios - t.rejected_logratios)
    w = torch.sigmoid(s / cfg.discopop_tau)
    return _out((1 - w) * -F.logsigmoid(s) + w * torch.exp(-s), t)


def _nll(t: PairTerms, name: str) -> Tensor:
    if t.chosen_nll is None:
        raise ValueError(f"{name} needs chosen_nll (sum of -log p over chosen completion tokens, per pair)")
    return t.chosen_nll.sum() / clamp_count(t.num_chosen_tokens)


@register("dpo", "sft")
def sft(t: PairTerms, cfg: DPOLossConfig, state: DPOState | None = None) -> LossOutput:
    """NLL on the chosen completions: sum of -log p / global chosen completion tokens (no WPO weight)."""
    return LossOutput(loss=_nll(t, "DPO loss_type 'sft'"))


@register("dpo", "sigmoid_norm")
def sigmoid_norm(t: PairTerms, cfg: DPOLossConfig, state: DPOState | None = None) -> LossOutput:
    """Length-normalised DPO (HEAD): -log s(b (g(D+)/n+ - g(D-)/n-)) (scores without additive constants)."""
    n_c, n_r = _lengths(t, "sigmoid_norm")
    g = F_DIVERGENCES[cfg.f_divergence_type]
    a = cfg.f_alpha_divergence_coef
    x = cfg.beta * (g(t.chosen_logratios, a) / n_c - g(t.rejected_logratios, a) / n_r)
    return _out(-F.logsigmoid(x), t)


# --- helpers the loop uses to build the batch -------------------------------------------------------


def ld_sequence_logps(token_logps: Tensor, mask: Tensor, other_lengths: Tensor, alpha: float) -> Tensor:
    """LD-DPO (arXiv 2409.06411) sequence log-prob: tokens within the shared length count fully, the rest x alpha.

    token_logps, mask: (B, T) over completion positions; other_lengths: (B,) completion length of the
    other response of the pair. With l_p = min(|y|, other), returns (B,)
    sum_{k <= l_p} logp_k + alpha * sum_{k > l_p} logp_k, k = 1-based index among completion tokens.
    Deliberate difference from TRL: positions are counted within the completion (not the prompt+completion row),
    and no completion token is dropped.
    """
    m = mask.to(token_logps.dtype)
    position = torch.cumsum(m, dim=-1)
    shared = torch.minimum(m.sum(-1), other_lengths.to(m.dtype)).unsqueeze(-1)
    weight = torch.where(position <= shared, torch.ones_like(m), torch.full_like(m, alpha))
    return (token_logps * m * weight).sum(-1)


def log_sum_squared_probs(logits: Tensor) -> Tensor:
    """log sum_v p_v^2 of softmax(logits): lse(2z) - 2 lse(z); (..., V) -> (...)."""
    return torch.logsumexp(2 * logits, dim=-1) - 2 * torch.logsumexp(logits, dim=-1)


def wpo_weights(token_logps: Tensor, log_sum_p2: Tensor, mask: Tensor) -> Tensor:
    """WPO (arXiv 2406.11827) sequence weight, detached: exp(mean over completion tokens of
    log p(y_t) - log sum_v p_v^2). token_logps, log_sum_p2, mask: (B, T) aligned on the same positions
    (fix of the seed-era one-position offset); returns (B,). `dpo_loss` multiplies each pair's loss by
    min(1, w(y+) w(y-)) (the seed-era clamp)."""
    m = mask.to(token_logps.dtype)
    mean = ((token_logps - log_sum_p2) * m).sum(-1) / m.sum(-1).clamp(min=1)
    return torch.exp(mean).detach()


# --- the entry point ---------------------------------------------------------------------------------


def dpo_loss(
    batch: PreferenceBatch,
    cfg: DPOLossConfig,
    num_pairs: Count,
    num_chosen_tokens: Count,
    state: DPOState | None = None,
) -> LossOutput:
    """sum_k w_k L_k (+ rpo_alpha * NLL) for one micro-batch; every term is normalised by global counts.

    num_pairs: pairs in the optimizer step (all micro-batches, ranks); num_chosen_tokens: chosen
    completion tokens in the step (for `sft` / RPO). Metrics (`rewards/*`, `logps/*`) are batch sums /
    num_pairs with rewards = beta * (log pi - log ref) on raw log-ratios.
    """
    if cfg.reference_free or batch.ref_chosen_logps is None or batch.ref_rejected_logps is None:
        if not cfg.reference_free and (
            batch.ref_chosen_logps is not None or batch.ref_rejected_logps is not None
        ):
            raise ValueError("pass both ref_chosen_logps and ref_rejected_logps, or neither (reference-free)")
        if not cfg.reference_free:
            raise ValueError("DPO needs ref_chosen_logps and ref_rejected_logps unless reference_free=True")
        ref_c = torch.zeros_like(batch.chosen_logps)
        ref_r = torch.zeros_like(batch.rejected_logps)
    else:
        ref_c, ref_r = batch.ref_chosen_logps.detach(), batch.ref_rejected_logps.detach()

    weights = None
    if cfg.use_weighting:
        if {"aot", "aot_pair", "aot_unpaired"} & set(cfg.loss_type):
            raise ValueError("use_weighting (WPO) is not defined for the aot losses")
        if batch.chosen_weights is None or batch.rejected_weights is None:
            raise ValueError("use_weighting needs chosen_weights and rejected_weights (see wpo_weights)")
        weights = (batch.chosen_weights * batch.rejected_weights).detach().clamp(max=1.0)

    terms = PairTerms(
        chosen_logps=batch.chosen_logps,
        rejected_logps=batch.rejected_logps,
        ref_chosen_logps=ref_c,
        ref_rejected_logps=ref_r,
        chosen_lengths=batch.chosen_lengths,
        rejected_lengths=batch.rejected_lengths,
        chosen_nll=batch.chosen_nll,
        weights=weights,
        num_pairs=num_pairs,
        num_chosen_tokens=num_chosen_tokens,
    )
    metrics: dict[str, Tensor] = {}
    total = batch.chosen_logps.new_zeros(())
    for name, w in zip(cfg.loss_type, cfg.weights, strict=True):
        out = get_loss("dpo", name)(terms, cfg, state)
        total = total + w * out.loss
        metrics[f"dpo/loss_{name}"] = out.loss.detach()
        metrics.update(out.metrics)
    if cfg.rpo_alpha is not None:
        nll = _nll(terms, "rpo_alpha")
        total = total + cfg.rpo_alpha * nll
        metrics["dpo/nll_loss"] = nll.detach()
    elif "sft" in cfg.loss_type:
        metrics["dpo/nll_loss"] = metrics["dpo/loss_sft"]

    n = clamp_count(num_pairs)
    with torch.no_grad():
        rc = cfg.beta * terms.chosen_logratios
        rr = cfg.beta * terms.rejected_logratios
        metrics.update(
            {
                "rewards/chosen": rc.sum() / n,
                "rewards/rejected": rr.sum() / n,
                "rewards/accuracies": (rc > rr).to(rc.dtype).sum() / n,
                "rewards/margins": (rc - rr).sum() / n,
                "logps/chosen": batch.chosen_logps.detach().sum() / n,
                "logps/rejected": batch.rejected_logps.detach().sum() / n,
            }
        )
    metrics["dpo/loss"] = total.detach()
    return LossOutput(loss=total, metrics={k: v.detach() for k, v in metrics.items()})
