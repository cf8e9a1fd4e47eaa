"""The api after a resume: /metrics never runs backwards; /checkpoints lists what exists."""

from __future__ import annotations

from core.models import JobEvent


def test_metrics_and_checkpoints_through_the_api(client, alice, submit, db) -> None:
    job_id = submit()["id"]
    rows = [("metrics", s, {"metrics": {"train/loss": float(s)}}) for s in (1, 2, 3, 4, 5, 2, 3, 4, 5, 6)]
    ck = [f"/out/checkpoints/checkpoint-{s}" for s in (2, 4, 6)]
    rows += [
        ("checkpoint", 2, {"step": 2, "path": ck[0], "kept": ck[:1]}),
        ("checkpoint", 4, {"step": 4, "path": ck[1], "kept": ck[:2]}),
        ("checkpoint", 6, {"step": 6, "path": ck[2], "kept": ck[1:]}),  # save_total_limit 2 pruned step 2
    ]
    with db() as session, session.begin():
        session.add_all(JobEvent(job_id=job_id, kind=k, step=s, data=d) for k, s, d in rows)
    history = client.get(f"/v1/jobs/{job_id}/metrics", headers=alice).json()["metrics"]["train/loss"]
    assert [p["step"] for p in history] == [1, 2, 3, 4, 5, 6]  # never backwards, no step twice
    listed = client.get(f"/v1/jobs/{job_id}/checkpoints", headers=alice).json()["checkpoints"]
    assert [c["path"] for c in listed] == ck[1:]
