"""Token administration, shared by `papertrain tokens list|revoke` and the admin api routes.

rows = list_tokens(session)                 # every token, newest first, never the secret
revoke_token(session, token_id)             # the token stops authenticating at once
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from core.models import ApiToken, User, utcnow


def token_row(token: ApiToken) -> dict[str, Any]:
    return {
        "id": token.id,
        "user": token.user.name,
        "name": token.name,
        "prefix": token.token_prefix,
        "created_at": token.created_at,
        "last_used_at": token.last_used_at,
        "revoked_at": token.revoked_at,
    }


def list_tokens(session: Session) -> list[dict[str, Any]]:
    tokens = session.scalars(select(ApiToken).join(User).order_by(ApiToken.id.desc()))
    return [token_row(t) for t in tokens]


def revoke_token(session: Session, token_id: int) -> dict[str, Any] | None:
    """Revoke token `token_id` (a no-op when already revoked); None when there is no such token."""
    token = session.get(ApiToken, token_id)
    if token is None:
        return None
    if token.revoked_at is None:
        token.revoked_at = utcnow()
    session.flush()
    return token_row(token)
