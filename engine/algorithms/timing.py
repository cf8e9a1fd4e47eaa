"""Per-phase wall time of the optimizer steps, logged as `time/<phase>` (seconds per optimizer step).

    timer = ctx.timer                     # one per job, on the TrainContext
    with timer("generation"): ...
    timer.flush(metrics)        # adds every phase's seconds since the last flush as `time/<phase>`

Phases: weight_sync (sending the policy to a vLLM sampler), generation, old_logps, reference, forward
(policy forward and loss), backward, optimizer. A phase
timed inside another is charged to itself only (a reference forward inside a loss step is not "forward"
time). On a GPU
(once CUDA is in use) the timer synchronises the device at phase boundaries so that a phase is charged for its own kernels
(a few syncs per step); on the CPU it costs two clock reads.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Any

import torch


class PhaseTimer:
    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._inner: list[float] = []  # per open phase: seconds spent in phases nested in it

    @contextlib.contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        sync = torch.cuda.is_available() and torch.cuda.is_initialized()
        if sync:
            torch.cuda.synchronize()
        start = time.perf_counter()
        self._inner.append(0.0)
        try:
            yield
        finally:
            if sync:
                torch.cuda.synchronize()
            elapsed = time.perf_counter() - start
            nested = self._inner.pop()
            self.seconds[phase] = self.seconds.get(phase, 0.0) + elapsed - nested
            if self._inner:
                self._inner[-1] += elapsed

    def flush(self, metrics: Any) -> None:
        """Add the accumulated seconds to `metrics` (a StepMetrics: sums are averaged over its steps)."""
        for phase, seconds in self.seconds.items():
            metrics.add_sum(f"time/{phase}", seconds, replicated=True)  # wall time: not summed over ranks
        self.seconds = {}
