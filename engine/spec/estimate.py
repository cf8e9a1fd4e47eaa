"""A rough size of a job before it runs: optimizer steps and an upper bound on the tokens it processes.
Torch-free; the dry run (`POST /v1/jobs:validate`) returns it.

    estimate_job(spec, rows=None)   # rows: the dataset's row count when known (an upload's), else derived

Steps are exact when `max_steps` is set; otherwise they follow the engine's rule (epochs x batches per
epoch / gradient_accumulation_steps) from the row count, and are None when the rows are unknown (a local
path or a hub dataset). Tokens are an upper bound: every sequence counted at its length limit.
"""

from __future__ import annotations

import math

from pydantic import BaseModel, Field

from engine.spec.base import BUILTIN_DEFAULT_ROWS
from engine.spec.grpo import GenerationArgs
from engine.spec.job import JobSpec

# Offline algorithms whose rows hold two sequences (chosen and rejected) trained side by side.
_PAIRED = frozenset({"dpo", "cpo", "reward", "bco"})


class Estimate(BaseModel):
    steps: int | None = Field(description="optimizer steps; None when the dataset size is unknown")
    steps_exact: bool = Field(description="true when max_steps fixes the count")
    rows: int | None = Field(description="dataset rows the estimate used (None: unknown)")
    sequences_per_step: int = Field(description="sequences one optimizer step trains on")
    max_tokens: int | None = Field(
        description="upper bound on the tokens trained on: steps x sequences_per_step x the sequence length limit"
    )
    basis: str = Field(description="how the numbers were derived")


def _rows(spec: JobSpec, rows: int | None) -> int | None:
    if rows is not None:
        rows = min(rows, spec.dataset.num_rows) if spec.dataset.num_rows else rows
        return rows
    if spec.dataset.builtin:
        return spec.dataset.num_rows or BUILTIN_DEFAULT_ROWS
    return spec.dataset.num_rows


def estimate_job(spec: JobSpec, rows: int | None = None) -> Estimate:
    cfg = spec.config
    n = _rows(spec, rows)
    if isinstance(cfg, GenerationArgs):  # the online algorithms
        spg = cfg.effective_steps_per_generation
        processes = spec.distributed.num_processes if spec.distributed is not None else 1
        completions = cfg.per_device_train_batch_size * spg * processes  # a generation, over all processes
        micro_per_epoch = (
            math.ceil(n / (completions // cfg.num_generations)) * spg * cfg.num_iterations if n else None
        )
        seq_len = (cfg.max_prompt_length or 0) + cfg.max_completion_length if cfg.max_prompt_length else None
        per_step = cfg.per_device_train_batch_size * cfg.gradient_accumulation_steps
        length_basis = "(max_prompt_length + max_completion_length)"
    else:
        micro_per_epoch = math.ceil(n / cfg.per_device_train_batch_size) if n else None
        seq_len = getattr(cfg, "max_length", None)
        pairs = 2 if spec.algorithm in _PAIRED else 1
        per_step = cfg.per_device_train_batch_size * cfg.gradient_accumulation_steps * pairs
        length_basis = "max_length"
    if cfg.max_steps > 0:
        steps: int | None = cfg.max_steps
        how = f"max_steps={cfg.max_steps}"
    elif micro_per_epoch is not None:
        steps = max(1, math.ceil(cfg.num_train_epochs * micro_per_epoch / cfg.gradient_accumulation_steps))
        how = f"num_train_epochs={cfg.num_train_epochs} over {n} rows"
    else:
        steps, how = None, "the dataset size is unknown before the worker reads it"
    tokens = steps * per_step * seq_len if steps is not None and seq_len is not None else None
    return Estimate(
        steps=steps,
        steps_exact=cfg.max_steps > 0,
        rows=n,
        sequences_per_step=per_step,
        max_tokens=tokens,
        basis=f"steps from {how}; tokens: steps x {per_step} sequences x {length_basis} (an upper bound)",
    )
