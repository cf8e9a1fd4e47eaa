"""Spec warnings (valid specs that will not train as meant) and the size estimate of the dry run."""

from __future__ import annotations

from engine.spec import parse_job_spec
from engine.spec.estimate import estimate_job
from engine.spec.warnings import spec_warnings

ARITH = {"algorithm": "grpo", "model": "tiny:llama", "dataset": {"builtin": "arithmetic"}}


def _grpo(model: str = "tiny:llama", rewards=("accuracy",), **config):
    cfg = {"per_device_train_batch_size": 8, "num_generations": 4, **config}
    body = {**ARITH, "model": model, "reward_funcs": [{"name": r} for r in rewards], "config": cfg}
    return parse_job_spec(body)


def _codes(spec) -> list[str]:
    return [w.code for w in spec_warnings(spec)]


def test_truncation_counts_characters_for_the_tiny_model() -> None:
    # "<think></think><answer>0</answer>" is 33 characters, plus the end token: 34 tokens at least.
    assert _codes(_grpo(rewards=("format",), max_completion_length=33)) == ["completions_truncated"]
    assert _codes(_grpo(rewards=("format",), max_completion_length=34)) == []
    (w,) = spec_warnings(_grpo(rewards=("accuracy", "format"), max_completion_length=8))
    assert w.param == "config.max_completion_length"
    assert "all completions will be truncated at max_completion_length=8" in w.message
    assert "34" in w.message


def test_truncation_uses_a_tokenizer_free_lower_bound_for_other_models() -> None:
    # Four tags (one token each at least), the digit and the end token: 6.
    hub = "org/some-model"
    assert _codes(_grpo(model=hub, rewards=("format",), max_completion_length=5)) == ["completions_truncated"]
    assert _codes(_grpo(model=hub, rewards=("format",), max_completion_length=6)) == []
    # accuracy alone: one digit and the end token.
    assert _codes(_grpo(model=hub, max_completion_length=1)) == ["completions_truncated"]
    assert _codes(_grpo(model=hub, max_completion_length=2)) == []


def test_no_truncation_warning_without_a_known_answer_length() -> None:
    spec = parse_job_spec(
        {**ARITH, "reward_funcs": [{"name": "length"}], "config": {"max_completion_length": 1}}
    )
    assert "completions_truncated" not in _codes(spec)


def test_warmup_longer_than_training_warns_unless_the_schedule_is_constant() -> None:
    sft = {"algorithm": "sft", "model": "tiny:llama", "dataset": {"builtin": "chat"}}
    spec = parse_job_spec({**sft, "config": {"max_steps": 3, "warmup_steps": 3}})
    assert [(w.code, w.param) for w in spec_warnings(spec)] == [
        ("warmup_covers_training", "config.warmup_steps")
    ]
    spec = parse_job_spec(
        {**sft, "config": {"max_steps": 3, "warmup_steps": 3, "lr_scheduler_type": "constant"}}
    )
    assert spec_warnings(spec) == []


def test_estimate_with_max_steps_is_exact() -> None:
    spec = parse_job_spec(
        {
            "algorithm": "sft",
            "model": "tiny:llama",
            "dataset": {"builtin": "chat", "num_rows": 40},
            "config": {
                "max_steps": 5,
                "per_device_train_batch_size": 4,
                "gradient_accumulation_steps": 2,
                "max_length": 100,
            },
        }
    )
    est = estimate_job(spec)
    assert (est.steps, est.steps_exact, est.rows, est.sequences_per_step) == (5, True, 40, 8)
    assert est.max_tokens == 5 * 8 * 100


def test_estimate_derives_steps_from_epochs_and_rows() -> None:
    # DPO: 50 rows / batch 4 -> 13 micro-batches per epoch, 2 epochs / accumulation 2 -> 13 steps;
    # each step trains 4 x 2 pairs x 2 sequences.
    spec = parse_job_spec(
        {
            "algorithm": "dpo",
            "model": "tiny:llama",
            "dataset": {"builtin": "preferences"},
            "config": {
                "num_train_epochs": 2,
                "per_device_train_batch_size": 4,
                "gradient_accumulation_steps": 2,
                "max_length": 64,
            },
        }
    )
    est = estimate_job(spec, rows=50)
    assert (est.steps, est.steps_exact, est.rows, est.sequences_per_step) == (13, False, 50, 16)
    assert est.max_tokens == 13 * 16 * 64


def test_estimate_online_counts_prompts_per_generation() -> None:
    # 8 completions per generation / 4 per group = 2 prompts; 10 prompts -> 5 generations of 1 micro-step.
    spec = _grpo(max_completion_length=16, max_prompt_length=32, max_steps=-1, num_train_epochs=1)
    est = estimate_job(spec, rows=10)
    assert (est.steps, est.sequences_per_step, est.max_tokens) == (5, 8, 5 * 8 * 48)


def test_estimate_online_counts_the_generation_of_all_processes() -> None:
    # Dr. GRPO as written on 8 processes: 1 completion each, one prompt of 8 per generation.
    spec = parse_job_spec(
        {
            **ARITH,
            "config": {
                "loss_type": "dr_grpo",
                "per_device_train_batch_size": 1,
                "num_generations": 8,
                "max_steps": -1,
                "num_train_epochs": 1,
            },
            "distributed": {"num_processes": 8},
        }
    )
    assert estimate_job(spec, rows=10).steps == 10  # one prompt per generation and optimizer step


def test_estimate_without_a_row_count_has_no_steps() -> None:
    spec = parse_job_spec({"algorithm": "sft", "model": "tiny:llama", "dataset": {"path": "/data/x.jsonl"}})
    est = estimate_job(spec)
    assert est.steps is None and est.max_tokens is None and "unknown" in est.basis


def test_overlong_punishment_that_can_never_fire_warns() -> None:
    # the paper's 20,480 / 4,096 with an 8-token budget: completions never reach the window at 16,384
    spec = parse_job_spec(
        {
            **ARITH,
            "reward_funcs": [
                {"name": "accuracy"},
                {"name": "soft_overlong_punishment", "max_completion_len": 20480, "soft_punish_cache": 4096},
            ],
            "config": {"per_device_train_batch_size": 8, "num_generations": 4, "max_completion_length": 8},
        }
    )
    (w,) = [w for w in spec_warnings(spec) if w.code == "overlong_punishment_never_fires"]
    assert w.param == "reward_funcs.1.max_completion_len"
    assert "16384" in w.message and "max_completion_length=8" in w.message
    derived = parse_job_spec(
        {
            **ARITH,
            "reward_funcs": [{"name": "soft_overlong_punishment"}],
            "config": {"max_completion_length": 8},
        }
    )
    assert "overlong_punishment_never_fires" not in _codes(derived)


def test_fields_that_do_nothing_here_warn_naming_the_field() -> None:
    bco = {"algorithm": "bco", "model": "tiny:llama", "dataset": {"builtin": "unpaired"}}
    gold = {
        "algorithm": "gold",
        "model": "tiny:llama",
        "dataset": {"builtin": "chat"},
        "config": {"teacher_model_name_or_path": "tiny:llama"},
    }
    assert spec_warnings(parse_job_spec(bco)) == []
    assert spec_warnings(parse_job_spec(gold)) == []
    (udm,) = spec_warnings(parse_job_spec({**bco, "config": {"max_density_ratio": 5.0}}))
    assert (udm.code, udm.param) == ("field_has_no_effect", "config.max_density_ratio")
    assert "UDM" in udm.message
    (uld,) = spec_warnings(
        parse_job_spec({**gold, "config": {**gold["config"], "uld_crossentropy_weight": 0.5}})
    )
    assert (uld.code, uld.param) == ("field_has_no_effect", "config.uld_crossentropy_weight")
    # a resolved spec (every default written out) warns about nothing more
    resolved = parse_job_spec(parse_job_spec(bco).model_dump(mode="json"))
    assert spec_warnings(resolved) == []


def test_fields_the_platform_owns_are_flagged_as_ignored() -> None:
    chat = {"algorithm": "sft", "model": "tiny:llama", "dataset": {"builtin": "chat"}}
    spec = parse_job_spec({**chat, "config": {"report_to": "wandb", "output_dir": "out"}})
    assert [(w.code, w.param) for w in spec_warnings(spec)] == [
        ("field_ignored", "config.report_to"),
        ("field_ignored", "config.output_dir"),
    ]
    assert _codes(parse_job_spec({**chat, "config": {"report_to": "none"}})) == []
