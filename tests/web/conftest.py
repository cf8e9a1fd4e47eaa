"""Fixtures for the dashboard's browser tests: the platform (api + a real worker, SQLite, a free port)
started once for the module, tokens for two users, and a chromium page that fails its test on any
console error or uncaught exception.

The browser is Debian's chromium (`apt-get install chromium`, done by `.ci/run`), driven by the pinned
Python `playwright` package; no browser is downloaded.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from core.settings import Settings
from papertrain.launcher import REPO_ROOT, settings_env

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
VIEWPORT = {"width": 1366, "height": 860}  # a laptop screen
MLFLOW_UI_URL = "http://mlflow.example.test"  # only linked to, never opened


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Platform:
    def __init__(self, base: str, tokens: dict[str, str]) -> None:
        self.base = base
        self.tokens = tokens
        self.mlflow_ui_url = MLFLOW_UI_URL
        self.http = httpx.Client(base_url=base, timeout=30)

    def call(self, user: str, method: str, path: str, **kwargs: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.tokens[user]}"}
        return self.http.request(method, path, headers=headers, **kwargs)

    def wait_status(self, user: str, job_id: str, statuses: set[str], timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            job = self.call(user, "GET", f"/v1/jobs/{job_id}").json()
            if job["status"] in statuses:
                return job
            time.sleep(0.5)
        raise AssertionError(f"job {job_id} did not reach {sorted(statuses)} in {timeout}s: {job['status']}")


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    from core.auth import create_user_and_token
    from core.db import get_engine, migrate, session_scope

    if not Path(CHROMIUM).exists():
        message = f"{CHROMIUM} is missing: `apt-get install -y chromium` (.ci/run does)"
        if os.environ.get("PAPERTRAIN_REQUIRE_SERVICES"):
            pytest.fail(message)
        pytest.skip(message)
    root = tmp_path_factory.mktemp("platform")
    settings = Settings(
        var_dir=root / "var", host="127.0.0.1", port=_free_port(), mlflow_ui_url=MLFLOW_UI_URL
    )
    settings.ensure_dirs()
    migrate(settings.database_url)
    tokens = {}
    with session_scope(get_engine(settings.database_url)) as session:
        for user in ("alice", "bob"):
            _, tokens[user] = create_user_and_token(session, user)
    env = {**os.environ, **settings_env(settings), "PYTHONPATH": str(REPO_ROOT)}
    code = "from papertrain.launcher import run_embedded; from core.settings import get_settings; run_embedded(get_settings())"
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, cwd=REPO_ROOT)
    platform = Platform(f"http://{settings.host}:{settings.port}", tokens)
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                if platform.http.get("/healthz").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError("the platform did not start")
            time.sleep(0.5)
        yield platform
    finally:
        platform.http.close()
        proc.terminate()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def browser(platform: Platform) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


class ConsoleWatch:
    """Collects console errors and page exceptions. A test that provokes an HTTP error on purpose (a
    wrong token, an invalid form) declares it with `expect(status, path)`: Chromium logs every failed
    request as a console error, and only the declared ones are forgiven, once each."""

    FAILED = re.compile(r"Failed to load resource: the server responded with a status of (\d+)")

    def __init__(self) -> None:
        self.problems: list[str] = []
        self.expected: list[tuple[int, str]] = []

    def expect(self, status: int, path: str) -> None:
        self.expected.append((status, path))

    def on_console(self, msg: Any) -> None:
        if msg.type != "error":
            return
        failed = self.FAILED.search(msg.text)
        url = (msg.location or {}).get("url", "")
        if failed:
            for allowance in self.expected:
                if allowance[0] == int(failed.group(1)) and urlsplit(url).path == allowance[1]:
                    self.expected.remove(allowance)
                    return
        self.problems.append(f"console error: {msg.text} ({url})")


@pytest.fixture
def console() -> ConsoleWatch:
    return ConsoleWatch()


@pytest.fixture
def page(browser: Any, platform: Platform, console: ConsoleWatch) -> Iterator[Any]:
    """A fresh browser context; any console error or page exception fails the test."""
    context = browser.new_context(viewport=VIEWPORT, base_url=platform.base, accept_downloads=True)
    page = context.new_page()
    page.set_default_timeout(20_000)
    page.on("console", console.on_console)
    page.on("pageerror", lambda exc: console.problems.append(f"page error: {exc}"))
    page.on("dialog", lambda dialog: dialog.accept())  # the cancel confirmation
    yield page
    context.close()
    assert not console.problems, "\n".join(console.problems)


@pytest.fixture
def login(platform: Platform) -> Any:
    """login(page, user): sign in through the form and wait until the dashboard names the user."""

    def sign_in(page: Any, user: str) -> None:
        page.goto("/")
        page.fill("#token", platform.tokens[user])
        page.press("#token", "Enter")
        page.wait_for_selector(f"#whoami:has-text('{user}')")

    return sign_in


@pytest.fixture
def screenshot() -> Any:
    """Saves a screenshot when PAPERTRAIN_SCREENSHOT_DIR is set (how docs/screenshots are made)."""
    folder = os.environ.get("PAPERTRAIN_SCREENSHOT_DIR")

    def take(page: Any, name: str, **kwargs: Any) -> None:
        if folder:
            Path(folder).mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(Path(folder) / f"{name}.png"), **kwargs)

    return take
