"""The tokenized rows of the offline algorithms: one loader per row shape, all read, checked and logged alike.

    examples = sft_examples(spec, ctx, tokenizer)                 # SFT
    pairs = preference_pairs(spec, ctx, tokenizer)                # DPO, CPO
    rows = unpaired_examples(spec, ctx, tokenizer, with_kl=True)  # KTO (KL partners), BCO
    pairs = reward_pairs(spec, ctx, tokenizer)                    # reward modelling

Each reads the job's dataset (or `dataset`, an evaluation set), checks that its format is one the
algorithm accepts, tokenizes and truncates it with the config's lengths, refuses a dataset that leaves
nothing to train on, and logs one line `<algorithm|eval> data: ...` with what was dropped and why.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from engine.data.formats import DataFormatError, expect_format
from engine.data.reward_pairs import RewardExample, tokenize_reward_pairs
from engine.data.sources import load_rows
from engine.data.tokenize import PreferenceExample, SFTExample, tokenize_preferences, tokenize_sft
from engine.data.unpaired import UnpairedExample, assign_kl_completions, tokenize_unpaired

SFT_FORMATS = ("prompt_completion", "messages", "text")
PREFERENCE_FORMATS = ("preference",)
UNPAIRED_FORMATS = ("unpaired", "preference")


def read_rows(
    spec: Any, ctx: Any, dataset: Any, formats: Iterable[str], text_field: str = "text"
) -> tuple[str, list[dict[str, Any]], str]:
    """(format, normalised rows, what the log line calls them: the algorithm, or "eval")."""
    rows = load_rows(dataset or spec.dataset, ctx.uploads_dir)
    fmt, rows = expect_format(rows, formats, spec.algorithm, text_field)
    return fmt, rows, "eval" if dataset is not None else spec.algorithm


def _too_short(cfg: Any, what: str) -> DataFormatError:
    return DataFormatError(
        f"no {what} is left after truncation (max_length={cfg.max_length}, "
        f"max_prompt_length={cfg.max_prompt_length}); raise max_length"
    )


def sft_examples(spec: Any, ctx: Any, tokenizer: Any, dataset: Any = None) -> list[SFTExample]:
    """Prompt/completion, messages or text rows with their target-token masks."""
    cfg = spec.config
    fmt, rows, kind = read_rows(spec, ctx, dataset, SFT_FORMATS, cfg.dataset_text_field)
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
    ctx.events.log(f"{kind} data: {len(examples)} {fmt} rows ({dropped} dropped: no target token left)")
    return examples


def preference_pairs(spec: Any, ctx: Any, tokenizer: Any, dataset: Any = None) -> list[PreferenceExample]:
    """Prompt/chosen/rejected pairs, truncated by the config's `truncation_mode` (CPO has none: its
    prompts keep their end)."""
    cfg = spec.config
    _, rows, kind = read_rows(spec, ctx, dataset, PREFERENCE_FORMATS)
    pairs, dropped = tokenize_preferences(
        rows,
        tokenizer,
        max_length=cfg.max_length,
        max_prompt_length=cfg.max_prompt_length,
        max_completion_length=cfg.max_completion_length,
        truncation_mode=getattr(cfg, "truncation_mode", "keep_end"),
    )
    if not pairs:
        raise _too_short(cfg, "preference pair")
    ctx.events.log(f"{kind} data: {len(pairs)} pairs ({dropped} dropped: empty after truncation)")
    return pairs


def unpaired_examples(
    spec: Any, ctx: Any, tokenizer: Any, dataset: Any = None, with_kl: bool = False
) -> list[UnpairedExample]:
    """Unpaired (prompt, completion, label) rows, or preference pairs unpaired and shuffled; with `with_kl`
    each row also gets KTO's mismatched completion."""
    cfg = spec.config
    fmt, rows, kind = read_rows(spec, ctx, dataset, UNPAIRED_FORMATS)
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
        raise _too_short(cfg, "row")
    if with_kl:
        if len(examples) < 2:
            raise DataFormatError(
                "kto needs at least 2 rows: its KL estimate pairs a prompt with another row"
            )
        assign_kl_completions(examples, cfg.max_length)
    desirable = sum(e.label for e in examples)
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


def reward_pairs(spec: Any, ctx: Any, tokenizer: Any, dataset: Any = None) -> list[RewardExample]:
    """Whole chosen and rejected sequences (prompt prepended), with the optional `margin` column."""
    cfg = spec.config
    _, rows, kind = read_rows(spec, ctx, dataset, PREFERENCE_FORMATS)
    pairs, dropped = tokenize_reward_pairs(rows, tokenizer, max_length=cfg.max_length)
    if not pairs:
        raise DataFormatError(
            f"every pair is longer than max_length={cfg.max_length} tokens; raise max_length"
        )
    margin = " with margins" if pairs[0].margin is not None else " without a margin column (no margin term)"
    ctx.events.log(
        f"{kind} data: {len(pairs)} pairs{margin} ({dropped} dropped: longer than max_length={cfg.max_length})"
    )
    return pairs
