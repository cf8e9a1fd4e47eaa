"""MiniLLM relaxes exactly one GRPO rule (a single generation per prompt); every other GRPO check holds."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from engine.spec.grpo import GRPOConfig, MiniLLMConfig

TEACHER = {"teacher_model_name_or_path": "tiny:llama"}


def field_of(cls, **config) -> str:
    with pytest.raises(ValidationError) as info:
        cls(**config)
    return info.value.errors()[0]["ctx"]["error"].field


def test_minillm_accepts_one_generation_where_grpo_refuses():
    assert MiniLLMConfig(num_generations=1, **TEACHER).num_generations == 1
    assert field_of(GRPOConfig, num_generations=1) == "num_generations"


@pytest.mark.parametrize(
    ("config", "field"),
    [
        ({"loss_type": "grpo", "epsilon": 0.2, "epsilon_high": 0.1}, "epsilon_high"),
        ({"loss_type": "cispo"}, "epsilon_high"),
        ({"delta": 1.01}, "delta"),
        ({"num_remains_in_group": 2, "group_filter": None}, "group_filter"),
    ],
    ids=[
        "epsilon_high_below_epsilon",
        "cispo_without_epsilon_high",
        "delta_inside_clip_band",
        "gfpo_no_filter",
    ],
)
def test_minillm_keeps_every_other_grpo_rule(config, field):
    assert field_of(GRPOConfig, **config) == field
    assert field_of(MiniLLMConfig, **config, **TEACHER) == field
