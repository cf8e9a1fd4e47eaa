"""Paths and the tool lookup shared by the deployment checks (fixtures live in conftest.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TOOLS_VENV = Path(os.environ.get("DEPLOY_TOOLS_VENV", REPO / ".venv-deploy"))
CHART = REPO / "helm" / "papertrain"


def require_tool(path: str | Path | None, what: str) -> str:
    """`path` if it exists; otherwise skip (fail where PAPERTRAIN_REQUIRE_SERVICES is set, as in CI)."""
    if path and Path(path).exists():
        return str(path)
    message = f"{what} is not installed; `make deploy-tools` installs it"
    if os.environ.get("PAPERTRAIN_REQUIRE_SERVICES"):
        pytest.fail(message)
    pytest.skip(message)
