"""`Idempotency-Key` on create requests (jobs, uploads): a retried request gets the first result.

    key = check_key(header)                                  # None when the client sent none
    replay = find(session, user, "jobs", key, digest)        # the first resource's id, or None
    ... create ...; remember(session, user, "jobs", key, digest, job.id)   # same transaction

The same key with another body is a 409. Keys are per user and per scope; a request that failed (a 422)
stores nothing, so it can be fixed and sent again with the same key.
"""

from __future__ import annotations

import hashlib
import json
from typing import Annotated, Any

from fastapi import Header
from sqlalchemy import select
from sqlalchemy.orm import Session

from api.errors import ApiError
from core.models import IdempotencyKey, User

HEADER = "Idempotency-Key"
MAX_KEY = 255

KeyHeader = Annotated[
    str | None,
    Header(
        alias=HEADER,
        description="a unique id per logical request: a retry with the same key and body returns the first "
        "result; the same key with another body is a 409",
    ),
]


def check_key(key: str | None) -> str | None:
    if key is None:
        return None
    if not key.strip() or len(key) > MAX_KEY:
        raise ApiError(
            422,
            "invalid_request",
            f"{HEADER} must be 1 to {MAX_KEY} characters",
            param=HEADER,
            remediation="send a unique id per logical request, e.g. a UUID",
        )
    return key


def json_digest(body: Any) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def find(session: Session, user: User, scope: str, key: str, digest: str) -> str | None:
    """The id the first request with `key` created, or None; a 409 when that request had another body."""
    row = session.scalars(
        select(IdempotencyKey).where(
            IdempotencyKey.user_id == user.id, IdempotencyKey.scope == scope, IdempotencyKey.key == key
        )
    ).one_or_none()
    if row is None:
        return None
    if row.request_hash != digest:
        raise ApiError(
            409,
            "idempotency_key_reused",
            f"{HEADER} {key!r} was already used with a different request body (it created {row.resource_id})",
            param=HEADER,
            remediation="use a new key for a new request; resend the original body to get its result",
        )
    return row.resource_id


def remember(session: Session, user: User, scope: str, key: str, digest: str, resource_id: str) -> None:
    """Record the key in the caller's transaction (a concurrent twin fails on the unique constraint)."""
    session.add(
        IdempotencyKey(user_id=user.id, scope=scope, key=key, request_hash=digest, resource_id=resource_id)
    )
