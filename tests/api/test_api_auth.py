"""Bearer auth: 401 with a typed body for missing, unknown and revoked tokens; users only see their own jobs."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from core.models import ApiToken, User, utcnow

ERROR_KEYS = {"code", "message", "category", "retryable", "remediation"}


def _assert_401(res, code: str) -> None:
    assert res.status_code == 401
    assert res.headers["www-authenticate"] == "Bearer"
    error = res.json()["error"]
    assert set(error) >= ERROR_KEYS
    assert (error["code"], error["category"], error["retryable"]) == (code, "user", False)
    assert "create-token" in error["remediation"]


def test_no_token(client, tokens) -> None:
    _assert_401(client.get("/v1/jobs"), "unauthenticated")


@pytest.mark.parametrize("header", ["Bearer pt_not-a-real-token", "Bearer ", "Basic YWxpY2U6cHc=", "pt_x"])
def test_bad_token(client, tokens, header) -> None:
    res = client.get("/v1/jobs", headers={"Authorization": header})
    _assert_401(res, "invalid_token" if header.startswith("Bearer pt_") else "unauthenticated")


def test_revoked_token(client, tokens, alice, db) -> None:
    assert client.get("/v1/jobs", headers=alice).status_code == 200
    with db() as session, session.begin():
        token = session.scalars(select(ApiToken).join(User).where(User.name == "alice")).one()
        token.revoked_at = utcnow()
    _assert_401(client.get("/v1/jobs", headers=alice), "invalid_token")


def test_every_v1_route_needs_a_token(client, app, tokens) -> None:
    for route in app.routes:
        path = getattr(route, "path", "")
        if not path.startswith("/v1"):
            continue
        for method in route.methods - {"HEAD"}:
            res = client.request(method, path.replace("{job_id}", "job_x").replace("{preset_id}", "p"))
            assert res.status_code == 401, (method, path)


def test_users_see_only_their_own_jobs(client, submit, alice, bob) -> None:
    mine = submit()["id"]
    theirs = submit(headers=bob)["id"]
    assert [j["id"] for j in client.get("/v1/jobs", headers=alice).json()["jobs"]] == [mine]
    assert [j["id"] for j in client.get("/v1/jobs", headers=bob).json()["jobs"]] == [theirs]
    for method, path in [
        ("GET", f"/v1/jobs/{mine}"),
        ("POST", f"/v1/jobs/{mine}/cancel"),
        ("POST", f"/v1/jobs/{mine}/retry"),
        ("GET", f"/v1/jobs/{mine}/events"),
        ("GET", f"/v1/jobs/{mine}/metrics"),
        ("GET", f"/v1/jobs/{mine}/checkpoints"),
    ]:
        res = client.request(method, path, headers=bob)
        assert res.status_code == 404, (method, path)
        assert res.json()["error"]["code"] == "job_not_found"
    # bob's attempt to cancel changed nothing
    assert client.get(f"/v1/jobs/{mine}", headers=alice).json()["status"] == "queued"
