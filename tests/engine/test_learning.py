"""Learning checks on the built-in datasets: a tiny random model must measurably learn (slow, < 60 s each)."""

import statistics

import pytest

from tests.engine.conftest import metrics_by_step, run_inprocess, tiny_spec


@pytest.mark.slow
def test_sft_loss_falls_clearly_on_builtin_chat(tmp_path):
    spec = tiny_spec(
        "sft", "chat", num_rows=256, max_steps=40, per_device_train_batch_size=16, learning_rate=3e-3
    )
    code, events = run_inprocess(spec, tmp_path)
    assert code == 0, events[-1]
    m = metrics_by_step(events)
    first = statistics.mean(m[s]["train/loss"] for s in range(1, 4))
    last = statistics.mean(m[s]["train/loss"] for s in range(36, 41))
    assert last < 0.7 * first, (first, last)


@pytest.mark.slow
def test_dpo_accuracy_rises_and_loss_falls_on_builtin_preferences(tmp_path):
    spec = tiny_spec(
        "dpo", "preferences", num_rows=256, max_steps=40, per_device_train_batch_size=16, learning_rate=1e-3
    )
    code, events = run_inprocess(spec, tmp_path)
    assert code == 0, events[-1]
    m = metrics_by_step(events)
    acc_first = statistics.mean(m[s]["rewards/accuracies"] for s in range(1, 4))
    acc_last = statistics.mean(m[s]["rewards/accuracies"] for s in range(31, 41))
    loss_first = statistics.mean(m[s]["train/loss"] for s in range(1, 4))
    loss_last = statistics.mean(m[s]["train/loss"] for s in range(31, 41))
    assert acc_last > 0.75 and acc_last > acc_first + 0.2, (acc_first, acc_last)
    assert loss_last < loss_first - 0.1, (loss_first, loss_last)
    assert statistics.mean(m[s]["rewards/margins"] for s in range(31, 41)) > 0
