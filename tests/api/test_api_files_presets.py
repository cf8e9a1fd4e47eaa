"""Dataset uploads (JSONL) used as `dataset.file_id`, and the preset catalogue."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from api_testkit import SFT_SPEC

import engine.presets
from engine.presets import Preset
from engine.spec import RUNNABLE_ALGORITHMS


def _upload(client, headers, content: bytes, name: str = "data.jsonl"):
    return client.post("/v1/files", files={"file": (name, content, "application/jsonl")}, headers=headers)


ROWS = [
    {"prompt": "1+1=", "completion": "2"},
    {"prompt": "2+2=", "completion": "4"},
    {"prompt": "3+3=", "completion": "6"},
]
CONTENT = ("\n".join(json.dumps(r) for r in ROWS) + "\n\n").encode()


def test_upload_jsonl_then_train_on_it(client, alice, settings) -> None:
    res = _upload(client, alice, CONTENT)
    assert res.status_code == 201, res.text
    meta = res.json()
    assert meta["id"].startswith("file_")
    assert (meta["filename"], meta["rows"], meta["bytes"], meta["format"]) == (
        "data.jsonl",
        3,
        len(CONTENT),
        "jsonl",
    )
    assert [f["id"] for f in client.get("/v1/files", headers=alice).json()["files"]] == [meta["id"]]

    body = {**SFT_SPEC, "dataset": {"file_id": meta["id"]}}
    job = client.post("/v1/jobs", json=body, headers=alice).json()
    dataset = job["spec_resolved"]["dataset"]
    assert dataset["file_id"] is None  # the engine gets a path it can open
    stored = Path(dataset["path"])
    assert stored.is_relative_to(settings.uploads_dir) and stored.read_bytes() == CONTENT
    assert job["spec_submitted"]["dataset"] == {"file_id": meta["id"]}


def test_someone_elses_or_unknown_file_is_422(client, alice, bob) -> None:
    file_id = _upload(client, alice, CONTENT).json()["id"]
    assert client.get("/v1/files", headers=bob).json()["files"] == []
    for fid in (file_id, "file_000000000000"):
        res = client.post("/v1/jobs", json={**SFT_SPEC, "dataset": {"file_id": fid}}, headers=bob)
        assert res.status_code == 422
        assert res.json()["error"]["param"] == "dataset.file_id"


@pytest.mark.parametrize(
    ("content", "name", "needle"),
    [
        (b'{"prompt": "a"}\n{"prompt": \n', "d.jsonl", "line 2"),
        (b'{"prompt": "a"}\n[1, 2]\n', "d.jsonl", "line 2"),
        (b"\n\n", "d.jsonl", "no rows"),
        (b'{"prompt": "a"}\n', "d.csv", "JSONL"),
    ],
)
def test_bad_uploads_are_422_and_leave_nothing(client, alice, settings, content, name, needle) -> None:
    res = _upload(client, alice, content, name)
    assert res.status_code == 422
    error = res.json()["error"]
    assert (error["code"], error["param"]) == ("invalid_file", "file")
    assert needle in error["message"]
    leftovers = [p for p in Path(settings.uploads_dir).rglob("*") if p.is_file()]
    assert leftovers == []


def test_a_broken_line_is_named_with_its_column_and_the_fix(client, alice) -> None:
    # The second line (22 characters) lacks its closing brace: the parser runs out just after it, column 23.
    res = _upload(client, alice, b'{"prompt": "a"}\n{"prompt": "b", "x": 1\n{"prompt": "c"}\n')
    error = res.json()["error"]
    assert error["message"] == "line 2 is not valid JSON: Expecting ',' delimiter at column 23"
    assert error["remediation"].startswith("fix line 2 ")


def test_upload_size_limit(client, alice, settings, monkeypatch) -> None:
    monkeypatch.setattr(client.app.state, "settings", settings.model_copy(update={"max_upload_bytes": 10}))
    res = _upload(client, alice, CONTENT)
    assert res.status_code == 422 and "limit" in res.json()["error"]["message"]


@pytest.fixture
def presets(monkeypatch):
    items = {
        "runnable-one": Preset(
            id="runnable-one",
            version=1,
            title="A",
            paper_url="https://example.org/a",
            section="S",
            algorithm=sorted(RUNNABLE_ALGORITHMS)[0],
            config={"beta": 0.1},
            notes="n",
        ),
        "later-one": Preset(
            id="later-one",
            version=2,
            title="B",
            paper_url="https://example.org/b",
            section="S",
            algorithm="papo",
            config={},
            notes="",
        ),
    }
    monkeypatch.setattr(engine.presets, "load_presets", lambda: items)
    return items


def test_presets_list_and_get(client, alice, presets) -> None:
    listed = client.get("/v1/presets", headers=alice).json()["presets"]
    assert {p["id"]: p["runnable"] for p in listed} == {
        "runnable-one": True,
        "later-one": "papo" in RUNNABLE_ALGORITHMS,
    }
    one = client.get("/v1/presets/runnable-one", headers=alice).json()
    assert {k: one[k] for k in ("id", "version", "title", "paper_url", "algorithm", "config", "notes")} == {
        "id": "runnable-one",
        "version": 1,
        "title": "A",
        "paper_url": "https://example.org/a",
        "algorithm": sorted(RUNNABLE_ALGORITHMS)[0],
        "config": {"beta": 0.1},
        "notes": "n",
    }
    res = client.get("/v1/presets/nope", headers=alice)
    assert res.status_code == 404 and res.json()["error"]["code"] == "preset_not_found"


def test_shipped_presets_are_served(client, alice) -> None:
    """The real catalogue loads through the API (whatever it holds)."""
    res = client.get("/v1/presets", headers=alice)
    assert res.status_code == 200
    assert all({"id", "algorithm", "config", "runnable"} <= set(p) for p in res.json()["presets"])


def test_presets_report_what_stops_them_on_the_live_workers(client, alice) -> None:
    """The test deployment's workers consume the cpu queue only."""
    listed = {p["id"]: p for p in client.get("/v1/presets", headers=alice).json()["presets"]}
    assert listed["dpo"]["runnable"] is True and listed["dpo"]["runnable_reason"] is None
    dr = listed["dr-grpo"]
    assert dr["runnable"] is False and dr["runnable_param"] == "config.per_device_train_batch_size"
    assert dr["runnable_change"] == {"config": {"per_device_train_batch_size": 8}}
    gkd = client.get("/v1/presets/on-policy-distillation-gkd", headers=alice).json()
    assert gkd["runnable"] is False and "placeholder" in gkd["runnable_reason"]
    assert gkd["runnable_change"] is None
    tis = listed["truncated-is"]
    assert tis["runnable"] is False and "gpu-1" in tis["runnable_reason"]


def test_preset_answers_follow_what_live_workers_announce(client, alice, db) -> None:
    """A worker that imports DeepSpeed makes the zero preset run on CPU processes, keeping ZeRO-3."""
    from core.workers import record_worker

    before = client.get("/v1/presets/zero", headers=alice).json()
    assert before["runnable_change"] == {"hardware": {"accelerator": "cpu"}, "distributed": None}
    with db() as session:
        record_worker(session, "ds-worker@localhost", ["cpu"], {"gpus": 0, "deepspeed": True, "vllm": False})
        session.commit()
    after = client.get("/v1/presets/zero", headers=alice).json()
    assert after["runnable"] is False and after["runnable_change"] == {"hardware": {"accelerator": "cpu"}}
    body = {
        "preset": "zero",
        "model": "tiny:llama",
        "dataset": {"builtin": "chat"},
        **after["runnable_change"],
    }
    resolved = client.post("/v1/jobs:validate", json=body, headers=alice).json()["spec"]
    assert resolved["distributed"]["deepspeed_config"]["zero_stage"] == 3
