"""The typed error body every failure returns, and the handlers that produce it.

    {"error": {"code", "message", "param", "category": "user|platform|infra", "retryable", "remediation"}}

`param` is the dotted path of the offending field (`config.steps_per_generation`) when there is one.
Pydantic errors become 422s here; cross-field `SpecError`s carry their own field path.
"""

from __future__ import annotations

import difflib
import logging
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy.exc import OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException

from engine.spec import ALGORITHMS

log = logging.getLogger(__name__)

Category = Literal["user", "platform", "infra"]


class ErrorInfo(BaseModel):
    code: str
    message: str
    param: str | None = None
    category: Category = "user"
    retryable: bool = False
    remediation: str | None = None
    details: list[dict[str, Any]] | None = None


class ErrorBody(BaseModel):
    error: ErrorInfo


class ApiError(Exception):
    """Raised by services; rendered as the typed error body with `status`."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        param: str | None = None,
        category: Category = "user",
        retryable: bool = False,
        remediation: str | None = None,
        details: list[dict[str, Any]] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.headers = headers
        self.info = ErrorInfo(
            code=code,
            message=message,
            param=param,
            category=category,
            retryable=retryable,
            remediation=remediation,
            details=details,
        )


def error_response(status: int, info: ErrorInfo, headers: dict[str, str] | None = None) -> JSONResponse:
    body = info.model_dump(mode="json")
    if body["details"] is None:
        del body["details"]
    return JSONResponse(status_code=status, content={"error": body}, headers=headers)


def _dotted(loc: tuple[Any, ...] | list[Any]) -> str:
    return ".".join(str(p) for p in loc)


def _suggest(name: str, known: list[str]) -> str:
    close = difflib.get_close_matches(name, known, n=1)
    return f"did you mean {close[0]!r}? " if close else ""


def describe_errors(
    errors: Sequence[Mapping[str, Any]], *, strip: int = 0, known_fields: dict[str, list[str]] | None = None
) -> list[dict[str, Any]]:
    """One `{param, message}` per pydantic error.

    `strip` drops leading `loc` items that are not field names (the union tag of a job spec, "body").
    `known_fields` maps a parent path ("" = top level, "config") to its field names, for typo hints.
    """
    out = []
    for err in errors:
        loc = list(err.get("loc", ()))[strip:]
        kind = err.get("type", "")
        cause = (err.get("ctx") or {}).get("error")
        msg = str(err.get("msg", "invalid value")).removeprefix("Value error, ")
        field_path = getattr(cause, "field", None)
        param: str | None
        if field_path:  # engine.spec.base.SpecError: a cross-field rule naming the field to fix
            param = _dotted([*loc, field_path])
            msg = str(cause).removeprefix(f"{field_path}: ")
        elif kind == "json_invalid":  # loc is ("body", character offset) before stripping
            param = "body"
            at = f" at character {loc[0]}" if loc else ""
            msg = f"the request body is not valid JSON ({cause or msg}{at}): send one JSON object"
        elif kind in ("union_tag_invalid", "union_tag_not_found"):
            param = "algorithm"
            if kind == "union_tag_not_found":
                msg = f"'algorithm' is required: one of {list(ALGORITHMS)}"
        elif kind == "extra_forbidden":
            param = _dotted(loc)
            parent, name = _dotted(loc[:-1]), str(loc[-1]) if loc else ""
            hint = _suggest(name, (known_fields or {}).get(parent, []))
            msg = f"unknown field {name!r}: {hint}remove it or check the spelling"
        else:
            param = _dotted(loc) or None
        if param and not msg.startswith((param, field_path or param)):
            msg = f"{param}: {msg}"
        out.append({"param": param, "message": msg})
    return out


def validation_error(
    errors: Sequence[Mapping[str, Any]], *, strip: int = 0, known_fields: dict[str, list[str]] | None = None
) -> ApiError:
    """A 422 naming the first invalid field; every problem is listed in `details`."""
    details = describe_errors(errors, strip=strip, known_fields=known_fields)
    first: dict[str, Any] = details[0] if details else {"param": None, "message": "invalid request"}
    more = f" (and {len(details) - 1} more problem(s), see details)" if len(details) > 1 else ""
    return ApiError(
        422,
        "invalid_spec",
        first["message"] + more,
        param=first["param"],
        remediation="fix the field named in `param`; every problem is listed in `details`",
        details=details,
    )


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(_request: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.status, exc.info, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _request_validation(_request: Request, exc: RequestValidationError) -> JSONResponse:
        # loc starts with where the value came from ("body", "query", "path"); the rest is the field path.
        err = validation_error(exc.errors(), strip=1)
        err.info.code = "invalid_request"
        return error_response(422, err.info)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        category: Category = "user" if exc.status_code < 500 else "platform"
        info = ErrorInfo(code=code, message=str(exc.detail), category=category)
        if exc.status_code in (404, 405):  # no such route, or not with this method
            info.remediation = "the API's paths and their methods are listed at /docs (and /openapi.json)"
        return error_response(exc.status_code, info, getattr(exc, "headers", None))

    @app.exception_handler(OperationalError)
    async def _db_down(_request: Request, exc: OperationalError) -> JSONResponse:
        log.error("database error: %s", exc)
        info = ErrorInfo(
            code="database_unavailable",
            message="the database did not answer; try again shortly",
            category="infra",
            retryable=True,
            remediation="check the database service (GET /healthz)",
        )
        return error_response(503, info)

    @app.exception_handler(Exception)
    async def _unexpected(_request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")
        info = ErrorInfo(
            code="internal_error",
            message=f"unexpected server error ({type(exc).__name__})",
            category="platform",
            retryable=True,
            remediation="retry; if it persists, report it with the server log",
        )
        return error_response(500, info)
