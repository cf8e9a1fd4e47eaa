"""What the dashboard reads from the API: who is signed in, the algorithms with their spec schema, the
built-in sets per algorithm, filtered and sorted job lists, checkpoint downloads, the security headers on
every response and a clear answer when the browser assets are not installed."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import pytest

import api.web
from core.models import JobEvent
from core.transitions import transition
from engine.spec import ALGORITHMS, RUNNABLE_ALGORITHMS
from engine.spec.job import BUILTIN_DATASET_ALGORITHMS


@pytest.mark.parametrize("path", ["/", "/docs", "/healthz", "/v1/jobs", "/v1/nothing", "/web/style.css"])
def test_every_response_carries_the_security_headers(client, alice, path) -> None:
    res = client.get(path, headers=alice)
    csp = res.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "frame-ancestors 'none'" in csp
    assert res.headers["x-frame-options"] == "DENY"
    assert res.headers["x-content-type-options"] == "nosniff"
    assert res.headers["referrer-policy"] == "no-referrer"


def test_me_names_the_token_owner(client, alice, bob) -> None:
    assert client.get("/v1/me", headers=alice).json()["name"] == "alice"
    assert client.get("/v1/me", headers=bob).json()["name"] == "bob"
    assert client.get("/v1/me").status_code == 401


def test_algorithms_list_runnable_flags_and_fitting_sets(client, alice) -> None:
    algos = {a["id"]: a for a in client.get("/v1/algorithms", headers=alice).json()["algorithms"]}
    assert list(algos) == list(ALGORITHMS)
    for name, algo in algos.items():
        assert algo["runnable"] == (name in RUNNABLE_ALGORITHMS)
        assert algo["builtin_datasets"] == sorted(
            k for k, v in BUILTIN_DATASET_ALGORITHMS.items() if name in v
        )
    assert algos["grpo"]["builtin_datasets"] == ["arithmetic", "shapes"]
    assert algos["gkd"]["builtin_datasets"] == ["chat"] and algos["gkd"]["family"] == "distillation"
    assert (algos["rloo"]["family"], algos["kto"]["family"]) == ("online", "offline")


def test_algorithm_schema_describes_the_config_with_defaults(client, alice) -> None:
    schema = client.get("/v1/algorithms/grpo/schema", headers=alice).json()
    assert {"model", "dataset", "config", "reward_funcs"} <= set(schema["properties"])
    config = schema["$defs"]["GRPOConfig"]["properties"]
    assert config["num_generations"]["default"] == 8 and "dapo" in config["loss_type"]["enum"]
    res = client.get("/v1/algorithms/nope/schema", headers=alice)
    assert res.status_code == 404 and res.json()["error"]["param"] == "algorithm"


def test_builtin_datasets_say_which_algorithms_they_feed(client, alice) -> None:
    sets = client.get("/v1/datasets/builtin", headers=alice).json()["datasets"]
    assert {s["name"]: set(s["algorithms"]) for s in sets} == BUILTIN_DATASET_ALGORITHMS


def _ids(client, headers, query: str) -> list[str]:
    res = client.get(f"/v1/jobs?{query}", headers=headers)
    assert res.status_code == 200, res.text
    return [j["id"] for j in res.json()["jobs"]]


def test_jobs_filter_by_algorithm_preset_and_text(client, alice, bob, submit) -> None:
    sft = submit(name="alpha-sft")["id"]
    dpo = submit(name="beta-dpo", algorithm="dpo", dataset={"builtin": "preferences", "num_rows": 8})["id"]
    preset = client.post(
        "/v1/jobs",
        json={"preset": "dpo", "model": "tiny:llama", "dataset": {"builtin": "preferences"}, "name": "gamma"},
        headers=alice,
    ).json()["id"]
    submit(headers=bob, name="alpha-of-bob")

    assert _ids(client, alice, "algorithm=sft") == [sft]
    assert set(_ids(client, alice, "algorithm=dpo")) == {dpo, preset}
    assert _ids(client, alice, "preset=dpo") == [preset]
    assert _ids(client, alice, "q=ALPHA") == [sft]  # case-insensitive, only alice's jobs
    assert _ids(client, alice, f"q={dpo[-6:]}") == [dpo]  # the id matches too
    page = client.get("/v1/jobs?algorithm=dpo&limit=1", headers=alice).json()
    assert page["total"] == 2 and len(page["jobs"]) == 1


def test_jobs_sort_by_a_column_and_page_by_offset(client, alice, submit) -> None:
    names = ["b", "c", "a", "d"]
    ids = {n: submit(name=n)["id"] for n in names}
    assert _ids(client, alice, "sort=name") == [ids[n] for n in sorted(names)]
    assert _ids(client, alice, "sort=-name") == [ids[n] for n in sorted(names, reverse=True)]
    page = client.get("/v1/jobs?sort=name&limit=2&offset=2", headers=alice).json()
    assert [j["name"] for j in page["jobs"]] == ["c", "d"] and page["total"] == 4
    assert page["next_cursor"] is None  # cursors page the default order only
    res = client.get("/v1/jobs?sort=owner", headers=alice)
    assert res.status_code == 422 and res.json()["error"]["param"] == "sort"


def test_checkpoint_download_zips_the_folder_inside_the_job_dir(client, alice, submit, db) -> None:
    job = client.get(f"/v1/jobs/{submit()['id']}", headers=alice).json()
    folder = Path(job["output_dir"]) / "checkpoints" / "step-2"
    folder.mkdir(parents=True)
    (folder / "adapter.safetensors").write_bytes(b"weights")
    with db() as session, session.begin():
        session.add(JobEvent(job_id=job["id"], kind="checkpoint", step=2, data={"path": str(folder)}))
        session.add(JobEvent(job_id=job["id"], kind="checkpoint", step=3, data={"path": "/etc"}))

    res = client.get(f"/v1/jobs/{job['id']}/checkpoints/2/download", headers=alice)
    assert res.status_code == 200 and res.headers["content-type"] == "application/zip"
    assert zipfile.ZipFile(io.BytesIO(res.content)).read("adapter.safetensors") == b"weights"
    for step in (3, 9):  # outside the job's folder; never saved
        res = client.get(f"/v1/jobs/{job['id']}/checkpoints/{step}/download", headers=alice)
        assert res.status_code == 404 and res.json()["error"]["param"] == "step"


def test_final_model_download_zips_the_final_folder_of_a_succeeded_job(
    client, alice, bob, submit, db
) -> None:
    job = client.get(f"/v1/jobs/{submit()['id']}", headers=alice).json()
    url = f"/v1/jobs/{job['id']}/model/download"
    res = client.get(url, headers=alice)
    assert res.status_code == 409 and res.json()["error"]["code"] == "model_not_ready"
    with db() as session, session.begin():
        transition(session, job["id"], "running")
        transition(session, job["id"], "succeeded")
    res = client.get(url, headers=alice)  # succeeded, but the folder is gone
    assert res.status_code == 404 and res.json()["error"]["remediation"]
    final = Path(job["output_dir"]) / "final"
    final.mkdir(parents=True)
    (final / "config.json").write_text('{"model_type": "llama"}')
    res = client.get(url, headers=alice)
    assert res.status_code == 200 and res.headers["content-type"] == "application/zip"
    assert f"{job['id']}-final.zip" in res.headers["content-disposition"]
    assert zipfile.ZipFile(io.BytesIO(res.content)).read("config.json") == b'{"model_type": "llama"}'
    assert client.get(url, headers=bob).status_code == 404  # someone else's job


def test_missing_browser_assets_get_a_message_naming_the_fix(client, monkeypatch, tmp_path) -> None:
    monkeypatch.setitem(api.web.VENDOR, "uplot", tmp_path / "absent")
    for path in ("/", "/docs", "/vendor/uplot/uPlot.esm.js"):
        res = client.get(path)
        assert res.status_code == 503 and "make install" in res.text, path
    assert client.get("/vendor/swagger-ui/../../package.json").status_code == 404
