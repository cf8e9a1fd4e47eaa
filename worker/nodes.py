"""Jobs over several machines (`distributed.num_machines` = M > 1), run by M workers of the job's queue.

    papertrain.run_job(job_id)      the worker that claims the job is node 0: it picks the rendezvous
                                    (`node_address`:free port), sends M-1 `papertrain.join_job` messages to
                                    the job's queue and runs its engine as node 0 (global ranks 0..)
    papertrain.join_job(job_id, attempt, node_rank, rendezvous, resume)
                                    another worker of the queue runs the same engine command as node
                                    `node_rank`; torchrun's static rendezvous joins the machines into one job

Node 0's worker owns the job exactly as for one machine: it heartbeats, reads the engine's events (rank 0
writes them), sees cancel requests and records the outcome. A joined node only runs and watches its own
engine: it stops it when the job leaves `running` (cancelled, failed, re-queued) or a newer attempt took
over, and it reports its own engine's failure as a log event of the job (the job itself fails through node
0, whose collectives break when a machine goes away). All nodes write into the job's output folder, which
must be shared between the machines (one volume, as the Helm chart mounts).

A node that never comes (fewer than M live workers on the queue) leaves node 0 waiting at the rendezvous
until torchrun's timeout; the job then fails with the engine's error.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from core.celery_app import JOIN_JOB_TASK
from core.models import Job, JobEvent
from core.states import JobStatus
from worker.runner import EngineRunner, NodePlan, RunResult

log = logging.getLogger(__name__)

_STOP_NODE = (JobStatus.cancelling, JobStatus.cancelled, JobStatus.failed, JobStatus.queued)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return int(s.getsockname()[1])


def plan_nodes(settings: Any, machines: int) -> NodePlan:
    """Node 0's plan: this worker's address (`node_address`, else the host name) and a free port."""
    host = settings.node_address or socket.gethostname()
    return NodePlan(0, machines, f"{host}:{free_port()}")


def send_join_job(
    job_id: str, queue: str, attempt: int, node_rank: int, rendezvous: str, resume: bool, app: Any = None
) -> None:
    if app is None:
        from core.celery_app import get_celery

        app = get_celery()
    app.send_task(JOIN_JOB_TASK, args=[job_id, attempt, node_rank, rendezvous, resume], queue=queue)


def call_other_nodes(
    session: Session,
    job_id: str,
    queue: str,
    attempt: int,
    plan: NodePlan,
    resume: bool,
    worker_id: str,
) -> None:
    """Node 0: ask M-1 more workers of `queue` to join, and say so in the job's events."""
    for rank in range(1, plan.machines):
        send_join_job(job_id, queue, attempt, rank, plan.rendezvous, resume)
    message = (
        f"node 0 of {plan.machines} on worker {worker_id}; rendezvous at {plan.rendezvous}; waiting for "
        f"{plan.machines - 1} more worker(s) on queue {queue}"
    )
    session.add(JobEvent(job_id=job_id, kind="log", data={"level": "info", "message": message}))


class NodeRunner(EngineRunner):
    """Runs a joined node's engine: no events of its own (rank 0 is on node 0), no ownership of the job;
    stops its engine when the job leaves `running` or another attempt took over."""

    def __init__(self, *args: Any, attempt: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.attempt = attempt

    def _on_stdout(self, raw: str) -> None:
        if raw.strip():
            self._keep(raw.rstrip("\n"))

    def _poll(self, beat: bool) -> str | None:
        try:
            with self.session_factory() as session:
                row = session.execute(
                    select(Job.status, Job.attempt).where(Job.id == self.job_id)
                ).one_or_none()
        except Exception as exc:  # a briefly unreachable database must not stop the node
            log.warning("job %s: status check failed (%s); will retry", self.job_id, exc)
            return None
        if row is None or row.status in _STOP_NODE or row.attempt != self.attempt:
            return "cancelled"
        return None


def execute_node(
    settings: Any,
    job_id: str,
    attempt: int,
    node_rank: int,
    rendezvous: str,
    resume: bool,
    *,
    worker_id: str,
    session_factory: Callable[[], Session],
    stop_event: threading.Event | None = None,
) -> str:
    """Run node `node_rank` of attempt `attempt` of a job; returns the node's outcome (or `skipped` when
    the job is no longer running that attempt)."""
    with session_factory() as session, session.begin():
        job = session.get(Job, job_id)
        if job is None or job.status != JobStatus.running or job.attempt != attempt:
            log.info("job %s: attempt %s is not running; node %s not started", job_id, attempt, node_rank)
            return "skipped"
        spec = job.spec_resolved
        machines = int((spec.get("distributed") or {}).get("num_machines") or 1)
        session.add(
            JobEvent(
                job_id=job_id,
                kind="log",
                data={"level": "info", "message": f"node {node_rank} of {machines} on worker {worker_id}"},
            )
        )
    out_dir = (Path(settings.jobs_dir) / job_id).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    spec_path = out_dir / f"spec-node{node_rank}.json"  # node 0's engine may be reading spec.json
    spec_path.write_text(json.dumps(spec, indent=2, sort_keys=True))
    runner = NodeRunner(
        settings,
        job_id,
        worker_id=worker_id,
        session_factory=session_factory,
        stop_event=stop_event,
        node=NodePlan(node_rank, machines, rendezvous),
        attempt=attempt,
    )
    try:
        result = runner.run(spec_path, out_dir, resume=resume)
    except Exception as exc:
        log.exception("job %s: node %s failed", job_id, node_rank)
        result = RunResult("failed", error={"message": f"{type(exc).__name__}: {exc}"})
    if result.outcome == "failed":
        last = next((line for line in reversed(runner.tail) if line.strip()), "")
        message = f"node {node_rank} (worker {worker_id}): the engine exited with code {result.exit_code}"
        with session_factory() as session, session.begin():
            session.add(
                JobEvent(
                    job_id=job_id,
                    kind="log",
                    data={"level": "error", "message": message + (f": {last}" if last else "")},
                )
            )
    return result.outcome
