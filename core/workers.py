"""The registry of live workers: which queues are served and what the workers there can run.

    record_worker(session, worker_id, queues, capabilities)    # a worker, at start and every heartbeat
    live_workers(session, max_age_s)                            # rows heard from within max_age_s
    queue_is_served(session, "gpu-8", max_age_s)                # does a live worker consume the queue?
    can_run(session, "gpu-1", max_age_s, vllm=True)             # ... and can one of them run vLLM?

A worker's row is refreshed every `heartbeat_interval_s` and deleted when it stops; a worker killed
without stopping simply ages out (`worker_live_s`). Capabilities are what the worker finds on its machine
(`worker.capabilities`): GPU count, and whether DeepSpeed and vLLM can be imported.
"""

from __future__ import annotations

import socket
from datetime import timedelta
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from core.models import WorkerRecord, utcnow


def record_worker(
    session: Session, worker_id: str, queues: list[str], capabilities: dict[str, Any]
) -> WorkerRecord:
    """Insert or refresh a worker's row (the caller commits)."""
    row = session.get(WorkerRecord, worker_id)
    now = utcnow()
    if row is None:
        row = WorkerRecord(id=worker_id, hostname=socket.gethostname(), started_at=now)
        session.add(row)
    row.queues = {"queues": list(queues)}
    row.capabilities = dict(capabilities)
    row.heartbeat_at = now
    return row


def forget_worker(session: Session, worker_id: str) -> None:
    session.execute(delete(WorkerRecord).where(WorkerRecord.id == worker_id))


def live_workers(session: Session, max_age_s: float) -> list[WorkerRecord]:
    since = utcnow() - timedelta(seconds=max_age_s)
    return list(session.scalars(select(WorkerRecord).where(WorkerRecord.heartbeat_at >= since)))


def live_capabilities(session: Session, max_age_s: float) -> dict[str, list[dict[str, Any]]]:
    """Per served queue, the capabilities of each live worker consuming it."""
    out: dict[str, list[dict[str, Any]]] = {}
    for row in live_workers(session, max_age_s):
        for queue in row.queues.get("queues", []):
            out.setdefault(queue, []).append(dict(row.capabilities))
    return out


def can_run(
    session: Session,
    queue: str,
    max_age_s: float,
    *,
    gpus: int = 0,
    deepspeed: bool = False,
    vllm: bool = False,
) -> bool:
    """Whether a live worker on `queue` has at least `gpus` GPUs and the named extras."""
    for caps in live_capabilities(session, max_age_s).get(queue, []):
        if (
            int(caps.get("gpus", 0)) >= gpus
            and (not deepspeed or caps.get("deepspeed"))
            and (not vllm or caps.get("vllm"))
        ):
            return True
    return False


def queue_is_served(session: Session, queue: str, max_age_s: float) -> bool:
    return can_run(session, queue, max_age_s)
