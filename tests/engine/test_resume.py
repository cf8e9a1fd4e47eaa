"""A run resumed from a checkpoint produces the same later losses as an uninterrupted run: weights,
optimizer, schedule, RNG, data position (across epoch boundaries) and algorithm state all come back."""

import shutil

import pytest
import torch
from safetensors.torch import load_file

from tests.engine.conftest import metrics_by_step, run_inprocess, tiny_spec


def _resume_matches(tmp_path, spec):
    full_dir, resumed_dir = tmp_path / "full", tmp_path / "resumed"
    code, full = run_inprocess(spec, full_dir)
    assert code == 0, full[-1]
    # the interrupted run: only checkpoint-3 exists when it restarts
    (resumed_dir / "checkpoints").mkdir(parents=True)
    shutil.copytree(full_dir / "checkpoints" / "checkpoint-3", resumed_dir / "checkpoints" / "checkpoint-3")
    code, resumed = run_inprocess(spec, resumed_dir, resume=True)
    assert code == 0, resumed[-1]
    a, b = metrics_by_step(full), metrics_by_step(resumed)
    assert sorted(b) == [4, 5, 6]
    for step in (4, 5, 6):
        for key in ("train/loss", "train/grad_norm", "train/learning_rate"):
            assert b[step][key] == pytest.approx(a[step][key], rel=1e-6, abs=1e-7), (step, key)
    assert any("resumed from" in e.get("message", "") for e in resumed)
    return full_dir, resumed_dir, a


@pytest.mark.slow
def test_sft_resume_reproduces_the_uninterrupted_run(tmp_path):
    spec = tiny_spec(
        "sft",
        "chat",
        num_rows=16,  # 4 batches of 4 per epoch, 2 per step: the 6 steps cross 2 epoch boundaries
        max_steps=6,
        gradient_accumulation_steps=2,
        save_steps=3,
        save_total_limit=None,
        learning_rate=1e-2,
        warmup_steps=2,
        bema={"update_freq": 2},
    )
    full_dir, resumed_dir, metrics = _resume_matches(tmp_path, spec)
    assert metrics[6]["train/loss"] != metrics[4]["train/loss"]  # the model did change
    for sub in ("", "bema"):
        a = load_file(str(full_dir / "final" / sub / "model.safetensors"))
        b = load_file(str(resumed_dir / "final" / sub / "model.safetensors"))
        for k in a:
            torch.testing.assert_close(a[k], b[k], rtol=1e-6, atol=1e-7, msg=f"{sub}:{k}")


@pytest.mark.slow
def test_dpo_resume_reproduces_the_uninterrupted_run(tmp_path):
    spec = tiny_spec(
        "dpo",
        "preferences",
        num_rows=16,
        max_steps=6,
        gradient_accumulation_steps=2,
        save_steps=3,
        learning_rate=1e-3,
        loss_type=["sigmoid", "bco_pair"],  # bco_pair keeps a running mean: algorithm state
    )
    _resume_matches(tmp_path, spec)


def test_resume_without_a_checkpoint_starts_fresh(tmp_path):
    code, events = run_inprocess(tiny_spec("sft", "chat", max_steps=1), tmp_path, resume=True)
    assert code == 0
    assert any(e["type"] == "log" and "no checkpoint found" in e["message"] for e in events)


@pytest.mark.slow
def test_lora_dpo_resume_reproduces_the_uninterrupted_run(tmp_path):
    spec = tiny_spec("dpo", "preferences", num_rows=16, max_steps=6, save_steps=3, learning_rate=1e-2)
    spec["peft_config"] = {"r": 4, "lora_alpha": 8}
    _resume_matches(tmp_path, spec)
