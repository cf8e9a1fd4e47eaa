"""The MLflow sink: a finished fake job's params, metrics and artifacts are readable from the local store."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
from worker_testkit import add_job, get_job, wait_for

from core.models import Job
from core.states import JobStatus
from worker.tasks import execute_job
from worker.tracking import MAX_PARAM_VALUE_CHARS, MlflowTracker, flatten_params


def test_flatten_params_writes_nested_keys_with_dots_and_json_values():
    spec = {
        "model": "tiny:llama",
        "config": {"beta": 0.1, "loss_type": ["sigmoid", "bco_pair"], "x": None},
        "e": {},
    }
    assert flatten_params(spec) == {
        "model": "tiny:llama",
        "config.beta": "0.1",
        "config.loss_type": '["sigmoid", "bco_pair"]',
        "config.x": "null",
        "e": "{}",
    }
    assert len(flatten_params({"long": "x" * 10_000})["long"]) == MAX_PARAM_VALUE_CHARS


@pytest.mark.slow
def test_finished_job_is_readable_from_the_local_mlflow_store(settings, factory, tmp_path):
    from mlflow.tracking import MlflowClient

    job_id = add_job(factory, "fake:ok")

    assert execute_job(settings, job_id, session_factory=factory) == "succeeded"

    job = get_job(factory, job_id)
    assert job.status == JobStatus.succeeded and job.mlflow_run_id
    client = MlflowClient(tracking_uri=settings.mlflow_tracking_uri)
    run = client.get_run(job.mlflow_run_id)
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "fake:ok"
    assert run.data.tags["papertrain.job_id"] == job_id
    assert client.get_experiment(run.info.experiment_id).name == "papertrain"

    resolved = job.spec_resolved
    assert run.data.params["config.learning_rate"] == str(resolved["config"]["learning_rate"])
    assert run.data.params["model"] == "tiny:llama"
    assert run.data.params["dataset.builtin"] == "chat"

    history = client.get_metric_history(job.mlflow_run_id, "train/loss")
    assert sorted((m.step, m.value) for m in history) == [(s, 2.0 / s) for s in (1, 2, 3)]
    assert "train/nan" not in run.data.metrics  # null values are not sent

    # artifacts live in the configured local folder
    assert run.info.artifact_uri.startswith(Path(settings.mlflow_artifact_root).resolve().as_uri())
    samples = json.loads(
        Path(
            client.download_artifacts(job.mlflow_run_id, "samples/step_000003.json", str(tmp_path))
        ).read_text()
    )
    assert samples == {"step": 3, "samples": [{"prompt": "What is 7+5?", "completion": "12", "reward": 1.0}]}
    names = {a.path for a in client.list_artifacts(job.mlflow_run_id, "checkpoints/checkpoint-2")}
    assert names == {"checkpoints/checkpoint-2/weights.txt"}
    final = client.download_artifacts(job.mlflow_run_id, "model/weights.txt", str(tmp_path))
    assert Path(final).read_text() == "final\n"


@pytest.mark.slow
def test_a_resumed_job_logs_into_the_same_mlflow_run(settings, factory):
    from mlflow.tracking import MlflowClient

    job_id = add_job(factory, "fake:hang")
    stop = threading.Event()
    thread = threading.Thread(
        target=execute_job,
        args=(settings, job_id),
        kwargs={"session_factory": factory, "stop_event": stop, "sender": lambda *a: None},
    )
    thread.start()
    wait_for(lambda: get_job(factory, job_id).mlflow_run_id, 60, what="the MLflow run to exist")
    stop.set()  # worker shutdown: the job goes back to the queue
    thread.join(60)
    first = get_job(factory, job_id)
    assert first.status == JobStatus.queued
    with factory() as session, session.begin():  # the next attempt behaves (the fake reads its name)
        job = session.get(Job, job_id)
        job.spec_resolved = {**job.spec_resolved, "name": "fake:ok"}

    assert execute_job(settings, job_id, session_factory=factory, sender=lambda *a: None) == "succeeded"

    job = get_job(factory, job_id)
    assert job.mlflow_run_id == first.mlflow_run_id and job.attempt == 2
    client = MlflowClient(tracking_uri=settings.mlflow_tracking_uri)
    run = client.get_run(job.mlflow_run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["name"] == "fake:hang"  # MLflow keeps the first attempt's params
    assert len(client.search_runs([run.info.experiment_id])) == 1
    assert sorted(m.step for m in client.get_metric_history(job.mlflow_run_id, "train/loss")) == [1, 2, 3]


@pytest.mark.parametrize("log_checkpoints", [True, False])
def test_checkpoint_copies_can_be_turned_off_but_the_final_model_is_kept(tmp_path, log_checkpoints):
    tracker = MlflowTracker("sqlite:///unused.db", tmp_path, job_id="job_x", log_checkpoints=log_checkpoints)
    tracker._accept({"type": "checkpoint", "step": 2, "path": str(tmp_path / "checkpoint-2")})
    tracker._accept({"type": "done", "step": 3, "final_path": str(tmp_path / "final")})
    destinations = [dest for _, _, dest in tracker._artifacts]
    assert destinations == (["checkpoints/checkpoint-2", "model"] if log_checkpoints else ["model"])


@pytest.mark.slow
def test_sample_images_are_stored_as_png_artifacts_beside_the_samples(settings, tmp_path):
    import base64
    import io

    from mlflow.tracking import MlflowClient
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (4, 3), (255, 0, 0)).save(buf, format="PNG")
    uri = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
    tracker = MlflowTracker(
        settings.mlflow_tracking_uri, settings.mlflow_artifact_root, job_id="job_img", flush_interval_s=0.1
    ).start()
    text_sample = {"prompt": "p", "completion": "c", "reward": 0.0}
    tracker.on_event(
        {
            "type": "samples",
            "step": 2,
            "samples": [
                {"prompt": "[image] n?", "completion": "2", "reward": 1.0, "images": [uri]},
                text_sample,
            ],
        }
    )
    assert tracker.close("FINISHED")
    client = MlflowClient(tracking_uri=settings.mlflow_tracking_uri)
    run_id = tracker.run_id
    samples = json.loads(
        Path(client.download_artifacts(run_id, "samples/step_000002.json", str(tmp_path))).read_text()
    )
    assert samples["samples"] == [
        {"prompt": "[image] n?", "completion": "2", "reward": 1.0, "images": ["step_000002/0_0.png"]},
        text_sample,
    ]
    png = client.download_artifacts(run_id, "samples/step_000002/0_0.png", str(tmp_path / "png"))
    assert Path(png).read_bytes() == buf.getvalue()
