"""Start a worker process: `python -m worker.main --queues cpu` (or `papertrain worker`).

One worker runs one job at a time (Celery's solo pool, prefetch 1): the job's engine is a child process
that owns the machine's accelerators, so a second concurrent job would only compete for them. Run more
worker processes for more parallelism. Next to the consumer, a daemon thread reaps jobs whose worker died,
and another keeps this worker's row in the live-worker registry (`core.workers`) fresh.

On SIGTERM/SIGINT (Celery's warm shutdown) the running engine is stopped and its job re-queued, so the
next worker resumes it from its last checkpoint. This module does not migrate the database: it refuses
to start on an unmigrated one.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import socket
import threading
from collections.abc import Sequence
from typing import Any

from celery import signals

from core.celery_app import make_celery
from core.db import check_migrated, get_engine
from core.settings import Settings

log = logging.getLogger(__name__)


def _queues(queues: str | Sequence[str] | None, settings: Settings) -> list[str]:
    if queues is None:
        return list(settings.queues)
    if isinstance(queues, str):
        queues = queues.split(",")
    found = [q.strip() for q in queues if q.strip()]
    if not found:
        raise ValueError("worker queues must name at least one queue, e.g. 'cpu' or 'cpu,gpu-1'")
    return found


def _on_shutting_down(**_: Any) -> None:
    from worker.tasks import SHUTDOWN

    SHUTDOWN.set()


def worker_id() -> str:
    return f"papertrain-{os.getpid()}@{socket.gethostname()}"


def _announce(session_factory: Any, queues: list[str], interval_s: float, stop: threading.Event) -> None:
    """Keep this worker's row in the live-worker registry fresh until stopped, then remove it."""
    from core.workers import forget_worker, record_worker
    from worker.capabilities import detect_capabilities

    capabilities = detect_capabilities()
    while True:
        try:
            with session_factory() as session:
                record_worker(session, worker_id(), queues, capabilities)
                session.commit()
        except Exception:  # the database may blink; the next heartbeat tries again
            log.warning("could not record this worker in the registry", exc_info=True)
        if stop.wait(interval_s):
            break
    with contextlib.suppress(Exception), session_factory() as session:
        forget_worker(session, worker_id())
        session.commit()


def run_worker(
    settings: Settings,
    queues: str | Sequence[str] | None = None,
    *,
    loglevel: str = "INFO",
    lock_path: str | None = None,
) -> None:
    """Consume `queues` (default `settings.worker_queues`) until stopped; blocks. With `lock_path`, exit at
    once (status 3) when another live worker holds that lock."""
    names = _queues(queues, settings)
    if lock_path:
        from engine.process import hold_lock, lock_holder

        lock = hold_lock(lock_path)
        if lock is None:
            log.error(
                "a worker for %s is already running (pid %s, lock %s); not starting another",
                names,
                lock_holder(lock_path),
                lock_path,
            )
            raise SystemExit(3)
    check_migrated(get_engine(settings.database_url))
    settings.ensure_dirs()
    app = make_celery(settings)

    from worker import tasks
    from worker.reaper import run_reaper

    signals.worker_shutting_down.connect(_on_shutting_down, weak=False)
    stop_reaper = threading.Event()
    reaper = threading.Thread(
        target=run_reaper,
        args=(tasks.session_factory_for(settings.database_url),),
        kwargs={
            "heartbeat_timeout_s": float(settings.heartbeat_timeout_s),
            "resend_after_s": float(settings.resend_queued_after_s),
            "stop": stop_reaper,
        },
        name="reaper",
        daemon=True,
    )
    reaper.start()
    registry = threading.Thread(
        target=_announce,
        args=(tasks.session_factory_for(settings.database_url), names, float(settings.heartbeat_interval_s)),
        kwargs={"stop": stop_reaper},
        name="registry",
        daemon=True,
    )
    registry.start()
    log.info("worker consuming %s from %s", names, settings.broker_url)
    try:
        app.worker_main(
            [
                "worker",
                "--pool=solo",
                "--concurrency=1",
                f"--queues={','.join(names)}",
                f"--loglevel={loglevel}",
                f"--hostname={worker_id()}",
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
            ]
        )
    finally:
        stop_reaper.set()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m worker.main", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--queues", default=None, help="comma-separated queues (default: PAPERTRAIN_WORKER_QUEUES)"
    )
    parser.add_argument("--loglevel", default="INFO")
    parser.add_argument(
        "--lock", default=None, help="lock file: refuse to start while another worker holds it"
    )
    parser.add_argument("--die-with-parent", action="store_true", help="exit when the starting process dies")
    args = parser.parse_args(argv)
    if args.die_with_parent:
        from engine.process import die_with_parent

        die_with_parent()
    from core.settings import get_settings

    run_worker(get_settings(), args.queues, loglevel=args.loglevel, lock_path=args.lock)


if __name__ == "__main__":
    main()
