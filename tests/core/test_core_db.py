"""Database plumbing: SQLite pragmas, session_scope, the migrated-or-refuse check, the CLI commands."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from sqlalchemy import select, text

from core.auth import authenticate
from core.db import NotMigratedError, check_migrated, make_engine, session_scope
from core.models import User
from core.settings import Settings
from papertrain import cli


def test_sqlite_connections_get_wal_foreign_keys_and_busy_timeout(engine) -> None:
    with engine.connect() as conn:
        assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert conn.execute(text("PRAGMA foreign_keys")).scalar() == 1
        assert conn.execute(text("PRAGMA busy_timeout")).scalar() >= 5000


def test_session_scope_commits_or_rolls_back(engine) -> None:
    with session_scope(engine) as session:
        session.add(User(name="kept"))
    with pytest.raises(RuntimeError), session_scope(engine) as session:
        session.add(User(name="dropped"))
        session.flush()
        raise RuntimeError("boom")
    with session_scope(engine) as session:
        assert session.scalars(select(User.name)).all() == ["kept"]


def test_check_migrated_refuses_an_empty_database_naming_the_command(tmp_path: Path) -> None:
    eng = make_engine(f"sqlite:///{tmp_path}/empty.db")
    with pytest.raises(NotMigratedError, match="papertrain migrate"):
        check_migrated(eng)
    eng.dispose()


def test_check_migrated_accepts_a_migrated_database(engine) -> None:
    check_migrated(engine)


def _settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    settings = Settings(var_dir=tmp_path / "var")
    monkeypatch.setattr(cli, "get_settings", lambda: settings)
    return settings


def test_cli_migrate_then_create_token(tmp_path, monkeypatch, capsys) -> None:
    settings = _settings(tmp_path, monkeypatch)
    assert cli.main(["create-token", "--user", "bob"]) == 2  # not migrated yet: refused with the fix
    assert "papertrain migrate" in capsys.readouterr().err
    assert cli.main(["migrate"]) == 0
    capsys.readouterr()
    assert cli.main(["create-token", "--user", "bob", "--name", "ci"]) == 0
    raw = capsys.readouterr().out.strip()
    eng = make_engine(settings.database_url)
    with session_scope(eng) as session:
        assert authenticate(session, raw).name == "bob"
    eng.dispose()


def test_cli_up_creates_the_admin_token_once(tmp_path, monkeypatch, capsys) -> None:
    settings = _settings(tmp_path, monkeypatch)
    launched = []
    import papertrain.launcher

    monkeypatch.setattr(papertrain.launcher, "run_embedded", lambda s: launched.append(s))
    assert cli.main(["up"]) == 0
    token_file = settings.var_dir / "admin-token"
    raw = token_file.read_text().strip()
    assert raw in capsys.readouterr().out
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    assert launched == [settings]

    assert cli.main(["up"]) == 0  # second start: same token, not printed again
    assert token_file.read_text().strip() == raw
    assert raw not in capsys.readouterr().out
    eng = make_engine(settings.database_url)
    with session_scope(eng) as session:
        assert authenticate(session, raw).name == "admin"
    eng.dispose()


def test_cli_worker_passes_the_requested_queues(tmp_path, monkeypatch) -> None:
    _settings(tmp_path, monkeypatch)
    calls = []
    import worker.main

    monkeypatch.setattr(worker.main, "run_worker", lambda s, queues: calls.append((s.worker_queues, queues)))
    assert cli.main(["worker", "--queues", "gpu-1, cpu"]) == 0
    assert cli.main(["worker"]) == 0
    assert calls == [("gpu-1, cpu", ["gpu-1", "cpu"]), ("cpu", ["cpu"])]
