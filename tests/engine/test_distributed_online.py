"""Online algorithms over several processes (gloo, CPU, torchrun) against one process on the same global
batch, with completions sampled under per-completion seeds (`seeded_rollout.py`), so both runs score the
same completions.

A generation of 3 prompts x 4 completions: one process holds all 12, two processes 6 each, so the middle
group straddles the ranks; its statistics come from the gathered rewards. Tolerances: advantages atol 1e-5
(float32), the first step's loss rel 1e-5 (float32 sums in another order), rollout statistics rel 1e-6,
weight changes atol 1e-6 at SGD lr 1e-1 (the gradients agree).
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import pytest

from tests.engine.conftest import metrics_by_step
from tests.engine.test_distributed import SGD, assert_same_gradients, run_procs, run_seeded, zero

pytestmark = pytest.mark.slow

ROLLOUT_STATS = (
    "rollout/reward_mean",
    "rollout/reward_std",
    "rollout/frac_reward_zero_std",
    "rollout/completion_length_mean",
    "rollout/completion_length_min",
    "rollout/completion_length_max",
    "rollout/clipped_ratio",
)


def straddling(reward_funcs: list[dict[str, Any]], **config: Any) -> dict[str, Any]:
    return {
        "algorithm": "grpo",
        "model": "tiny:llama",
        "dataset": {"builtin": "arithmetic", "num_rows": 6},
        "config": {
            "max_steps": 1,
            "per_device_train_batch_size": 12,
            "num_generations": 4,
            "max_completion_length": 6,
            "logging_steps": 1,
            "save_steps": 100,
            **SGD,
            **config,
        },
        "reward_funcs": reward_funcs,  # a reward that differs between completions of a group
    }


def halved(spec: dict[str, Any], distributed: dict[str, Any] | None = None) -> dict[str, Any]:
    config = {
        **spec["config"],
        "per_device_train_batch_size": spec["config"]["per_device_train_batch_size"] // 2,
    }
    return {**spec, "config": config, "distributed": {"num_processes": 2, **(distributed or {})}}


def advantages(out: Path, ranks: int) -> list[float]:
    """The first generation's advantages of every rank, in rank order (the global row order)."""
    rows: list[float] = []
    for rank in range(ranks):
        rows += json.loads((out / f"advantages-{rank}.jsonl").read_text().splitlines()[0])
    return rows


def one_and_two(tmp_path: Path, spec: dict[str, Any], distributed: dict[str, Any] | None = None) -> tuple:
    code, one, stderr = run_seeded(spec, tmp_path / "one", 1)
    assert code == 0, stderr[-3000:]
    code, two, stderr = run_seeded(halved(spec, distributed), tmp_path / "two", 2)
    assert code == 0, stderr[-3000:]
    a, b = metrics_by_step(one)[1], metrics_by_step(two)[1]
    assert a["rollout/reward_std"] > 0  # the groups' rewards differ: the loss is not trivially 0
    assert b["train/loss"] == pytest.approx(a["train/loss"], rel=1e-5, abs=1e-7)
    return a, b


def test_group_straddling_two_ranks_matches_one_process(tmp_path, hash_reward):
    a, b = one_and_two(tmp_path, straddling(hash_reward))
    adv_one, adv_two = advantages(tmp_path / "one", 1), advantages(tmp_path / "two", 2)
    assert len(adv_one) == len(adv_two) == 12
    assert adv_two == pytest.approx(adv_one, abs=1e-5)
    assert any(abs(x) > 0.1 for x in adv_one[4:8])  # the straddling group has a signal
    for key in ROLLOUT_STATS:  # exact global values, not means of per-rank statistics
        assert b[key] == pytest.approx(a[key], rel=1e-6, abs=1e-9), key
    assert_same_gradients(tmp_path)


@pytest.mark.parametrize(
    "config",
    [{"top_entropy_quantile": 0.5}, {"top_entropy_quantile": 0.5, "entropy_coef": 0.01}],
    ids=["per-micro-step", "with-bonus"],
)
def test_entropy_mask_threshold_over_all_ranks_matches_one_process(tmp_path, hash_reward, config):
    # One micro-step per optimizer step: the micro-step's tokens on both ranks are the one process's.
    a, b = one_and_two(tmp_path, straddling(hash_reward, **config))
    ratio = "policy/entropy_mask_ratio"
    assert 0.3 < a[ratio] < 0.7  # about half of the tokens train
    assert b[ratio] == pytest.approx(a[ratio], rel=1e-6)
    assert_same_gradients(tmp_path)


@pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None, reason="make deepspeed")
def test_grpo_zero3_matches_one_process(tmp_path, hash_reward):
    # ZeRO-3 partitions the policy: generation runs on gathered weights, the reference (beta > 0) beside it.
    a, b = one_and_two(tmp_path, straddling(hash_reward, beta=0.04), zero(3))
    assert b["policy/kl"] == pytest.approx(a["policy/kl"], abs=1e-7)
    assert b["train/grad_norm"] == pytest.approx(a["train/grad_norm"], rel=1e-4)


def test_dr_grpo_entry_as_written_runs_on_eight_processes(tmp_path, hash_reward):
    # The paper index's Dr. GRPO settings: one completion per process, each group of 8 over 8 processes.
    spec = {
        "algorithm": "grpo",
        "model": "tiny:llama",
        "dataset": {"builtin": "arithmetic", "num_rows": 4},
        "config": {
            "loss_type": "dr_grpo",
            "per_device_train_batch_size": 1,
            "num_generations": 8,
            "beta": 0.0,
            "max_completion_length": 4,
            "max_steps": 2,
            "logging_steps": 1,
            "save_steps": 100,
        },
        "reward_funcs": hash_reward,
        "distributed": {"num_processes": 8},
    }
    code, events, stderr = run_procs(spec, tmp_path, 8, timeout=600)
    assert code == 0, stderr[-3000:]
    assert [e["type"] for e in events].count("done") == 1
    metrics = metrics_by_step(events)
    assert sorted(metrics) == [1, 2]
    for m in metrics.values():
        assert m["rollout/reward_std"] > 0  # the 8 completions of the group, gathered from 8 processes
        assert 1 <= m["rollout/completion_length_min"] <= m["rollout/completion_length_max"] <= 4
    assert (tmp_path / "final" / "model.safetensors").exists()


def test_gfpo_two_processes_match_one(tmp_path, hash_reward):
    # The filter ranks each group's completions: each rank holds one whole group of 4 and keeps 2.
    spec = straddling(
        hash_reward, per_device_train_batch_size=8, num_remains_in_group=2, group_filter="shortest"
    )
    spec = {**spec, "algorithm": "gfpo", "dataset": {"builtin": "arithmetic", "num_rows": 4}}
    one_and_two(tmp_path, spec)
    adv_one, adv_two = advantages(tmp_path / "one", 1), advantages(tmp_path / "two", 2)
    assert len(adv_one) == len(adv_two) == 4  # 2 of each group's 4 completions survive
    assert adv_two == pytest.approx(adv_one, abs=1e-5)
    assert_same_gradients(tmp_path)


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    from engine.models import build_tiny_model, build_tiny_tokenizer, save_model

    path = tmp_path_factory.mktemp("teacher")
    save_model(build_tiny_model(seed=7), build_tiny_tokenizer(), path)
    return str(path)


@pytest.mark.parametrize("distributed", [{}, zero(3)], ids=["gradient-sum", "zero3"])
def test_minillm_with_a_straddling_group_matches_one_process(tmp_path, hash_reward, teacher_dir, distributed):
    if distributed and importlib.util.find_spec("deepspeed") is None:
        pytest.skip("the deepspeed extra is not installed (make deepspeed)")
    spec = {**straddling(hash_reward, teacher_model_name_or_path=teacher_dir), "algorithm": "minillm"}
    a, b = one_and_two(tmp_path, spec, distributed)
    assert b["distill/rkl_reward"] == pytest.approx(a["distill/rkl_reward"], rel=1e-5)
    assert advantages(tmp_path / "two", 2) == pytest.approx(advantages(tmp_path / "one", 1), abs=1e-5)
    if not distributed:
        assert_same_gradients(tmp_path)
    else:
        assert b["train/grad_norm"] == pytest.approx(a["train/grad_norm"], rel=1e-4)


def test_dynamic_sampling_over_two_ranks_matches_one_process(tmp_path, coin_reward):
    # Every rank gathers each round's completions, so both runs keep the same groups in the same rounds.
    spec = straddling(coin_reward, dynamic_sampling=True, max_dynamic_sampling_rounds=3)
    spec["dataset"]["num_rows"] = 16
    a, b = one_and_two(tmp_path, spec)
    assert a["rollout/dynamic_sampling_rounds"] >= 2  # a group without signal was sampled again
    for key in ("rollout/dynamic_sampling_rounds", "rollout/dynamic_sampling_padded_groups", *ROLLOUT_STATS):
        assert b[key] == pytest.approx(a[key], rel=1e-6, abs=1e-9), key
    assert advantages(tmp_path / "two", 2) == pytest.approx(advantages(tmp_path / "one", 1), abs=1e-5)
    assert_same_gradients(tmp_path)


def test_rloo_with_kl_and_whitening_matches_one_process(tmp_path, hash_reward):
    # The per-row KL enters the reward and the advantages are whitened over the whole generation batch:
    # both gathered across the ranks.
    spec = {
        **straddling(hash_reward, beta=0.05, normalize_advantages=True, max_steps=2),
        "algorithm": "rloo",
    }
    code, one, stderr = run_seeded(spec, tmp_path / "one", 1)
    assert code == 0, stderr[-3000:]
    code, two, stderr = run_seeded(halved(spec), tmp_path / "two", 2)
    assert code == 0, stderr[-3000:]
    a, b = metrics_by_step(one), metrics_by_step(two)
    for step in (1, 2):
        assert b[step]["train/loss"] == pytest.approx(a[step]["train/loss"], rel=1e-5, abs=1e-7), step
    assert a[2]["policy/kl"] != 0  # the second generation's policy has moved from the reference
    for step in (1, 2):
        assert b[step]["policy/kl"] == pytest.approx(a[step]["policy/kl"], rel=1e-5, abs=1e-9), step
    assert advantages(tmp_path / "two", 2) == pytest.approx(advantages(tmp_path / "one", 1), abs=1e-5)
