"""Request dependencies: the settings, a database session per request, and the authenticated user.

    def handler(session: SessionDep, user: PrincipalDep, settings: SettingsDep): ...

Routes never open sessions or read headers themselves.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from api.errors import ApiError
from core.auth import authenticate
from core.db import SessionLocal
from core.models import User
from core.settings import Settings


def get_settings_dep(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def get_session(request: Request) -> Iterator[Session]:
    """One session per request; services commit explicitly, anything uncommitted is rolled back."""
    session = SessionLocal(bind=request.app.state.engine)
    try:
        yield session
    finally:
        session.rollback()
        session.close()


SettingsDep = Annotated[Settings, Depends(get_settings_dep)]
SessionDep = Annotated[Session, Depends(get_session)]

_bearer = HTTPBearer(auto_error=False, description="an API token: `papertrain create-token --user NAME`")
_REMEDIATION = (
    "send `Authorization: Bearer <token>`; create a token with `papertrain create-token --user NAME` "
    "(embedded mode writes one to var/admin-token)"
)


def get_principal(
    session: SessionDep, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> User:
    headers = {"WWW-Authenticate": "Bearer"}
    if credentials is None or credentials.scheme.lower() != "bearer" or not credentials.credentials:
        raise ApiError(
            401, "unauthenticated", "missing bearer token", remediation=_REMEDIATION, headers=headers
        )
    user = authenticate(session, credentials.credentials)
    if user is None:
        raise ApiError(
            401,
            "invalid_token",
            "the token is unknown or revoked",
            remediation=_REMEDIATION,
            headers=headers,
        )
    if session.dirty:  # last_used_at moved
        session.commit()
    return user


PrincipalDep = Annotated[User, Depends(get_principal)]
