"""`runnable` per preset: what stops a shipped preset on the live workers and the smallest change that fixes it."""

from __future__ import annotations

import pytest

from engine.presets import load_presets
from engine.presets.runnable import WorkerCapabilities, preset_status

CPU_ONLY = WorkerCapabilities(queues=frozenset({"cpu"}))
EVERYTHING = WorkerCapabilities(
    queues=frozenset({"cpu", "gpu-1", "gpu-2"}), vllm=True, deepspeed=True, hub_access=True
)


def status(preset_id: str, caps: WorkerCapabilities = CPU_ONLY):
    return preset_status(load_presets()[preset_id], caps)


@pytest.mark.parametrize(
    ("preset_id", "param", "change"),
    [
        # one device holds a whole group of generations: 1 x 8 and 8 x 16 do not fit
        ("dr-grpo", "config.per_device_train_batch_size", {"config": {"per_device_train_batch_size": 8}}),
        ("gfpo", "config.per_device_train_batch_size", {"config": {"per_device_train_batch_size": 16}}),
        ("scalerl", "config.per_device_train_batch_size", {"config": {"per_device_train_batch_size": 16}}),
        ("truncated-is", "hardware", None),  # vLLM needs a GPU worker: no job change keeps the method
        ("masked-is", "hardware", None),
        ("sequence-is", "hardware", None),
        ("minillm", "config.teacher_model_name_or_path", None),  # a hub teacher, no worker reaches the hub
        ("on-policy-distillation-gkd", "config.teacher_model_name_or_path", None),  # "teacher-model"
        ("on-policy-distillation-gold", "config.teacher_model_name_or_path", None),
    ],
)
def test_presets_that_do_not_run_as_shipped_say_why(preset_id, param, change):
    s = status(preset_id)
    assert (s.runnable, s.param, s.change) == (False, param, change)
    assert s.reason


def test_papo_runs_on_a_cpu_worker_with_a_vision_language_model():
    assert status("papo").runnable


def test_every_other_preset_runs_on_a_cpu_worker():
    stopped = {"dr-grpo", "gfpo", "scalerl", "zero", "truncated-is", "masked-is", "sequence-is", "minillm"}
    stopped |= {"on-policy-distillation-gkd", "on-policy-distillation-gold"}
    for preset_id in sorted(set(load_presets()) - stopped):
        assert status(preset_id).runnable, (preset_id, status(preset_id))


def test_every_suggested_change_makes_the_preset_run():
    for preset_id, preset in load_presets().items():
        for caps in (CPU_ONLY, EVERYTHING):
            s = preset_status(preset, caps)
            if s.change is None:
                continue
            patched = preset.model_copy(
                update={
                    "config": {**preset.config, **s.change.get("config", {})},
                    "job": {**preset.job, **{k: v for k, v in s.change.items() if k != "config"}},
                }
            )
            assert preset_status(patched, caps).runnable, (preset_id, caps, s.change)


def test_answers_follow_what_the_workers_can_do():
    gpu = WorkerCapabilities(queues=frozenset({"cpu", "gpu-1"}))
    assert status("truncated-is", gpu).param == "config.use_vllm"  # the queue is there, vLLM is not
    assert status("truncated-is", WorkerCapabilities(queues=frozenset({"gpu-1"}), vllm=True)).runnable
    cpu_vllm = status("masked-is", WorkerCapabilities(queues=frozenset({"cpu"}), vllm=True))
    assert cpu_vllm.change == {"hardware": {"accelerator": "cpu"}, "config": {"vllm_mode": "server"}}
    assert status("minillm", WorkerCapabilities(hub_access=True)).runnable
    # ZeRO over 2 GPUs: a CPU-only pool cannot run it; with every capability it runs, or (while the engine
    # refuses several processes) its change is one device on the GPUs at hand
    assert not status("zero").runnable and status("zero").change is not None
    zero = status("zero", EVERYTHING)
    assert zero.runnable or zero.change == {"distributed": None}
