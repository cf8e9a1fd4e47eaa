"""The engine's own check of what a job reads and calls (the worker confines every job it runs)."""

from __future__ import annotations

import json
from argparse import Namespace
from pathlib import Path

import pytest

from engine.data.access import DataPolicy, set_policy, url_allowed
from engine.data.formats import DataFormatError
from engine.data.sources import read_file
from engine.events import EventWriter
from engine.train import data_policy, run


class _Lines:
    def __init__(self) -> None:
        self.events: list[dict] = []

    def write(self, line: str) -> None:
        if line.strip():
            self.events.append(json.loads(line))

    def flush(self) -> None:
        pass


@pytest.fixture(autouse=True)
def _reset_policy():
    yield
    set_policy(DataPolicy())


def _run(tmp_path: Path, spec: dict, monkeypatch, env: dict[str, str]) -> dict:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    spec_path = tmp_path / "spec.json"
    spec_path.write_text(json.dumps(spec))
    lines = _Lines()
    code = run(Namespace(spec=str(spec_path), out=str(tmp_path / "out"), resume=False), EventWriter(lines))
    assert code == 1
    return next(e for e in lines.events if e["type"] == "error")


def test_a_confined_engine_refuses_paths_outside_uploads_and_roots(tmp_path, monkeypatch) -> None:
    secret = tmp_path / "secret.jsonl"
    secret.write_text('{"messages": "root:x:0:0"}\nnot json\n')
    spec = {"algorithm": "sft", "model": "tiny:llama", "dataset": {"path": str(secret)}}
    uploads = tmp_path / "uploads"
    error = _run(
        tmp_path, spec, monkeypatch, {"PAPERTRAIN_DATA_ROOTS": "", "PAPERTRAIN_UPLOADS_DIR": str(uploads)}
    )
    assert "dataset.path" in error["message"]
    assert "root:x" not in json.dumps(error) and "malformed" not in json.dumps(error)


def test_a_confined_engine_refuses_model_paths_outside_the_allowed_folders(tmp_path, monkeypatch) -> None:
    from engine.data.access import check_models
    from engine.spec import parse_job_spec

    models, jobs, cache = tmp_path / "models", tmp_path / "jobs", tmp_path / "cache"
    (tmp_path / "elsewhere").mkdir()
    env = {
        "PAPERTRAIN_DATA_ROOTS": "",
        "PAPERTRAIN_MODEL_ROOTS": str(models),
        "PAPERTRAIN_JOBS_DIR": str(jobs),
        "PAPERTRAIN_MODEL_CACHE": str(cache),
    }
    spec = {"algorithm": "sft", "model": str(tmp_path / "elsewhere"), "dataset": {"builtin": "chat"}}
    error = _run(tmp_path, spec, monkeypatch, env)
    assert error["param"] == "model" and "outside the folders" in error["message"]
    # every model a spec loads is checked: a teacher and a reward model too
    pol = data_policy(env)
    gkd = {"algorithm": "gkd", "model": "tiny:llama", "dataset": {"builtin": "chat"}}
    gkd["config"] = {"teacher_model_name_or_path": "/etc"}
    with pytest.raises(ValueError, match="config.teacher_model_name_or_path"):
        check_models(parse_job_spec(gkd), pol)
    grpo = {"algorithm": "grpo", "model": "tiny:llama", "dataset": {"builtin": "arithmetic"}}
    grpo["reward_funcs"] = [{"name": "reward_model", "model": "../../secret-model"}]
    with pytest.raises(ValueError, match="reward_funcs.0.model"):
        check_models(parse_job_spec(grpo), pol)
    # a symlink out of an allowed folder does not count as inside it
    models.mkdir()
    (models / "link").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(ValueError, match="model"):
        check_models(parse_job_spec({**spec, "model": str(models / "link")}), pol)
    for ok in (str(models / "m"), str(jobs / "job_1" / "final"), str(cache / "x"), "org/name", "tiny:llama"):
        check_models(parse_job_spec({**spec, "model": ok}), pol)


def test_a_confined_engine_refuses_unlisted_http_rewards(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("PAPERTRAIN_DATA_ROOTS", "")
    monkeypatch.setenv("PAPERTRAIN_HTTP_REWARD_URLS", "http://127.0.0.1:1/ok")
    set_policy(data_policy(__import__("os").environ))
    from engine.rewards import build_reward_funcs
    from engine.spec.grpo import RewardFuncSpec

    with pytest.raises(ValueError, match="reward_funcs.url"):
        build_reward_funcs([RewardFuncSpec(name="http", url="http://10.0.0.1/x")])
    assert build_reward_funcs([RewardFuncSpec(name="http", url="http://127.0.0.1:1/ok")])


def test_rows_over_the_limit_are_refused_while_reading(tmp_path) -> None:
    set_policy(DataPolicy(max_row_bytes=200))
    path = tmp_path / "d.jsonl"
    path.write_text(
        json.dumps({"prompt": "p", "completion": "c"}) + "\n" + json.dumps({"prompt": "x" * 5000}) + "\n"
    )
    with pytest.raises(DataFormatError, match="line 2 is larger than 200 bytes"):
        read_file(path)
    set_policy(DataPolicy(max_file_bytes=100))
    with pytest.raises(DataFormatError, match="dataset file is larger"):
        read_file(path)
    set_policy(DataPolicy())
    assert len(read_file(path)) == 2


def test_url_allow_list_matches_scheme_host_port_and_path_prefix() -> None:
    allowed = ["http://127.0.0.1:9000/score"]
    assert url_allowed("http://127.0.0.1:9000/score", allowed)
    assert url_allowed("http://127.0.0.1:9000/score/x?y=1", allowed)
    for url in (
        "http://127.0.0.1:9000/scores",
        "http://127.0.0.1:9001/score",
        "https://127.0.0.1:9000/score",
        "http://127.0.0.1:9000@10.0.0.1/score",
        "http://localhost:9000/score",
        "http://127.0.0.1:99999999/score",
    ):
        assert not url_allowed(url, allowed), url
