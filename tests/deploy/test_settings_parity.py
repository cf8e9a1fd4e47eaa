"""One list of settings: the fields of core.settings.Settings. The deployment files may only name
`PAPERTRAIN_*` variables that are settings, and docs/deploy.md names every one of them."""

from __future__ import annotations

import re

from deploy_testkit import CHART, REPO

from core.settings import Settings

PREFIX = Settings.model_config["env_prefix"]
SETTINGS = {f"{PREFIX}{name.upper()}" for name in Settings.model_fields}
NAME = re.compile(rf"\b{PREFIX}[A-Z0-9_]+\b")


def deployment_files() -> list:
    files = [REPO / "docker-compose.yml", REPO / ".env.example", REPO / "docs" / "deploy.md"]
    files += sorted((REPO / "docker").glob("*.Dockerfile"))
    files += sorted(p for p in CHART.rglob("*") if p.is_file())
    return files


def test_the_deployment_files_name_only_real_settings():
    unknown = {
        f"{path.relative_to(REPO)}: {name}"
        for path in deployment_files()
        for name in NAME.findall(path.read_text())
        if name not in SETTINGS
    }
    assert unknown == set(), "not a field of core.settings.Settings (renamed or removed?)"


def test_the_deploy_docs_name_every_setting():
    documented = set(NAME.findall((REPO / "docs" / "deploy.md").read_text()))
    assert SETTINGS - documented == set(), "document these settings in docs/deploy.md"


def test_compose_sets_the_production_services_through_settings():
    compose = (REPO / "docker-compose.yml").read_text()
    for name in ("DATABASE_URL", "BROKER_URL", "MLFLOW_TRACKING_URI", "WORKER_QUEUES"):
        assert f"{PREFIX}{name}:" in compose
