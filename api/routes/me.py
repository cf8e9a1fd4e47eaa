"""`/v1/me`: who the bearer token belongs to (the dashboard shows it)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from api.deps import PrincipalDep
from api.errors import ErrorBody
from api.schemas import Me

router = APIRouter(prefix="/v1/me", tags=["users"], responses={401: {"model": ErrorBody}})


@router.get("", response_model=Me, operation_id="get_me")
def get_me(user: PrincipalDep) -> Any:
    return user
