"""`/v1/admin`: operators' routes (users with `is_admin`): every API token, and revoking one. Admins also see,
inspect and cancel every user's jobs through `/v1/jobs`."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel

from api.deps import PrincipalDep, SessionDep
from api.errors import ApiError, ErrorBody
from core.models import User
from core.tokens import list_tokens, revoke_token

router = APIRouter(
    prefix="/v1/admin",
    tags=["admin"],
    responses={401: {"model": ErrorBody}, 403: {"model": ErrorBody}, 404: {"model": ErrorBody}},
)


class TokenOut(BaseModel):
    id: int
    user: str
    name: str
    prefix: str
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None


class TokenList(BaseModel):
    tokens: list[TokenOut]


def require_admin(user: User) -> None:
    if not user.is_admin:
        raise ApiError(
            403,
            "admin_only",
            "this route is for operators",
            remediation="use an admin token (`papertrain create-token --user NAME --admin`)",
        )


@router.get("/tokens", response_model=TokenList, operation_id="admin_list_tokens")
def admin_list_tokens(session: SessionDep, user: PrincipalDep) -> Any:
    """Every API token (never its secret), newest first."""
    require_admin(user)
    return {"tokens": list_tokens(session)}


@router.post("/tokens/{token_id}/revoke", response_model=TokenOut, operation_id="admin_revoke_token")
def admin_revoke_token(session: SessionDep, user: PrincipalDep, token_id: int) -> Any:
    """Revoke a token: requests carrying it are 401 from now on."""
    require_admin(user)
    row = revoke_token(session, token_id)
    if row is None:
        raise ApiError(404, "token_not_found", f"no token {token_id}", param="token_id")
    session.commit()
    return row
