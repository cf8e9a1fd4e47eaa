"""PAPO through the platform: the `papo` preset at demo scale on tiny:vlm and the built-in `shapes` set is
submitted over the API, trained by the worker with the real engine, and succeeds; its perception and
entropy metrics and the prompt images of its samples reach the API."""

from __future__ import annotations

import pytest
from papertrain_sdk import Client

pytestmark = [pytest.mark.slow, pytest.mark.e2e]
STEPS = 2


def test_papo_preset_succeeds_with_perception_metrics_and_sample_images(platform) -> None:
    spec = {
        "preset": "papo",
        "model": "tiny:vlm",
        "dataset": {"builtin": "shapes", "num_rows": 16},
        "reward_funcs": [{"name": "accuracy"}],
        "config": {
            "max_steps": STEPS,
            "per_device_train_batch_size": 4,
            "num_generations": 2,
            "max_completion_length": 4,
            "max_prompt_length": 128,
            "logging_steps": 1,
            "save_steps": 100,
        },
    }
    with Client(platform.url, platform.token) as client:
        job = client.jobs.create(spec)
        list(client.jobs.stream(job.id))  # ends by itself when the job is terminal
        job = client.jobs.get(job.id)
        assert job.status == "succeeded", job.error
        assert (job.preset_id, job.algorithm) == ("papo", "papo")
        resolved = job.spec_resolved
        assert (resolved["algorithm"], resolved["config"]["mask_ratio"], resolved["config"]["mask_type"]) == (
            "papo",
            0.6,
            "random",
        )
        metrics = client.jobs.metrics(job.id)
        for name in ("papo/perception_kl", "papo/entropy", "papo/masked_entropy", "papo/loss"):
            assert [step for step, _ in metrics[name]] == list(range(1, STEPS + 1)), name
        assert all(value > 0 for _, value in metrics["papo/entropy"])
        samples = client.jobs.events(job.id, kind="samples").events
        assert samples
        first = samples[0].data["samples"][0]
        assert first["images"] and first["images"][0].startswith("data:image/png;base64,")
