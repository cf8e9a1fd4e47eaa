"""What a job may read and call: uploads of its owner, data roots, allowed reward services; query bounds."""

from __future__ import annotations

import json

from api_testkit import SFT_SPEC
from fastapi.testclient import TestClient

from api.main import create_app

GRPO = {"algorithm": "grpo", "model": "tiny:llama", "dataset": {"builtin": "arithmetic"}}


def _error(res) -> dict:
    assert res.status_code == 422, res.text
    return res.json()["error"]


def test_by_default_no_dataset_path_is_read(client, alice, sent) -> None:
    for path in ("/etc/passwd", "var/admin-token", "../../etc/hostname"):
        error = _error(client.post("/v1/jobs", json={**SFT_SPEC, "dataset": {"path": path}}, headers=alice))
        assert (error["code"], error["param"]) == ("path_not_allowed", "dataset.path")
        assert "file_id" in error["message"] and "root:" not in error["message"]
        assert "line" not in error["message"]  # nothing about the file's contents
    assert sent == []


def test_someone_elses_upload_cannot_be_named_by_path(client, alice, bob, settings, sent) -> None:
    rows = b'{"prompt": "a", "completion": "b"}\n'
    up = client.post("/v1/files", files={"file": ("d.jsonl", rows, "application/jsonl")}, headers=alice)
    stored = client.post(
        "/v1/jobs", json={**SFT_SPEC, "dataset": {"file_id": up.json()["id"]}}, headers=alice
    )
    path = stored.json()["spec_resolved"]["dataset"]["path"]
    # even when the operator lists the uploads folder as a data root, uploads stay the owner's
    app = create_app(settings.model_copy(update={"data_roots": str(settings.var_dir)}))
    with TestClient(app) as other:
        error = _error(other.post("/v1/jobs", json={**SFT_SPEC, "dataset": {"path": path}}, headers=bob))
    assert error["param"] == "dataset.path"
    assert len(sent) == 1


def test_hf_id_that_is_a_local_folder_is_refused(client, alice) -> None:
    for hf_id in ("/etc", "./var", "../x"):
        body = {**SFT_SPEC, "dataset": {"hf_id": hf_id}}
        assert _error(client.post("/v1/jobs", json=body, headers=alice))["param"] == "dataset.hf_id"


def test_a_local_model_path_is_confined_like_a_dataset_path(client, alice, bob, settings, sent) -> None:
    for field, body in (
        ("model", {**SFT_SPEC, "model": "/etc"}),
        ("model", {**SFT_SPEC, "model": "../../x"}),
        ("model", {**SFT_SPEC, "model": str(settings.var_dir)}),
        (
            "config.teacher_model_name_or_path",
            {**SFT_SPEC, "algorithm": "gkd", "config": {"teacher_model_name_or_path": "/root"}},
        ),
        ("reward_funcs.0.model", {**GRPO, "reward_funcs": [{"name": "reward_model", "model": "/srv/rm"}]}),
    ):
        error = _error(client.post("/v1/jobs", json=body, headers=alice))
        assert (error["code"], error["param"]) == ("path_not_allowed", field), error
        assert field in error["message"]
    assert sent == []
    # a previous job's output folder is the submitter's to train from, not anyone else's
    first = client.post("/v1/jobs", json=SFT_SPEC, headers=alice).json()
    final = str(settings.jobs_dir / first["id"] / "final")
    assert client.post("/v1/jobs", json={**SFT_SPEC, "model": final}, headers=alice).status_code == 201
    error = _error(client.post("/v1/jobs", json={**SFT_SPEC, "model": final}, headers=bob))
    assert error["param"] == "model" and "your jobs" in error["message"]
    # the dry run answers the same
    res = client.post("/v1/jobs:validate", json={**SFT_SPEC, "model": final}, headers=bob)
    assert res.status_code == 422 and res.json()["error"]["param"] == "model"
    # hub ids are not paths
    assert (
        client.post("/v1/jobs", json={**SFT_SPEC, "model": "org/some-model"}, headers=bob).status_code == 201
    )


def test_a_configured_models_root_is_allowed(settings, tokens, tmp_path) -> None:
    root = tmp_path / "models"
    (root / "base").mkdir(parents=True)
    (root / "escape").symlink_to("/etc")
    headers = {"Authorization": f"Bearer {tokens['alice']}"}
    with TestClient(create_app(settings.model_copy(update={"model_roots": str(root)}))) as client:
        ok = client.post("/v1/jobs", json={**SFT_SPEC, "model": str(root / "base")}, headers=headers)
        assert ok.status_code == 201, ok.text
        bad = client.post("/v1/jobs", json={**SFT_SPEC, "model": str(root / "escape")}, headers=headers)
        assert _error(bad)["param"] == "model"


def test_http_rewards_are_off_unless_allowed(settings, tokens, sent) -> None:
    headers = {"Authorization": f"Bearer {tokens['alice']}"}
    rewards = [{"name": "accuracy"}, {"name": "http", "url": "http://169.254.169.254/latest"}]
    with TestClient(create_app(settings)) as client:
        error = _error(client.post("/v1/jobs", json={**GRPO, "reward_funcs": rewards}, headers=headers))
        assert error["param"] == "reward_funcs.1.url" and "turned off" in error["message"]
    allowed = settings.model_copy(update={"http_reward_urls": "http://127.0.0.1:9000/score"})
    with TestClient(create_app(allowed)) as client:
        error = _error(client.post("/v1/jobs", json={**GRPO, "reward_funcs": rewards}, headers=headers))
        assert error["param"] == "reward_funcs.1.url" and "not an allowed" in error["message"]
        for url in (
            "http://127.0.0.1:9000/scored",
            "http://127.0.0.1:9001/score",
            "https://127.0.0.1:9000/score",
        ):
            bad = [{"name": "http", "url": url}]
            assert _error(client.post("/v1/jobs", json={**GRPO, "reward_funcs": bad}, headers=headers))
        good = [{"name": "http", "url": "http://127.0.0.1:9000/score/v1"}]
        assert (
            client.post("/v1/jobs", json={**GRPO, "reward_funcs": good}, headers=headers).status_code == 201
        )
    assert len(sent) == 1


def test_query_integers_beyond_64_bits_are_422(client, alice, submit) -> None:
    job = submit()
    for url in (f"/v1/jobs/{job['id']}/events?after={2**64}", f"/v1/jobs?offset={2**63}"):
        res = client.get(url, headers=alice)
        assert res.status_code == 422, res.text
        assert res.json()["error"]["retryable"] is False


def test_numbers_are_finite_and_bounded_through_the_api(client, alice, sent) -> None:
    cases = {
        '{"max_steps": 1000000000000000000000000000000}': "config.max_steps",
        '{"learning_rate": Infinity}': "config.learning_rate",
        '{"adam_epsilon": NaN}': "config.adam_epsilon",
        '{"max_grad_norm": -Infinity}': "config.max_grad_norm",
        '{"adam_epsilon": Infinity}': "config.adam_epsilon",
        '{"max_grad_norm": Infinity}': "config.max_grad_norm",
        '{"learning_rate": 1e999}': "config.learning_rate",
        '{"max_steps": true}': "config.max_steps",
        '{"max_steps": 0}': "config.max_steps",
    }
    for config, param in cases.items():
        raw = json.dumps({**SFT_SPEC, "config": "CONFIG"}).replace('"CONFIG"', config)
        res = client.post("/v1/jobs", content=raw, headers={**alice, "content-type": "application/json"})
        error = _error(res)
        assert error["param"] == param, (config, error)
        assert "greater than" not in error["message"], error["message"]
    assert sent == []
