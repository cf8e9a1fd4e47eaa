"""Every shipped preset that a CPU worker runs in one process trains at its smallest scale: the job finishes,
every metric is finite, some optimizer step has a non-zero gradient, online presets scored by the sweep's
reward see rewards that differ within a group, and the final model reloads.

Each preset is merged with a tiny request the way the API merges it (`apply_preset`): only scale keys
(batch, steps, lengths, learning rate) change, plus the stand-ins a CPU test needs: `tiny:llama` for a hub
or placeholder teacher, and a reward with variance in every group where the preset does not fix its
rewards (the built-in accuracy reward is almost always 0 for a random-weight model, which would train
nothing). Presets that need vLLM or several processes are covered elsewhere (rollout and ZeRO tests).
"""

from __future__ import annotations

import math

import pytest

from engine.presets import apply_preset, load_presets
from engine.presets.runnable import STAND_IN_VISION_MODEL, VISION_ALGORITHMS
from engine.spec.job import BUILTIN_DATASET_ALGORITHMS, ONLINE_ALGORITHMS
from tests.engine.conftest import run_inprocess

pytestmark = pytest.mark.slow

NEEDS_VLLM = {"truncated-is", "masked-is", "sequence-is"}
NEEDS_PROCESSES = {"zero"}
SWEPT = sorted(set(load_presets()) - NEEDS_VLLM - NEEDS_PROCESSES)
# the rewards of these presets are part of their method (DAPO's overlong punishment, MiniLLM's constant)
FIXED_REWARDS = {pid for pid, p in load_presets().items() if "reward_funcs" in p.job}


def test_every_preset_is_swept_or_covered_elsewhere():
    assert set(load_presets()) == set(SWEPT) | NEEDS_VLLM | NEEDS_PROCESSES


def _request(preset_id: str, reward: list[dict]) -> dict:
    preset = load_presets()[preset_id]
    algorithm = preset.algorithm
    fits = [name for name, algos in BUILTIN_DATASET_ALGORITHMS.items() if algorithm in algos]
    model = STAND_IN_VISION_MODEL if algorithm in VISION_ALGORITHMS else "tiny:llama"
    config: dict = {"max_steps": 2, "learning_rate": 1e-3, "save_steps": 100, "logging_steps": 1}
    config |= {"per_device_train_batch_size": 4, "gradient_accumulation_steps": 1}
    request: dict = {"model": model, "dataset": {"builtin": fits[0], "num_rows": 32}}
    if algorithm in ONLINE_ALGORITHMS - {"gkd", "gold"}:
        keep = preset.config.get("num_remains_in_group")
        groups = 2 * keep if keep else 4
        config |= {"num_generations": groups, "per_device_train_batch_size": groups}
        config["max_completion_length"] = 24 if preset.config.get("mask_truncated_completions") else 8
        if preset_id not in FIXED_REWARDS:
            request["reward_funcs"] = reward
    else:
        config["max_length"] = 64
    if algorithm == "gkd":
        config["max_new_tokens"] = 8
    if algorithm == "gold":
        config["max_completion_length"] = 8
    if "teacher_model_name_or_path" in preset.config:
        config["teacher_model_name_or_path"] = "tiny:llama"
    request["config"] = config
    return apply_preset(preset, request)


@pytest.mark.parametrize("preset_id", SWEPT)
def test_preset_trains_at_its_smallest_scale(tmp_path, preset_id, hash_reward):
    spec = _request(preset_id, hash_reward)
    code, events = run_inprocess(spec, tmp_path)
    errors = [e for e in events if e["type"] == "error"]
    assert code == 0 and not errors, errors
    assert events[-1]["type"] == "done"
    metrics = [e["metrics"] for e in events if e["type"] == "metrics"]
    assert len(metrics) == 2
    bad = {k: v for m in metrics for k, v in m.items() if not math.isfinite(v)}
    assert not bad, bad
    assert any(m["train/grad_norm"] > 0 for m in metrics), metrics  # some update moved the weights
    if spec["algorithm"] in ONLINE_ALGORITHMS - {"gkd", "gold"} and preset_id not in FIXED_REWARDS:
        assert any(m["rollout/reward_std"] > 0 for m in metrics), metrics
    _reload(tmp_path / "final")


def _reload(final) -> None:
    """The final model loads back with its weights: an adapter, a reward model or a policy."""
    if (final / "adapter_config.json").exists():
        from safetensors.torch import load_file

        assert load_file(final / "adapter_model.safetensors")
        return
    import json

    from engine.models import load_model

    if "SequenceClassification" in json.loads((final / "config.json").read_text())["architectures"][0]:
        from transformers import AutoModelForSequenceClassification

        model = AutoModelForSequenceClassification.from_pretrained(final)
    else:
        model = load_model(str(final))
    assert all(math.isfinite(p.abs().sum().item()) for p in model.parameters())
