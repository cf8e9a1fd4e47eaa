"""Idempotency-Key on job creation and uploads: same key and body -> the first result; another body -> 409."""

from __future__ import annotations

from api_testkit import SFT_SPEC
from sqlalchemy import func, select

from core.models import Job, UploadedFile

ROWS = b'{"prompt": "a", "completion": "b"}\n'


def _count(db, model) -> int:
    with db() as session:
        return session.scalar(select(func.count()).select_from(model))


def test_same_key_and_body_return_the_first_job(client, alice, db, sent) -> None:
    headers = {**alice, "Idempotency-Key": "ci-run-1"}
    first = client.post("/v1/jobs", json=SFT_SPEC, headers=headers)
    again = client.post("/v1/jobs", json=dict(reversed(list(SFT_SPEC.items()))), headers=headers)
    assert first.status_code == again.status_code == 201
    assert again.json()["id"] == first.json()["id"]
    assert _count(db, Job) == 1 and len(sent) == 1  # stored and enqueued once


def test_same_key_with_another_body_is_409(client, alice, db) -> None:
    headers = {**alice, "Idempotency-Key": "ci-run-2"}
    first = client.post("/v1/jobs", json=SFT_SPEC, headers=headers).json()
    res = client.post("/v1/jobs", json={**SFT_SPEC, "name": "other"}, headers=headers)
    assert res.status_code == 409
    error = res.json()["error"]
    assert error["code"] == "idempotency_key_reused" and error["param"] == "Idempotency-Key"
    assert first["id"] in error["message"]
    assert _count(db, Job) == 1


def test_keys_are_per_user_and_failed_requests_store_nothing(client, alice, bob, db) -> None:
    key = {"Idempotency-Key": "shared"}
    bad = client.post("/v1/jobs", json={**SFT_SPEC, "model": ""}, headers={**alice, **key})
    assert bad.status_code == 422
    a = client.post("/v1/jobs", json=SFT_SPEC, headers={**alice, **key}).json()  # the fixed retry is accepted
    b = client.post("/v1/jobs", json=SFT_SPEC, headers={**bob, **key}).json()
    assert a["id"] != b["id"] and _count(db, Job) == 2


def test_key_is_checked(client, alice) -> None:
    res = client.post("/v1/jobs", json=SFT_SPEC, headers={**alice, "Idempotency-Key": "x" * 256})
    assert res.status_code == 422 and res.json()["error"]["param"] == "Idempotency-Key"


def test_uploads_replay_and_conflict(client, alice, db) -> None:
    headers = {**alice, "Idempotency-Key": "upload-1"}
    first = client.post("/v1/files", files={"file": ("d.jsonl", ROWS)}, headers=headers)
    again = client.post("/v1/files", files={"file": ("d.jsonl", ROWS)}, headers=headers)
    assert first.status_code == again.status_code == 201
    assert again.json() == first.json()
    other = client.post("/v1/files", files={"file": ("d.jsonl", ROWS * 2)}, headers=headers)
    assert other.status_code == 409 and other.json()["error"]["param"] == "Idempotency-Key"
    assert _count(db, UploadedFile) == 1
    without = client.post("/v1/files", files={"file": ("d.jsonl", ROWS)}, headers=alice)
    assert without.json()["id"] != first.json()["id"]
