"""A running platform for the client tests: the embedded launcher (api + worker + the real engine) on a
free port with its own SQLite database and broker under a temp folder, and an admin token.

The SDK lives in `sdk/` (installed by `make install`); when it is not installed the tests import it from
the checkout.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

REPO = Path(__file__).resolve().parents[2]
try:
    import papertrain_sdk  # noqa: F401
except ImportError:
    sys.path.insert(0, str(REPO / "sdk"))


@dataclass(frozen=True)
class Platform:
    url: str
    token: str
    env: dict[str, str]  # the environment a client subprocess needs (PAPERTRAIN_URL, PAPERTRAIN_TOKEN, ...)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    from core.db import migrate
    from core.settings import Settings
    from papertrain.cli import ensure_admin_token
    from papertrain.launcher import settings_env

    root = tmp_path_factory.mktemp("platform")
    settings = Settings(var_dir=root / "var", port=_free_port(), heartbeat_interval_s=1, cancel_grace_s=5)
    settings.ensure_dirs()
    migrate(settings.database_url)
    token, _ = ensure_admin_token(settings)
    env = {
        **os.environ,
        **settings_env(settings),
        "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "sdk")]),
    }
    code = "from papertrain.launcher import run_embedded; from core.settings import get_settings; run_embedded(get_settings())"
    log = (root / "platform.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{settings.port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"the platform did not start: {(root / 'platform.log').read_text()[-3000:]}"
                )
            time.sleep(0.3)
        yield Platform(url=url, token=token, env={**env, "PAPERTRAIN_URL": url, "PAPERTRAIN_TOKEN": token})
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log.close()
