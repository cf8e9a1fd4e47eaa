"""What the live workers can do, as the preset catalogue's `runnable` answer and the submission checks need it.

Queues are the deployment's configured worker queues (`worker_queues`) and those live workers consume; vLLM
is there when the deployment has it (`Settings.vllm_available`: a rollout server URL or vLLM's python) or a
live worker imports it; DeepSpeed when a live worker imports it (each worker announces what it can import in
the live-worker registry, `core.workers`). No worker reports hub access yet.
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from core.settings import Settings
from core.workers import live_capabilities as live_workers_by_queue
from engine.presets.runnable import WorkerCapabilities


def live_capabilities(session: Session, settings: Settings) -> WorkerCapabilities:
    by_queue = live_workers_by_queue(session, settings.worker_live_s)
    workers = [caps for queue_workers in by_queue.values() for caps in queue_workers]
    return WorkerCapabilities(
        queues=frozenset(settings.queues) | frozenset(by_queue),
        vllm=settings.vllm_available or any(caps.get("vllm") for caps in workers),
        deepspeed=any(caps.get("deepspeed") for caps in workers),
    )
