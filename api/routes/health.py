"""`/healthz`: the API is up and its database answers (no auth: for load balancers and `make up`)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from sqlalchemy import text

from api.deps import SessionDep
from api.errors import ApiError
from api.schemas import Health

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health, operation_id="healthz")
def healthz(session: SessionDep) -> Any:
    try:
        session.execute(text("SELECT 1"))
    except Exception as exc:
        raise ApiError(
            503, "database_unavailable", f"database did not answer: {exc}", category="infra", retryable=True
        ) from None
    return {"status": "ok", "database": "ok"}
