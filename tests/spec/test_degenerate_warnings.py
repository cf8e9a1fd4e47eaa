"""Dry-run warnings for settings under which training learns nothing."""

from __future__ import annotations

from engine.presets import apply_preset, get_preset
from engine.spec import parse_job_spec
from engine.spec.warnings import spec_warnings

GRPO = {"algorithm": "grpo", "model": "tiny:llama", "dataset": {"builtin": "arithmetic"}}


def _codes(raw: dict) -> set[str]:
    return {w.code for w in spec_warnings(parse_job_spec(raw))}


def test_masking_truncated_completions_that_all_truncate_is_a_warning() -> None:
    cfg = {"max_completion_length": 1, "mask_truncated_completions": True, "per_device_train_batch_size": 2}
    assert "every_update_masked" in _codes({**GRPO, "config": cfg})
    assert "every_update_masked" not in _codes(
        {**GRPO, "config": {**cfg, "mask_truncated_completions": False}}
    )


def test_the_old_readme_dapo_example_warns() -> None:
    request = {
        "preset": "dapo",
        "model": "tiny:llama",
        "dataset": {"builtin": "arithmetic"},
        "config": {
            "per_device_train_batch_size": 8,
            "num_generations": 4,
            "max_completion_length": 8,
            "max_steps": 5,
        },
    }
    raw = apply_preset(get_preset("dapo"), request)
    assert "every_update_masked" in {w.code for w in spec_warnings(parse_job_spec(raw))}
