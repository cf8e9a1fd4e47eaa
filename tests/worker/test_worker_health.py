"""`python -m worker.health`: healthy on a migrated database with a reachable broker, named reasons otherwise."""

from __future__ import annotations

from worker_testkit import make_settings

from core.db import migrate
from worker.health import problems


def test_a_migrated_database_and_a_reachable_broker_are_healthy(tmp_path):
    settings = make_settings(tmp_path)
    migrate(settings.database_url)
    assert problems(settings) == []


def test_an_unmigrated_database_and_a_dead_broker_are_named(tmp_path):
    settings = make_settings(tmp_path, broker_url="redis://:secret@127.0.0.1:1/0")
    found = problems(settings, timeout_s=1)
    assert len(found) == 2
    assert found[0].startswith("database: ")
    assert found[1].startswith("broker redis://:**@127.0.0.1:1/0") and "secret" not in found[1]
