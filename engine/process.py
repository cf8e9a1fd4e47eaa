"""Process hygiene shared by the engine, the worker and the embedded launcher. Standard library only.

    die_with_parent()                 # this process gets SIGTERM when its parent dies (Linux)
    lock = hold_lock(path)            # None when another live process holds `path`; keep `lock` open

A child that outlives its parent keeps training (or consuming a queue) with nobody to report to, and the
next start adds a second one. `die_with_parent` asks the kernel (prctl PR_SET_PDEATHSIG) to signal this
process when the thread that started it exits; `hold_lock` is an exclusive `flock` released by the
kernel when its holder dies, so a stale lock file never blocks a restart.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import fcntl
import os
import signal
import sys
from pathlib import Path
from typing import IO

PR_SET_PDEATHSIG = 1


def die_with_parent(sig: int = signal.SIGTERM) -> bool:
    """Arrange for `sig` when the parent exits; False where the platform cannot (then nothing changes)."""
    if not sys.platform.startswith("linux"):
        return False
    parent = os.getppid()
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
            return False
    except OSError:
        return False
    if os.getppid() != parent or parent == 1:  # the parent died before the request took effect
        os.kill(os.getpid(), sig)
    return True


def hold_lock(path: str | Path) -> IO[str] | None:
    """Take the exclusive lock on `path` (writing this pid into it) and return the open file, which must
    stay open as long as the lock is wanted; None when another process holds it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = path.open("a+", encoding="utf-8")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        return None
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    return handle


def lock_holder(path: str | Path) -> int | None:
    """The pid written by the live holder of `path`'s lock, or None when nobody holds it."""
    handle = hold_lock(path)
    if handle is not None:
        handle.close()
        return None
    with contextlib.suppress(OSError, ValueError):
        return int(Path(path).read_text().split()[0])
    return -1
