"""Kahneman-Tversky optimisation (arXiv 2402.01306) on unpaired feedback.

    final_dir = train(spec, ctx)        # spec.algorithm == "kto"

Data: unpaired (prompt, completion, label) rows, or preference pairs, which are unpaired and shuffled
(`engine.data.unpaired`). Per micro-batch of B rows: one policy forward over the rows (sums of completion
log-probs), their reference log-probs (a frozen copy of the initial policy, or the LoRA policy with its
adapter disabled, under inference mode; or precomputed once with `precompute_ref_log_probs`), and for
`loss_type: kto` the reference point z0 from B mismatched rows (x_i, y'_i), the policy side under no_grad:
z0 = max(0, mean(log pi - log ref)) over the micro-batch, a constant. `kto` / `apo_zero_unpaired` come from
`engine.losses.kto_loss`, normalised by the rows of the whole optimizer step; metrics `rewards/*`,
`logps/*`, `kto/kl`, `kto/loss`. Single process: z0 is not averaged over ranks.

The unpaired data pieces (`prepare_unpaired`, `sequence_logps`, `reference_sequence_logps`) are shared with
BCO (`bco.py`).
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
from engine.data.collate import TokenBatch
from engine.data.formats import DataFormatError, expect_format
from engine.data.sources import load_rows
from engine.data.unpaired import (
    UnpairedExample,
    UnpairedTokenBatch,
    assign_kl_completions,
    collate_unpaired,
    tokenize_unpaired,
)
from engine.logprobs import token_logprobs
from engine.losses import KTOLossConfig, UnpairedBatch, UnpairedCounts, kto_loss, kto_reference_point
from engine.models import Reference, load_policy, load_reference, load_tokenizer

UNPAIRED_FORMATS = ("unpaired", "preference")


def prepare_unpaired(
    spec: Any, ctx: TrainContext, tokenizer: Any, dataset: Any = None, with_kl: bool = False
) -> list[UnpairedExample]:
    """Tokenized unpaired rows of the job's dataset (or `dataset`), with KL partners when `with_kl`."""
    cfg = spec.config
    rows = load_rows(dataset or spec.dataset, ctx.uploads_dir)
    fmt, rows = expect_format(rows, UNPAIRED_FORMATS, spec.algorithm)
    examples, dropped = tokenize_unpaired(
        rows,
        fmt,
        tokenizer,
        max_length=cfg.max_length,
        max_prompt_length=cfg.max_prompt_length,
        max_completion_length=cfg.max_completion_length,
        seed=cfg.seed,
    )
    if not examples:
        raise DataFormatError(
            f"no row is left after truncation (max_length={cfg.max_length}, "
            f"max_prompt_length={cfg.max_prompt_length}); raise max_length"
        )
    if with_kl:
        if len(examples) < 2:
            raise DataFormatError(
                "kto needs at least 2 rows: its KL estimate pairs a prompt with another row"
            )
        assign_kl_completions(examples, cfg.max_length)
    desirable = sum(e.label for e in examples)
    kind = "eval" if dataset is not None else spec.algorithm
    source = " (unpaired from preference pairs, shuffled)" if fmt == "preference" else ""
    ctx.events.log(
        f"{kind} data: {len(examples)} rows{source}: {desirable} desirable, "
        f"{len(examples) - desirable} undesirable ({dropped} dropped: empty after truncation)"
    )
    if dataset is None and desirable in (0, len(examples)):
        ctx.events.log(
            f"{kind} data has a single label: every row is {'un' * (desirable == 0)}desirable", "warning"
        )
    return examples


def sequence_logps(model: Any, tokens: TokenBatch) -> torch.Tensor:
    """(B,) sums of the completion-token log-probs of `tokens` under `model`."""
    logps, _ = token_logprobs(
        model,
        tokens.input_ids,
        tokens.attention_mask,
        tokens.logits_to_keep,
        mask=tokens.loss_mask,
        index=tokens.target_index,
    )
    return (logps * tokens.loss_mask).sum(-1)


def reference_sequence_logps(ref: Reference, tokens: TokenBatch) -> torch.Tensor:
    """(B,) reference sums of completion log-probs, under inference mode."""
    with ref.use() as model:
        seq = sequence_logps(model, tokens)
    return seq.clone()  # a normal tensor (outside inference mode) that autograd may use


def unpaired_counts(batches: list[Any]) -> UnpairedCounts:
    """Rows, desirable and undesirable rows of an optimizer step (host ints; each item has `.batch`)."""
    return UnpairedCounts(
        num_rows=sum(i.batch.num_rows for i in batches),
        num_desirable=sum(i.batch.num_desirable for i in batches),
        num_undesirable=sum(i.batch.num_undesirable for i in batches),
    )


@dataclass
class KTOItem:
    batch: UnpairedTokenBatch  # on the device
    ref_logps: torch.Tensor | None  # (B,) precomputed reference log-probs of the rows, or None
    ref_kl_logps: torch.Tensor | None  # (B,) same for the KL rows


def precompute_reference(
    ref: Reference,
    examples: list[UnpairedExample],
    pad_id: int,
    batch_size: int,
    with_kl: bool,
    ctx: TrainContext,
) -> torch.Tensor:
    """(N, 2) reference log-probs of every row and of its KL row (0 without KL rows), on the CPU."""
    out = torch.zeros(len(examples), 2, dtype=torch.float32)
    order = sorted(range(len(examples)), key=lambda i: examples[i].length)
    for start in range(0, len(order), batch_size):
        indices = torch.tensor(order[start : start + batch_size])
        batch = collate_unpaired([examples[i] for i in indices.tolist()], pad_id, with_kl).to(ctx.device)
        with ctx.autocast():
            out[indices, 0] = reference_sequence_logps(ref, batch.tokens).float().cpu()
            if batch.kl_tokens is not None:
                out[indices, 1] = reference_sequence_logps(ref, batch.kl_tokens).float().cpu()
    return out


def check_weights(cfg: Any, examples: list[UnpairedExample], ctx: TrainContext) -> None:
    """Warn when lambda_D n_D / (lambda_U n_U) is outside [1, 4/3] (KTO paper, Eq. 8; TRL's guidance)."""
    n_d = sum(e.label for e in examples)
    n_u = len(examples) - n_d
    if n_d == 0 or n_u == 0 or cfg.undesirable_weight == 0:
        return
    ratio = cfg.desirable_weight * n_d / (cfg.undesirable_weight * n_u)
    if not 1 - 1e-9 <= ratio <= 4 / 3 + 1e-9:
        ctx.events.log(
            f"desirable_weight * {n_d} desirable / (undesirable_weight * {n_u} undesirable) = {ratio:.3f}; "
            "the KTO paper recommends a value in [1, 4/3]: adjust desirable_weight or undesirable_weight",
            "warning",
        )


def train(spec: Any, ctx: TrainContext) -> Path:
    cfg = spec.config
    with_kl = cfg.loss_type == "kto"
    tokenizer = load_tokenizer(spec.model, ctx.cache_dir)
    examples = prepare_unpaired(spec, ctx, tokenizer, with_kl=with_kl)
    check_weights(cfg, examples, ctx)
    eval_examples = (
        prepare_unpaired(spec, ctx, tokenizer, spec.eval_dataset, with_kl=with_kl)
        if spec.eval_dataset
        else []
    )
    policy = load_policy(spec, ctx.device, ctx.dtype, ctx.cache_dir)
    # The reference is taken before any step (and before a resume loads trained weights into the policy).
    ref: Reference | None = load_reference(spec, policy, ctx.device, ctx.dtype)
    loss_cfg = KTOLossConfig.from_spec(cfg)
    pad_id = tokenizer.pad_token_id
    bs = cfg.per_device_train_batch_size

    tables: dict[str, torch.Tensor] = {}
    if cfg.precompute_ref_log_probs:
        tables["train"] = precompute_reference(ref, examples, pad_id, bs, with_kl, ctx)
        if eval_examples:
            tables["eval"] = precompute_reference(ref, eval_examples, pad_id, bs, with_kl, ctx)
        ctx.events.log(f"precomputed reference log-probs for {len(examples)} rows")
        ref = None  # frees a separate copy (a LoRA reference is the policy itself: nothing to free)

    def collate_from(source: list[UnpairedExample], table: str) -> Any:
        def collate(indices: list[int]) -> KTOItem:
            batch = collate_unpaired([source[i] for i in indices], pad_id, with_kl).to(ctx.device)
            if table not in tables:
                return KTOItem(batch, None, None)
            pre = tables[table][torch.tensor(indices)].to(ctx.device)
            return KTOItem(batch, pre[:, 0], pre[:, 1] if with_kl else None)

        return collate

    def micro_step(item: KTOItem, counts: UnpairedCounts, metrics: StepMetrics) -> torch.Tensor:
        batch = item.batch
        logps = sequence_logps(policy, batch.tokens)
        ref_logps = (
            item.ref_logps if item.ref_logps is not None else reference_sequence_logps(ref, batch.tokens)
        )
        z0 = None
        if batch.kl_tokens is not None:
            with torch.no_grad():  # z0 is a constant: the policy's KL forward gets no gradient
                kl_logps = sequence_logps(policy, batch.kl_tokens)
            kl_ref = item.ref_kl_logps
            if kl_ref is None:
                kl_ref = reference_sequence_logps(ref, batch.kl_tokens)
            z0 = kto_reference_point(kl_logps, kl_ref)
        out = kto_loss(UnpairedBatch(logps, ref_logps, batch.labels), loss_cfg, counts, kl_reference=z0)
        for name, value in out.metrics.items():
            metrics.add_sum(name, value)
        return out.loss

    evaluate = offline_evaluator(
        ctx,
        policy,
        len(eval_examples),
        cfg.per_device_eval_batch_size,
        collate_from(eval_examples, "eval"),
        unpaired_counts,
        micro_step,
    )

    return run_offline_loop(
        ctx,
        OfflineParts(
            model=policy,
            tokenizer=tokenizer,
            stream=BatchStream([e.length for e in examples], bs, cfg.seed),
            collate=collate_from(examples, "train"),
            counts=unpaired_counts,
            micro_step=micro_step,
            evaluate=evaluate,
        ),
    )
