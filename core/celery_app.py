"""The Celery application shared by the api (producer) and the worker (consumer).

    app = make_celery(settings)            # one per process edge
    app.send_task(RUN_JOB_TASK, args=[job_id], queue="cpu")

Messages are JSON and carry only a job id: the database is the truth, results are ignored. Late acks,
prefetch 1 and reject-on-worker-lost make a crashed worker's job come back instead of vanishing.
One queue per hardware class (`cpu`, `gpu-1`, `gpu-8`, ...); a worker consumes the queues it can serve.

Brokers: Redis in production; in embedded mode a server-less SQLite transport
(`sqla+sqlite:///{var_dir}/broker.sqlite`). Measured here with two producer processes and one consumer
process (600 messages), both it and `filesystem://` delivered every message exactly once (SQLite: ~15 s,
files: ~1 s). SQLite was kept because it takes each message inside a `BEGIN IMMEDIATE` transaction,
while the filesystem transport can move a message file away while its producer is still writing it;
a job queue sends a few messages a minute, so the speed does not matter. One trap: two processes that
open a fresh SQLite broker at the same moment both try to create kombu's tables and one fails, so
`make_celery` creates them up front (retrying that race).

This module registers no task: the worker does (`worker.tasks`), so the api never imports worker code.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from celery import Celery
from kombu.entity import Exchange, Queue

if TYPE_CHECKING:
    from core.settings import Settings

RUN_JOB_TASK = "papertrain.run_job"
JOIN_JOB_TASK = "papertrain.join_job"  # one machine of a job over several (worker/nodes.py)
DEFAULT_QUEUE = "cpu"
# Declared up front so a worker can consume them before any job was sent; other `gpu-N` queues are
# created on first use (task_create_missing_queues).
HARDWARE_QUEUES = ("cpu", "gpu-1", "gpu-2", "gpu-4", "gpu-8")
SQLITE_BUSY_TIMEOUT_S = 30


def _broker_transport_options(broker_url: str) -> dict[str, Any]:
    """Per-transport options; the SQLite transport passes these straight to `sqlalchemy.create_engine`."""
    if broker_url.startswith("sqla+sqlite:///"):
        db_path = broker_url.removeprefix("sqla+sqlite:///")
        if db_path and db_path != ":memory:":
            Path(db_path).parent.mkdir(parents=True, exist_ok=True)
        return {"connect_args": {"timeout": SQLITE_BUSY_TIMEOUT_S}}
    return {}


def _prepare_sqlite_broker(app: Celery, attempts: int = 5) -> None:
    """Create kombu's tables and our queues in a SQLite broker now, retrying the race between processes.

    kombu creates both lazily and does not expect company: "table ... already exists" and a unique
    violation on the queue name are the two ways concurrent first users collide.
    """
    from sqlalchemy.exc import IntegrityError, OperationalError

    for attempt in range(attempts):
        try:
            with app.connection_for_write() as conn:
                channel = conn.default_channel
                for queue in app.conf.task_queues:
                    queue.bind(channel).declare()
            return
        except (OperationalError, IntegrityError):
            if attempt == attempts - 1:
                raise
            time.sleep(0.2 * (attempt + 1))


def make_celery(settings: Settings) -> Celery:
    """A Celery app configured from `settings.broker_url`; results are never stored."""
    app = Celery("papertrain", broker=settings.broker_url, set_as_current=False)
    exchange = Exchange("papertrain", type="direct")
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        result_serializer="json",
        event_serializer="json",
        result_backend=None,
        task_ignore_result=True,
        task_store_errors_even_if_ignored=False,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_default_queue=DEFAULT_QUEUE,
        task_default_exchange="papertrain",
        task_default_exchange_type="direct",
        task_default_routing_key=DEFAULT_QUEUE,
        task_queues=[Queue(name, exchange, routing_key=name) for name in HARDWARE_QUEUES],
        task_create_missing_queues=True,
        broker_connection_retry_on_startup=True,
        broker_transport_options=_broker_transport_options(settings.broker_url),
        worker_send_task_events=False,
        # The worker imports its task module itself; a bare `celery -A core.celery_app worker` works too.
        imports=("worker.tasks",),
    )
    app.papertrain_settings = settings  # read by the task at run time
    if settings.broker_url.startswith("sqla+sqlite:///"):
        _prepare_sqlite_broker(app)
    return app


_app: Celery | None = None
_app_lock = threading.Lock()


def get_celery() -> Celery:
    """The process-wide app (what `core.queue` sends with), built from `get_settings()` on first use.

    Importing this module connects nowhere; a process started with explicit settings calls
    `configure_celery(settings)` first.
    """
    global _app
    if _app is None:
        with _app_lock:
            if _app is None:
                from core.settings import get_settings

                _app = make_celery(get_settings())
    return _app


def configure_celery(settings: Settings | None) -> Celery | None:
    """Make `settings`' broker the process-wide one (None: forget it; the next use rebuilds from env)."""
    global _app
    with _app_lock:
        _app = make_celery(settings) if settings is not None else None
    return _app


def __getattr__(name: str) -> Any:
    # `celery -A core.celery_app ...` looks for a module attribute named `app`.
    if name == "app":
        return get_celery()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
