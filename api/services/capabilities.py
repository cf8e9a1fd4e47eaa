"""What the live workers can do, as the preset catalogue's `runnable` answer needs it.

Until workers report their capabilities on heartbeat, the answer is the deployment's configured worker
queues (`worker_queues`), vLLM when the deployment has it (`Settings.vllm_available`: a rollout server URL or
vLLM's python) and no DeepSpeed or hub access; the registry of live workers replaces the body of
`live_capabilities` and every preset's answer follows.
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from core.settings import Settings
from engine.presets.runnable import WorkerCapabilities


def live_capabilities(session: Session, settings: Settings) -> WorkerCapabilities:
    return WorkerCapabilities(queues=frozenset(settings.queues), vllm=settings.vllm_available)
