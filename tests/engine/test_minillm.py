"""MiniLLM (`engine.algorithms.minillm`): the teacher terms against full logits, the reverse-KL advantage
inside the GRPO loss, one student decoder pass per micro-step, a CLI run and a learning run on tiny:llama."""

from __future__ import annotations

import statistics

import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError

import engine.logprobs
from engine.algorithms.minillm import minillm_terms
from engine.logprobs import target_hidden
from engine.losses import DistillLossConfig
from engine.models import build_tiny_model, build_tiny_tokenizer, save_model
from engine.spec import parse_job_spec
from tests.engine.conftest import run_inprocess, run_subprocess, tiny_spec


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("teacher")
    save_model(build_tiny_model(seed=7), build_tiny_tokenizer(), path)
    return str(path)


def _spec(teacher: str, **config):
    base = {
        "teacher_model_name_or_path": teacher,
        "num_generations": 2,
        "max_completion_length": 8,
        "learning_rate": 1e-3,
        "max_steps": 2,
    }
    return tiny_spec("minillm", "arithmetic", **{**base, **config})


def _metrics(events):
    return {e["step"]: e["metrics"] for e in events if e["type"] == "metrics"}


def test_spec_requires_a_teacher_and_names_the_field():
    job = {"algorithm": "minillm", "model": "tiny:llama", "dataset": {"builtin": "arithmetic"}, "config": {}}
    with pytest.raises(ValidationError) as info:
        parse_job_spec(job)
    assert info.value.errors()[0]["ctx"]["error"].field == "teacher_model_name_or_path"
    job["config"] = {"teacher_model_name_or_path": "tiny:llama", "num_generations": 1}
    assert parse_job_spec(job).config.num_generations == 1  # MiniLLM allows one sample per prompt


@pytest.mark.parametrize("kd_temperature", [1.0, 0.7])
def test_teacher_terms_match_full_vocabulary_logits(kd_temperature):
    student, teacher = build_tiny_model(), build_tiny_model(seed=99)
    ids = torch.tensor([[5, 6, 7, 8, 9, 3], [0, 0, 5, 10, 11, 3]])
    attn = torch.tensor([[1, 1, 1, 1, 1, 1], [0, 0, 1, 1, 1, 1]])
    mask = torch.tensor([[0, 1, 1, 1, 1], [0, 0, 1, 1, 1]], dtype=torch.float32)
    index = mask.reshape(-1).nonzero().squeeze(-1)
    cfg = DistillLossConfig(loss_type="minillm", beta=1.0, temperature=kd_temperature)
    h_s, targets = target_hidden(student, ids, attn, 5, index)
    with torch.no_grad():
        h_t, _ = target_hidden(teacher, ids, attn, 5, index)
    num_tokens = 10
    logps, loss = minillm_terms(student, teacher, h_s, h_t, targets, num_tokens, cfg, 101, True, chunk_size=3)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in student.named_parameters()}
    student.zero_grad()

    pos = (attn.cumsum(-1) - 1).clamp(min=0)
    s = student(input_ids=ids, attention_mask=attn, position_ids=pos).logits[:, :-1].float() / kd_temperature
    with torch.no_grad():
        t = (
            teacher(input_ids=ids, attention_mask=attn, position_ids=pos).logits[:, :-1].float()
            / kd_temperature
        )
    log_s, log_t = F.log_softmax(s, -1), F.log_softmax(t, -1)
    y = ids[:, 1:].unsqueeze(-1)
    sel = mask.bool()
    torch.testing.assert_close(
        logps[:, 0], log_s.gather(-1, y).squeeze(-1)[sel].detach(), rtol=1e-5, atol=1e-6
    )
    torch.testing.assert_close(logps[:, 1], log_t.gather(-1, y).squeeze(-1)[sel], rtol=1e-5, atol=1e-6)
    assert not logps.requires_grad
    reverse_kl = (log_s.exp() * (log_s - log_t)).sum(-1)  # KL(P_S || P_T) per position
    expected = (reverse_kl * mask).sum() / num_tokens
    expected.backward()
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-7)
    for n, p in student.named_parameters():
        torch.testing.assert_close(grads[n], p.grad, rtol=1e-4, atol=1e-7, msg=n)


def test_reverse_kl_advantage_enters_the_policy_loss(tmp_path, teacher_dir):
    """One sample per prompt: the GRPO advantage is 0, so on-policy (ratio 1) the dapo loss is
    -sum_t A_t / N = -(token mean of log P_T - log P_S), i.e. minus the logged reverse-KL reward; the
    single-step term adds on top."""
    spec = _spec(teacher_dir, num_generations=1, single_step_decomposition=False)
    code, events = run_inprocess(spec, tmp_path / "rkl")
    assert code == 0, events[-1]
    for m in _metrics(events).values():
        assert m["train/loss"] == pytest.approx(-m["distill/rkl_reward"], rel=1e-5)
        assert "distill/minillm_single_step" not in m
    code, events = run_inprocess(_spec(teacher_dir, num_generations=1), tmp_path / "both")
    assert code == 0, events[-1]
    for m in _metrics(events).values():
        expected = -m["distill/rkl_reward"] + m["distill/minillm_single_step"]
        assert m["train/loss"] == pytest.approx(expected, rel=1e-5)
    code, events = run_inprocess(
        _spec(teacher_dir, num_generations=1, rkl_advantage=False), tmp_path / "single"
    )
    assert code == 0, events[-1]
    for m in _metrics(events).values():
        assert m["train/loss"] == pytest.approx(m["distill/minillm_single_step"], rel=1e-5)


def test_student_decoder_runs_once_per_micro_step(tmp_path, teacher_dir, monkeypatch):
    calls = []
    original = engine.logprobs.hidden_states

    def counting(model, *args, **kwargs):
        calls.append(torch.is_grad_enabled() and not torch.is_inference_mode_enabled())
        return original(model, *args, **kwargs)

    monkeypatch.setattr(engine.logprobs, "hidden_states", counting)
    code, events = run_inprocess(_spec(teacher_dir, gradient_accumulation_steps=2), tmp_path)
    assert code == 0, events[-1]
    micro_steps = 2 * 2
    assert calls.count(True) == micro_steps  # the student, with gradients
    assert calls.count(False) == micro_steps  # the teacher, in inference mode


@pytest.mark.slow
def test_engine_runs_minillm_with_a_valid_stream(tmp_path, teacher_dir):
    spec = _spec(teacher_dir, max_steps=3, save_steps=2, gamma=0.9, beta=0.04)
    code, events, stderr = run_subprocess(spec, tmp_path)
    assert code == 0, stderr[-3000:]
    types = [e["type"] for e in events]
    assert types[-1] == "done" and "error" not in types
    assert [e["step"] for e in events if e["type"] == "progress"] == [1, 2, 3]
    assert [e["step"] for e in events if e["type"] == "checkpoint"] == [2, 3]
    assert (tmp_path / "checkpoints" / "checkpoint-3" / "trainer_state.pt").exists()
    assert (tmp_path / "final" / "model.safetensors").exists()
    metrics = [e["metrics"] for e in events if e["type"] == "metrics"]
    assert len(metrics) == 3
    for m in metrics:
        assert {"train/loss", "distill/rkl_reward", "distill/minillm_single_step", "policy/kl"} <= set(m)
    assert "samples" in types


@pytest.mark.slow
def test_student_reverse_kl_to_a_trained_teacher_falls(tmp_path):
    sft = tiny_spec(
        "sft",
        "chat",
        num_rows=256,
        max_steps=40,
        per_device_train_batch_size=8,
        learning_rate=3e-3,
        logging_steps=40,
    )
    code, events = run_inprocess(sft, tmp_path / "teacher")
    assert code == 0, events[-1]
    spec = tiny_spec(
        "minillm",
        "arithmetic",
        num_rows=256,
        **{
            "max_steps": 30,
            "per_device_train_batch_size": 8,
            "num_generations": 2,
            "max_completion_length": 16,
            "learning_rate": 3e-3,
            "teacher_model_name_or_path": str(tmp_path / "teacher" / "final"),
        },
    )
    code, events = run_inprocess(spec, tmp_path / "student")
    assert code == 0, events[-1]
    m = _metrics(events)
    for key in ("distill/minillm_single_step", "train/loss"):
        first = statistics.mean(m[s][key] for s in range(1, 6))
        last = statistics.mean(m[s][key] for s in range(26, 31))
        assert last < 0.5 * first, (key, first, last)
    # the sampled estimate of the per-token reverse KL (minus the reward) falls too
    assert statistics.mean(m[s]["distill/rkl_reward"] for s in range(26, 31)) > 0.5 * statistics.mean(
        m[s]["distill/rkl_reward"] for s in range(1, 6)
    )
