"""docker-compose.yml validates (Debian's docker-compose v1 checks it without an engine) and has the
production shape: health-checked start order, the one-shot migration, the GPU worker behind a profile."""

from __future__ import annotations

import subprocess

import yaml
from deploy_testkit import REPO

COMPOSE = REPO / "docker-compose.yml"
ENV_EXAMPLE = REPO / ".env.example"


def compose_config(docker_compose: str, *args: str, env_file=ENV_EXAMPLE) -> subprocess.CompletedProcess:
    cmd = [docker_compose, "--env-file", str(env_file), "-f", str(COMPOSE), *args, "config"]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=60)


def test_compose_file_validates_with_the_example_env(docker_compose):
    done = compose_config(docker_compose)
    assert done.returncode == 0, done.stderr
    services = yaml.safe_load(done.stdout)["services"]
    assert set(services) == {"postgres", "redis", "mlflow", "migrate", "api", "worker-cpu", "worker-gpu"}
    assert services["worker-gpu"]["profiles"] == [
        "gpu"
    ]  # `docker compose up` starts it only with --profile gpu
    assert services["api"]["depends_on"]["migrate"] == {"condition": "service_completed_successfully"}
    for name in ("api", "worker-cpu"):
        assert services[name]["depends_on"]["redis"] == {"condition": "service_healthy"}
    assert services["worker-cpu"]["depends_on"]["mlflow"] == {"condition": "service_healthy"}
    for name in ("postgres", "redis"):
        assert services[name]["healthcheck"]["test"], name
    mlflow_cmd = services["mlflow"]["command"]
    assert "--serve-artifacts" in mlflow_cmd
    assert any(arg.startswith("--backend-store-uri=postgresql+psycopg://") for arg in mlflow_cmd)
    assert services["worker-cpu"]["environment"]["PAPERTRAIN_MLFLOW_TRACKING_URI"] == "http://mlflow:5000"


def test_the_gpu_worker_joins_with_its_profile_and_reserves_gpus(docker_compose):
    done = compose_config(docker_compose, "--profile", "gpu")
    assert done.returncode == 0, done.stderr
    gpu = yaml.safe_load(done.stdout)["services"]["worker-gpu"]
    (device,) = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
    assert gpu["environment"]["PAPERTRAIN_WORKER_QUEUES"] == "gpu-1"


def test_a_missing_password_is_refused_naming_it(docker_compose, tmp_path):
    env = tmp_path / ".env"
    lines = ENV_EXAMPLE.read_text().splitlines()
    env.write_text("\n".join(x for x in lines if not x.startswith("POSTGRES_PASSWORD=")) + "\n")
    done = compose_config(docker_compose, env_file=env)
    assert done.returncode != 0
    assert "set POSTGRES_PASSWORD in .env" in done.stderr


def test_every_variable_the_compose_file_reads_is_documented_in_env_example():
    import re

    used = set(re.findall(r"\$\{([A-Z0-9_]+)", COMPOSE.read_text()))
    documented = {
        line.split("=", 1)[0]
        for line in ENV_EXAMPLE.read_text().splitlines()
        if re.match(r"^[A-Z0-9_]+=", line)
    }
    assert used == documented
