"""The offline deployment checkers: Debian's `docker-compose` (v1 validates a file without an engine), and
hadolint + Helm's library + kubernetes-validate in the `.venv-deploy` tools environment (`make deploy-tools`).
A missing tool skips its tests, except where PAPERTRAIN_REQUIRE_SERVICES is set (CI): there it fails."""

from __future__ import annotations

import shutil
import subprocess

import pytest
from deploy_testkit import TOOLS_VENV, require_tool


@pytest.fixture(scope="session")
def docker_compose() -> str:
    return require_tool(shutil.which("docker-compose"), "docker-compose (Debian package)")


@pytest.fixture(scope="session")
def hadolint() -> str:
    return require_tool(TOOLS_VENV / "bin" / "hadolint", "hadolint")


@pytest.fixture(scope="session")
def tools_python() -> str:
    python = require_tool(TOOLS_VENV / "bin" / "python", "the deploy tools environment")
    probe = subprocess.run(
        [python, "-c", "import helm_python, kubernetes_validate"], capture_output=True, text=True
    )
    if probe.returncode != 0:
        require_tool(None, f"helm-python-sdk / kubernetes-validate ({probe.stderr.strip()[-200:]})")
    return python
