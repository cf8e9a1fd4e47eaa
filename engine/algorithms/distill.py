"""GKD and GOLD: distil a frozen teacher's token distributions into the student.

    python -m engine.train --spec gkd.json --out runs/gkd      # algorithm "gkd" or "gold"

Data: rows with a prompt: prompt/completion, or messages whose last turn is the assistant's answer (the
turns before it are the prompt). Every micro-step decides once, for its whole batch, which completions it
trains on: with probability `lmbda` (u ~ U[0, 1), u <= lmbda) the student samples new ones from the
prompts (on-policy); otherwise, with `seq_kd`, the teacher samples them (sequence-level KD); otherwise the
dataset completion is used. A sampled completion counts through its first EOS (any EOS id of the tokenizer
or the model's generation config), all of it when no EOS was sampled. Sampling: `temperature`, and GKD:
`max_new_tokens`, no top-k / top-p; GOLD: `max_completion_length`, `top_p`, `top_k`. GOLD's
`num_generations` samples every prompt that many times: a micro-batch holds
per_device_train_batch_size / num_generations prompts, each repeated.

Loss: the generalized JSD of `engine.losses.distill_loss` on every completion token (`gkd`: temperature 1,
`temperature` only shapes sampling; `gold`: both logits divided by `temperature`; beta 0 / 1 = forward /
reverse KL), summed and divided by the completion tokens of the whole optimizer step, i.e. the tokens
actually trained on. (TRL divides on-policy steps by the token count of the dataset completions it
replaced, because HF counts labels before GKD swaps the batch; the loss scale then depends on how long the
dataset answers happen to be.) Full-vocabulary logits exist for one chunk of completion positions at a
time, student and teacher, and the student's are recomputed in the backward pass.

Teacher: `config.teacher_model_name_or_path`, any model reference the engine loads (`tiny:llama`,
`bundled:...`, a local folder such as a previous job's `final/`, an HF id): loaded once in the compute dtype,
frozen, in eval mode, its forwards under inference mode. It must share the student's tokenizer (checked
at start, before any training).

`padding_free`: each micro-batch runs as one row without padding (per-row position ids, no attention across
rows), sampled completions included. `packing`: the dataset rows are first grouped into packs of at most
`max_length` tokens (best-fit decreasing on prompt + dataset completion), a pack counts as one prompt of
the micro-batch (all its prompts are sampled when the step samples), and batches run padding-free.

Several processes: each rank takes its share of every global micro-batch (`run_offline_loop`); the coin
that picks the completions' source is rank 0's, so the whole global micro-batch has one source as in one
process; each rank samples for its own prompts; the divisor is the step's completion tokens summed over
the ranks. The teacher is a plain module on every rank (replicated, never partitioned), also under ZeRO-3;
under ZeRO-3 the student samples on its gathered full weights (`ZeroEngine.for_generation`), since ranks
decode different numbers of steps.

Not supported: GOLD's cross-tokenizer ULD loss (`use_uld_loss`), vLLM generation (`use_vllm`) and the
other SFT options of `engine.spec.job.DISTILL_FIXED`, each refused at submission naming the field.
Evaluation (`eval_dataset`) scores the dataset
completions.
"""

from __future__ import annotations

import contextlib
import json
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.checkpoint import checkpoint

from engine import distributed
from engine.algorithms.common import (
    BatchStream,
    StepMetrics,
    TrainContext,
    offline_evaluator,
    total_optimizer_steps,
)
from engine.algorithms.offline import OfflineParts, run_offline_loop
from engine.algorithms.offline_data import read_rows
from engine.data.collate import TokenBatch, pack_bins, pad_rows
from engine.data.formats import DataFormatError, RowError
from engine.data.tokenize import sft_example
from engine.functional import Count
from engine.logprobs import LOGIT_BUDGET, output_logits, target_hidden, vocab_width
from engine.losses import DistillLossConfig, distill_loss
from engine.models import load_model, load_policy, load_tokenizer
from engine.rollout import SamplingParams, completion_mask_and_truncation, make_backend

DISTILL_FORMATS = ("prompt_completion", "messages")
NUM_SAMPLES = 4  # sampled completions shown per `samples` event


# ------------------------------------------------------------------------------------------------ data


@dataclass
class DistillExample:
    prompt_ids: list[int]
    completion_ids: list[int]

    @property
    def length(self) -> int:
        return len(self.prompt_ids) + len(self.completion_ids)


def _as_prompt_completion(row: dict[str, Any], fmt: str, index: int) -> dict[str, Any]:
    if fmt == "prompt_completion":
        return row
    messages = row["messages"]
    if len(messages) < 2 or messages[-1].get("role") != "assistant":
        raise DataFormatError(
            "distillation needs a prompt to sample from: each conversation must end with the assistant's "
            "answer after at least one earlier turn",
            [RowError(index, "messages", "the last message is not an assistant turn after a prompt")],
        )
    return {"prompt": messages[:-1], "completion": messages[-1:]}


def tokenize_distill(
    rows: list[dict[str, Any]],
    fmt: str,
    tokenizer: Any,
    *,
    max_length: int | None = 1024,
    truncation_mode: str = "keep_start",
    eos_token: str | None = None,
) -> tuple[list[DistillExample], int]:
    """(examples, number dropped): prompt and completion token ids, cut to `max_length` together
    (keep_start drops the end of the completion, keep_end the start of the prompt); a row left without a
    prompt or a completion token is dropped."""
    out, dropped = [], 0
    for i, row in enumerate(rows):
        ex = sft_example(
            _as_prompt_completion(row, fmt, i),
            "prompt_completion",
            tokenizer,
            completion_only_loss=True,
            eos_token=eos_token,
            index=i,
            max_length=max_length,
            truncation_mode=truncation_mode,
        )
        split = ex.loss_mask.index(1) if 1 in ex.loss_mask else len(ex.loss_mask)
        ids = ex.input_ids
        if max_length is not None and len(ids) > max_length:
            if truncation_mode == "keep_end":
                cut = len(ids) - max_length
                ids, split = ids[cut:], max(0, split - cut)
            else:
                ids, split = ids[:max_length], min(split, max_length)
        prompt, completion = ids[:split], ids[split:]
        if not prompt or not completion:
            dropped += 1
            continue
        out.append(DistillExample(prompt, completion))
    return out, dropped


def prepare_examples(
    spec: Any, ctx: TrainContext, tokenizer: Any, dataset: Any = None
) -> list[DistillExample]:
    cfg = spec.config
    fmt, rows, kind = read_rows(spec, ctx, dataset, DISTILL_FORMATS, cfg.dataset_text_field)
    examples, dropped = tokenize_distill(
        rows,
        fmt,
        tokenizer,
        max_length=cfg.max_length,
        truncation_mode=cfg.truncation_mode,
        eos_token=cfg.eos_token,
    )
    if not examples:
        raise DataFormatError(
            f"no {fmt} row keeps both a prompt and a completion token after truncation to "
            f"max_length={cfg.max_length}"
        )
    ctx.events.log(f"{kind} data: {len(examples)} {fmt} rows ({dropped} dropped: nothing left to train on)")
    return examples


def sampled_examples(
    prompts: Sequence[Sequence[int]], completion_ids: torch.Tensor, eos_token_ids: Sequence[int]
) -> list[DistillExample]:
    """Prompt i with row i of the sampled `completion_ids` (N, C), kept through its first EOS (the whole
    row when it has none): the tokens the loss is taken on. Anything after the first EOS (padding, or
    tokens of a sampler that kept going) is dropped."""
    mask, _ = completion_mask_and_truncation(completion_ids, eos_token_ids)
    lengths = mask.sum(dim=1).tolist()
    rows = completion_ids.tolist()
    return [DistillExample(list(p), row[:n]) for p, row, n in zip(prompts, rows, lengths, strict=True)]


@dataclass
class DistillBatch:
    tokens: TokenBatch  # prompt + completion rows; loss mask (B, K) = completion tokens
    source: str  # "dataset", "student" (on-policy) or "teacher" (seq_kd)
    completion_lengths: list[int]
    samples: list[dict[str, Any]] = field(default_factory=list)

    def to(self, device: torch.device | str) -> DistillBatch:
        return DistillBatch(self.tokens.to(device), self.source, self.completion_lengths, self.samples)


def build_batch(
    rows: Sequence[DistillExample],
    source: str,
    pad_id: int,
    pad_to_multiple_of: int | None = None,
    pack: bool = False,
) -> DistillBatch:
    """Prompt + completion rows, padded; `pack`: also laid end to end (`TokenBatch.packed`)."""
    tokens = pad_rows(
        [r.prompt_ids + r.completion_ids for r in rows],
        [[0] * len(r.prompt_ids) + [1] * len(r.completion_ids) for r in rows],
        pad_id,
        pad_to_multiple_of,
        pack,
    )
    return DistillBatch(tokens, source, [len(r.completion_ids) for r in rows])


# --------------------------------------------------------------------------------------------- teacher


def eos_token_ids(tokenizer: Any, model: Any) -> tuple[int, ...]:
    """The tokenizer's EOS and every EOS id of the model's generation config (e.g. end-of-turn tokens)."""
    ids: list[int] = []
    candidates: list[Any] = [tokenizer.eos_token_id]
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    candidates += list(eos) if isinstance(eos, list | tuple) else [eos]
    for e in candidates:
        if e is not None and int(e) not in ids:
            ids.append(int(e))
    if not ids:
        raise ValueError("the tokenizer has no EOS token, so sampled completions could never end")
    return tuple(ids)


def check_same_tokenizer(student_tok: Any, teacher_tok: Any, student_ref: str, teacher_ref: str) -> None:
    """Token-level distillation compares two distributions over one vocabulary: same token -> same id."""
    s_vocab, t_vocab = student_tok.get_vocab(), teacher_tok.get_vocab()
    if s_vocab != t_vocab:
        differ = len(set(s_vocab.items()) ^ set(t_vocab.items()))
        raise ValueError(
            f"config.teacher_model_name_or_path={teacher_ref!r} has a different tokenizer from the student "
            f"{student_ref!r} ({len(t_vocab)} vs {len(s_vocab)} tokens, {differ} (token, id) entries differ): "
            "distillation compares the two models' distributions token by token, so the teacher must share "
            "the student's tokenizer (pick a teacher of the same model family)"
        )


def load_teacher(spec: Any, ctx: TrainContext, student_tokenizer: Any) -> Any:
    """The teacher of `config.teacher_model_name_or_path`: tokenizer checked against the student's, weights
    in the compute dtype, frozen (no gradients), eval mode, on the training device."""
    ref = spec.config.teacher_model_name_or_path
    adapter = Path(ref) / "adapter_config.json"
    if adapter.is_file() and not json.loads(adapter.read_text()).get("base_model_name_or_path"):
        raise ValueError(
            f"config.teacher_model_name_or_path={ref!r} is a LoRA adapter that does not record its base "
            "model (e.g. the final/ folder of a LoRA job on tiny:llama or a bundled model); use a teacher "
            "with full weights"
        )
    try:
        teacher_tokenizer = load_tokenizer(ref, ctx.cache_dir, field="config.teacher_model_name_or_path")
    except (OSError, ValueError) as exc:
        raise ValueError(
            f"config.teacher_model_name_or_path={ref!r}: cannot load its tokenizer: {exc}"
        ) from exc
    check_same_tokenizer(student_tokenizer, teacher_tokenizer, spec.model, ref)
    try:
        teacher = load_model(ref, dtype=ctx.dtype, cache_dir=ctx.cache_dir)
    except (OSError, ValueError) as exc:
        raise ValueError(f"config.teacher_model_name_or_path={ref!r}: cannot load the model: {exc}") from exc
    teacher.requires_grad_(False)
    teacher.eval()
    return teacher.to(ctx.device)


def shared_vocab(student: Any, teacher: Any, tokenizer: Any, ctx: TrainContext) -> int:
    """How many logits to compare. Heads padded to different widths are compared on the common part,
    which holds every real token."""
    vs, vt = vocab_width(student), vocab_width(teacher)
    width = min(vs, vt)
    if width < len(tokenizer):
        raise ValueError(
            f"config.teacher_model_name_or_path: the teacher's LM head has {vt} logits and the student's "
            f"{vs}, fewer than the tokenizer's {len(tokenizer)} tokens"
        )
    if vs != vt:
        ctx.events.log(
            f"student and teacher LM heads have {vs} and {vt} logits; comparing the first {width}", "warning"
        )
    return width


# ------------------------------------------------------------------------------------------------ loss


def _chunk_loss(
    student: Any,
    teacher: Any,
    h_student: torch.Tensor,
    h_teacher: torch.Tensor,
    num_tokens: Count,
    cfg: DistillLossConfig,
    vocab: int,
) -> torch.Tensor:
    s_logits = output_logits(student, h_student)[:, :vocab]  # (n, V) float32
    with torch.no_grad():
        t_logits = output_logits(teacher, h_teacher)[:, :vocab]
    mask = torch.ones(s_logits.shape[0], dtype=s_logits.dtype, device=s_logits.device)
    return distill_loss(s_logits, t_logits, mask, num_tokens, cfg).loss


def distill_micro_loss(
    student: Any,
    teacher: Any,
    tokens: TokenBatch,
    num_tokens: Count,
    cfg: DistillLossConfig,
    vocab: int,
    chunk_size: int | None = None,
) -> torch.Tensor:
    """This micro-batch's share of the step's distillation loss: sum over its completion tokens of the
    per-token divergence, / `num_tokens` (the step's total). One decoder forward per model; the LM heads
    and the divergence run per chunk of `chunk_size` tokens (default: 4 float32 (chunk, V) buffers fit in
    `LOGIT_BUDGET` elements), each chunk activation-checkpointed when gradients are on. A packed batch
    (`tokens.packed`) runs both decoders on its padding-free row."""
    args = (tokens.input_ids, tokens.attention_mask, tokens.logits_to_keep, tokens.target_index)
    h_student, _ = target_hidden(student, *args, packed=tokens.packed)  # (n, H)
    with torch.inference_mode():
        h_teacher, _ = target_hidden(teacher, *args, packed=tokens.packed)
    h_teacher = h_teacher.clone()  # a normal tensor (inference tensors cannot enter autograd graphs)
    size = chunk_size or max(1, LOGIT_BUDGET // (4 * vocab))
    use_ckpt = torch.is_grad_enabled() and h_student.requires_grad
    parts = []
    for start in range(0, h_student.shape[0], size):
        chunk = (student, teacher, h_student[start : start + size], h_teacher[start : start + size])
        rest = (num_tokens, cfg, vocab)
        parts.append(
            checkpoint(_chunk_loss, *chunk, *rest, use_reentrant=False)
            if use_ckpt
            else _chunk_loss(*chunk, *rest)
        )
    if not parts:  # no completion token: a zero still connected to the graph
        return h_student.sum().float() * 0.0
    return torch.stack(parts).sum()


# ------------------------------------------------------------------------------------------------ loop


def sampling_params(cfg: Any, eos_ids: tuple[int, ...], pad_id: int) -> SamplingParams:
    """GKD samples with `max_new_tokens` and no top-k / top-p (TRL's GKD); GOLD with
    `max_completion_length`, `top_p` and `top_k`."""
    if hasattr(cfg, "max_completion_length"):
        return SamplingParams(
            max_new_tokens=cfg.max_completion_length,
            eos_token_ids=eos_ids,
            pad_token_id=pad_id,
            temperature=cfg.temperature,
            top_p=cfg.top_p,
            top_k=cfg.top_k,
        )
    return SamplingParams(
        max_new_tokens=cfg.max_new_tokens,
        eos_token_ids=eos_ids,
        pad_token_id=pad_id,
        temperature=cfg.temperature,
        top_p=1.0,
        top_k=0,
    )


def train(spec: Any, ctx: TrainContext) -> Path:
    """Run a GKD or GOLD job; returns DIR/final."""
    cfg = spec.config
    generations = getattr(cfg, "num_generations", 1)
    # refused at submission (engine.spec.job.DISTILL_FIXED): no ULD, no vLLM, whole groups per micro-batch
    assert not getattr(cfg, "use_uld_loss", False) and not getattr(cfg, "use_vllm", False)
    assert cfg.per_device_train_batch_size % generations == 0
    pack = bool(cfg.packing or cfg.padding_free)
    tokenizer = load_tokenizer(spec.model, ctx.cache_dir)
    examples = prepare_examples(spec, ctx, tokenizer)
    eval_examples = prepare_examples(spec, ctx, tokenizer, spec.eval_dataset) if spec.eval_dataset else []
    model = load_policy(spec, ctx.device, ctx.dtype, ctx.cache_dir)
    teacher = load_teacher(spec, ctx, tokenizer)
    vocab = shared_vocab(model, teacher, tokenizer, ctx)
    loss_cfg = DistillLossConfig.from_spec(cfg)
    eos_ids = eos_token_ids(tokenizer, model)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_ids[0]
    sampling = sampling_params(cfg, eos_ids, pad_id)
    samplers = {"student": make_backend("hf", model=model, device=ctx.device)}
    if cfg.seq_kd:
        samplers["teacher"] = make_backend("hf", model=teacher, device=ctx.device)
    lengths = [e.length for e in examples]
    units = [[i] for i in range(len(examples))]  # what one prompt slot of a batch holds: a row, or a pack
    if cfg.packing:
        units = pack_bins(lengths, cfg.max_length or max(lengths))
        ctx.events.log(f"packing: {len(examples)} rows in {len(units)} packs of <= {cfg.max_length} tokens")
    stream = BatchStream(
        [sum(lengths[i] for i in u) for u in units], cfg.per_device_train_batch_size // generations, cfg.seed
    )
    total = total_optimizer_steps(cfg, stream.batches_per_epoch)
    pending_samples: list[dict[str, Any]] = []
    ctx.events.log(
        f"{spec.algorithm}: teacher {cfg.teacher_model_name_or_path}, lmbda={cfg.lmbda} (student samples), "
        f"seq_kd={cfg.seq_kd}, beta={cfg.beta}, loss at temperature {loss_cfg.temperature}, {total} steps"
    )

    stepper: dict[str, Any] = {"zero": None}  # the DeepSpeed engine, once the loop has built it

    def on_start(step_component: Any) -> None:
        stepper["zero"] = step_component.zero

    def collate(units_of_batch: list[int]) -> DistillBatch:
        # once per micro-step, for the whole global batch: every rank draws, rank 0's draw decides
        on_policy = distributed.from_main(random.random()) <= cfg.lmbda
        source = "student" if on_policy else ("teacher" if cfg.seq_kd else "dataset")
        indices = [i for u in units_of_batch for i in units[u]]
        if source == "dataset":
            return build_batch(
                [examples[i] for i in indices for _ in range(generations)],
                source,
                pad_id,
                cfg.pad_to_multiple_of,
                pack,
            ).to(ctx.device)
        prompts = [examples[i].prompt_ids for i in indices]
        zero = stepper["zero"] if source == "student" else None
        with zero.for_generation() if zero is not None else contextlib.nullcontext(), ctx.autocast():
            out = samplers[source].generate(prompts, generations, sampling)
        repeated = [p for p in prompts for _ in range(generations)]
        rows = sampled_examples(repeated, out.completion_ids, eos_ids)
        batch = build_batch(rows, source, pad_id, cfg.pad_to_multiple_of, pack)
        batch.samples = [
            {
                "prompt": tokenizer.decode(r.prompt_ids, skip_special_tokens=True),
                "completion": tokenizer.decode(r.completion_ids, skip_special_tokens=True),
                "source": source,
            }
            for r in rows[:NUM_SAMPLES]
        ]
        return batch.to(ctx.device)

    def counts(batches: list[DistillBatch]) -> int:
        return sum(b.tokens.num_tokens for b in batches)

    def micro_step(batch: DistillBatch, num_tokens: int, metrics: StepMetrics) -> torch.Tensor:
        loss = distill_micro_loss(model, teacher, batch.tokens, num_tokens, loss_cfg, vocab)
        metrics.add_sum(f"distill/{loss_cfg.loss_type}", loss.detach())
        metrics.add_sum("train/num_tokens", float(batch.tokens.num_tokens))
        if model.training:
            metrics.add_mean("distill/on_policy_fraction", float(batch.source == "student"), 1.0)
            if cfg.seq_kd:
                metrics.add_mean("distill/teacher_sampled_fraction", float(batch.source == "teacher"), 1.0)
            if batch.source != "dataset":
                lengths = batch.completion_lengths
                metrics.add_mean("rollout/completion_length_mean", float(sum(lengths)), float(len(lengths)))
                pending_samples[:] = batch.samples
        return loss

    def on_step_end(step: int) -> None:
        if pending_samples and (step % cfg.logging_steps == 0 or step == total):
            ctx.events.samples(step, list(pending_samples))
            pending_samples.clear()

    evaluate = offline_evaluator(
        ctx,
        model,
        len(eval_examples),
        cfg.per_device_eval_batch_size,
        lambda idx: build_batch(
            [eval_examples[i] for i in idx], "dataset", pad_id, cfg.pad_to_multiple_of, pack
        ).to(ctx.device),
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
            evaluate=evaluate,
            on_start=on_start,
        ),
    )
