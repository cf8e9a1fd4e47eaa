"""Tokens: shape, sha256 storage, lookup, revocation, last-used stamping."""

from __future__ import annotations

import hashlib
from datetime import timedelta

from sqlalchemy import select

from core.auth import authenticate, create_user_and_token
from core.models import ApiToken, User, utcnow


def test_token_is_stored_as_sha256_only(make_session) -> None:
    with make_session() as session, session.begin():
        user, raw = create_user_and_token(session, "alice", "laptop")
    assert raw.startswith("pt_") and len(raw) >= 40
    with make_session() as session:
        row = session.scalars(select(ApiToken)).one()
        assert row.token_hash == hashlib.sha256(raw.encode()).hexdigest()
        assert raw not in (row.token_hash, row.token_prefix) and raw.startswith(row.token_prefix)
        assert (row.name, row.user_id) == ("laptop", user.id)


def test_authenticate_known_unknown_and_revoked(make_session) -> None:
    with make_session() as session, session.begin():
        _, raw = create_user_and_token(session, "alice")
        _, other = create_user_and_token(session, "alice", "second")  # same user, second token
    with make_session() as session:
        assert session.scalars(select(User)).all()[0].name == "alice"
        assert authenticate(session, raw).name == "alice"
        assert authenticate(session, other).name == "alice"
        assert authenticate(session, raw + "x") is None
        assert authenticate(session, "") is None
        assert authenticate(session, "Bearer " + raw) is None
    with make_session() as session, session.begin():
        row = session.scalars(select(ApiToken).where(ApiToken.name == "default")).one()
        row.revoked_at = utcnow()
    with make_session() as session:
        assert authenticate(session, raw) is None
        assert authenticate(session, other) is not None


def test_last_used_is_stamped_at_most_once_a_minute(make_session) -> None:
    with make_session() as session, session.begin():
        _, raw = create_user_and_token(session, "alice")
    with make_session() as session, session.begin():
        authenticate(session, raw)
        first = session.scalars(select(ApiToken)).one().last_used_at
    assert first is not None
    with make_session() as session, session.begin():
        authenticate(session, raw)
        assert session.scalars(select(ApiToken)).one().last_used_at == first
        session.scalars(select(ApiToken)).one().last_used_at = first - timedelta(minutes=5)
    with make_session() as session, session.begin():
        authenticate(session, raw)
        assert session.scalars(select(ApiToken)).one().last_used_at > first
