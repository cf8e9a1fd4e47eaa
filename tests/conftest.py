"""Suite-wide hooks. With PAPERTRAIN_REQUIRE_SERVICES set (CI sets it), an `integration` test that skips
because PostgreSQL or Redis did not answer is reported as a failure: those tests must run there."""

from __future__ import annotations

import os

import pytest


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> object:
    outcome = yield
    report = outcome.get_result()
    if (
        report.skipped
        and os.environ.get("PAPERTRAIN_REQUIRE_SERVICES")
        and item.get_closest_marker("integration")
    ):
        report.outcome = "failed"
        report.longrepr = (
            f"integration test skipped although PAPERTRAIN_REQUIRE_SERVICES is set: {report.longrepr}"
        )
