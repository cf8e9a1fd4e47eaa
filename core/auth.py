"""API tokens: generation, hashing, creation and lookup.

A raw token (`pt_` + 43 url-safe characters) is shown once when created; the database keeps only its
sha256 hex digest and a short prefix for display. There are no passwords and no sessions: every request
carries `Authorization: Bearer <token>`.
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from core.models import ApiToken, User, utcnow

TOKEN_PREFIX = "pt_"
# last_used_at is informational; writing it on every request would make reads contend for SQLite's lock.
LAST_USED_RESOLUTION = timedelta(minutes=1)


def generate_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def hash_token(raw_token: str) -> str:
    return hashlib.sha256(raw_token.encode()).hexdigest()


def get_or_create_user(session: Session, name: str) -> User:
    user = session.scalars(select(User).where(User.name == name)).one_or_none()
    if user is None:
        user = User(name=name)
        session.add(user)
        session.flush()
    return user


def create_token(session: Session, user: User, name: str = "default") -> tuple[ApiToken, str]:
    """A new token for `user`; returns the row and the raw token (the only time it is available)."""
    raw = generate_token()
    token = ApiToken(user_id=user.id, name=name, token_prefix=raw[:10], token_hash=hash_token(raw))
    session.add(token)
    session.flush()
    return token, raw


def create_user_and_token(session: Session, user_name: str, token_name: str = "default") -> tuple[User, str]:
    """Create the user if needed and a new token for them; the caller commits."""
    user = get_or_create_user(session, user_name)
    _, raw = create_token(session, user, token_name)
    return user, raw


def authenticate(session: Session, raw_token: str) -> User | None:
    """The user a live (not revoked) token belongs to, or None. Touches last_used_at at most once a minute."""
    if not raw_token or not raw_token.startswith(TOKEN_PREFIX):
        return None
    token = session.scalars(
        select(ApiToken).where(ApiToken.token_hash == hash_token(raw_token), ApiToken.revoked_at.is_(None))
    ).one_or_none()
    if token is None:
        return None
    now = utcnow()
    if token.last_used_at is None or now - token.last_used_at > LAST_USED_RESOLUTION:
        token.last_used_at = now
    return token.user
