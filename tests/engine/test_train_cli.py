"""`python -m engine.train` end to end on tiny:llama: event stream, checkpoints, errors, SIGTERM."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.engine.conftest import REPO, run_inprocess, run_subprocess, tiny_spec

REQUIRED = {
    "progress": {"step", "total_steps", "epoch"},
    "metrics": {"step", "metrics"},
    "checkpoint": {"step", "path"},
    "log": {"level", "message"},
    "done": {"step", "final_path"},
    "error": {"message", "traceback"},
}


def _check_stream(events):
    for e in events:
        assert isinstance(e["ts"], float)
        assert REQUIRED[e["type"]] <= set(e), e
    steps = [e["step"] for e in events if e["type"] == "progress"]
    assert steps == list(range(1, len(steps) + 1))


@pytest.mark.slow
@pytest.mark.parametrize(
    ("algorithm", "builtin", "extra"),
    [("sft", "chat", {}), ("dpo", "preferences", {"learning_rate": 1e-4})],
)
def test_engine_runs_a_few_steps_and_emits_a_valid_stream(tmp_path, algorithm, builtin, extra):
    spec = tiny_spec(algorithm, builtin, max_steps=3, save_steps=2, **extra)
    code, events, stderr = run_subprocess(spec, tmp_path)
    assert code == 0, stderr[-3000:]
    _check_stream(events)
    types = [e["type"] for e in events]
    assert types[-1] == "done" and "error" not in types
    assert [e["step"] for e in events if e["type"] == "checkpoint"] == [2, 3]
    for e in events:
        if e["type"] == "checkpoint":
            assert (tmp_path / "checkpoints" / f"checkpoint-{e['step']}" / "trainer_state.pt").exists()
    final = events[-1]["final_path"]
    assert (tmp_path / "final" / "config.json").exists() and final == str(tmp_path / "final")
    metrics = [e["metrics"] for e in events if e["type"] == "metrics"]
    assert len(metrics) == 3
    for m in metrics:
        assert {"train/loss", "train/learning_rate", "train/grad_norm"} <= set(m)
        assert all("/" in k for k in m)
    if algorithm == "dpo":
        assert {
            "rewards/accuracies",
            "rewards/margins",
            "rewards/chosen",
            "rewards/rejected",
            "logps/chosen",
        } <= set(metrics[0])
    # stdout holds nothing but events (the progress bars went to stderr)
    assert "Writing" not in json.dumps(events)


def test_bad_spec_gives_an_error_event_and_exit_1(tmp_path):
    spec = tiny_spec("sft", "chat", loss_type="nope")
    code, events = run_inprocess(spec, tmp_path)
    assert code == 1
    assert events[-1]["type"] == "error"
    assert "loss_type" in events[-1]["message"] and events[-1]["traceback"]


def test_engine_refuses_options_it_cannot_honour(tmp_path):
    spec = tiny_spec("sft", "chat")
    spec["distributed"] = {"distributed_type": "DEEPSPEED", "num_processes": 2}
    spec["hardware"] = {"accelerator": "gpu", "gpus": 2}
    code, events = run_inprocess(spec, tmp_path)
    assert code == 1
    assert events[-1]["type"] == "error" and "distributed" in events[-1]["message"]


def test_spec_warnings_are_logged_at_start(tmp_path):
    spec = tiny_spec("sft", "chat", max_steps=1, warmup_steps=1)
    code, events = run_inprocess(spec, tmp_path)
    assert code == 0
    warnings = [e for e in events if e["type"] == "log" and e["level"] == "warning"]
    assert [w["message"].split(":")[0] for w in warnings] == ["config.warmup_steps"]


def test_dataset_error_names_the_row(tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text('{"prompt": "a", "completion": "b"}\n{"prompt": "a", "completion": 5}\n')
    spec = tiny_spec("sft", "chat")
    spec["dataset"] = {"path": str(data)}
    code, events = run_inprocess(spec, tmp_path / "out")
    assert code == 1
    assert "row 1, column 'completion'" in events[-1]["message"]


@pytest.mark.slow
def test_sigterm_stops_at_a_micro_step_and_exits_143(tmp_path):
    spec = tiny_spec("sft", "chat", num_rows=64, max_steps=100000, save_steps=100000, logging_steps=1000)
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    proc = subprocess.Popen(
        [sys.executable, "-m", "engine.train", "--spec", str(tmp_path / "spec.json"), "--out", str(tmp_path)],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    seen = []
    for line in proc.stdout:  # wait until training is under way
        seen.append(json.loads(line))
        if seen[-1]["type"] == "progress" and seen[-1]["step"] >= 2:
            break
    proc.send_signal(signal.SIGTERM)
    t0 = time.time()
    rest, _ = proc.communicate(timeout=60)
    assert proc.returncode == 143
    assert time.time() - t0 < 30
    events = seen + [json.loads(line) for line in rest.splitlines()]
    assert "done" not in [e["type"] for e in events]
    assert not (tmp_path / "final").exists()
    assert not (tmp_path / "checkpoints").exists()  # nothing extra saved


def test_the_process_ends_with_the_exit_status_after_flushing_what_it_wrote():
    # Output still in Python's buffers (no newline, a pipe) must reach the reader before the process ends.
    code = "import sys; from engine.train import exit_process; print('last', end=''); exit_process(3)"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}  # block-buffered stdout
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env={**env, "PYTHONPATH": str(REPO)}, capture_output=True
    )
    assert (proc.returncode, proc.stdout) == (3, b"last")
