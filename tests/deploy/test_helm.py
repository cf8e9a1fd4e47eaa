"""helm/papertrain: `helm lint --strict` and offline rendering with Helm's library (helm/render.py), for the
default values and for ci/gpu-values.yaml (GPU pools, KEDA autoscaling, a multi-node pool, an ingress);
every rendered manifest passes kubernetes-validate, KEDA's objects a schema of the fields they use."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml
from deploy_testkit import CHART, REPO

from core.settings import Settings

RENDER = REPO / "helm" / "render.py"
GPU_VALUES = CHART / "ci" / "gpu-values.yaml"
KUBERNETES_VERSION = "1.37.0"  # the newest schema set kubernetes-validate 1.37 ships
SETTINGS_ENV = {f"PAPERTRAIN_{name.upper()}" for name in Settings.model_fields}


def helm(python: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([python, str(RENDER), *args], capture_output=True, text=True, timeout=120)


def render(python: str, out: Path, *values: Path) -> dict[str, list[dict]]:
    flags = [arg for v in values for arg in ("-f", str(v))]
    done = helm(python, "template", str(CHART), *flags, "--out", str(out))
    assert done.returncode == 0, done.stderr
    docs: dict[str, list[dict]] = {}
    for path in sorted(out.glob("*.yaml")):
        doc = yaml.safe_load(path.read_text())
        docs.setdefault(doc["kind"], []).append(doc)
    return docs


@pytest.fixture(scope="module")
def default_render(tools_python, tmp_path_factory):
    out = tmp_path_factory.mktemp("default")
    return out, render(tools_python, out)


@pytest.fixture(scope="module")
def gpu_render(tools_python, tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu")
    return out, render(tools_python, out, GPU_VALUES)


def by_name(docs: list[dict], name: str) -> dict:
    (found,) = [d for d in docs if d["metadata"]["name"] == name]
    return found


def pod_specs(docs: dict[str, list[dict]]) -> list[dict]:
    return [d["spec"]["template"]["spec"] for kind in ("Deployment", "Job") for d in docs.get(kind, [])]


@pytest.mark.parametrize("values", [[], [GPU_VALUES]], ids=["default", "gpu"])
def test_helm_lint_strict_passes(tools_python, values):
    flags = [arg for v in values for arg in ("-f", str(v))]
    done = helm(tools_python, "lint", str(CHART), *flags, "--strict")
    report = json.loads(done.stdout)
    assert done.returncode == 0 and report["errors"] == [], done.stdout + done.stderr
    assert report["total_charts_linted"] == 1


def test_lint_reports_a_broken_template(tools_python, tmp_path):
    # The check can fail: the same chart with one unclosed action is an error.
    broken = tmp_path / "papertrain"
    subprocess.run(["cp", "-r", str(CHART), str(broken)], check=True)
    (broken / "templates" / "broken.yaml").write_text("kind: ConfigMap\nname: {{ .Values.api\n")
    done = helm(tools_python, "lint", str(broken), "--strict")
    assert done.returncode == 1 and json.loads(done.stdout)["errors"]


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"secrets": {"existingSecret": ""}}, "set secrets.existingSecret"),
        ({"mlflow": {"trackingUri": ""}}, "mlflow.trackingUri is required"),
        (
            {
                "workerPools": [
                    {
                        "name": "cpu",
                        "queues": ["cpu"],
                        "image": {"repository": "w"},
                        "autoscaling": {"enabled": True},
                    }
                ]
            },
            "keda.redis.address is required",
        ),
        (  # a misspelt key is named by values.schema.json instead of being ignored
            {"workerPools": [{"name": "gpu-1", "queues": ["gpu-1"], "image": {"repository": "w"}, "gpu": 1}]},
            "at '/workerPools/0': additional properties 'gpu' not allowed",
        ),
        (
            {
                "multiNodeJobs": [
                    {
                        "name": "big",
                        "spec": "s.json",
                        "nodes": 1,
                        "gpusPerNode": 8,
                        "image": {"repository": "w"},
                    }
                ]
            },
            "at '/multiNodeJobs/0/nodes'",
        ),
    ],
)
def test_missing_or_wrong_values_are_refused_naming_them(tools_python, tmp_path, values, message):
    file = tmp_path / "values.yaml"
    file.write_text(yaml.safe_dump(values))
    done = helm(tools_python, "template", str(CHART), "-f", str(file), "--out", str(tmp_path / "out"))
    assert done.returncode == 1 and message in done.stderr


@pytest.mark.parametrize("which", ["default_render", "gpu_render"])
def test_every_rendered_manifest_passes_kubernetes_validate(request, which):
    out, docs = request.getfixturevalue(which)
    validator = str(Path(request.getfixturevalue("tools_python")).with_name("kubernetes-validate"))
    core = [p for p in sorted(out.glob("*.yaml")) if "keda.sh" not in p.read_text().split("\n", 1)[0]]
    keda = [p for p in sorted(out.glob("*.yaml")) if p not in core]
    done = subprocess.run(
        [validator, "--strict", "-k", KUBERNETES_VERSION, *map(str, core)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count(" passed for resource ") == len(core)
    assert len(keda) == (4 if which == "gpu_render" else 0)  # three ScaledObjects, one TriggerAuthentication
    for path in keda:
        check_keda(yaml.safe_load(path.read_text()))


def check_keda(doc: dict) -> None:
    """The ScaledObject / TriggerAuthentication fields this chart uses, typed as KEDA's CRDs type them
    (trigger metadata is a map of strings)."""
    assert doc["apiVersion"] == "keda.sh/v1alpha1"
    spec = doc["spec"]
    if doc["kind"] == "TriggerAuthentication":
        for ref in spec["secretTargetRef"]:
            assert set(ref) == {"parameter", "name", "key"}
        return
    assert doc["kind"] == "ScaledObject"
    assert set(spec) <= {
        "scaleTargetRef",
        "minReplicaCount",
        "maxReplicaCount",
        "pollingInterval",
        "cooldownPeriod",
        "triggers",
    }
    assert isinstance(spec["scaleTargetRef"]["name"], str)
    for key in ("minReplicaCount", "maxReplicaCount", "pollingInterval", "cooldownPeriod"):
        assert isinstance(spec[key], int), key
    for trigger in spec["triggers"]:
        assert trigger["type"] == "redis" and trigger["authenticationRef"]["name"]
        assert all(isinstance(v, str) for v in trigger["metadata"].values()), trigger["metadata"]
        assert {"address", "listName", "listLength"} <= set(trigger["metadata"])


def test_default_render_has_api_migration_one_cpu_pool_and_no_keda(default_render):
    _, docs = default_render
    assert "ScaledObject" not in docs and "Ingress" not in docs and "Secret" not in docs
    assert [d["metadata"]["name"] for d in docs["Deployment"]] == ["papertrain-api", "papertrain-worker-cpu"]
    (migrate,) = docs["Job"]
    assert migrate["metadata"]["annotations"]["helm.sh/hook"] == "pre-install,pre-upgrade"
    assert migrate["spec"]["template"]["spec"]["containers"][0]["command"] == ["papertrain", "migrate"]
    api = by_name(docs["Deployment"], "papertrain-api")["spec"]["template"]["spec"]["containers"][0]
    assert api["readinessProbe"]["httpGet"]["path"] == "/healthz"
    refs = {e["valueFrom"]["secretKeyRef"]["name"] for e in api["env"] if "valueFrom" in e}
    assert refs == {"papertrain"}  # secrets.existingSecret


def test_every_pod_runs_as_non_root_with_limits(default_render, gpu_render):
    for _, docs in (default_render, gpu_render):
        for spec in pod_specs(docs):
            assert spec["securityContext"]["runAsNonRoot"] is True
            assert spec["automountServiceAccountToken"] is False
            for container in spec["containers"]:
                assert container["securityContext"]["allowPrivilegeEscalation"] is False
                assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]


def test_gpu_pools_request_gpus_tolerate_the_taint_and_get_shared_memory(gpu_render):
    _, docs = gpu_render
    pool = by_name(docs["Deployment"], "papertrain-worker-gpu-8")["spec"]
    spec = pool["template"]["spec"]
    worker = spec["containers"][0]
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == 8
    assert worker["resources"]["requests"]["nvidia.com/gpu"] == 8
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec["tolerations"]
    shm = next(v for v in spec["volumes"] if v["name"] == "shm")
    assert shm["emptyDir"] == {"medium": "Memory", "sizeLimit": "64Gi"}
    assert {"name": "shm", "mountPath": "/dev/shm"} in worker["volumeMounts"]
    assert {"name": "PAPERTRAIN_WORKER_QUEUES", "value": "gpu-8"} in worker["env"]
    assert "replicas" not in pool  # KEDA owns the replica count of an autoscaled pool
    cpu = by_name(docs["Deployment"], "papertrain-worker-cpu")["spec"]["template"]["spec"]["containers"][0]
    assert "nvidia.com/gpu" not in cpu["resources"]["limits"]


def test_one_scaled_object_per_autoscaled_pool_on_its_redis_list(gpu_render):
    _, docs = gpu_render
    scaled = {d["spec"]["scaleTargetRef"]["name"]: d for d in docs["ScaledObject"]}
    assert set(scaled) == {"papertrain-worker-cpu", "papertrain-worker-gpu-1", "papertrain-worker-gpu-8"}
    (trigger,) = scaled["papertrain-worker-gpu-1"]["spec"]["triggers"]
    assert trigger["metadata"]["listName"] == "gpu-1"
    assert trigger["metadata"]["address"] == "redis-master.redis.svc:6379"
    assert scaled["papertrain-worker-gpu-1"]["spec"]["minReplicaCount"] == 0
    (auth,) = docs["TriggerAuthentication"]
    assert auth["spec"]["secretTargetRef"][0]["key"] == "redis-password"
    assert by_name(docs["Secret"], "papertrain-secrets")["stringData"]["redis-password"] == "secret"


def test_a_multi_node_job_is_an_indexed_job_of_torchrun_nodes_meeting_at_pod_0(gpu_render):
    _, docs = gpu_render
    job = by_name(docs["Job"], "papertrain-mn-zero3-8b-r1")
    assert job["spec"]["completionMode"] == "Indexed"
    assert job["spec"]["completions"] == job["spec"]["parallelism"] == 2
    pod = job["spec"]["template"]
    service = by_name(docs["Service"], pod["spec"]["subdomain"])
    assert service["spec"]["clusterIP"] == "None" and service["spec"]["publishNotReadyAddresses"] is True
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    container = pod["spec"]["containers"][0]
    env = {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}
    assert env["NNODES"] == "2" and env["NPROC_PER_NODE"] == "8"
    # Pod 0 of an indexed Job is named <job>-0 and reachable as <job>-0.<subdomain service>.
    assert env["MASTER_ADDR"] == f"papertrain-mn-zero3-8b-r1-0.{service['metadata']['name']}"
    assert env["MASTER_PORT"] == "29500" and env["RDZV_ENDPOINT"] == f"{env['MASTER_ADDR']}:29500"
    assert env["NODE_RANK"] == {
        "fieldRef": {"fieldPath": "metadata.annotations['batch.kubernetes.io/job-completion-index']"}
    }
    assert container["command"] == [
        "python", "-m", "torch.distributed.run", "--nproc-per-node=$(NPROC_PER_NODE)", "--nnodes=$(NNODES)",
        "--rdzv-backend=c10d", "--rdzv-endpoint=$(RDZV_ENDPOINT)", "--rdzv-id=papertrain-mn-zero3-8b-r1",
        "-m", "engine.train", "--spec", "/var/lib/papertrain/specs/zero3-8b.json",
        "--out", "/var/lib/papertrain/jobs/zero3-8b",
    ]  # fmt: skip
    assert "PAPERTRAIN_WORKER_QUEUES" not in env and "readinessProbe" not in container
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 8


def test_the_engine_command_of_a_multi_node_job_is_the_workers(gpu_render):
    # The chart starts on each machine what the worker would start there (worker/runner.py).
    import inspect

    from worker.runner import engine_command

    if "machines" not in inspect.signature(engine_command).parameters:
        pytest.skip("worker/runner.py does not launch jobs over several machines yet")
    _, docs = gpu_render
    command = by_name(docs["Job"], "papertrain-mn-zero3-8b-r1")["spec"]["template"]["spec"]["containers"][0]
    expected = engine_command(
        "python", Path("/var/lib/papertrain/specs/zero3-8b.json"), Path("/var/lib/papertrain/jobs/zero3-8b"),
        resume=False, processes=16, machines=2, rendezvous="$(RDZV_ENDPOINT)",
        job_id="papertrain-mn-zero3-8b-r1",
    )  # fmt: skip
    rendered = [a.replace("$(NPROC_PER_NODE)", "8").replace("$(NNODES)", "2") for a in command["command"]]
    assert rendered == expected


def test_ingress_routes_to_the_api_service_with_tls(gpu_render):
    _, docs = gpu_render
    (ingress,) = docs["Ingress"]
    assert ingress["spec"]["tls"][0]["secretName"] == "papertrain-tls"
    backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend["name"] == "papertrain-api" and backend["port"] == {"name": "http"}


def test_rendered_settings_are_real_settings_and_config_reaches_the_pods(default_render, gpu_render):
    for out, docs in (default_render, gpu_render):
        named = set(re.findall(r"\bPAPERTRAIN_[A-Z0-9_]+\b", "".join(p.read_text() for p in out.glob("*"))))
        assert named <= SETTINGS_ENV, named - SETTINGS_ENV
        (config,) = docs["ConfigMap"]
        assert config["data"]["PAPERTRAIN_MLFLOW_LOG_CHECKPOINTS"] == "true"
        assert config["data"]["PAPERTRAIN_EMBEDDED"] == "false"
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert set(values["config"]) <= set(Settings.model_fields)


def test_notes_tell_how_to_get_the_first_token(default_render):
    out, _ = default_render
    notes = (out / "NOTES.txt").read_text()
    assert "exec deploy/papertrain-api -- papertrain create-token --user admin" in notes
