"""The MLflow sink: one MLflow run per job, fed from the engine's event stream on a background thread.

    tracker = MlflowTracker(uri, artifact_root, job_id=..., run_name=..., params=flatten(spec_resolved))
    tracker.start()
    tracker.on_event(event)          # never blocks, never raises
    tracker.close("FINISHED")        # drains what it can within a timeout

What goes where: params = the flattened resolved spec (`config.learning_rate`, `model`, ...), metrics =
every `metrics` event at its step, samples = `samples/step_000010.json` (the prompt images of image samples
as `samples/step_000010/<sample>_<image>.png`, named in the JSON in place of the inline thumbnails), checkpoints =
`checkpoints/<folder name>`, the final model = `model/`. A resumed job logs into the same run: the values
the run already holds are not sent again (the steps the resumed engine redoes), and the ones the earlier
attempt recorded in the database but never got to MLflow (its worker died first) are sent from `history`,
so every step is in the run's metric history once.

Failure-tolerant by design: MLflow being down, slow or misconfigured logs a warning and retries with
backoff; it never raises into the runner and never fails a job (the job's own event rows in the
database hold the same metrics). `close` does not hold a job while MLflow is down: what is still unsent
stays in memory and the thread goes on retrying for `catch_up_s`, so the run catches up (params, metric
history, artifacts, final status) when the server answers again, and `on_late_finish(run_id, warnings)`
reports the outcome. A run that lost data on the way (more metric values than the buffer keeps, a
checkpoint folder rotated away before it could be copied) gets the tag `papertrain.incomplete`.

With an MLflow server (`http(s)://` tracking URI) the experiment takes the server's artifact location,
so artifacts go through the server (`mlflow server --serve-artifacts`); `artifact_root` is only used for
a local store. mlflow is imported on the background thread only, so importing this module stays cheap.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

EXPERIMENT_NAME = "papertrain"
MAX_PARAM_VALUE_CHARS = 6000  # MLflow's limit
PARAMS_PER_BATCH = 100
METRICS_PER_BATCH = 1000
MAX_PENDING_METRICS = 100_000
CATCH_UP_S = 6 * 3600.0
INCOMPLETE_TAG = "papertrain.incomplete"
# The tracker retries with its own backoff, so one MLflow request should fail fast instead of retrying
# for minutes inside the client (its defaults: 7 retries, backoff factor 2). Explicit values win.
HTTP_CLIENT_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1"}
_CLOSE = object()


def flatten_params(spec: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """`{"config": {"beta": 0.1}}` -> `{"config.beta": "0.1"}`; lists and None are written as JSON."""
    out: dict[str, str] = {}
    for key, value in spec.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten_params(value, f"{name}."))
            continue
        text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
        out[name] = text[:MAX_PARAM_VALUE_CHARS]
    return out


def sample_images(step: int, samples: list[Any]) -> tuple[list[Any], list[tuple[bytes, str]]]:
    """Samples whose `images` are inline PNG data URIs -> (the samples with each image replaced by its
    artifact path, relative to `samples/`; [(png bytes, artifact path)])."""
    import base64
    import binascii

    out, files = [], []
    for i, sample in enumerate(samples):
        images = sample.get("images") if isinstance(sample, dict) else None
        if not isinstance(images, list) or not images:
            out.append(sample)
            continue
        names = []
        for j, uri in enumerate(images):
            if not isinstance(uri, str) or not uri.startswith("data:image/png;base64,"):
                continue
            try:
                data = base64.b64decode(uri.split(",", 1)[1], validate=True)
            except (binascii.Error, ValueError):
                continue
            name = f"step_{step:06d}/{i}_{j}.png"
            files.append((data, f"samples/{name}"))
            names.append(name)
        out.append({**sample, "images": names})
    return out, files


class MlflowTracker:
    """Buffers events in memory and sends them to MLflow from one daemon thread."""

    def __init__(
        self,
        tracking_uri: str,
        artifact_root: str | Path,
        *,
        job_id: str,
        run_name: str | None = None,
        params: dict[str, str] | None = None,
        tags: dict[str, str] | None = None,
        run_id: str | None = None,
        experiment: str = EXPERIMENT_NAME,
        flush_interval_s: float = 2.0,
        max_backoff_s: float = 60.0,
        log_checkpoints: bool = True,
        catch_up_s: float = CATCH_UP_S,
        on_late_finish: Callable[[str | None, list[str]], None] | None = None,
        history: list[dict[str, Any]] | None = None,
    ) -> None:
        self.tracking_uri = tracking_uri
        self.artifact_root = Path(artifact_root)
        self.job_id = job_id
        self.run_name = run_name or job_id
        self.params = params or {}
        self.tags = {"papertrain.job_id": job_id, **(tags or {})}
        self.experiment = experiment
        self.flush_interval_s = flush_interval_s
        self.max_backoff_s = max_backoff_s
        self.log_checkpoints = log_checkpoints  # False: only the final model is copied to MLflow
        self.catch_up_s = catch_up_s
        self.on_late_finish = on_late_finish  # called by the thread when it ends after close() returned
        self.warnings: list[str] = []
        self.lost: list[str] = []  # what the run will miss (its `papertrain.incomplete` tag)
        self._run_id = run_id
        self._resumed = run_id is not None
        self._params_logged = False
        self._inbox: queue.Queue[Any] = queue.Queue()
        self._metrics: deque[tuple[str, float, int, int]] = deque(maxlen=MAX_PENDING_METRICS)
        self._in_run: dict[str, set[int]] | None = None  # a resumed run's metric steps already in MLflow
        for event in history or ():  # earlier attempts' metrics events, as the database recorded them
            self._accept({**event, "type": "metrics"})
        self._artifacts: deque[tuple[str, Any, str]] = deque()
        self._client: Any = None
        self._thread = threading.Thread(target=self._loop, name=f"mlflow-{job_id}", daemon=True)
        self._failing_since: float | None = None
        self._backoff_s = 1.0
        self._retry_at = 0.0
        self._status: str | None = None  # the final status, once close() was called
        self._terminated = False
        self._abandoned_at: int | None = None  # len(warnings) when close() stopped waiting
        self._close_attempts = 0
        self._handoff = threading.Lock()  # close() giving up vs. the thread ending
        self.dropped = 0

    @property
    def run_id(self) -> str | None:
        return self._run_id

    def start(self) -> MlflowTracker:
        self._thread.start()
        return self

    def on_event(self, event: dict[str, Any]) -> None:
        self._inbox.put(event)

    def close(self, status: str = "FINISHED", timeout_s: float = 60.0) -> bool:
        """End the run with `status` (FINISHED / FAILED / KILLED); True if everything was sent in time.

        Waits up to `timeout_s` while MLflow answers, and no longer than the thread's next attempt while it
        does not: the thread then keeps the rest and sends it when MLflow is back (see the module doc).
        """
        if self._thread.ident is None:  # never started
            return not self._metrics and not self._artifacts
        self._inbox.put((_CLOSE, status))
        deadline = time.monotonic() + timeout_s
        while self._thread.is_alive() and time.monotonic() < deadline:
            self._thread.join(0.1)
            if self._close_attempts and self._failing_since is not None:
                break  # the last attempt failed: MLflow is down, do not hold the job
        with self._handoff:
            if self._thread.is_alive():
                self._warn(
                    f"MLflow at {self.tracking_uri} did not take this job's data in time; the rest is sent "
                    f"in the background when it answers (for up to {self.catch_up_s / 3600:g} h)"
                )
                self._abandoned_at = len(self.warnings)
                return False
        return self._terminated and not self._lost()

    # -- background thread ---------------------------------------------------------------------------

    def _loop(self) -> None:
        closing: str | None = None
        next_flush = time.monotonic() + self.flush_interval_s
        while closing is None:
            try:
                item = self._inbox.get(timeout=max(0.05, next_flush - time.monotonic()))
            except queue.Empty:
                item = None
            while item is not None:
                if isinstance(item, tuple) and item and item[0] is _CLOSE:
                    closing = item[1]
                else:
                    self._accept(item)
                try:
                    item = self._inbox.get_nowait()
                except queue.Empty:
                    item = None
            now = time.monotonic()
            if closing is None and now < next_flush:
                continue
            next_flush = now + self.flush_interval_s
            if closing is None and now >= self._retry_at:
                self._try_flush()
        # The job has ended: send the rest and end the run, retrying (with backoff) until MLflow answers.
        self._retry_at = 0.0
        self._status = closing
        give_up_at = time.monotonic() + self.catch_up_s
        while not self._terminated:
            now = time.monotonic()
            if now >= give_up_at:
                break
            if now >= self._retry_at:
                self._try_flush()
                self._close_attempts += 1
            else:
                time.sleep(min(1.0, self._retry_at - now, give_up_at - now))
        self._finish()

    def _accept(self, event: dict[str, Any]) -> None:
        type_, step = event.get("type"), event.get("step")
        step = step if isinstance(step, int) else 0
        ts_ms = int(float(event.get("ts") or time.time()) * 1000)
        if type_ == "metrics":
            for key, value in (event.get("metrics") or {}).items():
                if isinstance(value, int | float) and not isinstance(value, bool):
                    if len(self._metrics) == self._metrics.maxlen:
                        self.dropped += 1
                    self._metrics.append((str(key), float(value), ts_ms, step))
        elif type_ == "samples":
            samples, images = sample_images(step, event.get("samples") or [])
            for data, artifact_path in images:
                self._artifacts.append(("bytes", data, artifact_path))
            self._artifacts.append(
                ("dict", {"step": step, "samples": samples}, f"samples/step_{step:06d}.json")
            )
        elif type_ == "checkpoint" and event.get("path") and self.log_checkpoints:
            self._artifacts.append(("dir", str(event["path"]), f"checkpoints/{Path(event['path']).name}"))
            if isinstance(event.get("kept"), list):  # the engine pruned older ones: MLflow keeps the same set
                self._artifacts.append(("prune", [Path(p).name for p in event["kept"]], "checkpoints"))
        elif type_ == "done" and event.get("final_path"):
            self._artifacts.append(("dir", str(event["final_path"]), "model"))
        elif type_ == "error":
            self._artifacts.append(("dict", {k: v for k, v in event.items() if k != "type"}, "error.json"))

    def _try_flush(self) -> None:
        try:
            self._flush()
        except Exception as exc:
            now = time.monotonic()
            if self._failing_since is None:
                self._failing_since = now
                self._warn(
                    f"MLflow at {self.tracking_uri} failed ({type(exc).__name__}: {_short(exc)}); the job "
                    "goes on, its metrics stay in the job's events, MLflow logging will be retried"
                )
            self._retry_at = now + self._backoff_s
            self._backoff_s = min(self._backoff_s * 2, self.max_backoff_s)
        else:
            if self._failing_since is not None:
                log.info("job %s: MLflow at %s answers again", self.job_id, self.tracking_uri)
            self._failing_since = None
            self._backoff_s = 1.0

    def _flush(self) -> None:
        client = self._ensure_run()
        from mlflow.entities import Metric

        while self._metrics:
            batch = [self._metrics[i] for i in range(min(METRICS_PER_BATCH, len(self._metrics)))]
            fresh = [m for m in batch if self._in_run is None or m[3] not in self._in_run.get(m[0], ())]
            if fresh:
                client.log_batch(self._run_id, metrics=[Metric(k, v, ts, step) for k, v, ts, step in fresh])
            for _ in batch:
                self._metrics.popleft()
        while self._artifacts:
            kind, payload, artifact_path = self._artifacts[0]
            if kind == "dict":
                client.log_dict(self._run_id, payload, artifact_path)
            elif kind == "bytes":
                folder, _, name = artifact_path.rpartition("/")
                with tempfile.TemporaryDirectory() as tmp:
                    (Path(tmp) / name).write_bytes(payload)
                    client.log_artifact(self._run_id, str(Path(tmp) / name), folder)
            elif kind == "prune":
                self._prune(client, set(payload), artifact_path)
            elif Path(payload).is_dir():
                client.log_artifacts(self._run_id, payload, artifact_path)
            else:  # the engine may already have rotated an old checkpoint away
                self._warn(f"artifact folder {payload} is gone; not logged to MLflow")
                self.lost.append(f"{artifact_path} (its folder was gone before it could be copied)")
            self._artifacts.popleft()
        if self._status is not None and not self._terminated:
            lost = self._lost()
            if lost:
                client.set_tag(self._run_id, INCOMPLETE_TAG, "; ".join(lost)[:5000])
            client.set_terminated(self._run_id, status=self._status)
            self._terminated = True

    def _prune(self, client: Any, kept: set[str], folder: str) -> None:
        from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

        gone = [a.path for a in client.list_artifacts(self._run_id, folder) if Path(a.path).name not in kept]
        if gone:
            repo = get_artifact_repository(client.get_run(self._run_id).info.artifact_uri)
            for path in gone:
                repo.delete_artifacts(path)

    def _ensure_run(self) -> Any:
        if self._client is None:
            for name, value in HTTP_CLIENT_DEFAULTS.items():
                os.environ.setdefault(name, value)
            from mlflow.tracking import MlflowClient

            self._client = MlflowClient(tracking_uri=self.tracking_uri)
        client = self._client
        if self._run_id is None:
            experiment_id = self._experiment_id(client)
            run = client.create_run(experiment_id, tags=self.tags, run_name=self.run_name)
            self._run_id = run.info.run_id
        elif self._resumed:
            client.update_run(self._run_id, status="RUNNING")
            self._in_run = {
                key: {m.step for m in client.get_metric_history(self._run_id, key)}
                for key in client.get_run(self._run_id).data.metrics
            }
            self._resumed = False
        if not self._params_logged:
            self._log_params(client)
            self._params_logged = True
        return client

    def _experiment_id(self, client: Any) -> str:
        found = client.get_experiment_by_name(self.experiment)
        if found is not None:
            return str(found.experiment_id)
        location = None  # a server decides where artifacts live and serves them
        if not self.tracking_uri.startswith(("http://", "https://")):
            location = (self.artifact_root / self.experiment).resolve().as_uri()
        try:
            return str(client.create_experiment(self.experiment, artifact_location=location))
        except Exception:  # another worker created it first
            found = client.get_experiment_by_name(self.experiment)
            if found is None:
                raise
            return str(found.experiment_id)

    def _log_params(self, client: Any) -> None:
        from mlflow.entities import Param

        items = sorted(self.params.items())
        for i in range(0, len(items), PARAMS_PER_BATCH):
            batch = [Param(k, v) for k, v in items[i : i + PARAMS_PER_BATCH]]
            try:
                client.log_batch(self._run_id, params=batch)
            except Exception as exc:
                if self._run_id and "already logged" in str(exc).lower():
                    continue  # a resumed run re-sends the same params; MLflow keeps the first values
                raise

    def _lost(self) -> list[str]:
        dropped = (
            [f"{self.dropped} metric values (more than {MAX_PENDING_METRICS} waited)"] if self.dropped else []
        )
        return dropped + self.lost

    def _finish(self) -> None:
        # The thread ends: everything was sent and the run ended, or the catch-up time ran out.
        if not self._terminated:
            self._warn(
                f"MLflow: gave up on run {self._run_id or '(not created)'} of job {self.job_id}: "
                f"{len(self._metrics)} metric values and {len(self._artifacts)} artifacts were not sent"
            )
        with self._handoff:
            late = self._abandoned_at is not None
        if late and self.on_late_finish is not None:
            try:
                self.on_late_finish(self._run_id, self.warnings[self._abandoned_at :])
            except Exception:
                log.exception("job %s: reporting the late end of MLflow logging failed", self.job_id)

    def _warn(self, message: str) -> None:
        self.warnings.append(message)
        log.warning("job %s: %s", self.job_id, message)


def _short(exc: Exception, limit: int = 300) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    return text[:limit]
