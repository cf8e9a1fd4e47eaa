"""Children die with their parent; one embedded worker per queue and var_dir."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from core.settings import Settings
from engine.process import hold_lock, lock_holder
from papertrain.launcher import AlreadyRunning, run_embedded, worker_lock

REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(REPO)}

PARENT = """
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", sys.argv[1]])
print(child.pid, flush=True)
time.sleep(120)
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as fh:  # a zombie is dead
        return fh.read().split()[2] != "Z"


def _wait_gone(pid: int, timeout: float = 15) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if not _alive(pid):
            return True
        time.sleep(0.1)
    return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl is Linux-only")
@pytest.mark.parametrize("guarded", [True, False])
def test_a_child_dies_with_its_killed_parent(guarded: bool) -> None:
    setup = "from engine.process import die_with_parent; die_with_parent(); " if guarded else ""
    child_code = setup + "import time; time.sleep(120)"
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT, child_code], stdout=subprocess.PIPE, text=True, env=ENV
    )
    child = int(parent.stdout.readline())
    try:
        time.sleep(2)  # let the child make its request
        assert _alive(child)
        parent.kill()  # SIGKILL: no cleanup code of the parent runs
        parent.wait()
        assert _wait_gone(child) is guarded  # without the guard the orphan keeps running
    finally:
        if _alive(child):
            os.kill(child, signal.SIGKILL)


def test_the_worker_lock_is_exclusive_and_freed_by_a_killed_holder(tmp_path: Path) -> None:
    path = tmp_path / "worker-cpu.lock"
    code = f"from engine.process import hold_lock; h = hold_lock({str(path)!r}); print(h is not None, flush=True); import time; time.sleep(60)"
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=ENV)
    try:
        assert holder.stdout.readline().strip() == "True"
        assert hold_lock(path) is None and lock_holder(path) == holder.pid
        worker = subprocess.run(
            [sys.executable, "-m", "worker.main", "--queues", "cpu", "--lock", str(path)],
            env={**ENV, "PAPERTRAIN_VAR_DIR": str(tmp_path / "var")},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert worker.returncode == 3 and "already running" in worker.stderr
    finally:
        holder.kill()
        holder.wait()
    lock = hold_lock(path)
    assert lock is not None
    lock.close()


def test_a_second_up_refuses_while_a_worker_runs(tmp_path: Path) -> None:
    settings = Settings(var_dir=tmp_path / "var")
    lock = hold_lock(worker_lock(settings, "cpu"))
    try:
        with pytest.raises(AlreadyRunning, match="already running"):
            run_embedded(settings, queues="cpu")
    finally:
        lock.close()
