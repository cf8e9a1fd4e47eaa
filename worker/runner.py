"""Run the engine for one job as a child process and supervise it until it ends.

    runner = EngineRunner(settings, job_id, worker_id="host:123", session_factory=factory, tracker=tracker)
    result = runner.run(spec_path, out_dir, resume=False)   # -> RunResult(outcome="succeeded", ...)

The child is `<engine_python> -m engine.train --spec SPEC --out DIR [--resume]` in its own process
group (under `torch.distributed.run` when the job asks for several processes: `engine_command`). Its stdout is the JSON-lines event stream (engine/events.py); each event becomes a `JobEvent` row
(worker/events.py) and goes to the MLflow tracker. The last ~50 stderr/log lines are kept for the error.
Every `heartbeat_interval_s` the job's `heartbeat_at` is refreshed; about once a second the job row is
read to see a cancel request (or that this worker no longer owns the job). Stopping sends SIGTERM to the
group and SIGKILL after `cancel_grace_s`, so a cancel lands well within 10 seconds.

This module decides the *outcome* only; moving the job to its final status is the task's business
(worker/tasks.py), through the state machine.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import signal
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Literal

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from core.models import Job, utcnow
from core.settings import Settings
from core.states import JobStatus
from engine.errors import scrub
from worker.events import EventRecorder

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]
LOG_TAIL_LINES = 50
Outcome = Literal["succeeded", "failed", "cancelled", "interrupted", "lost"]
_OWNED = (JobStatus.running, JobStatus.cancelling)


def engine_command(
    engine_python: str,
    spec_path: Path,
    out_dir: Path,
    *,
    resume: bool,
    processes: int = 1,
    machines: int = 1,
    rendezvous: str | None = None,
    job_id: str = "",
    node_rank: int | None = None,
) -> list[str]:
    """The engine's command line. A job of several processes runs under torchrun: on one machine with a
    private rendezvous (`--standalone`); over `machines` machines each machine runs this same command and
    they meet at the c10d `rendezvous` endpoint (host:port) under the job's id. With `node_rank` (workers
    that each run one machine of a job) the rendezvous is static instead: node `node_rank` of `machines`,
    node 0 hosting the store at `rendezvous`, so node 0's processes hold global ranks 0.."""
    args = ["-m", "engine.train", "--spec", str(spec_path), "--out", str(out_dir)]
    args = [*args, "--resume"] if resume else args
    if processes <= 1 and machines <= 1:
        return [engine_python, *args]
    launcher = [
        engine_python,
        "-m",
        "torch.distributed.run",
        f"--nproc-per-node={max(1, processes // machines)}",
    ]
    if machines <= 1:
        return [*launcher, "--standalone", *args]
    if not rendezvous:
        raise ValueError("a job over several machines needs a rendezvous endpoint (host:port)")
    if node_rank is not None:
        host, _, port = rendezvous.rpartition(":")
        static = [f"--nnodes={machines}", f"--node-rank={node_rank}", f"--master-addr={host}"]
        return [*launcher, *static, f"--master-port={port}", *args]
    rdzv = [
        f"--nnodes={machines}",
        "--rdzv-backend=c10d",
        f"--rdzv-endpoint={rendezvous}",
        f"--rdzv-id={job_id}",
    ]
    return [*launcher, *rdzv, *args]


def processes_of(spec_path: Path) -> tuple[int, int]:
    """(processes, machines) a resolved job spec asks for."""
    dist = json.loads(spec_path.read_text(encoding="utf-8")).get("distributed") or {}
    return int(dist.get("num_processes") or 1), int(dist.get("num_machines") or 1)


@dataclass(frozen=True)
class NodePlan:
    """One machine of a job over several: node `rank` of `machines`, meeting at `rendezvous` (host:port,
    hosted by node 0)."""

    rank: int
    machines: int
    rendezvous: str


@dataclass
class RunResult:
    outcome: Outcome
    exit_code: int | None = None
    error: dict[str, Any] | None = None  # {code, message, category, log_tail, exit_code} when failed
    log_tail: list[str] = field(default_factory=list)
    last_step: int | None = None
    last_checkpoint: str | None = None
    final_path: str | None = None


class EngineRunner:
    """Spawns and supervises one engine process; see the module docstring."""

    def __init__(
        self,
        settings: Settings,
        job_id: str,
        *,
        worker_id: str,
        session_factory: Callable[[], Session],
        tracker: Any = None,
        stop_event: threading.Event | None = None,
        poll_interval_s: float = 1.0,
        env: dict[str, str] | None = None,
        node: NodePlan | None = None,
    ) -> None:
        self.settings = settings
        self.job_id = job_id
        self.worker_id = worker_id
        self.session_factory = session_factory
        self.tracker = tracker
        self.stop_event = stop_event or threading.Event()
        self.poll_interval_s = min(poll_interval_s, float(settings.heartbeat_interval_s))
        self.env = env
        self.node = node
        self.recorder = EventRecorder(session_factory, job_id)
        self.tail: deque[str] = deque(maxlen=LOG_TAIL_LINES)
        self._run_id_saved: str | None = None

    # -- public ------------------------------------------------------------------------------------

    def command(self, spec_path: Path, out_dir: Path, *, resume: bool) -> list[str]:
        processes, machines = processes_of(spec_path)
        node = self.node
        return engine_command(
            self.settings.engine_python,
            spec_path,
            out_dir,
            resume=resume,
            processes=processes,
            machines=machines,
            rendezvous=node.rendezvous if node else None,
            job_id=self.job_id,
            node_rank=node.rank if node else None,
        )

    def run(self, spec_path: Path, out_dir: Path, *, resume: bool) -> RunResult:
        cmd = self.command(spec_path, out_dir, resume=resume)
        log.info("job %s: starting engine: %s", self.job_id, " ".join(cmd))
        try:
            proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,  # its own process group: signals reach the whole tree
                env=self._child_env(),
                text=True,
                encoding="utf-8",
                errors="replace",
                bufsize=1,
            )
        except OSError as exc:
            message = f"could not start the engine ({cmd[0]}): {exc}"
            return RunResult(
                "failed",
                error={
                    "code": "engine_spawn_failed",
                    "message": message,
                    "category": "platform",
                    "log_tail": [],
                },
            )
        try:
            stop_reason, exit_code = self._supervise(proc)
        finally:
            if proc.poll() is None:  # only on an unexpected exception in the loop
                self._signal_group(proc, signal.SIGKILL)
                proc.wait()
        for _ in range(20):  # the final events (error, done) matter most: insist a little
            if self.recorder.flush():
                break
            time.sleep(0.5)
        return self._result(stop_reason, exit_code)

    # -- the loop ------------------------------------------------------------------------------------

    def _supervise(self, proc: subprocess.Popen[str]) -> tuple[str | None, int]:
        lines: queue.Queue[tuple[str, str | None]] = queue.Queue()
        for name, stream in (("out", proc.stdout), ("err", proc.stderr)):
            threading.Thread(target=_pump, args=(name, stream, lines), daemon=True).start()
        open_streams = 2
        stop_reason: str | None = None
        term_sent_at: float | None = None
        exited_at: float | None = None
        next_poll = next_beat = time.monotonic()
        while True:
            try:
                source, line = lines.get(timeout=0.1)
                while True:
                    if line is None:
                        open_streams -= 1
                    elif source == "out":
                        self._on_stdout(line)
                    else:
                        self._keep(line.rstrip("\n"))
                    source, line = lines.get_nowait()
            except queue.Empty:
                pass
            self.recorder.flush_if_due()
            now = time.monotonic()
            if now >= next_poll and proc.poll() is None:
                beat = now >= next_beat
                reason = self._poll(beat)
                next_poll = now + self.poll_interval_s
                if beat:
                    next_beat = now + float(self.settings.heartbeat_interval_s)
                if reason and stop_reason is None:
                    stop_reason = reason
            if self.stop_event.is_set() and stop_reason is None:
                stop_reason = "interrupted"
            if stop_reason and term_sent_at is None and proc.poll() is None:
                log.info("job %s: stopping the engine (%s)", self.job_id, stop_reason)
                self._signal_group(proc, signal.SIGTERM)
                term_sent_at = now
            if (
                term_sent_at is not None
                and proc.poll() is None
                and now - term_sent_at >= float(self.settings.cancel_grace_s)
            ):
                log.warning(
                    "job %s: engine ignored SIGTERM for %ss; killing it",
                    self.job_id,
                    self.settings.cancel_grace_s,
                )
                self._signal_group(proc, signal.SIGKILL)
                term_sent_at = float("inf")  # killed; do not signal again
            if proc.poll() is not None:
                exited_at = exited_at or now
                if open_streams == 0:
                    break
                if now - exited_at > 5:  # a leftover grandchild holds the pipes open
                    self._signal_group(proc, signal.SIGKILL)
                    if now - exited_at > 7:
                        break
        self._signal_group(proc, signal.SIGKILL)  # reap anything the engine left behind in its group
        return stop_reason, proc.returncode

    def _on_stdout(self, raw: str) -> None:
        line = raw.strip()
        if not line:
            return
        try:
            event = json.loads(line)
        except ValueError:
            event = None
        if not isinstance(event, dict) or not isinstance(event.get("type"), str):
            # Stray prints from libraries: keep them, as log rows, so nothing is lost.
            self._keep(line)
            event = {"type": "log", "level": "info", "message": line, "stream": "stdout"}
        elif event["type"] == "log":
            self._keep(f"[{event.get('level', 'info')}] {event.get('message', '')}")
        elif event["type"] == "error":
            self._keep(f"[error] {event.get('message', '')}")
            for tb_line in str(event.get("traceback") or "").splitlines():
                self._keep(tb_line)
        self.recorder.add(event)
        if self.tracker is not None:
            self.tracker.on_event(event)

    def _keep(self, line: str) -> None:
        self.tail.append(line)

    def _poll(self, beat: bool) -> str | None:
        """Heartbeat (when due) and read the job row: 'cancelled' / 'lost' if the engine must stop."""
        run_id = getattr(self.tracker, "run_id", None)
        try:
            with self.session_factory() as session, session.begin():
                if beat or (run_id and run_id != self._run_id_saved):
                    self._write_heartbeat(session, run_id)
                row = session.execute(
                    select(Job.status, Job.worker_id, Job.cancel_requested_at).where(Job.id == self.job_id)
                ).one_or_none()
        except Exception as exc:  # a locked or briefly unreachable database must not kill the job
            log.warning("job %s: heartbeat/cancel check failed (%s); will retry", self.job_id, exc)
            return None
        if row is None or row.status not in _OWNED or row.worker_id != self.worker_id:
            log.warning(
                "job %s: no longer owned by %s (status %s); stopping",
                self.job_id,
                self.worker_id,
                row.status if row else "deleted",
            )
            return "lost"
        if row.status == JobStatus.cancelling or row.cancel_requested_at is not None:
            return "cancelled"
        return None

    def _write_heartbeat(self, session: Session, run_id: str | None) -> None:
        values: dict[str, Any] = {"heartbeat_at": utcnow()}
        if run_id:
            values["mlflow_run_id"] = run_id
        session.execute(
            update(Job)
            .where(Job.id == self.job_id, Job.worker_id == self.worker_id, Job.status.in_(_OWNED))
            .values(**values)
        )
        self._run_id_saved = run_id

    @contextlib.contextmanager
    def heartbeating(self) -> Iterator[None]:
        """Keep the job's heartbeat fresh for the duration: after the engine has exited the worker still
        owns the job while it hands the job's data to MLflow, and the reaper must not take it away."""
        stop = threading.Event()

        def beat() -> None:
            while not stop.wait(float(self.settings.heartbeat_interval_s)):
                try:
                    with self.session_factory() as session, session.begin():
                        self._write_heartbeat(session, getattr(self.tracker, "run_id", None))
                except Exception as exc:  # the next beat tries again
                    log.warning("job %s: heartbeat failed (%s); will retry", self.job_id, exc)

        thread = threading.Thread(target=beat, name=f"heartbeat-{self.job_id}", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()

    # -- helpers -------------------------------------------------------------------------------------

    def _child_env(self) -> dict[str, str]:
        env = dict(os.environ if self.env is None else self.env)
        env["PYTHONUNBUFFERED"] = "1"
        if hasattr(self.settings, "engine_env"):
            env.update(self.settings.engine_env())  # confine what the job reads
        # `-m engine.train` must resolve to this checkout whatever the working directory is.
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
        return env

    def _signal_group(self, proc: subprocess.Popen[str], sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)

    def _result(self, stop_reason: str | None, exit_code: int) -> RunResult:
        rec = self.recorder
        finished = exit_code == 0
        outcome: Outcome
        if stop_reason == "lost":
            outcome = "lost"
        elif stop_reason == "cancelled" or stop_reason == "interrupted":
            # The engine may have completed before it saw the signal: then the work is done.
            done = finished and rec.final_path is not None
            outcome = "succeeded" if done else ("cancelled" if stop_reason == "cancelled" else "interrupted")
        else:
            outcome = "succeeded" if finished else "failed"
        return RunResult(
            outcome,
            exit_code=exit_code,
            error=self._failure(exit_code) if outcome == "failed" else None,
            log_tail=list(self.tail),
            last_step=rec.last_step,
            last_checkpoint=rec.last_checkpoint,
            final_path=rec.final_path,
        )

    def _failure(self, exit_code: int) -> dict[str, Any]:
        engine_error = self.recorder.error
        typed: dict[str, Any] = {}
        if engine_error:
            code = str(engine_error.get("code") or "engine_error")
            message = str(engine_error.get("message") or f"the engine failed with exit code {exit_code}")
            category = str(engine_error.get("category") or "platform")
            typed = {
                k: engine_error[k]
                for k in ("param", "remediation", "step")
                if engine_error.get(k) is not None
            }
        elif exit_code < 0:
            name = (
                signal.Signals(-exit_code).name
                if -exit_code in signal.Signals._value2member_map_
                else str(-exit_code)
            )
            hint = " (often: out of memory)" if exit_code == -signal.SIGKILL else ""
            code, category = "engine_killed", "infra"
            message = f"the engine was killed by {name}{hint}"
        else:
            code, category = "engine_exit", "platform"
            last = next((line for line in reversed(self.tail) if line.strip()), "")
            message = f"the engine exited with code {exit_code}" + (f": {last}" if last else "")
        log.error("job %s failed (%s): %s\n%s", self.job_id, code, message, "\n".join(self.tail))
        return {
            "code": code,
            "message": scrub(message),
            "category": category,
            **typed,
            "log_tail": list(self.tail),  # kept for operators; the api does not show it
            "exit_code": exit_code,
        }


def _pump(name: str, stream: IO[str] | None, out: queue.Queue[tuple[str, str | None]]) -> None:
    """Copy a child's stream line by line into `out`; None marks its end."""
    try:
        if stream is not None:
            for line in stream:
                out.put((name, line))
    except (OSError, ValueError):
        pass
    finally:
        out.put((name, None))
