"""After a resume the redone steps supersede the earlier attempt's rows; listings show what exists."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import select
from worker_testkit import add_job

from core.models import JobEvent
from worker.events import EventRecorder
from worker.tracking import MlflowTracker


def _run(factory, job_id: str, steps: range) -> EventRecorder:
    recorder = EventRecorder(factory, job_id)
    for step in steps:
        recorder.add({"type": "progress", "step": step, "total_steps": 6, "epoch": 0.0})
        recorder.add({"type": "metrics", "step": step, "metrics": {"train/loss": 10.0 - step}})
    assert recorder.flush()
    return recorder


def test_redone_steps_replace_the_earlier_attempts_rows(factory) -> None:
    job_id = add_job(factory)
    _run(factory, job_id, range(1, 6))  # attempt 1 dies after step 5; its last checkpoint was step 3
    second = _run(factory, job_id, range(4, 7))  # attempt 2 resumes at step 3 and redoes 4 and 5
    assert second.superseded == 4  # progress + metrics of steps 4 and 5
    with factory() as session:
        rows = session.execute(
            select(JobEvent.kind, JobEvent.step)
            .where(JobEvent.job_id == job_id, JobEvent.kind == "metrics")
            .order_by(JobEvent.id)
        ).all()
    assert [step for _, step in rows] == [1, 2, 3, 4, 5, 6]


def test_mlflow_keeps_the_checkpoints_that_exist(tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    tracker = MlflowTracker(uri, tmp_path / "artifacts", job_id="job_ck")
    kept: list[str] = []
    for step in (1, 2, 3, 4):
        folder = tmp_path / "out" / f"checkpoint-{step}"
        folder.mkdir(parents=True)
        (folder / "weights.bin").write_text(str(step))
        kept = [*kept, str(folder)][-2:]
        tracker._accept({"type": "checkpoint", "step": step, "path": str(folder), "kept": kept})
    tracker._flush()
    names = {Path(a.path).name for a in MlflowClient(uri).list_artifacts(tracker.run_id, "checkpoints")}
    assert names == {"checkpoint-3", "checkpoint-4"}
