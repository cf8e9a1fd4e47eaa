"""Platform settings, read once at the process edge (`get_settings()`); nothing deeper reads the environment.

Every field can be set with a `PAPERTRAIN_` environment variable (`PAPERTRAIN_DATABASE_URL=...`).
The defaults are the embedded mode: SQLite, a server-less broker and a local MLflow store, all under
`var_dir`. Derived defaults follow `var_dir`; explicitly given values are taken as they are.
"""

from __future__ import annotations

import sys
from functools import lru_cache
from pathlib import Path
from typing import Any

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# Built by `make vllm-cpu` (same path there).
VLLM_CPU_PYTHON = Path.home() / ".cache" / "papertrain" / "vllm-cpu-0.32.0" / "bin" / "python"


def _derived_defaults(var_dir: Path) -> dict[str, Any]:
    return {
        "database_url": f"sqlite:///{var_dir}/papertrain.db",
        "broker_url": f"sqla+sqlite:///{var_dir}/broker.sqlite",
        "mlflow_tracking_uri": f"sqlite:///{var_dir}/mlflow.db",
        "mlflow_artifact_root": var_dir / "mlartifacts",
        "jobs_dir": var_dir / "jobs",
        "uploads_dir": var_dir / "uploads",
    }


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PAPERTRAIN_", extra="ignore", frozen=True)

    var_dir: Path = Path("./var")
    # The six defaults below are placeholders: `_fill_derived` puts them under var_dir unless given.
    database_url: str = Field(
        default="", description="SQLAlchemy URL; default sqlite:///{var_dir}/papertrain.db"
    )
    broker_url: str = Field(default="", description="Celery broker; default a server-less SQLite transport")
    mlflow_tracking_uri: str = Field(default="", description="default sqlite:///{var_dir}/mlflow.db")
    mlflow_artifact_root: Path = Field(default=Path(), description="default {var_dir}/mlartifacts")
    jobs_dir: Path = Field(default=Path(), description="one output folder per job; default {var_dir}/jobs")
    uploads_dir: Path = Field(default=Path(), description="uploaded datasets; default {var_dir}/uploads")
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    heartbeat_interval_s: float = Field(default=5, gt=0)
    heartbeat_timeout_s: float = Field(default=120, gt=0)
    cancel_grace_s: float = Field(default=5, ge=0)
    resend_queued_after_s: float = Field(
        default=600,
        ge=0,
        description="send a job again when it has waited this long in `queued` (a lost message); 0: never",
    )
    worker_queues: str = "cpu"
    worker_live_s: float = Field(
        default=60, gt=0, description="a worker not heard from for this long no longer counts as live"
    )
    refuse_unserved_queues: bool = Field(
        default=False,
        description="refuse (422) a job whose queue no live worker consumes, instead of queueing it with a warning",
    )
    node_address: str = Field(
        default="",
        description="the address other machines reach this worker at, where it hosts the rendezvous of a "
        "job over several machines (num_machines > 1) as its node 0; default the host name",
    )
    engine_python: str = sys.executable
    embedded: bool = True
    max_upload_bytes: int = Field(
        default=200 * 1024 * 1024, ge=1, description="largest accepted dataset upload"
    )
    mlflow_ui_url: str = Field(
        default="",
        description="address of the MLflow UI that users open (e.g. http://localhost:5000); the dashboard and "
        "each job's mlflow_run_url link the job's MLflow run there. Empty: no link, the run id only",
    )
    mlflow_log_checkpoints: bool = Field(
        default=True,
        description="copy every checkpoint into MLflow's artifact store (the final model is always copied); "
        "turn off for large models",
    )
    data_roots: str = Field(
        default="",
        description="comma-separated folders a job's dataset.path may point into; empty: no dataset.path "
        "at all (jobs read built-in sets and their owner's uploads)",
    )
    model_roots: str = Field(
        default="",
        description="comma-separated folders a local model path (model, teacher, reward model) may point into, "
        "besides the data roots, the model cache and the submitter's own job outputs",
    )
    model_cache: Path = Field(
        default=Path.home() / ".cache" / "papertrain" / "models",
        description="where bundled models are converted once and kept",
    )
    http_reward_urls: str = Field(
        default="",
        description="comma-separated URL prefixes an `http` reward may call; empty: http rewards are off",
    )
    max_row_bytes: int = Field(
        default=1024 * 1024, ge=1, description="largest dataset row (one JSONL line) a job reads"
    )

    vllm_server_url: str = Field(
        default="",
        description="a long-lived vLLM rollout server (http://host:port) for jobs with vllm_mode 'server'; "
        "empty: the engine starts one per job and stops it with the job",
    )
    vllm_python: str = Field(
        default=str(VLLM_CPU_PYTHON),
        description="python of the environment with vLLM that runs a per-job rollout server (default: the one "
        "`make vllm-cpu` builds); on GPU machines with vllm in the main environment, the engine's python",
    )
    vllm_startup_timeout_s: float = Field(
        default=300, gt=0, description="wait this long for a rollout server"
    )
    vllm_request_timeout_s: float = Field(default=600, gt=0, description="one generation or weight load")
    vllm_max_restarts: int = Field(default=2, ge=0, description="restarts of a per-job server that died")
    vllm_dtype: str = Field(
        default="auto", description="the rollout server's weights dtype; auto: the model's"
    )

    @model_validator(mode="before")
    @classmethod
    def _fill_derived(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        data = dict(data)
        var_dir = Path(data.get("var_dir") or "./var").expanduser().resolve()
        data["var_dir"] = var_dir
        for key, value in _derived_defaults(var_dir).items():
            if data.get(key) in (None, ""):
                data[key] = value
        return data

    @property
    def data_root_paths(self) -> list[Path]:
        return [Path(r.strip()).expanduser().resolve() for r in self.data_roots.split(",") if r.strip()]

    @property
    def model_root_paths(self) -> list[Path]:
        return [Path(r.strip()).expanduser().resolve() for r in self.model_roots.split(",") if r.strip()]

    @property
    def model_folders(self) -> list[Path]:
        """Folders a local model path may point into (job outputs aside: the api checks their owner)."""
        return [*self.data_root_paths, *self.model_root_paths, Path(self.model_cache).expanduser().resolve()]

    @property
    def http_reward_url_list(self) -> list[str]:
        return [u.strip() for u in self.http_reward_urls.split(",") if u.strip()]

    def engine_env(self) -> dict[str, str]:
        """What the engine needs to confine a job's reading, and its vLLM settings (engine.train reads these)."""
        return {
            "PAPERTRAIN_DATA_ROOTS": ",".join(str(p) for p in self.data_root_paths),
            "PAPERTRAIN_UPLOADS_DIR": str(Path(self.uploads_dir).resolve()),
            "PAPERTRAIN_MODEL_ROOTS": ",".join(str(p) for p in self.model_root_paths),
            "PAPERTRAIN_MODEL_CACHE": str(Path(self.model_cache).expanduser().resolve()),
            "PAPERTRAIN_JOBS_DIR": str(Path(self.jobs_dir).resolve()),
            "PAPERTRAIN_HTTP_REWARD_URLS": ",".join(self.http_reward_url_list),
            "PAPERTRAIN_MAX_ROW_BYTES": str(self.max_row_bytes),
            "PAPERTRAIN_MAX_UPLOAD_BYTES": str(self.max_upload_bytes),
            # where a job with use_vllm and vllm_mode 'server' finds or starts its rollout server
            "PAPERTRAIN_VLLM_SERVER_URL": self.vllm_server_url,
            "PAPERTRAIN_VLLM_PYTHON": self.vllm_python,
            "PAPERTRAIN_VLLM_STARTUP_TIMEOUT_S": str(self.vllm_startup_timeout_s),
            "PAPERTRAIN_VLLM_REQUEST_TIMEOUT_S": str(self.vllm_request_timeout_s),
            "PAPERTRAIN_VLLM_MAX_RESTARTS": str(self.vllm_max_restarts),
            "PAPERTRAIN_VLLM_DTYPE": self.vllm_dtype,
        }

    @property
    def vllm_available(self) -> bool:
        """A worker here can generate with vLLM: a rollout server URL is set, or vLLM's python exists."""
        return bool(self.vllm_server_url) or Path(self.vllm_python).exists()

    @property
    def queues(self) -> list[str]:
        return [q.strip() for q in self.worker_queues.split(",") if q.strip()]

    def mlflow_run_url(self, run_id: str | None) -> str | None:
        """The MLflow UI page of a run (its direct-run route), or None without `mlflow_ui_url` or a run."""
        if not self.mlflow_ui_url or not run_id:
            return None
        return f"{self.mlflow_ui_url.rstrip('/')}/#/runs/{run_id}"

    def ensure_dirs(self) -> None:
        """Create the local folders the platform writes to (idempotent)."""
        for path in (self.var_dir, self.jobs_dir, self.uploads_dir, self.mlflow_artifact_root):
            Path(path).mkdir(parents=True, exist_ok=True)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
