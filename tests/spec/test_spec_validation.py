"""Spec validation: what a job must look like, and the errors that name the field to fix."""

from __future__ import annotations

import subprocess
import sys

import pytest
from pydantic import ValidationError

from engine.spec import RUNNABLE_ALGORITHMS, parse_job_spec, resolve
from engine.spec.base import SpecError

BASE = {"model": "tiny:llama", "dataset": {"builtin": "arithmetic"}}
PREF = {"model": "tiny:llama", "dataset": {"builtin": "preferences"}}
CHAT = {"model": "tiny:llama", "dataset": {"builtin": "chat"}}


def grpo(**config):
    return {**BASE, "algorithm": "grpo", "config": config}


def error_of(raw) -> tuple[tuple, str, str | None]:
    with pytest.raises(ValidationError) as info:
        parse_job_spec(raw)
    err = info.value.errors()[0]
    ctx_err = (err.get("ctx") or {}).get("error")
    return err["loc"], err["msg"], getattr(ctx_err, "field", None)


def test_minimal_job_resolves_every_default():
    resolved = resolve(parse_job_spec({**CHAT, "algorithm": "sft"}))
    assert resolved["config"]["learning_rate"] == 2e-5
    assert resolved["config"]["loss_type"] == "nll"
    assert resolved["hardware"] == {"accelerator": "cpu", "gpus": 0}


def test_a_pasted_lora_config_keeps_its_task_type_when_it_fits_the_algorithm():
    lora = {"r": 8, "lora_alpha": 16, "target_modules": "all-linear", "task_type": "CAUSAL_LM"}
    assert (
        parse_job_spec({**CHAT, "algorithm": "sft", "peft_config": lora}).peft_config.task_type == "CAUSAL_LM"
    )
    reward = {**PREF, "algorithm": "reward", "peft_config": {**lora, "task_type": "SEQ_CLS"}}
    assert parse_job_spec(reward).peft_config.task_type == "SEQ_CLS"
    loc, msg, field = error_of({**CHAT, "algorithm": "sft", "peft_config": {**lora, "task_type": "SEQ_CLS"}})
    assert field == "peft_config.task_type" and "CAUSAL_LM" in msg


def test_resolved_config_round_trips():
    spec = parse_job_spec(grpo(loss_type="grpo", beta=0.04, scale_rewards=True))
    again = parse_job_spec(resolve(spec))
    assert resolve(again) == resolve(spec)
    assert again.model_copy(update={"config": again.config.model_copy(update={"precision": None})}) == spec
    assert again.config.scale_rewards == "group" and again.config.precision == "float32"


def test_unknown_top_level_field_is_named():
    loc, msg, _ = error_of({**grpo(), "bogus": 1})
    assert loc[-1] == "bogus" and "Extra inputs" in msg


def test_unknown_config_field_is_named():
    loc, _, _ = error_of(grpo(learning_rat=1e-5))
    assert loc[-2:] == ("config", "learning_rat")


def test_unknown_loss_type_is_named():
    loc, msg, _ = error_of(grpo(loss_type="ppo"))
    assert loc[-1] == "loss_type" and "dapo" in msg


def test_unknown_dpo_loss_type_lists_known_names():
    _, msg, field = error_of({**PREF, "algorithm": "dpo", "config": {"loss_type": ["sigmoid", "nope"]}})
    assert field == "loss_type" and "'nope'" in msg and "apo_zero" in msg


def test_steps_per_generation_must_align_with_accumulation():
    _, msg, field = error_of(grpo(steps_per_generation=3, gradient_accumulation_steps=2))
    assert field == "steps_per_generation" and "multiple" in msg


@pytest.mark.parametrize("spg,ga", [(4, 1), (8, 4), (8, 32), (2, 2)])
def test_steps_per_generation_alignment_accepted(spg, ga):
    parse_job_spec(grpo(steps_per_generation=spg, gradient_accumulation_steps=ga))


def test_vllm_options_need_use_vllm():
    _, _, field = error_of(grpo(vllm_importance_sampling_mode="token_mask"))
    assert field == "vllm_importance_sampling_mode"


def test_colocated_vllm_needs_a_gpu_worker():
    _, msg, field = error_of(grpo(use_vllm=True))
    assert field == "config.vllm_mode" and "GPU" in msg and "'server'" in msg


def test_vllm_server_mode_runs_on_cpu():
    spec = parse_job_spec(grpo(use_vllm=True, vllm_mode="server"))
    assert spec.hardware.accelerator == "cpu" and spec.config.vllm_mode == "server"


def test_max_policy_lag_is_not_negative():
    loc, _, _ = error_of(grpo(max_policy_lag=-1))
    assert loc[-1] == "max_policy_lag"


def test_cispo_needs_explicit_epsilon_high():
    _, msg, field = error_of(grpo(loss_type="cispo"))
    assert field == "epsilon_high" and "5.0" in msg


def test_num_generations_at_least_two():
    _, _, field = error_of(grpo(num_generations=1))
    assert field == "num_generations"


def test_epsilon_high_below_epsilon_rejected():
    _, _, field = error_of(grpo(epsilon=0.2, epsilon_high=0.1))
    assert field == "epsilon_high"


def test_exo_pair_smoothing():
    spec = parse_job_spec({**PREF, "algorithm": "dpo", "config": {"loss_type": "exo_pair"}})
    assert spec.config.effective_label_smoothing == 1e-3
    _, msg, field = error_of(
        {**PREF, "algorithm": "dpo", "config": {"loss_type": "exo_pair", "label_smoothing": 0}}
    )
    assert field == "label_smoothing" and "1e-3" in msg


def test_aot_pair_and_aot_unpaired_both_accepted():
    for name in ("aot_pair", "aot_unpaired"):
        parse_job_spec({**PREF, "algorithm": "dpo", "config": {"loss_type": name}})


@pytest.mark.parametrize(
    "dataset",
    [{}, {"builtin": "arithmetic", "path": "x.jsonl"}, {"builtin": "nope"}],
)
def test_dataset_needs_exactly_one_known_source(dataset):
    with pytest.raises(ValidationError, match="dataset"):
        parse_job_spec({**grpo(), "dataset": dataset})


@pytest.mark.parametrize("model", ["", "bundled:gpt-17", "tiny:transformerxl"])
def test_bad_model_refs_rejected(model):
    with pytest.raises(ValidationError, match="model"):
        parse_job_spec({**grpo(), "model": model})


def test_hardware_selects_queue():
    spec = parse_job_spec({**grpo(), "hardware": {"accelerator": "gpu", "gpus": 8}})
    assert spec.hardware.queue == "gpu-8"
    assert parse_job_spec(grpo()).hardware.queue == "cpu"


def test_reward_weights_must_match_reward_funcs():
    raw = {**grpo(reward_weights=[1.0, 0.5]), "reward_funcs": [{"name": "accuracy"}]}
    _, _, field = error_of(raw)
    assert field == "config.reward_weights"


def test_runnable_algorithms_are_a_subset():
    assert {"sft", "dpo", "grpo"} <= RUNNABLE_ALGORITHMS


def test_spec_error_names_field():
    assert SpecError("beta", "too big").field == "beta"


def test_engine_spec_import_does_not_import_torch():
    code = "import sys, engine.spec, engine.presets; engine.presets.load_presets(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_builtin_dataset_must_fit_the_algorithm():
    _, msg, field = error_of({**BASE, "algorithm": "sft"})
    assert field == "dataset.builtin" and "'chat'" in msg
    parse_job_spec({**BASE, "algorithm": "sft", "dataset": {"builtin": "chat"}})


def test_unsupported_names_what_the_engine_cannot_do_yet():
    from engine.spec import unsupported

    assert unsupported(parse_job_spec({**CHAT, "algorithm": "sft"})) is None
    zero = {"distributed_type": "DEEPSPEED", "num_processes": 2, "deepspeed_config": {"zero_stage": 3}}
    spec = parse_job_spec(
        {**CHAT, "algorithm": "sft", "distributed": zero, "hardware": {"accelerator": "gpu", "gpus": 2}}
    )
    assert unsupported(spec) is None  # ZeRO-3 over 2 processes trains
    papo = {"algorithm": "papo", "dataset": {"builtin": "shapes"}}
    assert unsupported(parse_job_spec({**papo, "model": "tiny:vlm"})) is None
    assert unsupported(parse_job_spec({**papo, "model": "tiny:llama"})).field == "model"  # text-only model


@pytest.mark.parametrize("teacher", ["teacher-model", "Teacher_Model", "<teacher>", "path/to/model"])
def test_placeholder_model_ids_validate_but_are_refused(teacher):
    from engine.spec import unsupported

    gkd = {"algorithm": "gkd", "model": "tiny:llama", "dataset": {"builtin": "chat"}}
    spec = parse_job_spec(
        {**gkd, "config": {"teacher_model_name_or_path": teacher}}
    )  # the example as written
    problem = unsupported(spec)
    assert problem.field == "config.teacher_model_name_or_path"
    assert "placeholder" in str(problem) and "name a real model" in str(problem)
    real = parse_job_spec({**gkd, "config": {"teacher_model_name_or_path": "Qwen/Qwen3-1.7B"}})
    assert unsupported(real) is None
    assert unsupported(parse_job_spec({**CHAT, "algorithm": "sft", "model": "gpt2"})) is None  # a bare hub id


def _distributed(algorithm: str, dataset: str, distributed: dict, **config) -> object:
    return parse_job_spec(
        {
            "algorithm": algorithm,
            "model": "tiny:llama-hd32" if config.get("use_vllm") else "tiny:llama",  # vLLM: wide heads
            "dataset": {"builtin": dataset},
            "config": config,
            "distributed": distributed,
        }
    )


DS = {"distributed_type": "DEEPSPEED", "num_processes": 2}


@pytest.mark.parametrize(
    ("algorithm", "dataset", "distributed", "config", "field"),
    [
        ("papo", "shapes", {"num_processes": 2}, {"num_generations": 4}, "distributed"),
        (
            "sft",
            "chat",
            {**DS, "deepspeed_config": {"zero_stage": 3, "zero3_init_flag": True}},
            {},
            "distributed.deepspeed_config.zero3_init_flag",
        ),
        (
            "sft",
            "chat",
            {**DS, "deepspeed_config": {"zero_stage": 2, "offload_param_device": "cpu"}},
            {},
            "distributed.deepspeed_config.offload_param_device",
        ),
        (
            "sft",
            "chat",
            {**DS, "deepspeed_config": {"zero_stage": 0, "offload_optimizer_device": "cpu"}},
            {},
            "distributed.deepspeed_config.offload_optimizer_device",
        ),
        ("dpo", "preferences", DS, {"sync_ref_model": True}, "config.sync_ref_model"),
        ("sft", "chat", DS, {"bema": {}}, "config.bema"),
        (
            "grpo",
            "arithmetic",
            {"num_processes": 2},
            {
                "num_generations": 4,
                "per_device_train_batch_size": 2,
                "num_remains_in_group": 2,
                "group_filter": "shortest",
            },
            "config.num_remains_in_group",
        ),
        (
            "grpo",
            "arithmetic",
            {"num_processes": 2},
            {"num_generations": 8, "per_device_train_batch_size": 3},
            "config.per_device_train_batch_size",
        ),
    ],
)
def test_every_multi_process_refusal_names_its_field(algorithm, dataset, distributed, config, field):
    from engine.spec import unsupported

    problem = unsupported(_distributed(algorithm, dataset, distributed, **config))
    assert problem is not None and problem.field == field, problem


@pytest.mark.parametrize(
    ("algorithm", "dataset", "distributed", "config"),
    [
        ("sft", "chat", {"num_processes": 2}, {}),
        ("kto", "preferences", {"num_processes": 2}, {}),
        ("bco", "unpaired", {**DS, "deepspeed_config": {"zero_stage": 2}}, {}),
        ("dpo", "preferences", {**DS, "deepspeed_config": {"zero_stage": 3}}, {}),
        ("dpo", "preferences", {"num_processes": 2}, {"sync_ref_model": True}),
        ("grpo", "arithmetic", {**DS, "deepspeed_config": {"zero_stage": 2}}, {"num_generations": 4}),
        ("grpo", "arithmetic", {**DS, "deepspeed_config": {"zero_stage": 3}}, {"num_generations": 4}),
        ("grpo", "arithmetic", {"num_processes": 2}, {"num_generations": 4, "top_entropy_quantile": 0.2}),
        # Dr. GRPO as written: one completion per process, a group of 8 spread over 8 processes
        (
            "grpo",
            "arithmetic",
            {"num_processes": 8},
            {"loss_type": "dr_grpo", "per_device_train_batch_size": 1, "num_generations": 8},
        ),
        (
            "rloo",
            "arithmetic",
            {"num_processes": 2},
            {"per_device_train_batch_size": 2, "num_generations": 4},
        ),
        ("minillm", "arithmetic", {"num_processes": 2}, {"teacher_model_name_or_path": "tiny:llama"}),
        (
            "minillm",
            "arithmetic",
            {**DS, "deepspeed_config": {"zero_stage": 3}},
            {"teacher_model_name_or_path": "tiny:llama"},
        ),
        ("grpo", "arithmetic", {"num_processes": 2}, {"num_generations": 4, "dynamic_sampling": True}),
        # one vLLM server that every process samples from
        (
            "grpo",
            "arithmetic",
            {**DS, "deepspeed_config": {"zero_stage": 3}},
            {"num_generations": 4, "use_vllm": True, "vllm_mode": "server"},
        ),
        (
            "rloo",
            "arithmetic",
            {"num_processes": 2},
            {"num_generations": 4, "use_vllm": True, "vllm_mode": "server"},
        ),
        (
            "gfpo",
            "arithmetic",
            {"num_processes": 2},
            {"num_generations": 4, "num_remains_in_group": 2, "group_filter": "shortest"},
        ),
        ("gkd", "chat", {"num_processes": 2}, {"teacher_model_name_or_path": "tiny:llama"}),
        (
            "gold",
            "chat",
            {**DS, "deepspeed_config": {"zero_stage": 3}},
            {"teacher_model_name_or_path": "tiny:llama", "lmbda": 0.5, "seq_kd": True},
        ),
        (
            "sft",
            "chat",
            {
                **DS,
                "deepspeed_config": {
                    "zero_stage": 3,
                    "offload_param_device": "cpu",
                    "offload_optimizer_device": "cpu",
                },
            },
            {},
        ),
    ],
)
def test_multi_process_jobs_that_train(algorithm, dataset, distributed, config):
    from engine.spec import unsupported

    assert unsupported(_distributed(algorithm, dataset, distributed, **config)) is None


def test_colocated_vllm_is_refused_with_several_processes():
    from engine.spec import unsupported

    spec = {
        "algorithm": "grpo",
        "model": "tiny:llama-hd32",
        "dataset": {"builtin": "arithmetic"},
        "config": {"num_generations": 4, "use_vllm": True, "vllm_mode": "colocate"},
        "hardware": {"accelerator": "gpu", "gpus": 2},
    }
    assert unsupported(parse_job_spec(spec)) is None  # one process: the engine lives in the trainer
    problem = unsupported(parse_job_spec({**spec, "distributed": {"num_processes": 2}}))
    assert problem is not None and problem.field == "config.vllm_mode", problem
    assert "vllm_mode 'server'" in str(problem) and "distributed.num_processes 1" in str(problem)


def test_groups_must_fit_the_generation_of_all_processes():
    from engine.spec import unsupported

    # The Dr. GRPO entry (batch 1 per device, 8 generations) assumes 8 devices: valid, but not on one.
    dr_grpo = grpo(loss_type="dr_grpo", per_device_train_batch_size=1, num_generations=8)
    problem = unsupported(parse_job_spec(dr_grpo))
    assert problem.field == "config.per_device_train_batch_size" and "multiple of 8" in str(problem)
    assert "distributed.num_processes" in str(problem)
    assert unsupported(parse_job_spec({**dr_grpo, "distributed": {"num_processes": 8}})) is None
    assert unsupported(parse_job_spec({**dr_grpo, "distributed": {"num_processes": 4}})) is not None
    assert unsupported(parse_job_spec(grpo(per_device_train_batch_size=8, num_generations=8))) is None
