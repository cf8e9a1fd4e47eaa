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


def test_a_bema_run_shorter_than_its_first_update_warns() -> None:
    """The bema preset updates every 400 steps: a shorter run would save the starting weights as final/bema."""

    def codes(**config) -> set[str]:
        request = {"model": "tiny:llama", "dataset": {"builtin": "chat"}, "config": config}
        return {w.code for w in spec_warnings(parse_job_spec(apply_preset(get_preset("bema"), request)))}

    assert "bema_never_updates" in codes(max_steps=399)
    assert "bema_never_updates" not in codes(max_steps=400)  # the first update lands on the last step
    assert "bema_never_updates" not in codes(max_steps=6, bema={"update_freq": 3})
    assert "bema_never_updates" in codes(max_steps=6, bema={"update_freq": 3, "update_after": 4})
    assert "bema_never_updates" not in codes(max_steps=-1, num_train_epochs=1)  # length unknown up front
