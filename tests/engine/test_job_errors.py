"""Typed job errors from the engine: category user/platform, code, param, what to do; no server paths."""

from __future__ import annotations

import io
import json

from engine.data.formats import DataFormatError
from engine.errors import NonFiniteLoss, classify, scrub
from engine.events import EventWriter
from engine.spec.base import SpecError
from tests.engine.conftest import run_inprocess, tiny_spec


def test_a_diverging_run_fails_as_a_user_error_naming_the_step(tmp_path) -> None:
    spec = tiny_spec("sft", "chat", max_steps=6, learning_rate=1e8, max_grad_norm=0.0)
    code, events = run_inprocess(spec, tmp_path / "out")
    assert code == 1
    error = events[-1]
    assert error["type"] == "error" and not any(e["type"] == "done" for e in events)
    assert (error["code"], error["category"], error["param"]) == (
        "non_finite_loss",
        "user",
        "config.learning_rate",
    )
    steps = [e["step"] for e in events if e["type"] == "progress"]
    assert error["step"] == (steps[-1] if steps else 0) + 1
    assert f"optimizer step {error['step']}" in error["message"] and "learning_rate" in error["remediation"]


def test_a_data_error_is_the_users_and_names_no_server_path(tmp_path) -> None:
    data = tmp_path / "deep" / "folder" / "train.jsonl"
    data.parent.mkdir(parents=True)
    data.write_text('{"messages": [{"role": "user", "content": "hi"}]}\n{oops\n')
    spec = {**tiny_spec("sft", "chat"), "dataset": {"path": str(data)}}
    code, events = run_inprocess(spec, tmp_path / "out")
    assert code == 1
    error = events[-1]
    assert (error["code"], error["category"], error["param"]) == ("invalid_dataset", "user", "dataset")
    assert "line 2" in error["message"] and str(tmp_path) not in error["message"]


def test_classify_and_scrub() -> None:
    assert classify(SpecError("config.beta", "config.beta: too big"))["category"] == "user"
    assert classify(DataFormatError("bad rows"))["param"] == "dataset"
    info = classify(OSError("cannot open /srv/papertrain/var/jobs/job_1/final/model.safetensors"))
    assert info["category"] == "platform" and "/srv" not in info["message"]
    assert info["message"].endswith(".../model.safetensors")
    assert (
        scrub("see http://127.0.0.1:9000/score and /etc/passwd")
        == "see http://127.0.0.1:9000/score and .../passwd"
    )
    assert classify(NonFiniteLoss(7))["step"] == 7


def test_a_run_that_never_updated_says_so() -> None:
    buf = io.StringIO()
    events = EventWriter(buf)
    for step in (1, 2):
        events.metrics(step, {"train/loss": 0.0, "train/grad_norm": 0.0})
    events.done(2, "final")
    lines = [json.loads(line) for line in buf.getvalue().splitlines()]
    assert (
        lines[-2]["type"] == "log"
        and lines[-2]["level"] == "warning"
        and "degenerate" in lines[-2]["message"]
    )
    buf2 = io.StringIO()
    ok = EventWriter(buf2)
    ok.metrics(1, {"train/grad_norm": 0.0})
    ok.metrics(2, {"train/grad_norm": 0.3})
    ok.done(2, "final")
    assert "degenerate" not in buf2.getvalue()


def test_a_model_that_cannot_be_loaded_is_the_users_error_naming_the_field(tmp_path) -> None:
    spec = tiny_spec("sft", "chat", max_steps=1)
    spec["model"] = str(tmp_path / "no-such-model")  # neither a folder nor a hub id
    code, events = run_inprocess(spec, tmp_path / "out")
    error = events[-1]
    assert code == 1 and error["type"] == "error"
    assert (error["code"], error["category"], error["param"]) == ("model_not_found", "user", "model")
    assert "no-such-model" in error["message"] and str(tmp_path) not in error["message"]
    assert "bundled:" in error["remediation"]
