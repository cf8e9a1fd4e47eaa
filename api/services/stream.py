"""A job's events as server-sent events: poll the events table, send what is new, end at a terminal state.

    id: 42
    event: metrics
    data: {"id": 42, "kind": "metrics", "step": 3, "data": {...}, "created_at": "..."}

`id:` is the event id, so a reconnecting client's `Last-Event-ID` resumes right after the last event it
saw. A comment line (`: heartbeat`) goes out when nothing happened for `heartbeat_s`, so proxies keep the
connection open. The stream ends once the job is terminal and every event up to then was sent. Polling
works the same on SQLite and PostgreSQL; each poll opens its own short session.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable

from sqlalchemy import Engine, select
from starlette.concurrency import run_in_threadpool

from api.schemas import EventOut
from core.db import SessionLocal
from core.models import Job, JobEvent
from core.states import TERMINAL

POLL_S = 0.5  # how often the events table is read while a job is live
BATCH = 500


def _poll(engine: Engine, job_id: str, after: int) -> tuple[list[str], int, bool]:
    """Frames for the events after `after`, the new cursor, and whether the stream is complete."""
    with SessionLocal(bind=engine) as session:
        # the status is read first: every event written before the job turned terminal is read below
        status = session.scalar(select(Job.status).where(Job.id == job_id))
        rows = list(
            session.scalars(
                select(JobEvent)
                .where(JobEvent.job_id == job_id, JobEvent.id > after)
                .order_by(JobEvent.id)
                .limit(BATCH)
            )
        )
    frames = [
        f"id: {row.id}\nevent: {row.kind}\ndata: "
        f"{json.dumps(EventOut.model_validate(row).model_dump(mode='json'), separators=(',', ':'))}\n\n"
        for row in rows
    ]
    cursor = rows[-1].id if rows else after
    done = status is None or (status in TERMINAL and len(rows) < BATCH)
    return frames, cursor, done


async def event_stream(
    engine: Engine,
    job_id: str,
    after: int,
    heartbeat_s: float,
    is_disconnected: Callable[[], Awaitable[bool]] | None = None,
) -> AsyncIterator[str]:
    yield f"retry: {int(POLL_S * 2000)}\n\n"
    last_sent = time.monotonic()
    while True:
        frames, after, done = await run_in_threadpool(_poll, engine, job_id, after)
        for frame in frames:
            yield frame
        if frames:
            last_sent = time.monotonic()
        if done:
            return
        if time.monotonic() - last_sent >= heartbeat_s:
            yield ": heartbeat\n\n"
            last_sent = time.monotonic()
        if is_disconnected is not None and await is_disconnected():
            return
        await asyncio.sleep(POLL_S)
