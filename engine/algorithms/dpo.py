"""Direct preference optimisation and its loss family, on prompt/chosen/rejected pairs.

    final_dir = train(spec, ctx)        # spec.algorithm == "dpo"

Per micro-batch of B pairs: one policy forward over 2B rows ([prompt+chosen]_1..B, [prompt+rejected]_1..B),
per-token log-probs of the completion tokens (`engine.logprobs.token_stats`), summed per sequence (with
`ld_alpha`, LD-DPO's down-weighting of the tokens past the shorter response). Reference log-probs come from
a frozen copy of the initial policy, or for LoRA from the policy with its adapter disabled, under
`torch.inference_mode()`; with `reference_free` no reference is loaded at all, and with
`precompute_ref_log_probs` they are computed once before training and a separate reference copy is freed.
`sync_ref_model` (TR-DPO) mixes the policy into the reference (in `engine.algorithms.step`). Every
`loss_type` (list + `loss_weights`), `f_divergence_type`, `use_weighting` (WPO) and `rpo_alpha` is handled
by `engine.losses.dpo_loss`; this loop only assembles its inputs and logs its metrics (`rewards/*`,
`logps/*`, `dpo/*`). `padding_free`: each micro-batch's chosen and rejected rows run as one row without padding
(per-row position ids, no attention across rows); the results are the same per-token log-probs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from engine.algorithms.common import (
    BatchStream,
    OfflineParts,
    StepMetrics,
    TrainContext,
    offline_evaluator,
    run_offline_loop,
)
from engine.data.collate import PreferenceTokenBatch, collate_preferences
from engine.data.formats import DataFormatError, expect_format
from engine.data.sources import load_rows
from engine.data.tokenize import tokenize_preferences
from engine.logprobs import token_stats
from engine.losses import DPOLossConfig, DPOState, PreferenceBatch, dpo_loss, ld_sequence_logps, wpo_weights
from engine.models import Reference, load_policy, load_reference, load_tokenizer


@dataclass
class DPOItem:
    batch: PreferenceTokenBatch  # on the device
    ref_logps: torch.Tensor | None  # (2B,) precomputed reference sequence log-probs, chosen first, or None


def prepare_pairs(spec: Any, ctx: TrainContext, tokenizer: Any, dataset: Any = None) -> list[Any]:
    cfg = spec.config
    rows = load_rows(dataset or spec.dataset, ctx.uploads_dir)
    _, rows = expect_format(rows, ("preference",), "dpo")
    pairs, dropped = tokenize_preferences(
        rows,
        tokenizer,
        max_length=cfg.max_length,
        max_prompt_length=cfg.max_prompt_length,
        max_completion_length=cfg.max_completion_length,
        truncation_mode=cfg.truncation_mode,
    )
    if not pairs:
        raise DataFormatError(
            f"no preference pair is left after truncation (max_length={cfg.max_length}, "
            f"max_prompt_length={cfg.max_prompt_length}); raise max_length"
        )
    kind = "eval" if dataset is not None else "dpo"
    ctx.events.log(f"{kind} data: {len(pairs)} pairs ({dropped} dropped: empty after truncation)")
    return pairs


def sequence_logps(
    token_logps: torch.Tensor,
    mask: torch.Tensor,
    num_pairs: int,
    ld_alpha: float | None,
    lengths: torch.Tensor,
) -> torch.Tensor:
    """(2B,) sums of completion log-probs; with `ld_alpha` the LD-DPO weighting against the other response.
    `lengths`: (2B,) completion lengths of the rows, chosen first."""
    if ld_alpha is None:
        return (token_logps * mask).sum(-1)
    other = torch.cat([lengths[num_pairs:], lengths[:num_pairs]])
    return ld_sequence_logps(token_logps, mask, other, ld_alpha)


def _lengths(batch: PreferenceTokenBatch) -> torch.Tensor:
    return torch.cat([batch.chosen_lengths, batch.rejected_lengths])


def reference_logps(ref: Reference, batch: PreferenceTokenBatch, ld_alpha: float | None) -> torch.Tensor:
    """(2B,) reference sequence log-probs of a batch, under inference mode."""
    tokens = batch.tokens
    with ref.use() as model:
        logps = token_stats(
            model,
            tokens.input_ids,
            tokens.attention_mask,
            tokens.logits_to_keep,
            mask=tokens.loss_mask,
            index=tokens.target_index,
            packed=tokens.packed,
        )["logps"]
        seq = sequence_logps(logps, tokens.loss_mask, batch.num_pairs, ld_alpha, _lengths(batch))
    return seq.clone()  # a normal tensor (outside inference mode) that autograd may use


def precompute_reference(
    ref: Reference, pairs: list[Any], pad_id: int, batch_size: int, ld_alpha: float | None, ctx: TrainContext
) -> torch.Tensor:
    """(N, 2) reference sequence log-probs (chosen, rejected) of every pair, on the CPU."""
    out = torch.zeros(len(pairs), 2, dtype=torch.float32)
    order = sorted(range(len(pairs)), key=lambda i: pairs[i].length)
    for start in range(0, len(order), batch_size):
        indices = order[start : start + batch_size]
        batch = collate_preferences([pairs[i] for i in indices], pad_id).to(ctx.device)
        with ctx.autocast():
            seq = reference_logps(ref, batch, ld_alpha).float().cpu()
        out[torch.tensor(indices)] = seq.reshape(2, -1).T
    return out


def train(spec: Any, ctx: TrainContext) -> Path:
    cfg = spec.config
    # refused at submission (engine.spec.unsupported): TR-DPO moves a separate, live reference model
    assert not cfg.sync_ref_model or not (
        cfg.reference_free or cfg.precompute_ref_log_probs or spec.peft_config
    )
    tokenizer = load_tokenizer(spec.model, ctx.cache_dir)
    pairs = prepare_pairs(spec, ctx, tokenizer)
    eval_pairs = prepare_pairs(spec, ctx, tokenizer, spec.eval_dataset) if spec.eval_dataset else []
    policy = load_policy(spec, ctx.device, ctx.dtype, ctx.cache_dir)
    # The reference is taken before any step (and before a resume loads trained weights into the policy).
    ref = None if cfg.reference_free else load_reference(spec, policy, ctx.device, ctx.dtype)
    loss_cfg = DPOLossConfig.from_spec(cfg)
    state = DPOState()
    needs_nll = cfg.rpo_alpha is not None or "sft" in cfg.loss_type
    pad_id = tokenizer.pad_token_id
    bs = cfg.per_device_train_batch_size

    tables: dict[str, torch.Tensor] = {}
    if ref is not None and cfg.precompute_ref_log_probs:
        pre_bs = cfg.precompute_ref_batch_size or bs
        tables["train"] = precompute_reference(ref, pairs, pad_id, pre_bs, cfg.ld_alpha, ctx)
        if eval_pairs:
            tables["eval"] = precompute_reference(ref, eval_pairs, pad_id, pre_bs, cfg.ld_alpha, ctx)
        ctx.events.log(f"precomputed reference log-probs for {len(pairs)} pairs")
        ref = None  # frees a separate copy (a LoRA reference is the policy itself: nothing to free)

    def collate_from(source: list[Any], table: str) -> Any:
        def collate(indices: list[int]) -> DPOItem:
            batch = collate_preferences([source[i] for i in indices], pad_id, pack=cfg.padding_free)
            batch = batch.to(ctx.device)
            ref_logps = None
            if table in tables:
                ref_logps = tables[table][torch.tensor(indices)].T.reshape(-1).to(ctx.device)
            return DPOItem(batch, ref_logps)

        return collate

    def counts(items: list[DPOItem]) -> tuple[int, int]:
        return sum(i.batch.num_pairs for i in items), sum(i.batch.num_chosen_tokens for i in items)

    def micro_step(item: DPOItem, step_counts: tuple[int, int], metrics: StepMetrics) -> torch.Tensor:
        batch = item.batch
        tokens, n = batch.tokens, batch.num_pairs
        stats = token_stats(
            policy,
            tokens.input_ids,
            tokens.attention_mask,
            tokens.logits_to_keep,
            mask=tokens.loss_mask,
            index=tokens.target_index,
            packed=tokens.packed,
            with_log_sum_p2=cfg.use_weighting,
        )
        logps, mask = stats["logps"], tokens.loss_mask
        seq = sequence_logps(logps, mask, n, cfg.ld_alpha, _lengths(batch))
        ref_seq = item.ref_logps
        if ref_seq is None and ref is not None:
            with ctx.timer("reference"):
                ref_seq = reference_logps(ref, batch, cfg.ld_alpha)
        weights = wpo_weights(logps.detach(), stats["log_sum_p2"], mask) if cfg.use_weighting else None
        pb = PreferenceBatch(
            chosen_logps=seq[:n],
            rejected_logps=seq[n:],
            ref_chosen_logps=None if ref_seq is None else ref_seq[:n],
            ref_rejected_logps=None if ref_seq is None else ref_seq[n:],
            chosen_lengths=batch.chosen_lengths,
            rejected_lengths=batch.rejected_lengths,
            chosen_nll=-(logps[:n] * mask[:n]).sum(-1) if needs_nll else None,
            chosen_weights=None if weights is None else weights[:n],
            rejected_weights=None if weights is None else weights[n:],
        )
        num_pairs, num_chosen_tokens = step_counts
        out = dpo_loss(pb, loss_cfg, num_pairs, num_chosen_tokens, state)
        for name, value in out.metrics.items():
            metrics.add_sum(name, value)
        metrics.add_sum("train/num_tokens", float(tokens.num_tokens))  # chosen + rejected targets
        return out.loss

    def state_dict() -> dict[str, Any]:
        return {"dpo": state.state_dict()}

    def load_state_dict(saved: dict[str, Any]) -> None:
        if "dpo" in saved:
            state.load_state_dict(saved["dpo"])

    evaluate = offline_evaluator(
        ctx,
        policy,
        len(eval_pairs),
        cfg.per_device_eval_batch_size,
        collate_from(eval_pairs, "eval"),
        counts,
        micro_step,
    )

    return run_offline_loop(
        ctx,
        OfflineParts(
            model=policy,
            tokenizer=tokenizer,
            stream=BatchStream([p.length for p in pairs], bs, cfg.seed),
            collate=collate_from(pairs, "train"),
            counts=counts,
            micro_step=micro_step,
            state_dict=state_dict,
            load_state_dict=load_state_dict,
            evaluate=evaluate,
        ),
        reference=ref.model if ref is not None else None,
    )
