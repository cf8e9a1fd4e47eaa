"""GFPO (arXiv 2508.09726) through the GRPO loop: the `gfpo` preset, scaled down, trains on
tiny:llama; each group of G samples keeps its k shortest completions, and only those k get log-probs and
advantages (group mean and std over the k survivors)."""

from __future__ import annotations

import io
import re
import statistics

import pytest

from engine.algorithms.common import TrainContext
from engine.algorithms.grpo import GRPOTrainer
from engine.events import EventWriter
from engine.presets import apply_preset, get_preset
from engine.spec import RUNNABLE_ALGORITHMS, parse_job_spec
from tests.engine.conftest import metrics_by_step, run_inprocess

G, K = 4, 2  # the preset samples 16 and keeps 8; scaled down to 4 and 2


def gfpo_spec(reward_funcs: list[dict], **config) -> dict:
    request = {
        "model": "tiny:llama",
        "dataset": {"builtin": "arithmetic", "num_rows": 32},
        "reward_funcs": reward_funcs,
        "config": {
            "num_generations": G,
            "num_remains_in_group": K,
            "per_device_train_batch_size": 8,  # 2 prompts x 4 samples per generation
            "max_completion_length": 6,
            "max_prompt_length": 64,
            "max_steps": 2,
            "learning_rate": 1e-3,
            "logging_steps": 1,
            "save_steps": 100,
            **config,
        },
    }
    return apply_preset(get_preset("gfpo"), request)


def test_gfpo_is_runnable_and_the_preset_filters_by_length():
    spec = parse_job_spec(gfpo_spec([{"name": "accuracy"}]))
    assert spec.algorithm == "gfpo" and "gfpo" in RUNNABLE_ALGORITHMS
    assert (spec.config.num_generations, spec.config.num_remains_in_group) == (G, K)
    assert spec.config.group_filter == "shortest"  # from the preset


def test_gfpo_preset_trains_two_steps_on_the_kept_completions(tmp_path, hash_reward):
    code, events = run_inprocess(gfpo_spec(hash_reward), tmp_path)
    assert code == 0, events[-1]
    assert events[-1]["type"] == "done" and events[-1]["step"] == 2
    metrics = metrics_by_step(events)
    assert sorted(metrics) == [1, 2]
    for m in metrics.values():
        assert m["rollout/sampled_completion_length_mean"] >= m["rollout/completion_length_mean"]
        assert m["train/grad_norm"] > 0
    counters = next(e["message"] for e in events if e["type"] == "log" and "counters:" in e["message"])
    numbers = dict(re.findall(r"(\w+)=(\d+)", counters))
    # two generations of 2 prompts x 4 samples; 2 of every 4 kept and given advantages
    assert (numbers["completions_sampled"], numbers["completions_scored"]) == ("16", "8")


def test_advantages_are_computed_on_the_survivors_only(tmp_path, hash_reward):
    spec = parse_job_spec(gfpo_spec(hash_reward))
    t = GRPOTrainer(spec, TrainContext.for_spec(spec, tmp_path, events=EventWriter(io.StringIO())))
    sampled = []
    real = t._sample

    def spy(rows):
        part = real(rows)
        sampled.append(part)
        return part

    t._sample = spy
    rollout = t.generate()
    (part,) = sampled
    assert len(part) == 2 * G and len(rollout) == 2 * K
    lengths = [len(ids) for ids in part.ids]
    rewards = part.rewards[:, 0].tolist()
    kept = _kept(lengths)
    expected_adv = []
    for g in range(2):
        group = [rewards[r] for r in kept[g * K : (g + 1) * K]]
        mean, std = statistics.mean(group), statistics.stdev(group)
        expected_adv += [(r - mean) / (std + 1e-4) for r in group]
    assert rollout.completion_lengths == [lengths[r] for r in kept]
    assert [s["reward"] for s in rollout.samples] == pytest.approx([rewards[r] for r in kept])
    assert rollout.advantages.tolist() == pytest.approx(expected_adv, abs=1e-5)
    assert t.counters.completions_sampled == 2 * G and t.counters.completions_scored == 2 * K


def _kept(lengths: list[int]) -> list[int]:
    """The k shortest rows of each group of G (ties: the earlier row), in row order."""
    rows = []
    for g in range(len(lengths) // G):
        rows += sorted(sorted(range(g * G, (g + 1) * G), key=lambda r: (lengths[r], r))[:K])
    return rows
