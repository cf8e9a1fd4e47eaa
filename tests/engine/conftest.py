"""Shared fixtures for engine tests: the tiny tokenizer/model and helpers that run a job in-process or as
`python -m engine.train` and return its parsed events."""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def tiny_tokenizer() -> Any:
    from engine.models import build_tiny_tokenizer

    return build_tiny_tokenizer()


@pytest.fixture
def tiny_model() -> Any:
    from engine.models import build_tiny_model

    return build_tiny_model()


def tiny_spec(algorithm: str, builtin: str, num_rows: int = 32, **config: Any) -> dict[str, Any]:
    """A small job on tiny:llama: 3 steps of batch 4 unless overridden."""
    base = {"max_steps": 3, "per_device_train_batch_size": 4, "save_steps": 100, "logging_steps": 1}
    return {
        "algorithm": algorithm,
        "model": "tiny:llama",
        "dataset": {"builtin": builtin, "num_rows": num_rows},
        "config": {**base, **config},
    }


def run_inprocess(spec: dict[str, Any], out: Path, resume: bool = False) -> tuple[int, list[dict[str, Any]]]:
    """Run a job through `engine.train.run` in this process; (exit status, events)."""
    from engine.events import EventWriter
    from engine.train import run

    out.mkdir(parents=True, exist_ok=True)
    spec_path = out / "spec.json"
    spec_path.write_text(json.dumps(spec))
    buf = io.StringIO()
    code = run(argparse.Namespace(spec=str(spec_path), out=str(out), resume=resume), EventWriter(buf))
    return code, [json.loads(line) for line in buf.getvalue().splitlines()]


def run_subprocess(
    spec: dict[str, Any], out: Path, resume: bool = False, timeout: float = 120
) -> tuple[int, list[dict[str, Any]], str]:
    """Run `python -m engine.train` as a child process; (exit status, events, stderr)."""
    out.mkdir(parents=True, exist_ok=True)
    spec_path = out / "spec.json"
    spec_path.write_text(json.dumps(spec))
    cmd = [sys.executable, "-m", "engine.train", "--spec", str(spec_path), "--out", str(out)]
    if resume:
        cmd.append("--resume")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    events = [json.loads(line) for line in proc.stdout.splitlines()]
    return proc.returncode, events, proc.stderr


def metrics_by_step(events: list[dict[str, Any]]) -> dict[int, dict[str, float]]:
    return {e["step"]: e["metrics"] for e in events if e["type"] == "metrics"}


def run_cli_checked(spec: dict[str, Any], out: Path) -> list[dict[str, float]]:
    """Run a 3-step job (save_steps=2) through `python -m engine.train` and check what every algorithm's
    stream must show: exit 0, a valid event stream ending in `done`, checkpoints at steps 2 and 3 with their
    trainer state. Returns the three steps' metrics."""
    from tests.engine.test_train_cli import _check_stream

    code, events, stderr = run_subprocess(spec, out)
    assert code == 0, stderr[-3000:]
    _check_stream(events)
    types = [e["type"] for e in events]
    assert types[-1] == "done" and "error" not in types
    assert [e["step"] for e in events if e["type"] == "checkpoint"] == [2, 3]
    assert (out / "checkpoints" / "checkpoint-3" / "trainer_state.pt").exists()
    metrics = [e["metrics"] for e in events if e["type"] == "metrics"]
    assert len(metrics) == 3
    return metrics
