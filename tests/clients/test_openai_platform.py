"""The official `openai` package against a running platform: upload, a supervised job trained to the end,
its events and checkpoints, and cancelling another job."""

from __future__ import annotations

import json
import time

import openai
import pytest

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

ROWS = "".join(
    json.dumps({"messages": [{"role": "user", "content": f"say {w}"}, {"role": "assistant", "content": w}]})
    + "\n"
    for w in ("cat", "dog", "sun", "moon", "tree", "book", "fish", "bird")
).encode()


def _wait(client: openai.OpenAI, job_id: str, timeout: float = 240) -> object:
    deadline = time.monotonic() + timeout
    while True:
        job = client.fine_tuning.jobs.retrieve(job_id)
        if job.status in ("succeeded", "failed", "cancelled") or time.monotonic() > deadline:
            return job
        time.sleep(1)


def test_openai_client_trains_lists_events_and_checkpoints_and_cancels(platform) -> None:
    client = openai.OpenAI(base_url=f"{platform.url}/openai/v1", api_key=platform.token, max_retries=0)
    file = client.files.create(file=("chat.jsonl", ROWS), purpose="fine-tune")
    assert file.object == "file" and file.purpose == "fine-tune" and file.bytes == len(ROWS)

    hyper = {"max_steps": 2, "save_steps": 2, "batch_size": 4}
    job = client.fine_tuning.jobs.create(
        model="tiny:llama",
        training_file=file.id,
        method={"type": "supervised", "supervised": {"hyperparameters": hyper}},
    )
    other = client.fine_tuning.jobs.create(
        model="tiny:llama",
        training_file=file.id,
        method={"type": "supervised", "supervised": {"hyperparameters": {"max_steps": 100000}}},
    )
    assert client.fine_tuning.jobs.cancel(other.id).status in ("cancelled", "running")  # running: stopping

    job = _wait(client, job.id)
    assert job.status == "succeeded", job.error
    assert job.fine_tuned_model == f"tiny:llama:ft:{job.id}" and job.finished_at

    events = client.fine_tuning.jobs.list_events(job.id, limit=100).data
    assert events[0].message.startswith("Job status: succeeded")  # newest first
    assert [e.type for e in events].count("metrics") == 2
    assert {e.data["step"] for e in events if e.type == "metrics"} == {1, 2}
    page = client.fine_tuning.jobs.list_events(job.id, limit=2)
    assert len(page.data) == 2 and page.has_more
    older = client.fine_tuning.jobs.list_events(job.id, after=page.data[-1].id, limit=100).data
    assert [e.id for e in page.data + older] == [e.id for e in events]

    (ckpt,) = client.fine_tuning.jobs.checkpoints.list(job.id).data
    assert (
        ckpt.step_number == 2
        and ckpt.fine_tuning_job_id == job.id
        and "train_loss" in ckpt.metrics.model_dump()
    )

    assert _wait(client, other.id).status == "cancelled"
    listed = [j.id for j in client.fine_tuning.jobs.list(limit=50).data]
    assert job.id in listed and other.id in listed
