"""The application as a whole: refuses an unmigrated database, stays torch-free, serves health and the
dashboard, keeps its operation ids."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

import api.web
from api.main import create_app
from core.db import NotMigratedError
from core.settings import Settings

REPO = Path(__file__).resolve().parents[2]


def test_refuses_to_start_on_an_unmigrated_database(tmp_path: Path) -> None:
    app = create_app(Settings(var_dir=tmp_path / "fresh"))
    with pytest.raises(NotMigratedError) as info, TestClient(app):
        pass
    assert "papertrain migrate" in str(info.value)


def test_import_does_not_pull_in_torch_or_mlflow() -> None:
    code = (
        "import sys, api.main, api.services.jobs, papertrain.cli, core.db, core.states, core.auth, engine.spec;"
        "api.main.create_app;"
        "heavy = [m for m in ('torch', 'transformers', 'mlflow', 'vllm') if m in sys.modules];"
        "assert not heavy, heavy"
    )
    res = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr


def test_healthz(client) -> None:
    assert client.get("/healthz").json() == {"status": "ok", "database": "ok"}


needs_web_assets = pytest.mark.skipif(
    bool(api.web.missing_assets()), reason="web assets not installed: `make install` runs npm ci in web/"
)


@needs_web_assets
def test_dashboard_is_served(client) -> None:
    page = client.get("/")
    assert page.status_code == 200 and "papertrain" in page.text
    for asset in ("/web/js/app.js", "/web/style.css", "/vendor/uplot/uPlot.esm.js"):
        assert client.get(asset).status_code == 200, asset
    assert "https://" not in page.text  # no CDN


def test_unknown_route_is_a_typed_404(client, alice) -> None:
    res = client.get("/v1/nothing-here")
    assert res.status_code == 404 and res.json()["error"]["code"] == "not_found"
    assert "/docs" in res.json()["error"]["remediation"]
    res = client.post("/v1/jobs/job_000000000000:cancel", headers=alice)  # cancel is POST .../cancel
    assert res.status_code == 405 and "/docs" in res.json()["error"]["remediation"]


def test_operation_ids_are_stable(app) -> None:
    ids = {op["operationId"] for path in app.openapi()["paths"].values() for op in path.values()}
    assert ids == {
        "create_job",
        "validate_job",
        "list_jobs",
        "get_job",
        "cancel_job",
        "retry_job",
        "list_job_events",
        "stream_job_events",
        "get_job_metrics",
        "list_job_checkpoints",
        "download_job_checkpoint",
        "download_job_model",
        "get_me",
        "list_algorithms",
        "get_algorithm_schema",
        "list_builtin_datasets",
        "upload_file",
        "list_files",
        "list_presets",
        "get_preset",
        "healthz",
        "admin_list_tokens",
        "admin_revoke_token",
    }


@needs_web_assets
def test_docs_are_served_without_a_cdn(client) -> None:
    page = client.get("/docs")
    assert page.status_code == 200
    assert "/vendor/swagger-ui/swagger-ui-bundle.js" in page.text and "https://" not in page.text
    assert client.get("/vendor/swagger-ui/swagger-ui-bundle.js").status_code == 200
    assert client.get("/openapi.json").json()["info"]["title"] == "papertrain"
    assert client.get("/redoc").status_code == 404  # it loads from a CDN: not offered
