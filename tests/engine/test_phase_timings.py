"""Per-phase timings: `time/<phase>` metrics for the phases a step runs, and none for phases it skips."""

from __future__ import annotations

import time

from engine.algorithms.common import StepMetrics
from engine.algorithms.timing import PhaseTimer
from tests.engine.conftest import metrics_by_step, run_inprocess, tiny_spec
from tests.engine.test_grpo import events_of, metrics_of, trainer

STEP_PHASES = {"time/forward", "time/backward", "time/optimizer"}


def test_nested_phases_are_charged_to_themselves_only():
    timer = PhaseTimer()
    with timer("forward"):
        time.sleep(0.02)
        with timer("reference"):
            time.sleep(0.05)
    metrics = StepMetrics()
    timer.flush(metrics)
    metrics.end_step()
    out = metrics.compute()
    assert 0.04 <= out["time/reference"] < 0.5
    assert 0.01 <= out["time/forward"] < out["time/reference"]


def test_grpo_logs_generation_reference_and_step_phases(tmp_path):
    t, stream = trainer(tmp_path, {"beta": 0.04, "max_steps": 2})
    t.train()
    for m in metrics_of(events_of(stream)):
        times = {k: v for k, v in m.items() if k.startswith("time/")}
        assert STEP_PHASES | {"time/generation", "time/reference"} <= set(times)
        assert "time/old_logps" not in times  # on-policy: no old log-prob pass
        assert all(v > 0 for v in times.values())


def test_grpo_without_beta_has_no_reference_time(tmp_path):
    t, stream = trainer(tmp_path, {"beta": 0.0, "max_steps": 1})
    t.train()
    (m,) = metrics_of(events_of(stream))
    assert "time/reference" not in m and "time/generation" in m


def test_sft_logs_step_phases_only(tmp_path):
    code, events = run_inprocess(tiny_spec("sft", "chat", num_rows=8, max_steps=2), tmp_path)
    assert code == 0
    for m in metrics_by_step(events).values():
        assert {k for k in m if k.startswith("time/")} == STEP_PHASES
