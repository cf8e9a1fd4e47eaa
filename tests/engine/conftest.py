"""Shared fixtures for engine tests: the tiny tokenizer/model and helpers that run a job in-process or as
`python -m engine.train` and return its parsed events."""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import threading
import zlib
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
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
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p),
    }
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


def serve_rewards(score: Callable[[list[int]], float]) -> Iterator[list[dict[str, Any]]]:
    """A remote `http` reward on 127.0.0.1 that scores each completion's token ids with `score`; yields the
    job's `reward_funcs` and stops the server afterwards."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            body = json.loads(self.rfile.read(int(self.headers["content-length"])))
            payload = json.dumps({"rewards": [score(c) for c in body["completion_ids"]]}).encode()
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args: Any) -> None:
            pass

    httpd = HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield [{"name": "http", "url": f"http://127.0.0.1:{httpd.server_address[1]}/"}]
    httpd.shutdown()
    httpd.server_close()


def _text_hash(ids: list[int]) -> int:
    return zlib.crc32(json.dumps(ids).encode())


@pytest.fixture
def hash_reward() -> Iterator[list[dict[str, Any]]]:
    """A remote reward with variance in every group: a hash of the completion, in [0, 1)."""
    yield from serve_rewards(lambda ids: (_text_hash(ids) % 1000) / 1000)


@pytest.fixture
def coin_reward() -> Iterator[list[dict[str, Any]]]:
    """1 for about a quarter of the completions (a hash of the text), else 0: many groups are all 0."""
    yield from serve_rewards(lambda ids: float(_text_hash(ids) % 4 == 0))
