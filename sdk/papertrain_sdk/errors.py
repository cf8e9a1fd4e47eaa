"""Typed errors: every API error body (`{"error": {code, message, param, ...}}`) becomes one of these.

try:
    client.jobs.create(spec)
except InvalidRequest as exc:
    print(exc.param, exc.message)      # "config.beta", "config.beta: ..."
"""

from __future__ import annotations

from typing import Any


class PapertrainError(Exception):
    """Base class. `status` is the HTTP status (None when the server was not reached)."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str | None = None,
        param: str | None = None,
        remediation: str | None = None,
        retryable: bool = False,
        details: list[dict[str, Any]] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code
        self.param = param
        self.remediation = remediation
        self.retryable = retryable
        self.details = details or []

    def __str__(self) -> str:
        where = f" [{self.param}]" if self.param else ""
        hint = f" ({self.remediation})" if self.remediation else ""
        return f"{self.code or 'error'}{where}: {self.message}{hint}"


class Unreachable(PapertrainError):
    """The server did not answer (connection refused, DNS, timeout)."""


class AuthError(PapertrainError):
    """401/403: missing, unknown or revoked token, or not allowed."""


class NotFound(PapertrainError):
    """404: no such job, file or preset (for this user)."""


class Conflict(PapertrainError):
    """409: the job's state does not allow it, or an Idempotency-Key reused with another body."""


class InvalidRequest(PapertrainError):
    """422 (and other 4xx): the request or job spec is invalid; `param` names the field."""


class ServerError(PapertrainError):
    """5xx: the platform failed; `retryable` says whether trying again may help."""


class WaitTimeout(PapertrainError):
    """`jobs.wait` gave up before the job reached a terminal state."""


def from_response(status: int, body: Any) -> PapertrainError:
    info = body.get("error") if isinstance(body, dict) else None
    if not isinstance(info, dict):
        info = {"code": "http_error", "message": f"HTTP {status}: {str(body)[:500]}"}
    cls: type[PapertrainError]
    if status in (401, 403):
        cls = AuthError
    elif status == 404:
        cls = NotFound
    elif status == 409:
        cls = Conflict
    elif status >= 500:
        cls = ServerError
    else:
        cls = InvalidRequest
    return cls(
        str(info.get("message", "")),
        status=status,
        code=info.get("code"),
        param=info.get("param"),
        remediation=info.get("remediation"),
        retryable=bool(info.get("retryable", status >= 500)),
        details=info.get("details"),
    )
