"""Binary classifier optimisation (arXiv 2404.04656) on unpaired feedback.

    final_dir = train(spec, ctx)        # spec.algorithm == "bco"

Data as KTO (`kto.prepare_unpaired`: unpaired rows, or preference pairs unpaired and shuffled). Per
micro-batch of B rows: one policy forward (sums of completion log-probs), reference log-probs under
inference mode (frozen copy of the initial policy, or the LoRA policy with its adapter disabled), and
`engine.losses.bco_loss`: rewards r = beta (log pi - log ref), the running reward mean delta updated with the
micro-batch's vector of rewards before the loss (training only; evaluation leaves it alone), desirable
-log s(r - delta), undesirable -log s(-(r - delta)), summed over the rows of the optimizer step. delta is
saved with every checkpoint and restored on resume. Metrics `rewards/*`, `logps/*`, `bco/delta`,
`bco/loss`.

Not supported: underlying-distribution matching (UDM), which needs an embedding model for the prompts;
job specs cannot name one, so `prompt_sample_size`, `min_density_ratio` and `max_density_ratio` have no
effect (as in TRL without `embedding_func`); the dry run and the job's first events warn when one is set.
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
from engine.algorithms.kto import prepare_unpaired, reference_sequence_logps, sequence_logps, unpaired_counts
from engine.data.unpaired import UnpairedExample, UnpairedTokenBatch, collate_unpaired
from engine.losses import BCOLossConfig, BCOState, UnpairedBatch, UnpairedCounts, bco_loss
from engine.models import load_policy, load_reference, load_tokenizer


@dataclass
class BCOItem:
    batch: UnpairedTokenBatch  # on the device


def train(spec: Any, ctx: TrainContext) -> Path:
    cfg = spec.config
    tokenizer = load_tokenizer(spec.model, ctx.cache_dir)
    examples = prepare_unpaired(spec, ctx, tokenizer)
    eval_examples = prepare_unpaired(spec, ctx, tokenizer, spec.eval_dataset) if spec.eval_dataset else []
    policy = load_policy(spec, ctx.device, ctx.dtype, ctx.cache_dir)
    # The reference is taken before any step (and before a resume loads trained weights into the policy).
    ref = load_reference(spec, policy, ctx.device, ctx.dtype)
    loss_cfg = BCOLossConfig.from_spec(cfg)
    state = BCOState()
    pad_id = tokenizer.pad_token_id

    def collate_from(source: list[UnpairedExample]) -> Any:
        def collate(indices: list[int]) -> BCOItem:
            return BCOItem(collate_unpaired([source[i] for i in indices], pad_id).to(ctx.device))

        return collate

    def micro_step(item: BCOItem, counts: UnpairedCounts, metrics: StepMetrics) -> torch.Tensor:
        tokens, labels = item.batch.tokens, item.batch.labels
        batch = UnpairedBatch(sequence_logps(policy, tokens), reference_sequence_logps(ref, tokens), labels)
        # delta moves with training batches only (TRL: do_train); evaluation runs in eval mode
        out = bco_loss(batch, loss_cfg, counts, state, update_state=policy.training)
        for name, value in out.metrics.items():
            metrics.add_sum(name, value)
        return out.loss

    evaluate = offline_evaluator(
        ctx,
        policy,
        len(eval_examples),
        cfg.per_device_eval_batch_size,
        collate_from(eval_examples),
        unpaired_counts,
        micro_step,
    )

    return run_offline_loop(
        ctx,
        OfflineParts(
            model=policy,
            tokenizer=tokenizer,
            stream=BatchStream([e.length for e in examples], cfg.per_device_train_batch_size, cfg.seed),
            collate=collate_from(examples),
            counts=unpaired_counts,
            micro_step=micro_step,
            state_dict=lambda: {"bco": state.state_dict()},
            load_state_dict=lambda saved: state.load_state_dict(saved["bco"]) if "bco" in saved else None,
            evaluate=evaluate,
        ),
    )
