"""The SDK and the CLI (as a subprocess) against a running platform, training tiny:llama jobs."""

from __future__ import annotations

import json
import subprocess
import sys
import xml.etree.ElementTree as ET
import zipfile

import pytest
import yaml
from clients_testkit import tiny_sft
from papertrain_sdk import Client, InvalidRequest, NotFound

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

CHAT_ROWS = "".join(
    json.dumps({"messages": [{"role": "user", "content": f"say {w}"}, {"role": "assistant", "content": w}]})
    + "\n"
    for w in ("cat", "dog", "sun", "moon", "tree", "book", "fish", "bird")
)


def cli(platform, *args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "papertrain_sdk", *args],
        env=platform.env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_sdk_drives_a_job_from_upload_to_checkpoint_download(platform, tmp_path) -> None:
    data = tmp_path / "chat.jsonl"
    data.write_text(CHAT_ROWS)
    with Client(platform.url, platform.token) as client:
        upload = client.files.upload(data, idempotency_key="sdk-upload")
        assert upload.rows == 8 and client.files.upload(data, idempotency_key="sdk-upload").id == upload.id
        spec = {**tiny_sft(steps=2), "dataset": {"file_id": upload.id}}

        dry = client.jobs.validate(spec)
        assert dry.estimate["steps"] == 2 and dry.spec["config"]["max_steps"] == 2

        job = client.jobs.create(spec, idempotency_key="sdk-job")
        assert client.jobs.create(spec, idempotency_key="sdk-job").id == job.id
        events = list(client.jobs.stream(job.id))  # ends by itself when the job is terminal
        job = client.jobs.get(job.id)
        assert job.status == "succeeded", job.error
        kinds = [e.kind for e in events]
        assert {"status", "progress", "metrics", "checkpoint"} <= set(kinds)
        assert [e.id for e in events] == sorted(e.id for e in events)
        assert events[-1].kind == "status" and events[-1].data["to"] == "succeeded"
        resumed = list(client.jobs.stream(job.id, after=events[1].id))
        assert [e.id for e in resumed] == [e.id for e in events[2:]]

        assert [step for step, _ in client.jobs.metrics(job.id)["train/loss"]] == [1, 2]
        (ckpt,) = client.jobs.checkpoints(job.id)
        archive = client.jobs.download_checkpoint(job.id, ckpt.step, tmp_path)
        assert zipfile.is_zipfile(archive) and zipfile.ZipFile(archive).namelist()
        model = client.jobs.download_model(job.id, tmp_path)
        assert model.name == f"{job.id}-final.zip" and "config.json" in zipfile.ZipFile(model).namelist()
        assert job.id in [j.id for j in client.jobs.list(status="succeeded").jobs]
        assert client.jobs.wait(job.id, timeout=5).status == "succeeded"

        with pytest.raises(InvalidRequest) as bad:
            client.jobs.create({**spec, "config": {"max_steps": 2, "lerning_rate": 1.0}})
        assert bad.value.param == "config.lerning_rate" and bad.value.status == 422
        with pytest.raises(NotFound) as missing:
            client.jobs.get("job_nope")
        assert missing.value.param == "job_id"
        assert any(p.id == "dapo" for p in client.presets.list())


def test_cli_submit_wait_gates_json_and_junit(platform, tmp_path) -> None:
    spec = tmp_path / "job.yaml"
    spec.write_text(yaml.safe_dump(tiny_sft(steps=3)))
    junit = tmp_path / "report.xml"
    res = cli(
        platform,
        "jobs",
        "submit",
        str(spec),
        "--set",
        "config.max_steps=2",
        "--set",
        "name=ci-gate",
        "--wait",
        "--gate",
        "train/loss<1000",
        "--gate",
        "max(train/loss)>0",
        "--output",
        "json",
        "--junit",
        str(junit),
    )
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    job_id = out["job"]["id"]
    assert out["job"]["status"] == "succeeded" and out["job"]["spec_resolved"]["config"]["max_steps"] == 2
    assert [g["passed"] for g in out["gates"]] == [True, True] and out["exit_code"] == 0
    assert "step 2/2" in res.stderr  # plain progress lines (not a terminal)
    suite = ET.parse(junit).getroot()
    assert suite.get("tests") == "3" and suite.get("failures") == "0"

    # the same finished job against a gate it does not meet: exit 3 and a JUnit failure
    res = cli(platform, "jobs", "wait", job_id, "--gate", "train/loss<0", "--junit", str(junit))
    assert res.returncode == 3, res.stderr
    assert "FAILED" in res.stderr
    failures = ET.parse(junit).getroot().findall(".//failure")
    assert len(failures) == 1 and "train/loss" in failures[0].get("message")
    res = cli(platform, "jobs", "wait", job_id, "--gate", "rollout/reward_mean>=0.3")
    assert res.returncode == 3 and "never logged" in res.stderr

    res = cli(platform, "jobs", "logs", job_id)
    assert res.returncode == 0 and "status queued -> running" in res.stdout
    res = cli(platform, "jobs", "list", "--output", "json")
    assert job_id in [j["id"] for j in json.loads(res.stdout)]


def test_cli_exit_codes_for_refusals_cancel_and_unreachable(platform, tmp_path) -> None:
    spec = tmp_path / "job.yaml"
    spec.write_text(yaml.safe_dump(tiny_sft(steps=3)))

    res = cli(platform, "jobs", "submit", str(spec), "--set", "config.beta=0.0", "--output", "json")
    assert res.returncode == 5
    assert json.loads(res.stdout)["error"]["param"] == "config.beta"

    res = cli(platform, "jobs", "submit", str(spec), "--gate", "train/loss<<1")
    assert res.returncode == 2 and "is not a number" in res.stderr

    res = cli(platform, "jobs", "submit", str(spec), "--set", "config.max_steps=100000", "--output", "json")
    assert res.returncode == 0, res.stderr
    job_id = json.loads(res.stdout)["id"]
    assert cli(platform, "jobs", "cancel", job_id).returncode == 0
    res = cli(platform, "jobs", "wait", job_id, "--output", "json")
    assert res.returncode == 4 and json.loads(res.stdout)["job"]["status"] == "cancelled"

    res = cli(platform, "presets", "show", "dapo", "--output", "json")
    assert res.returncode == 0 and json.loads(res.stdout)["algorithm"] == "grpo"

    res = cli(platform, "jobs", "list", "--url", "http://127.0.0.1:9")
    assert res.returncode == 6 and "did not answer" in res.stderr
