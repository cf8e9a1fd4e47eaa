"""Presets do what their notes say: the values they resolve to, and the notes' claims about them."""

from __future__ import annotations

import pydantic
import pytest

from engine.presets import apply_preset, load_presets
from engine.spec import parse_job_spec, resolve

GPU = {"hardware": {"accelerator": "gpu", "gpus": 1}}


def preset_spec(preset_id: str, **request):
    request = {"model": "tiny:llama", "dataset": {"builtin": "arithmetic"}, **request}
    return parse_job_spec(apply_preset(load_presets()[preset_id], request))


def test_dr_grpo_removes_the_std_normalisation_it_promises():
    spec = preset_spec("dr-grpo")
    assert spec.config.scale_rewards == "none"
    assert spec.config.loss_type == "dr_grpo"
    assert "scale_rewards: none" in load_presets()["dr-grpo"].notes


def test_deepseekmath_note_matches_what_its_values_do():
    from engine.algorithms.grpo import Plan

    preset = load_presets()["grpo-deepseekmath"]
    plan = Plan.from_config(preset_spec("grpo-deepseekmath").config)
    # 4 x 16 completions per generation, 128 micro-steps per optimizer step = 8 whole generations
    assert plan.batch_size * plan.steps_per_generation == 64
    assert plan.grad_accum // plan.steps_per_generation == 8
    assert not plan.needs_old_logps  # every update is on-policy
    assert "on-policy" in preset.notes
    # the note's recipe for the report's 16 updates per rollout of 8,192 outputs
    paper = Plan.from_config(preset_spec("grpo-deepseekmath", config={"steps_per_generation": 2048}).config)
    assert paper.batch_size * paper.steps_per_generation == 8192
    assert paper.steps_per_generation // paper.grad_accum == 16 and paper.needs_old_logps
    assert "steps_per_generation: 2048" in preset.notes


@pytest.mark.parametrize("preset_id", ["truncated-is", "masked-is"])
def test_importance_sampling_cap_is_stored_once(preset_id):
    spec = preset_spec(preset_id)
    config = resolve(spec)["config"]
    assert "vllm_importance_sampling_cap" not in config
    assert config["vllm_importance_sampling_clip_max"] == 2.0


def test_the_older_cap_name_is_stored_as_clip_max():
    raw = {
        "algorithm": "grpo",
        "model": "tiny:llama",
        "dataset": {"builtin": "arithmetic"},
        **GPU,
        "config": {"use_vllm": True, "vllm_importance_sampling_cap": 2.0},
    }
    spec = parse_job_spec(raw)
    assert spec.config.vllm_importance_sampling_clip_max == 2.0
    assert resolve(spec)["config"]["vllm_importance_sampling_clip_max"] == 2.0
    assert parse_job_spec(resolve(spec)).config.vllm_importance_sampling_clip_max == 2.0  # round trip

    from engine.losses import PolicyLossConfig

    assert PolicyLossConfig.from_spec(spec.config).vllm_is_clip_max == 2.0
    raw["config"]["vllm_importance_sampling_clip_max"] = 3.0
    with pytest.raises(pydantic.ValidationError, match="set only vllm_importance_sampling_clip_max"):
        parse_job_spec(raw)


def _overlong(spec):
    (func,) = [f for f in spec.reward_funcs if f.name == "soft_overlong_punishment"]
    return func.max_completion_len, func.soft_punish_cache


@pytest.mark.parametrize("preset_id", ["dapo", "entropy-80-20"])
def test_overlong_punishment_follows_max_completion_length(preset_id):
    assert _overlong(preset_spec(preset_id)) == (20480, 4096)  # the paper's values at the paper's budget
    small = preset_spec(preset_id, config={"max_completion_length": 8, "per_device_train_batch_size": 16})
    assert _overlong(small) == (8, 1)  # punished from 7 tokens on, -1 at the limit
    assert resolve(small)["reward_funcs"][1]["max_completion_len"] == 8
    from engine.spec.warnings import spec_warnings

    assert "overlong_punishment_never_fires" not in [w.code for w in spec_warnings(small)]


def test_explicit_overlong_lengths_are_kept_and_checked():
    body = {"algorithm": "grpo", "model": "tiny:llama", "dataset": {"builtin": "arithmetic"}}
    spec = parse_job_spec(
        {**body, "reward_funcs": [{"name": "soft_overlong_punishment", "max_completion_len": 10}]}
    )
    assert _overlong(spec) == (10, None)  # an explicit length keeps the hard cut (cache 0)
    too_big = {"name": "soft_overlong_punishment", "max_completion_len": 10, "soft_punish_cache": 11}
    with pytest.raises(pydantic.ValidationError, match="soft_punish_cache=11 must not exceed"):
        parse_job_spec({**body, "reward_funcs": [too_big]})


@pytest.mark.parametrize("preset_id", ["dapo", "entropy-80-20"])
def test_dapo_presets_sample_dynamically_and_say_so(preset_id):
    assert preset_spec(preset_id).config.dynamic_sampling is True
    assert "dynamic" in load_presets()[preset_id].notes.lower()


def test_alphapo_stores_the_nll_weight_it_trains_with():
    """AlphaPO has no NLL term: the stored config says cpo_alpha 0, the loss gets 0, and a non-zero value is
    refused instead of being ignored."""
    from engine.losses import CPOLossConfig

    spec = preset_spec("alphapo", dataset={"builtin": "preferences"})
    assert resolve(spec)["config"]["cpo_alpha"] == 0.0
    assert CPOLossConfig.from_spec(spec.config).cpo_alpha == 0.0
    assert "no NLL term" in load_presets()["alphapo"].notes
    with pytest.raises(pydantic.ValidationError, match="cpo_alpha: loss_type 'alphapo' has no NLL term"):
        preset_spec("alphapo", dataset={"builtin": "preferences"}, config={"cpo_alpha": 1.0})
    simpo = preset_spec(
        "alphapo", dataset={"builtin": "preferences"}, config={"loss_type": "simpo", "cpo_alpha": 1.0}
    )
    assert CPOLossConfig.from_spec(simpo.config).cpo_alpha == 1.0  # the NLL term stays where asked for


def test_minillm_learns_from_its_teacher_only():
    """The entry gives MiniLLM no reward function: the reward is a constant 1.0, whose group advantage is 0,
    so no task reward (such as the default accuracy) leaks into the distillation."""
    import torch

    from engine.advantages import group_advantages
    from engine.rewards import build_reward_funcs

    spec = preset_spec("minillm", config={"teacher_model_name_or_path": "tiny:llama"})
    assert [r.name for r in spec.reward_funcs] == ["constant"]
    (reward,) = build_reward_funcs(spec.reward_funcs)
    scores = reward(
        prompts=["a"] * 4, completions=["1", "22", "", "x"], completion_ids=[[1], [2, 2], [], [3]]
    )
    assert scores == [1.0] * 4
    advantages, _ = group_advantages(torch.tensor(scores), num_generations=2, scale_rewards="group")
    assert torch.equal(advantages, torch.zeros(4))
    assert "constant 1.0" in load_presets()["minillm"].notes
