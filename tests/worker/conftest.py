from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from worker_testkit import make_settings, migrate_sqlite_template, sqlite_from_template

from core.celery_app import configure_celery


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return migrate_sqlite_template(tmp_path_factory.mktemp("template") / "papertrain.db")


@pytest.fixture(autouse=True)
def isolated_broker(tmp_path: Path):
    """Whatever a test sends without naming a broker goes to a private in-memory one, never ./var."""
    configure_celery(make_settings(tmp_path, broker_url=f"memory://localhost/{uuid.uuid4().hex}"))
    yield
    configure_celery(None)


@pytest.fixture
def settings(tmp_path: Path):
    return make_settings(tmp_path)


@pytest.fixture
def factory(settings, sqlite_template):
    maker = sqlite_from_template(sqlite_template, settings)
    yield maker
    maker.kw["bind"].dispose()
