"""The images' Dockerfiles: hadolint clean, pinned bases, a non-root user and a health check in every final
stage; the API image installs the package's dependencies without extras, which cover everything the API and
its commands import, pinned, and hold no torch."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib

import pytest
from deploy_testkit import REPO

DOCKERFILES = sorted((REPO / "docker").glob("*.Dockerfile"))
API_CONSTRAINTS = REPO / "docker" / "constraints-api.txt"
TRAINING = {"torch", "transformers", "peft", "accelerate", "datasets", "mlflow", "vllm", "deepspeed"}


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirement(text: str) -> tuple[str, frozenset[str]]:
    match = re.match(r"\s*([A-Za-z0-9_.\-]+)(?:\[([^\]]*)\])?", text)
    assert match, text
    return _norm(match.group(1)), frozenset(filter(None, (match.group(2) or "").split(",")))


def _base_dependencies() -> set[tuple[str, frozenset[str]]]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    return {_requirement(req) for req in project["dependencies"]}


def test_the_four_images_exist():
    assert [p.name for p in DOCKERFILES] == [
        "api.Dockerfile",
        "mlflow.Dockerfile",
        "worker-cpu.Dockerfile",
        "worker-gpu.Dockerfile",
    ]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint_finds_nothing(hadolint, dockerfile):
    done = subprocess.run(
        [hadolint, "--format", "json", str(dockerfile)], capture_output=True, text=True, timeout=60
    )
    assert json.loads(done.stdout or "[]") == [] and done.returncode == 0, done.stdout + done.stderr


def final_stage(text: str) -> list[str]:
    lines = re.sub(r"\\\n", " ", text).splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith("FROM ")]
    return lines[starts[-1] :]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_pinned_base_non_root_user_and_a_health_check(dockerfile):
    text = dockerfile.read_text()
    for image in re.findall(r"^FROM (\S+)", text, flags=re.M):
        name, _, tag = image.partition(":")
        assert re.fullmatch(r"\d+\.\d+\.\d+\S*", tag), (
            f"{dockerfile.name}: base {image} needs an exact version tag"
        )
    assert "ADD " not in text, f"{dockerfile.name}: use COPY (ADD fetches URLs and unpacks archives)"
    stage = final_stage(text)
    users = [line.split()[1] for line in stage if line.startswith("USER ")]
    assert users and users[-1].split(":")[0] not in ("root", "0"), f"{dockerfile.name}: runs as root"
    assert any(line.startswith("HEALTHCHECK ") and " CMD " in line for line in stage), dockerfile.name
    assert all("pip install" not in line or "==" in line or "-r " in line or "-c " in line for line in stage)


def _distribution_closure(names: set[tuple[str, frozenset[str]]]) -> set[str]:
    """`names` and everything they require (without extras), as normalised distribution names."""
    from importlib import metadata

    seen: set[str] = set()
    todo = list(names)
    while todo:
        name, extras = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue
        for req in requires:
            head, _, marker = req.partition(";")
            wanted = re.findall(r'extra\s*==\s*"([^"]+)"', marker)
            if wanted and not set(wanted) & extras:
                continue
            todo.append(_requirement(head))
    return seen


def test_the_package_without_extras_installs_no_training_library_and_the_api_image_pins_it():
    base = _base_dependencies()
    assert not {name for name, _ in base} & TRAINING, "training libraries belong in the engine/worker extras"
    pinned = {_norm(line.split("==")[0]) for line in API_CONSTRAINTS.read_text().splitlines() if "==" in line}
    assert {name for name, _ in base} <= pinned, f"pin these in {API_CONSTRAINTS.name}"
    text = (REPO / "docker" / "api.Dockerfile").read_text()
    assert "-c /tmp/constraints-api.txt /src " in text  # the package's own list, no extras


@pytest.mark.slow
def test_the_package_dependencies_cover_what_the_api_and_its_commands_import(tmp_path):
    # Import what the API image runs (the app, `papertrain migrate`, `create-token`) in a fresh interpreter
    # and name the distributions of every module it loaded beyond the interpreter's own start-up.
    code = f"""
import json, sys
before = set(sys.modules)
import api.main, papertrain.cli, core.db, core.auth, alembic.command, psycopg, uvicorn, redis
from core.settings import Settings
api.main.create_app(Settings(var_dir={str(tmp_path)!r}))
papertrain.cli.build_parser()
from importlib import metadata
dists = metadata.packages_distributions()
tops = {{m.split('.')[0] for m in set(sys.modules) - before}}
print(json.dumps({{"heavy": [m for m in ('torch', 'transformers', 'mlflow', 'peft') if m in sys.modules],
                  "dists": sorted({{d for t in tops for d in dists.get(t, [])}})}}))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert found["heavy"] == []
    covered = _distribution_closure(_base_dependencies())
    # Imported inside `try: ... except ImportError` when they happen to be installed: fastapi (OpenTelemetry),
    # SQLAlchemy/celery (greenlet), kombu (msgpack), billiard (psutil), anyio (sniffio). The package is /app.
    optional = {"papertrain", "greenlet", "msgpack", "psutil", "sniffio"}
    optional |= {d for d in found["dists"] if d.lower().startswith("opentelemetry")}
    missing = {
        d for d in found["dists"] if re.sub(r"[-_.]+", "-", d).lower() not in covered and d not in optional
    }
    assert missing == set(), f"add these to pyproject.toml's dependencies: {sorted(missing)}"
