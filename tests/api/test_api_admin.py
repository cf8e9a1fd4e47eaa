"""Operators: an admin lists, inspects and cancels every job, lists and revokes tokens; others cannot."""

from __future__ import annotations

from sqlalchemy import select

from core.auth import create_user_and_token
from core.models import User
from papertrain.cli import main as cli_main


def _admin(db) -> dict[str, str]:
    with db() as session, session.begin():
        user, raw = create_user_and_token(session, "operator", "ops")
        user.is_admin = True
    return {"Authorization": f"Bearer {raw}"}


def test_an_admin_sees_and_cancels_every_job(client, alice, bob, submit, db) -> None:
    job_id = submit()["id"]  # alice's
    assert client.get(f"/v1/jobs/{job_id}", headers=bob).status_code == 404
    assert client.post(f"/v1/jobs/{job_id}/cancel", headers=bob).status_code == 404
    admin = _admin(db)
    assert [j["id"] for j in client.get("/v1/jobs", headers=admin).json()["jobs"]] == [job_id]
    assert client.get(f"/v1/jobs/{job_id}", headers=admin).json()["id"] == job_id
    cancelled = client.post(f"/v1/jobs/{job_id}/cancel", headers=admin)
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"


def test_tokens_are_listed_and_revoked_by_admins_only(client, alice, bob, db) -> None:
    assert client.get("/v1/admin/tokens", headers=alice).status_code == 403
    admin = _admin(db)
    tokens = client.get("/v1/admin/tokens", headers=admin).json()["tokens"]
    bobs = next(t for t in tokens if t["user"] == "bob")
    assert set(bobs) >= {"id", "prefix", "revoked_at"} and not any("hash" in k for k in bobs)
    assert client.get("/v1/me", headers=bob).status_code == 200
    assert client.post(f"/v1/admin/tokens/{bobs['id']}/revoke", headers=alice).status_code == 403
    revoked = client.post(f"/v1/admin/tokens/{bobs['id']}/revoke", headers=admin)
    assert revoked.status_code == 200 and revoked.json()["revoked_at"]
    assert client.get("/v1/me", headers=bob).status_code == 401
    assert client.post("/v1/admin/tokens/999999/revoke", headers=admin).status_code == 404


def test_the_cli_lists_and_revokes_tokens(settings, tokens, db, monkeypatch, capsys) -> None:
    import papertrain.cli

    monkeypatch.setattr(papertrain.cli, "get_settings", lambda: settings)
    assert cli_main(["tokens", "list"]) == 0
    out = capsys.readouterr().out
    assert "alice" in out and "bob" in out
    with db() as session:
        bob_id = session.scalars(select(User).where(User.name == "bob")).one().tokens[0].id
    assert cli_main(["tokens", "revoke", str(bob_id)]) == 0
    assert cli_main(["tokens", "revoke", "999999"]) == 1
    with db() as session:
        assert session.scalars(select(User).where(User.name == "bob")).one().tokens[0].revoked_at is not None
