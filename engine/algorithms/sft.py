"""Supervised fine-tuning: completion-only token loss over prompt/completion, messages or text rows.

    final_dir = train(spec, ctx)        # spec.algorithm == "sft"

What counts as a target token (`engine.data.tokenize.sft_example`): the completion of prompt/completion
rows, every assistant turn of messages rows (its end-of-turn tokens included), every token of text rows;
`completion_only_loss: false` trains on all tokens (of messages rows too, unless `assistant_only_loss`). The loss (`nll`, `chunked_nll`, `dft`) comes from
`engine.losses.sft_loss`, normalised by the target tokens of the whole optimizer step. With `config.bema`
a bias-corrected EMA of the weights (`engine.losses.bema.BEMA`) is kept on the CPU and saved to
`DIR/final/bema`.

`padding_free`: each micro-batch runs as one row without padding (per-row position ids, no attention across
rows). `packing`: examples are first grouped into packs of at most `max_length` tokens (best-fit decreasing;
`packing_strategy` "bfd", "bfd_split" and "bfd-requeue" pack alike, because examples are already truncated
to `max_length`), a pack counts as one row of `per_device_train_batch_size`, and batches run padding-free.
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
from engine.data.collate import collate_sft, pack_bins
from engine.data.formats import DataFormatError, expect_format
from engine.data.sources import load_rows
from engine.data.tokenize import tokenize_sft
from engine.logprobs import token_logprobs
from engine.losses import sft_loss
from engine.models import load_policy, load_tokenizer, save_model

SFT_FORMATS = ("prompt_completion", "messages", "text")


def prepare_examples(spec: Any, ctx: TrainContext, tokenizer: Any, dataset: Any = None) -> list[Any]:
    cfg = spec.config
    rows = load_rows(dataset or spec.dataset, ctx.uploads_dir)
    fmt, rows = expect_format(rows, SFT_FORMATS, "sft", cfg.dataset_text_field)
    examples, dropped = tokenize_sft(
        rows,
        fmt,
        tokenizer,
        max_length=cfg.max_length,
        truncation_mode=cfg.truncation_mode,
        completion_only_loss=cfg.completion_only_loss,
        assistant_only_loss=cfg.assistant_only_loss,
        text_field=cfg.dataset_text_field,
        eos_token=cfg.eos_token,
    )
    if not examples:
        raise DataFormatError(
            f"no {fmt} row has a target token left after truncation to max_length={cfg.max_length}"
        )
    kind = "eval" if dataset is not None else "sft"
    ctx.events.log(f"{kind} data: {len(examples)} {fmt} rows ({dropped} dropped: no target token left)")
    return examples


def _bema(cfg: Any, model: torch.nn.Module) -> Any:
    from engine.losses.bema import BEMA

    b = cfg.bema
    return BEMA(
        {n: p for n, p in model.named_parameters() if p.requires_grad},
        update_freq=b.update_freq,
        ema_power=b.ema_power,
        bias_power=b.bias_power,
        lag=b.lag,
        update_after=b.update_after,
        multiplier=b.multiplier,
        min_ema_multiplier=b.min_ema_multiplier,
        device="cpu",
    )


def train(spec: Any, ctx: TrainContext) -> Path:
    cfg = spec.config
    pack = cfg.packing or cfg.padding_free
    tokenizer = load_tokenizer(spec.model, ctx.cache_dir)
    examples = prepare_examples(spec, ctx, tokenizer)
    eval_examples = prepare_examples(spec, ctx, tokenizer, spec.eval_dataset) if spec.eval_dataset else []
    model = load_policy(spec, ctx.device, ctx.dtype, ctx.cache_dir)
    pad_id = tokenizer.pad_token_id
    lengths = [len(e.input_ids) for e in examples]
    units = [[i] for i in range(len(examples))]  # what one row of a batch holds: an example, or a pack
    if cfg.packing:
        units = pack_bins(lengths, cfg.max_length or max(lengths))
        ctx.events.log(
            f"packing: {len(examples)} examples in {len(units)} packs of <= {cfg.max_length} tokens"
        )
    stream = BatchStream(
        [sum(lengths[i] for i in u) for u in units], cfg.per_device_train_batch_size, cfg.seed
    )
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    bema = _bema(cfg, model) if cfg.bema is not None else None

    def collate(indices: list[int]) -> Any:
        chosen = [examples[i] for u in indices for i in units[u]]
        return collate_sft(chosen, pad_id, cfg.pad_to_multiple_of, pack).to(ctx.device)

    def counts(batches: list[Any]) -> int:
        return sum(b.num_tokens for b in batches)

    def micro_step(batch: Any, num_tokens: int, metrics: StepMetrics) -> torch.Tensor:
        logps, _ = token_logprobs(
            model,
            batch.input_ids,
            batch.attention_mask,
            batch.logits_to_keep,
            mask=batch.loss_mask,
            index=batch.target_index,
            packed=batch.packed,
        )
        out = sft_loss(logps, batch.loss_mask, cfg.loss_type, num_tokens)
        for name, value in out.metrics.items():
            metrics.add_sum(name, value)
        metrics.add_sum("train/num_tokens", float(batch.num_tokens))
        return out.loss

    def on_step_end(step: int) -> None:
        if bema is not None:
            bema.step(step, trainable)

    def save_bema(final: Path) -> None:
        with torch.no_grad():
            for name, value in bema.weights.items():
                trainable[name].copy_(value)
        save_model(model, tokenizer, final / "bema")

    evaluate = offline_evaluator(
        ctx,
        model,
        len(eval_examples),
        cfg.per_device_eval_batch_size,
        lambda idx: collate_sft([eval_examples[i] for i in idx], pad_id, cfg.pad_to_multiple_of, pack).to(
            ctx.device
        ),
        counts,
        micro_step,
    )

    return run_offline_loop(
        ctx,
        OfflineParts(
            model=model,
            tokenizer=tokenizer,
            stream=stream,
            collate=collate,
            counts=counts,
            micro_step=micro_step,
            on_step_end=on_step_end,
            state_dict=(lambda: {"bema": bema.state_dict()}) if bema is not None else None,
            load_state_dict=(lambda s: bema.load_state_dict(s["bema"])) if bema is not None else None,
            save_extra=save_bema if bema is not None else None,
            evaluate=evaluate,
        ),
    )
