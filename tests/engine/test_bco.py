"""BCO on tiny:llama: the CLI run, the running reward mean (first step, checkpoints, evaluation leaves it
alone), resume, and learning on the built-in unpaired feedback."""

import math
import statistics

import pytest
import torch

from engine.algorithms.common import STATE_FILE
from tests.engine.conftest import run_cli_checked, run_inprocess, tiny_spec
from tests.engine.test_resume import _resume_matches


def _run(tmp_path, builtin="unpaired", eval_dataset=None, **config):
    spec = tiny_spec("bco", builtin, num_rows=16, **{"max_steps": 2, "learning_rate": 1e-3, **config})
    if eval_dataset:
        spec["eval_dataset"] = eval_dataset
    code, events = run_inprocess(spec, tmp_path)
    assert code == 0, events[-1]
    metrics = {
        e["step"]: e["metrics"] for e in events if e["type"] == "metrics" and "train/loss" in e["metrics"]
    }
    assert sorted(metrics) == list(range(1, spec["config"]["max_steps"] + 1))
    for m in metrics.values():
        assert math.isfinite(m["train/loss"]) and m["train/grad_norm"] > 0
    return metrics, events


def _saved_delta(checkpoint):
    state = torch.load(checkpoint / STATE_FILE, weights_only=False)
    return float(state["algorithm_state"]["bco"]["running"]["mean"])


@pytest.mark.slow
def test_bco_cli_run_emits_a_valid_stream_and_checkpoints_delta(tmp_path):
    spec = tiny_spec("bco", "unpaired", max_steps=3, save_steps=2, learning_rate=1e-3)
    metrics = run_cli_checked(spec, tmp_path)
    assert (tmp_path / "final" / "config.json").exists()
    for m in metrics:
        assert {"train/loss", "bco/delta", "bco/loss", "rewards/chosen", "rewards/rejected"} <= set(m)
        assert {"rewards/margins", "logps/chosen", "logps/rejected"} <= set(m)
    assert math.isfinite(_saved_delta(tmp_path / "checkpoints" / "checkpoint-3"))


def test_first_step_is_log_two_with_delta_zero(tmp_path):
    # identical reference: every reward is 0, so delta = 0 and each term is -log s(0) = log 2
    metrics, _ = _run(tmp_path, builtin="preferences", max_steps=3, learning_rate=1e-2)
    assert metrics[1]["train/loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert metrics[1]["bco/delta"] == pytest.approx(0.0, abs=1e-7)
    assert metrics[3]["bco/delta"] != 0.0  # the running mean follows the rewards


def test_evaluation_does_not_move_the_running_mean(tmp_path):
    _run(tmp_path / "plain", max_steps=3, save_steps=3)
    _, events = _run(
        tmp_path / "eval",
        max_steps=3,
        save_steps=3,
        eval_steps=1,
        eval_dataset={"builtin": "unpaired", "num_rows": 8, "seed": 7},
    )
    assert any("eval/bco/delta" in e.get("metrics", {}) for e in events)
    plain = _saved_delta(tmp_path / "plain" / "checkpoints" / "checkpoint-3")
    with_eval = _saved_delta(tmp_path / "eval" / "checkpoints" / "checkpoint-3")
    assert plain != 0.0 and with_eval == pytest.approx(plain, rel=1e-9, abs=0)


@pytest.mark.slow
def test_bco_resume_reproduces_the_uninterrupted_run(tmp_path):
    spec = tiny_spec(
        "bco",
        "unpaired",
        num_rows=16,
        max_steps=6,
        gradient_accumulation_steps=2,
        save_steps=3,
        learning_rate=1e-2,  # large enough that delta, restored from the checkpoint, matters
    )
    full_dir, resumed_dir, _ = _resume_matches(tmp_path, spec)
    final = _saved_delta(full_dir / "checkpoints" / "checkpoint-6")
    assert _saved_delta(resumed_dir / "checkpoints" / "checkpoint-6") == pytest.approx(final, rel=1e-6)


@pytest.mark.slow
def test_bco_margin_between_desirable_and_undesirable_rewards_rises(tmp_path):
    spec = tiny_spec(
        "bco",
        "unpaired",
        num_rows=256,
        max_steps=30,
        per_device_train_batch_size=16,
        learning_rate=1e-2,
        eval_steps=30,
    )
    spec["eval_dataset"] = {"builtin": "unpaired", "num_rows": 64, "seed": 11}  # held out
    code, events = run_inprocess(spec, tmp_path)
    assert code == 0, events[-1]
    m = {e["step"]: e["metrics"] for e in events if e["type"] == "metrics" and "train/loss" in e["metrics"]}
    final_eval = [e["metrics"] for e in events if e["type"] == "metrics" and "eval/loss" in e["metrics"]][-1]
    first = statistics.mean(m[s]["rewards/margins"] for s in range(1, 4))
    last = statistics.mean(m[s]["rewards/margins"] for s in range(21, 31))
    loss_first = statistics.mean(m[s]["train/loss"] for s in range(1, 4))
    loss_last = statistics.mean(m[s]["train/loss"] for s in range(21, 31))
    assert last > first + 0.3, (first, last)
    assert loss_last < loss_first - 0.04, (loss_first, loss_last)
    assert final_eval["eval/rewards/margins"] > 0.2, final_eval
