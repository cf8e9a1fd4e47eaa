"""The engine's only channel to the worker: one JSON object per line, each stamped with `ts` (unix seconds).

    events = EventWriter(sys.stdout)
    events.progress(step=3, total_steps=10, epoch=0.3)
    events.metrics(3, {"train/loss": 1.2})

Event types: progress, metrics, samples, checkpoint, log, done, error. Values that JSON cannot hold
(NaN, inf) are written as null so that every line parses with a strict JSON reader. This module does
not decide *when* to emit; the training loops do.
"""

from __future__ import annotations

import json
import math
import threading
import time
from typing import Any, TextIO

EVENT_TYPES = ("progress", "metrics", "samples", "checkpoint", "log", "done", "error")


def _clean(value: Any) -> Any:
    """Make a value strict-JSON safe: non-finite floats become None, tuples lists, numpy/torch scalars floats."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    if value is None or isinstance(value, bool | int | str):
        return value
    if hasattr(value, "item"):  # numpy / torch 0-d scalars
        return _clean(value.item())
    return str(value)


class EventWriter:
    """Writes events to a text stream, one line each, flushed immediately (thread-safe)."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._lock = threading.Lock()
        self._grad_norms: list[
            float
        ] = []  # logged train/grad_norm values, to spot a run that learned nothing

    def emit(self, type_: str, **fields: Any) -> dict[str, Any]:
        if type_ not in EVENT_TYPES:
            raise ValueError(f"unknown event type {type_!r}; known: {list(EVENT_TYPES)}")
        event = {"type": type_, "ts": time.time(), **_clean(fields)}
        line = json.dumps(event, allow_nan=False, separators=(",", ":"))
        with self._lock:
            self._stream.write(line + "\n")
            self._stream.flush()
        return event

    def progress(self, step: int, total_steps: int, epoch: float) -> dict[str, Any]:
        return self.emit("progress", step=step, total_steps=total_steps, epoch=epoch)

    def metrics(self, step: int, metrics: dict[str, float]) -> dict[str, Any]:
        norm = metrics.get("train/grad_norm")
        if isinstance(norm, int | float) and not isinstance(norm, bool):
            self._grad_norms.append(float(norm))
        return self.emit("metrics", step=step, metrics=metrics)

    def samples(self, step: int, samples: list[dict[str, Any]]) -> dict[str, Any]:
        return self.emit("samples", step=step, samples=samples)

    def checkpoint(self, step: int, path: str, kept: list[str] | None = None) -> dict[str, Any]:
        """`kept`: every checkpoint still on disk after this save (older ones pruned by save_total_limit)."""
        if kept is None:
            return self.emit("checkpoint", step=step, path=str(path))
        return self.emit("checkpoint", step=step, path=str(path), kept=[str(p) for p in kept])

    def log(self, message: str, level: str = "info") -> dict[str, Any]:
        return self.emit("log", level=level, message=message)

    def done(self, step: int, final_path: str) -> dict[str, Any]:
        if self._grad_norms and all(n == 0 for n in self._grad_norms):
            self.log(
                "degenerate run: the gradient was 0 at every logged step, so no update changed the model "
                "(e.g. every completion was truncated and masked, or every reward was equal); see the dry "
                "run's warnings (POST /v1/jobs:validate) for the settings to change",
                "warning",
            )
        return self.emit("done", step=step, final_path=str(final_path))

    def error(self, message: str, traceback: str = "", **info: Any) -> dict[str, Any]:
        """`info`: the typed fields of `engine.errors.classify` (code, category, param, remediation, step).
        The traceback is for the worker's log; the worker does not pass it on to the api."""
        return self.emit("error", message=message, traceback=traceback, **info)


class NullEvents(EventWriter):
    """Swallows every event (library use and tests that do not read the stream)."""

    def __init__(self) -> None:
        super().__init__(stream=None)  # type: ignore[arg-type]

    def emit(self, type_: str, **fields: Any) -> dict[str, Any]:
        return {"type": type_, **fields}


class ErrorsOnly(EventWriter):
    """Writes only `error` events (the ranks of a multi-process job other than rank 0)."""

    def emit(self, type_: str, **fields: Any) -> dict[str, Any]:
        if type_ == "error":
            return super().emit(type_, **fields)
        return {"type": type_, **fields}
