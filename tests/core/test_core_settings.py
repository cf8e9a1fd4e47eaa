"""Settings: embedded defaults under var_dir, PAPERTRAIN_ environment overrides."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from core.settings import Settings


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for key in list(os.environ):
        if key.startswith("PAPERTRAIN_"):
            monkeypatch.delenv(key)


def test_defaults_live_under_var_dir(tmp_path: Path) -> None:
    s = Settings(var_dir=tmp_path / "v")
    var = (tmp_path / "v").resolve()
    assert s.var_dir == var
    assert s.database_url == f"sqlite:///{var}/papertrain.db"
    assert s.mlflow_tracking_uri == f"sqlite:///{var}/mlflow.db"
    assert (s.jobs_dir, s.uploads_dir, s.mlflow_artifact_root) == (
        var / "jobs",
        var / "uploads",
        var / "mlartifacts",
    )
    assert str(var) in s.broker_url
    assert (s.host, s.port, s.embedded, s.worker_queues) == ("127.0.0.1", 8000, True, "cpu")
    assert (s.heartbeat_interval_s, s.heartbeat_timeout_s, s.cancel_grace_s) == (5, 120, 5)
    assert s.engine_python == sys.executable


def test_relative_var_dir_is_made_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert Settings().var_dir == tmp_path.resolve() / "var"


def test_environment_overrides(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PAPERTRAIN_VAR_DIR", str(tmp_path))
    monkeypatch.setenv("PAPERTRAIN_DATABASE_URL", "postgresql+psycopg://db/papertrain")
    monkeypatch.setenv("PAPERTRAIN_PORT", "9000")
    monkeypatch.setenv("PAPERTRAIN_WORKER_QUEUES", "gpu-1, cpu")
    s = Settings()
    assert s.database_url == "postgresql+psycopg://db/papertrain"
    assert s.jobs_dir == tmp_path.resolve() / "jobs"  # still derived from var_dir
    assert s.port == 9000
    assert s.queues == ["gpu-1", "cpu"]
