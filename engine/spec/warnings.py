"""Warnings about a valid spec that will probably not train the way its author expects. Torch-free.

    for w in spec_warnings(parse_job_spec(body)):
        print(w.code, w.param, w.message)

A warning never refuses a job (refusals live in `engine.spec.job.unsupported`); the dry run
(`POST /v1/jobs:validate`) returns them and the engine logs them when a job starts. Each rule is a small
function of the parsed spec registered in `RULES`; add a rule by appending a function there.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from engine.spec.job import ONLINE_ALGORITHMS


class SpecWarning(BaseModel):
    model_config = ConfigDict(frozen=True)

    code: str = Field(description="stable identifier of the rule, e.g. `completions_truncated`")
    message: str = Field(description="what will happen and what to change")
    param: str | None = Field(None, description="dotted path of the field to look at")


# The shortest text that earns each rule-based reward its full score on the built-in `arithmetic` set
# (answers are whole numbers of at least one digit; "0" is the shortest).
_SHORTEST_REWARDED = {
    "accuracy": "0",
    "format": "<think></think><answer>0</answer>",
    "think_format": "<think></think>0",
}
_TAGS = ("<think>", "</think>", "<answer>", "</answer>")


def _min_tokens(text: str, model: str) -> tuple[int, str]:
    """A lower bound on the tokens `text` plus the end-of-sequence token takes, and how it was counted.

    `tiny:` models use one token per character (exact). For any other tokenizer each tag is at least one
    token and every other character may merge with its neighbours, so only the tags, one token for the
    rest and the end token are counted."""
    if model.startswith("tiny:"):
        return len(text) + 1, "with the character tokenizer of " + model
    rest = text
    tags = 0
    for tag in _TAGS:
        tags += rest.count(tag)
        rest = rest.replace(tag, "")
    return tags + (1 if rest else 0) + 1, "at least, with any tokenizer"


def _completions_truncated(spec: Any) -> Iterator[SpecWarning]:
    if spec.algorithm not in ONLINE_ALGORITHMS or spec.dataset.builtin != "arithmetic":
        return
    limit = spec.config.max_completion_length
    names = [r.name for r in spec.reward_funcs if r.name in _SHORTEST_REWARDED]
    if not names:
        return
    text = max((_SHORTEST_REWARDED[n] for n in names), key=len)
    need, how = _min_tokens(text, spec.model)
    if limit < need:
        yield SpecWarning(
            code="completions_truncated",
            message=(
                f"all completions will be truncated at max_completion_length={limit}: the shortest completion "
                f"that earns the full {'/'.join(names)} reward on the built-in arithmetic set ({text!r} and "
                f"the end token) needs {need} tokens ({how}); raise config.max_completion_length to at "
                f"least {need}"
            ),
            param="config.max_completion_length",
        )


def _warmup_covers_training(spec: Any) -> Iterator[SpecWarning]:
    cfg = spec.config
    if cfg.max_steps > 0 and cfg.warmup_steps >= cfg.max_steps and cfg.lr_scheduler_type != "constant":
        yield SpecWarning(
            code="warmup_covers_training",
            message=(
                f"warmup_steps={cfg.warmup_steps} >= max_steps={cfg.max_steps}: the learning rate never "
                f"reaches learning_rate={cfg.learning_rate}; lower config.warmup_steps"
            ),
            param="config.warmup_steps",
        )


def _overlong_punishment_never_fires(spec: Any) -> Iterator[SpecWarning]:
    if spec.algorithm not in ONLINE_ALGORITHMS:
        return
    budget = spec.config.max_completion_length
    for i, func in enumerate(spec.reward_funcs):
        if func.name != "soft_overlong_punishment" or func.max_completion_len is None:
            continue
        start = func.max_completion_len - (func.soft_punish_cache or 0)
        if budget <= start:
            yield SpecWarning(
                code="overlong_punishment_never_fires",
                message=(
                    f"soft_overlong_punishment is always 0: completions stop at max_completion_length={budget}, "
                    f"before its window starts at max_completion_len - soft_punish_cache = {start}; leave "
                    "max_completion_len and soft_punish_cache unset to follow max_completion_length"
                ),
                param=f"reward_funcs.{i}.max_completion_len",
            )


def _every_update_masked(spec: Any) -> Iterator[SpecWarning]:
    """Truncated completions that are also masked out of the loss leave nothing to learn from."""
    if not getattr(spec.config, "mask_truncated_completions", False):
        return
    truncated = list(_completions_truncated(spec))
    if truncated:
        why = "every completion will be truncated (see completions_truncated)"
        todo = "raise config.max_completion_length or turn config.mask_truncated_completions off"
    elif spec.model.startswith("tiny:"):
        why = f"{spec.model} has random weights and almost never emits the end token, so nearly every completion is truncated"
        todo = "turn config.mask_truncated_completions off for a smoke test, or use a trained model"
    else:
        return
    yield SpecWarning(
        code="every_update_masked",
        message=(
            f"{why}; with mask_truncated_completions on, truncated completions are masked out of the loss, so "
            f"loss and gradient are 0 and the model does not change; {todo}"
        ),
        param="config.mask_truncated_completions",
    )


def _bema_never_updates(spec: Any) -> Iterator[SpecWarning]:
    """BEMA folds the weights in every update_freq steps only; a shorter run saves the starting weights."""
    bema = getattr(spec.config, "bema", None)
    steps = spec.config.max_steps
    if bema is None or steps <= 0 or steps >= bema.update_after + bema.update_freq:
        return
    yield SpecWarning(
        code="bema_never_updates",
        message=(
            f"max_steps={steps} ends before the first BEMA update at step "
            f"{bema.update_after + bema.update_freq} (bema.update_after + bema.update_freq), so final/bema holds "
            "the starting weights; lower config.bema.update_freq or train longer"
        ),
        param="config.bema.update_freq",
    )


# Fields a config accepts (TRL has them) that do nothing here, per algorithm: (fields, why).
NO_EFFECT: dict[str, tuple[tuple[str, ...], str]] = {
    "bco": (
        ("prompt_sample_size", "min_density_ratio", "max_density_ratio"),
        "only underlying-distribution matching (UDM) reads it, and UDM needs an embedding model a job cannot name",
    ),
    "gold": (
        (
            "use_extended_uld",
            "uld_token_merge_strategy",
            "uld_use_hybrid_loss",
            "uld_hybrid_matched_weight",
            "uld_hybrid_unmatched_weight",
            "uld_crossentropy_weight",
            "uld_distillation_weight",
            "uld_student_temperature",
            "uld_teacher_temperature",
            "uld_skip_student_eos",
            "uld_skip_teacher_eos",
            "teacher_tokenizer_name_or_path",
        ),
        "only cross-tokenizer distillation (use_uld_loss) reads it, and that is not available",
    ),
}


def _field_has_no_effect(spec: Any) -> Iterator[SpecWarning]:
    fields, why = NO_EFFECT.get(spec.algorithm, ((), ""))
    defaults = type(spec.config).model_fields
    for name in fields:
        value = getattr(spec.config, name)
        if value != defaults[name].default:
            yield SpecWarning(
                code="field_has_no_effect",
                message=f"{name}={value!r} has no effect: {why}; remove it",
                param=f"config.{name}",
            )


# TRL fields a pasted config may carry that the platform decides itself.
_PLATFORM_OWNED = {
    "report_to": "metrics, samples and checkpoints go to the job's events and to MLflow",
    "output_dir": "the job writes its checkpoints and final model under its own output_dir",
}


def _field_ignored(spec: Any) -> Iterator[SpecWarning]:
    for name, why in _PLATFORM_OWNED.items():
        value = getattr(spec.config, name, None)
        if value not in (None, "none", [], ["none"]):
            yield SpecWarning(
                code="field_ignored",
                message=f"{name}={value!r} is ignored: {why}; remove it",
                param=f"config.{name}",
            )


RULES: list[Callable[[Any], Iterator[SpecWarning]]] = [
    _completions_truncated,
    _warmup_covers_training,
    _overlong_punishment_never_fires,
    _every_update_masked,
    _bema_never_updates,
    _field_has_no_effect,
    _field_ignored,
]


def spec_warnings(spec: Any) -> list[SpecWarning]:
    """Every warning the rules raise for a parsed job spec (`engine.spec.parse_job_spec`), in rule order."""
    return [w for rule in RULES for w in rule(spec)]
