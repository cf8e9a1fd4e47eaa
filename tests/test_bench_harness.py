"""The speed harness (bench/speed_runs.py) runs a workload through `python -m engine.train` and reads its
numbers back from the events. Only the plumbing is checked here; speed itself is never asserted."""

from __future__ import annotations

import pytest

from bench import speed_runs


def test_every_workload_validates_in_every_precision_mode():
    from engine.spec import parse_job_spec, resolve

    for name in speed_runs.SPECS:
        for mode in ("float32", "bf16-autocast", "bf16-pure", "fp16-autocast"):
            spec = resolve(parse_job_spec(speed_runs.job(name, "tiny:llama", mode, steps=2)))
            assert spec["config"]["precision"] == mode


@pytest.mark.slow
def test_a_quick_dpo_run_reports_its_numbers():
    row = speed_runs.run("dpo", "tiny:llama", "bf16-pure", quick=True)
    assert "error" not in row, row
    assert row["steps"] == speed_runs.STEPS["quick"]["dpo"]
    assert row["s_per_step"] > 0 and row["tokens_per_s"] > 0 and row["peak_rss_mb"] > 0
    assert {"forward", "backward", "optimizer", "reference"} <= set(row["phases_s"])
    header, rule, line = speed_runs.table([row])
    assert line.startswith("| dpo | tiny:llama | bf16-pure |") and header.count("|") == line.count("|")
