"""Policy versions on samples: `rollout/policy_lag` and `max_policy_lag` (the `hf` sampler, tiny model)."""

from __future__ import annotations

from tests.engine.test_grpo import events_of, metrics_of, trainer


def replayed(max_lag: int | None) -> dict:
    # One slice per generation, replayed twice: the replay trains one optimizer step after sampling.
    return {
        "per_device_train_batch_size": 4,
        "num_iterations": 2,
        "max_steps": 4,
        "max_policy_lag": max_lag,
    }


def test_replayed_samples_report_their_lag(tmp_path):
    t, stream = trainer(tmp_path, replayed(None))
    t.train()
    lags = [m["rollout/policy_lag"] for m in metrics_of(events_of(stream))]
    assert lags == [0.0, 1.0, 0.0, 1.0]
    assert t.counters.generations == 2 and t.counters.stale_slices_dropped == 0


def test_samples_older_than_max_policy_lag_are_refused(tmp_path):
    t, stream = trainer(tmp_path, replayed(0))
    t.train()
    lags = [m["rollout/policy_lag"] for m in metrics_of(events_of(stream))]
    assert lags == [0.0, 0.0, 0.0, 0.0]
    # every replay was one step old: dropped, and a fresh generation took its place
    assert t.counters.generations == 4 and t.counters.stale_slices_dropped == 3
