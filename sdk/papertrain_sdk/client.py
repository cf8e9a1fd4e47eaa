"""The papertrain client.

    from papertrain_sdk import Client

    client = Client("http://127.0.0.1:8000", token="...")      # or PAPERTRAIN_URL / PAPERTRAIN_TOKEN
    job = client.jobs.create({"preset": "dapo", "model": "tiny:llama", "dataset": {"builtin": "arithmetic"}})
    for event in client.jobs.stream(job.id):                     # live, resumes after a dropped connection
        print(event.kind, event.data)
    job = client.jobs.wait(job.id)
    client.jobs.metrics(job.id)["rollout/reward_mean"]           # [(step, value), ...]

Every failed call raises a `papertrain_sdk.errors.PapertrainError` subclass carrying the API's `param`.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from papertrain_sdk.errors import PapertrainError, Unreachable, WaitTimeout, from_response
from papertrain_sdk.models import (
    Checkpoint,
    DryRun,
    Event,
    EventPage,
    FileInfo,
    Job,
    JobPage,
    Preset,
)

DEFAULT_URL = "http://127.0.0.1:8000"


class Client:
    def __init__(
        self,
        base_url: str | None = None,
        token: str | None = None,
        *,
        timeout: float = 30.0,
        http: httpx.Client | None = None,
    ) -> None:
        """`http` replaces the underlying httpx client (tests pass an ASGI test client)."""
        self.base_url = (base_url or os.environ.get("PAPERTRAIN_URL") or DEFAULT_URL).rstrip("/")
        token = token if token is not None else os.environ.get("PAPERTRAIN_TOKEN")
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = http or httpx.Client(base_url=self.base_url, timeout=timeout)
        self.jobs = Jobs(self)
        self.presets = Presets(self)
        self.files = Files(self)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: Any) -> None:
        self.close()

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        headers = {**self._headers, **(kwargs.pop("headers", None) or {})}
        try:
            res = self._http.request(method, path, headers=headers, **kwargs)
        except httpx.TransportError as exc:
            raise Unreachable(
                f"{self.base_url} did not answer: {exc}", code="unreachable", retryable=True
            ) from exc
        if res.status_code >= 400:
            raise _error(res)
        return res

    def json(self, method: str, path: str, **kwargs: Any) -> Any:
        return self.request(method, path, **kwargs).json()


def _error(res: httpx.Response) -> PapertrainError:
    try:
        body = res.json()
    except ValueError:
        body = res.text
    return from_response(res.status_code, body)


class Jobs:
    def __init__(self, client: Client) -> None:
        self._c = client

    def create(self, spec: dict[str, Any], *, idempotency_key: str | None = None) -> Job:
        """Submit a full spec or `{"preset": id, ...overrides}`; the key makes a retried call safe."""
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        return Job.model_validate(self._c.json("POST", "/v1/jobs", json=spec, headers=headers))

    def validate(self, spec: dict[str, Any]) -> DryRun:
        """Dry run: the resolved spec, preset diff, warnings and an estimate; nothing is created."""
        return DryRun.model_validate(self._c.json("POST", "/v1/jobs:validate", json=spec))

    def get(self, job_id: str) -> Job:
        return Job.model_validate(self._c.json("GET", f"/v1/jobs/{job_id}"))

    def list(
        self, *, status: str | list[str] | None = None, limit: int = 50, cursor: str | None = None
    ) -> JobPage:
        params: dict[str, Any] = {"limit": limit}
        if status:
            params["status"] = status if isinstance(status, str) else ",".join(status)
        if cursor:
            params["cursor"] = cursor
        return JobPage.model_validate(self._c.json("GET", "/v1/jobs", params=params))

    def cancel(self, job_id: str) -> Job:
        return Job.model_validate(self._c.json("POST", f"/v1/jobs/{job_id}/cancel"))

    def retry(self, job_id: str) -> Job:
        return Job.model_validate(self._c.json("POST", f"/v1/jobs/{job_id}/retry"))

    def wait(self, job_id: str, *, timeout: float | None = None, poll_s: float = 2.0) -> Job:
        """Poll until the job is succeeded, failed or cancelled; `WaitTimeout` after `timeout` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            job = self.get(job_id)
            if job.terminal:
                return job
            if deadline is not None and time.monotonic() >= deadline:
                raise WaitTimeout(f"job {job_id} is still {job.status} after {timeout}s", code="wait_timeout")
            time.sleep(poll_s)

    def events(self, job_id: str, *, after: int = 0, limit: int = 200, kind: str | None = None) -> EventPage:
        params: dict[str, Any] = {"after": after, "limit": limit}
        if kind:
            params["kind"] = kind
        return EventPage.model_validate(self._c.json("GET", f"/v1/jobs/{job_id}/events", params=params))

    def stream(self, job_id: str, *, after: int = 0, reconnects: int = 5) -> Iterator[Event]:
        """Server-sent events from `after` until the job is terminal; reconnects with Last-Event-ID."""
        last, failures = after, 0
        while True:
            headers = {**self._c._headers, "Accept": "text/event-stream", "Last-Event-ID": str(last)}
            try:
                with self._c._http.stream(
                    "GET",
                    f"/v1/jobs/{job_id}/events/stream",
                    headers=headers,
                    timeout=httpx.Timeout(30, read=None),
                ) as res:
                    if res.status_code >= 400:
                        res.read()
                        raise _error(res)
                    for event in _parse_sse(res.iter_lines()):
                        last, failures = event.id, 0
                        yield event
                return  # the server ended the stream: the job is terminal
            except (httpx.TransportError, httpx.StreamError) as exc:
                failures += 1
                if failures > reconnects:
                    raise Unreachable(
                        f"event stream of {job_id} dropped {failures} times: {exc}", code="unreachable"
                    ) from exc
                time.sleep(min(10.0, 0.5 * 2**failures))

    def metrics(self, job_id: str) -> dict[str, list[tuple[int | None, float]]]:
        """`{name: [(step, value), ...]}` in step order."""
        data = self._c.json("GET", f"/v1/jobs/{job_id}/metrics")["metrics"]
        return {name: [(p["step"], p["value"]) for p in points] for name, points in data.items()}

    def checkpoints(self, job_id: str) -> list[Checkpoint]:
        data = self._c.json("GET", f"/v1/jobs/{job_id}/checkpoints")["checkpoints"]
        return [Checkpoint.model_validate(c) for c in data]

    def download_checkpoint(self, job_id: str, step: int, dest: str | Path) -> Path:
        """Save the checkpoint at `step` as a zip file at `dest` (a folder gets `<job>-step-<n>.zip`)."""
        return self._download(
            f"/v1/jobs/{job_id}/checkpoints/{step}/download", dest, f"{job_id}-step-{step}.zip"
        )

    def download_model(self, job_id: str, dest: str | Path) -> Path:
        """Save the final model of a succeeded job as a zip file at `dest` (a folder gets `<job>-final.zip`);
        unzipped, it loads with `from_pretrained`."""
        return self._download(f"/v1/jobs/{job_id}/model/download", dest, f"{job_id}-final.zip")

    def _download(self, path: str, dest: str | Path, name: str) -> Path:
        dest = Path(dest)
        if dest.is_dir():
            dest = dest / name
        with self._c._http.stream("GET", path, headers=self._c._headers) as res:
            if res.status_code >= 400:
                res.read()
                raise _error(res)
            with dest.open("wb") as out:
                for chunk in res.iter_bytes():
                    out.write(chunk)
        return dest


def _parse_sse(lines: Iterator[str]) -> Iterator[Event]:
    """Events from an SSE line stream (comments and `retry:` lines are skipped)."""
    import json

    fields: dict[str, str] = {}
    data: list[str] = []
    for line in lines:
        if line == "":
            if data:
                payload = json.loads("\n".join(data))
                yield Event.model_validate(payload)
            fields, data = {}, []
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "data":
            data.append(value)
        else:
            fields[name] = value
    if data:
        yield Event.model_validate(json.loads("\n".join(data)))


class Presets:
    def __init__(self, client: Client) -> None:
        self._c = client

    def list(self) -> list[Preset]:
        return [Preset.model_validate(p) for p in self._c.json("GET", "/v1/presets")["presets"]]

    def get(self, preset_id: str) -> Preset:
        return Preset.model_validate(self._c.json("GET", f"/v1/presets/{preset_id}"))


class Files:
    def __init__(self, client: Client) -> None:
        self._c = client

    def upload(self, path: str | Path, *, idempotency_key: str | None = None) -> FileInfo:
        """Upload a JSONL dataset; use the returned id as `dataset: {"file_id": id}`."""
        path = Path(path)
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        with path.open("rb") as fh:
            body = self._c.json("POST", "/v1/files", files={"file": (path.name, fh)}, headers=headers)
        return FileInfo.model_validate(body)

    def list(self) -> list[FileInfo]:
        return [FileInfo.model_validate(f) for f in self._c.json("GET", "/v1/files")["files"]]
