"""Jobs over several machines in the worker (`worker.nodes`), with the fake engine: node 0 claims the job,
launches its engine as node 0 of a static rendezvous and calls the other nodes; a joined node runs only
while the job runs that attempt."""

from __future__ import annotations

import json
import threading

from worker_testkit import add_job, get_job, make_settings, wait_for

from core.models import Job, JobEvent, utcnow
from core.states import JobStatus
from core.transitions import transition
from worker.nodes import execute_node
from worker.tasks import _claim, execute_job


def over_two_machines(factory, job_id: str) -> None:
    with factory() as session, session.begin():
        job = session.get(Job, job_id)
        job.spec_resolved = {**job.spec_resolved, "distributed": {"num_processes": 2, "num_machines": 2}}


def log_messages(factory, job_id: str) -> list[str]:
    with factory() as session:
        rows = session.query(JobEvent.data).filter(JobEvent.job_id == job_id, JobEvent.kind == "log")
        return [d.get("message", "") for (d,) in rows]


def test_the_claiming_worker_is_node_zero_and_calls_the_others(tmp_path, factory, monkeypatch):
    import worker.nodes

    settings = make_settings(tmp_path, node_address="10.1.2.3")
    calls = []
    monkeypatch.setattr(worker.nodes, "send_join_job", lambda *args: calls.append(args))
    job_id = add_job(factory, "fake:ok")
    over_two_machines(factory, job_id)

    assert (
        execute_job(settings, job_id, worker_id="w0", session_factory=factory, tracking=False) == "succeeded"
    )

    [(sent_id, queue, attempt, rank, rendezvous, resume)] = calls
    assert (sent_id, queue, attempt, rank, resume) == (job_id, "cpu", 1, 1, False)
    host, port = rendezvous.split(":")
    assert host == "10.1.2.3" and 0 < int(port) < 65536
    argv = json.loads((settings.jobs_dir / job_id / "argv.json").read_text())
    assert argv[:2] == ["-m", "torch.distributed.run"]
    assert {"--nnodes=2", "--node-rank=0", "--master-addr=10.1.2.3", f"--master-port={port}"} <= set(argv)
    assert any(
        m.startswith(f"node 0 of 2 on worker w0; rendezvous at {rendezvous}")
        for m in log_messages(factory, job_id)
    )


def test_a_joined_node_runs_while_its_attempt_runs_and_stops_on_cancel(tmp_path, factory):
    settings = make_settings(tmp_path)
    job_id = add_job(factory, "fake:hang")
    over_two_machines(factory, job_id)
    assert _claim(factory, settings, job_id, "w0") is not None  # running, attempt 1, owned by node 0's worker

    stale = execute_node(
        settings, job_id, 2, 1, "127.0.0.1:1", False, worker_id="w1", session_factory=factory
    )
    assert stale == "skipped"  # a message of another attempt starts nothing

    outcome: dict[str, str] = {}

    def node() -> None:
        outcome["node"] = execute_node(
            settings, job_id, 1, 1, "127.0.0.1:1", False, worker_id="w1", session_factory=factory
        )

    thread = threading.Thread(target=node)
    thread.start()
    pid_file = settings.jobs_dir / job_id / "pid"
    wait_for(pid_file.exists, 30, what="the node's engine to start")
    argv = json.loads((settings.jobs_dir / job_id / "argv.json").read_text())
    assert "--node-rank=1" in argv and "--master-addr=127.0.0.1" in argv
    assert get_job(factory, job_id).worker_id == "w0"  # the joined node does not take the job over
    with factory() as session, session.begin():
        transition(session, job_id, JobStatus.cancelling, reason="test", cancel_requested_at=utcnow())
    thread.join(30)
    assert not thread.is_alive() and outcome["node"] == "cancelled"
    assert "node 1 of 2 on worker w1" in log_messages(factory, job_id)
