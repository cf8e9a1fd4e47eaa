"""Embedded mode in one command: a worker child process plus the api (uvicorn) in the foreground.

    run_embedded(settings)      # what `papertrain up` calls after migrating and printing the admin token

The worker (`python -m worker.main --queues cpu`) gets the same settings through `PAPERTRAIN_*`
environment variables, so a `Settings` object built in code reaches it unchanged. Ctrl-C (or SIGTERM)
stops uvicorn, then asks the worker to stop: a running job's engine is stopped and the job re-queued,
so the next `papertrain up` resumes it. If the worker does not exit in time it is killed.

This module does not migrate, create tokens or parse command lines (papertrain/cli.py does).
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

from core.settings import Settings

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]
# on top of cancel_grace_s: up to 10 s for MLflow (worker.tasks), re-queueing, the last writes, the exit
WORKER_EXIT_GRACE_S = 30.0


class AlreadyRunning(RuntimeError):
    """`papertrain up` while another embedded worker for the same queues and var_dir is alive."""


def settings_env(settings: Settings) -> dict[str, str]:
    """The `PAPERTRAIN_*` variables that rebuild `settings` in a child process."""
    env: dict[str, str] = {}
    for name, value in settings.model_dump().items():
        if value is None:
            continue
        text = str(value).lower() if isinstance(value, bool) else str(value)
        env[f"PAPERTRAIN_{name.upper()}"] = text
    return env


def worker_lock(settings: Settings, queues: str) -> Path:
    """One embedded worker per queue set and var_dir: the lock its worker holds while it runs."""
    return Path(settings.var_dir) / f"worker-{queues.replace(',', '+')}.lock"


def worker_command(queues: str = "cpu", lock: Path | None = None) -> list[str]:
    cmd = [sys.executable, "-m", "worker.main", "--queues", queues, "--die-with-parent"]
    return [*cmd, "--lock", str(lock)] if lock else cmd


def start_worker(settings: Settings, queues: str = "cpu") -> subprocess.Popen[bytes]:
    """Start a worker child process with `settings` (its output goes to this terminal)."""
    env = {**os.environ, **settings_env(settings)}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    return subprocess.Popen(worker_command(queues, worker_lock(settings, queues)), env=env)


def worker_stop_timeout(settings: Settings) -> float:
    """How long a stopping worker may take to stop its engine, re-queue its job and exit."""
    return float(settings.cancel_grace_s) + WORKER_EXIT_GRACE_S


def stop_worker(proc: subprocess.Popen[bytes], timeout_s: float) -> int:
    """SIGTERM (Celery's warm shutdown), then SIGKILL after `timeout_s`; returns the exit code."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            log.warning("worker %d did not stop within %.0fs; killing it", proc.pid, timeout_s)
            proc.kill()
            proc.wait()
    return proc.returncode


def _watch(proc: subprocess.Popen[bytes], stopping: threading.Event) -> None:
    code = proc.wait()
    if not stopping.is_set():
        log.error(
            "the worker exited with code %s; queued jobs will wait until `papertrain up` restarts", code
        )


def run_embedded(settings: Settings, *, queues: str = "cpu") -> int:
    """Run worker + api until Ctrl-C / SIGTERM; returns the worker's exit code."""
    import uvicorn

    from api.main import create_app
    from core.celery_app import configure_celery
    from core.db import check_migrated, get_engine

    settings.ensure_dirs()
    from engine.process import lock_holder

    holder = lock_holder(worker_lock(settings, queues))
    if holder is not None:
        raise AlreadyRunning(
            f"a papertrain worker for queue {queues!r} is already running (pid {holder}) on {settings.var_dir}; "
            "stop it (or that `papertrain up`) first"
        )
    check_migrated(get_engine(settings.database_url))  # NotMigratedError before anything is started
    configure_celery(settings)  # the api sends jobs to this broker, whatever the environment says
    app = create_app(settings)
    worker = start_worker(settings, queues)
    stopping = threading.Event()
    threading.Thread(target=_watch, args=(worker, stopping), daemon=True).start()

    # uvicorn handles the signals while it serves and re-raises them afterwards; these handlers turn
    # that re-raise into a plain "stop" so the worker is always shut down below.
    previous = {sig: signal.signal(sig, lambda *_: stopping.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        uvicorn.run(app, host=settings.host, port=int(settings.port), log_level="info")
    finally:
        stopping.set()
        code = stop_worker(worker, worker_stop_timeout(settings))
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    log.info("worker exited with code %s", code)
    return code
