import io
import json
import math

import pytest

from engine.events import EventWriter


def test_each_event_is_one_json_line_with_a_timestamp():
    buf = io.StringIO()
    ev = EventWriter(buf)
    ev.progress(step=1, total_steps=4, epoch=0.25)
    ev.metrics(1, {"train/loss": 1.5})
    ev.samples(1, [{"prompt": "a", "completion": "b", "reward": 1.0}])
    ev.checkpoint(1, "/x/checkpoint-1")
    ev.log("hello", level="warning")
    ev.done(4, "/x/final")
    ev.error("boom", "Traceback...")
    lines = buf.getvalue().splitlines()
    events = [json.loads(line) for line in lines]
    assert [e["type"] for e in events] == [
        "progress",
        "metrics",
        "samples",
        "checkpoint",
        "log",
        "done",
        "error",
    ]
    assert all(isinstance(e["ts"], float) for e in events)
    assert events[0] == {**events[0], "step": 1, "total_steps": 4, "epoch": 0.25}
    assert events[1]["metrics"] == {"train/loss": 1.5}
    assert events[3]["path"] == "/x/checkpoint-1"
    assert events[4]["level"] == "warning" and events[4]["message"] == "hello"
    assert events[5]["final_path"] == "/x/final"
    assert events[6]["traceback"] == "Traceback..."


def test_non_finite_metrics_become_null_so_strict_parsers_accept_the_line():
    buf = io.StringIO()
    EventWriter(buf).metrics(2, {"a": math.nan, "b": math.inf, "c": 1.0})
    event = json.loads(buf.getvalue(), parse_constant=lambda c: pytest.fail(f"non-standard constant {c}"))
    assert event["metrics"] == {"a": None, "b": None, "c": 1.0}


def test_unknown_event_type_is_refused():
    with pytest.raises(ValueError, match="unknown event type"):
        EventWriter(io.StringIO()).emit("bogus")
