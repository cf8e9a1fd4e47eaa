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


def test_a_claim_drops_checkpoints_saved_after_the_recorded_one(tmp_path: Path) -> None:
    """A worker killed between the engine saving checkpoint 5 and writing step 5's events recorded
    checkpoint 4: the next attempt resumes from 4 and redoes 5, so no step goes unrecorded."""
    from worker.tasks import drop_unrecorded_checkpoints

    folder = tmp_path / "checkpoints"
    for step in (3, 4, 5, 6):
        (folder / f"checkpoint-{step}").mkdir(parents=True)
    dropped = drop_unrecorded_checkpoints(tmp_path, str(folder / "checkpoint-4"))
    assert sorted(p.name for p in dropped) == ["checkpoint-5", "checkpoint-6"]
    assert sorted(p.name for p in folder.iterdir()) == ["checkpoint-3", "checkpoint-4"]
    # nothing recorded yet: every checkpoint on disk is unrecorded, the job starts over
    assert len(drop_unrecorded_checkpoints(tmp_path, None)) == 2 and not list(folder.iterdir())
    # the recorded one was pruned away (save_total_limit): the newest on disk is all there is
    (folder / "checkpoint-8").mkdir()
    assert drop_unrecorded_checkpoints(tmp_path, str(folder / "checkpoint-7")) == []
    assert (folder / "checkpoint-8").is_dir()


def test_a_resumed_mlflow_run_holds_every_step_once(tmp_path: Path) -> None:
    """Attempt 1 sent steps 1-2 to MLflow and recorded 1-4 in the database before its worker died
    (checkpoint 4); attempt 2 backfills 3-4 from the database and sends 5-6, then dies before checkpoint 5
    is recorded; attempt 3 redoes 5-7 and sends only 7: steps 1..7 once each."""
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    first = MlflowTracker(uri, tmp_path / "artifacts", job_id="job_rs")
    for step in (1, 2):
        first._accept({"type": "metrics", "step": step, "metrics": {"train/loss": 10.0 - step}})
    first._flush()
    history = [{"step": s, "metrics": {"train/loss": 10.0 - s}, "ts": 1.0} for s in (1, 2, 3, 4)]
    second = MlflowTracker(uri, tmp_path / "artifacts", job_id="job_rs", run_id=first.run_id, history=history)
    for step in (5, 6):
        second._accept({"type": "metrics", "step": step, "metrics": {"train/loss": 10.0 - step}})
    second._flush()
    third = MlflowTracker(uri, tmp_path / "artifacts", job_id="job_rs", run_id=first.run_id, history=history)
    for step in (5, 6, 7):
        third._accept({"type": "metrics", "step": step, "metrics": {"train/loss": 10.0 - step}})
    third._flush()
    points = MlflowClient(uri).get_metric_history(first.run_id, "train/loss")
    assert sorted((m.step, m.value) for m in points) == [(s, 10.0 - s) for s in range(1, 8)]
