"""Contrastive preference optimisation and its reference-free relatives (CPO, SimPO, AlphaPO).

    final_dir = train(spec, ctx)        # spec.algorithm == "cpo"

Per micro-batch of B prompt/chosen/rejected pairs (tokenized and truncated as for DPO, keep_end prompts):
one policy forward over 2B rows ([prompt+chosen]_1..B, [prompt+rejected]_1..B), summed completion log-probs,
completion lengths (the per-token scores of `ipo`, `simpo`, `alphapo`) and, when the effective `cpo_alpha`
is not 0, the chosen rows' summed NLL. No reference model is ever loaded. `engine.losses.cpo_loss` turns
them into the pairwise loss (`sigmoid`, `hinge`, `ipo`, `simpo`, `alphapo`; AlphaPO reward shaping for any
type when `alpha` != 0) normalised by the pairs of the optimizer step, plus `cpo_alpha` times the NLL
normalised by the chosen completion tokens of the step; `alphapo` forces `cpo_alpha` to 0
(`CPOConfig.effective_cpo_alpha`). Metrics `rewards/*`, `logps/*`, `cpo/nll_loss`, `cpo/loss`.
"""

from __future__ import annotations

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
from engine.data.tokenize import PreferenceExample, tokenize_preferences
from engine.logprobs import token_logprobs
from engine.losses import CPOLossConfig, PreferenceBatch, cpo_loss
from engine.models import load_policy, load_tokenizer


def prepare_pairs(
    spec: Any, ctx: TrainContext, tokenizer: Any, dataset: Any = None
) -> list[PreferenceExample]:
    cfg = spec.config
    rows = load_rows(dataset or spec.dataset, ctx.uploads_dir)
    _, rows = expect_format(rows, ("preference",), "cpo")
    pairs, dropped = tokenize_preferences(
        rows,
        tokenizer,
        max_length=cfg.max_length,
        max_prompt_length=cfg.max_prompt_length,
        max_completion_length=cfg.max_completion_length,
        truncation_mode="keep_end",  # the seed-era CPO default; CPOConfig has no truncation_mode
    )
    if not pairs:
        raise DataFormatError(
            f"no preference pair is left after truncation (max_length={cfg.max_length}, "
            f"max_prompt_length={cfg.max_prompt_length}); raise max_length"
        )
    kind = "eval" if dataset is not None else "cpo"
    ctx.events.log(f"{kind} data: {len(pairs)} pairs ({dropped} dropped: empty after truncation)")
    return pairs


def train(spec: Any, ctx: TrainContext) -> Path:
    cfg = spec.config
    tokenizer = load_tokenizer(spec.model, ctx.cache_dir)
    pairs = prepare_pairs(spec, ctx, tokenizer)
    eval_pairs = prepare_pairs(spec, ctx, tokenizer, spec.eval_dataset) if spec.eval_dataset else []
    policy = load_policy(spec, ctx.device, ctx.dtype, ctx.cache_dir)
    loss_cfg = CPOLossConfig.from_spec(cfg)
    needs_nll = loss_cfg.cpo_alpha != 0.0
    pad_id = tokenizer.pad_token_id

    def collate_from(source: list[PreferenceExample]) -> Any:
        def collate(indices: list[int]) -> PreferenceTokenBatch:
            return collate_preferences([source[i] for i in indices], pad_id).to(ctx.device)

        return collate

    def counts(batches: list[PreferenceTokenBatch]) -> tuple[int, int]:
        return sum(b.num_pairs for b in batches), sum(b.num_chosen_tokens for b in batches)

    def micro_step(
        batch: PreferenceTokenBatch, step_counts: tuple[int, int], metrics: StepMetrics
    ) -> torch.Tensor:
        tokens, n = batch.tokens, batch.num_pairs
        logps, _ = token_logprobs(
            policy,
            tokens.input_ids,
            tokens.attention_mask,
            tokens.logits_to_keep,
            mask=tokens.loss_mask,
            index=tokens.target_index,
        )
        seq = (logps * tokens.loss_mask).sum(-1)  # (2B,) chosen first
        pb = PreferenceBatch(
            chosen_logps=seq[:n],
            rejected_logps=seq[n:],
            chosen_lengths=batch.chosen_lengths,
            rejected_lengths=batch.rejected_lengths,
            chosen_nll=-seq[:n] if needs_nll else None,
        )
        num_pairs, num_chosen_tokens = step_counts
        out = cpo_loss(pb, loss_cfg, num_pairs, num_chosen_tokens)
        for name, value in out.metrics.items():
            metrics.add_sum(name, value)
        return out.loss

    evaluate = offline_evaluator(
        ctx,
        policy,
        len(eval_pairs),
        cfg.per_device_eval_batch_size,
        collate_from(eval_pairs),
        counts,
        micro_step,
    )

    return run_offline_loop(
        ctx,
        OfflineParts(
            model=policy,
            tokenizer=tokenizer,
            stream=BatchStream([p.length for p in pairs], cfg.per_device_train_batch_size, cfg.seed),
            collate=collate_from(pairs),
            counts=counts,
            micro_step=micro_step,
            evaluate=evaluate,
        ),
    )
