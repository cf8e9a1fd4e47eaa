"""GRPO learns: on small sums (answers 0-4) the tiny random model's accuracy reward rises within 30 steps.

The model starts by emitting random characters (a right answer ~3% of the time); a high learning rate and
three-token completions let it learn to answer with digits, and the likely ones, within a few hundred
sampled completions. Runs in ~15-40 s on 2 CPU cores.
"""

from __future__ import annotations

import json

import pytest

from engine.data.arithmetic import arithmetic_rows
from tests.engine.conftest import run_inprocess

STEPS = 30


@pytest.mark.slow
def test_grpo_mean_reward_rises_on_small_sums(tmp_path):
    data = tmp_path / "sums.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in arithmetic_rows(256, seed=0, max_operand=2)))
    spec = {
        "algorithm": "grpo",
        "model": "tiny:llama",
        "dataset": {"path": str(data)},
        "reward_funcs": [{"name": "accuracy"}],
        "config": {
            "per_device_train_batch_size": 64,  # 8 prompts x 8 completions per step
            "num_generations": 8,
            "max_completion_length": 3,
            "max_prompt_length": 47,  # keeps " a+b? Answer with the number only." + the chat suffix
            "learning_rate": 1e-2,
            "lr_scheduler_type": "constant",
            "max_steps": STEPS,
            "logging_steps": 1,
            "save_steps": 1000,
            "seed": 5,
        },
    }
    code, events = run_inprocess(spec, tmp_path / "out")
    assert code == 0, [e for e in events if e["type"] == "error"]
    rewards = [e["metrics"]["rollout/reward_mean"] for e in events if e["type"] == "metrics"]
    assert len(rewards) == STEPS
    first, last = sum(rewards[:5]) / 5, sum(rewards[-10:]) / 10
    assert first < 0.1, rewards
    assert last > first + 0.05 and last > 0.1, rewards
