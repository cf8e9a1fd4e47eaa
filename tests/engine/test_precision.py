"""Precision modes: how the spec names them, what each holds in which dtype, and pure-bf16 training runs."""

from __future__ import annotations

import contextlib
import io
import json

import pytest
import torch
from safetensors.torch import load_file

from engine.algorithms.common import STATE_FILE, TrainContext
from engine.algorithms.step import OptimizerStep
from engine.events import EventWriter
from engine.models import build_tiny_model, build_tiny_tokenizer, load_policy, load_reference
from engine.precision import compute_dtype, uses_autocast, weight_dtype
from engine.spec import parse_job_spec, resolve
from engine.spec.base import SpecError
from engine.spec.precision import precision_of
from tests.engine.conftest import run_inprocess, tiny_spec
from tests.engine.test_grpo import events_of, metrics_of, trainer

GPU = {"accelerator": "gpu", "gpus": 1}


def _job(config=None, **top):
    return {
        "algorithm": "dpo",
        "model": "tiny:llama",
        "dataset": {"builtin": "preferences"},
        "config": config or {},
        **top,
    }


@pytest.mark.parametrize(
    "config,top,mode",
    [
        ({}, {}, "float32"),
        ({}, {"hardware": GPU}, "bf16-autocast"),
        ({"bf16": True}, {}, "bf16-autocast"),  # TRL's bf16: true = autocast over float32 weights
        ({"bf16": False}, {"hardware": GPU}, "float32"),
        ({"fp16": True}, {"hardware": GPU}, "fp16-autocast"),
        ({}, {"hardware": GPU, "distributed": {"mixed_precision": "fp16"}}, "fp16-autocast"),
        ({}, {"distributed": {"mixed_precision": "bf16"}}, "bf16-autocast"),
        ({"precision": "bf16-pure"}, {}, "bf16-pure"),
        ({"precision": "bf16-pure", "bf16": True}, {}, "bf16-pure"),
        ({"precision": "float32"}, {"hardware": GPU}, "float32"),
    ],
)
def test_mode_follows_the_flags_and_the_resolved_spec_writes_it_out(config, top, mode):
    spec = parse_job_spec(_job(config, **top))
    assert precision_of(spec) == mode
    resolved = resolve(spec)
    assert resolved["config"]["precision"] == mode
    again = parse_job_spec(resolved)
    assert precision_of(again) == mode and resolve(again) == resolved


def _refusal(config=None, **top) -> SpecError:
    with pytest.raises(ValueError) as info:
        parse_job_spec(_job(config, **top))
    err = info.value.errors()[0]["ctx"]["error"]
    assert isinstance(err, SpecError)
    return err


def test_fp16_on_a_cpu_job_is_refused_naming_the_field():
    err = _refusal({"fp16": True})
    assert err.field == "config.fp16" and "GPUs only" in str(err) and "bf16-autocast" in str(err)
    assert _refusal({"precision": "fp16-autocast"}).field == "config.precision"
    assert _refusal(distributed={"mixed_precision": "fp16"}).field == "distributed.mixed_precision"


def test_contradicting_precision_settings_are_refused():
    assert _refusal({"precision": "float32", "bf16": True}).field == "config.bf16"
    assert _refusal({"precision": "bf16-pure", "bf16": False}).field == "config.bf16"
    assert _refusal({"bf16": True, "fp16": True}, hardware=GPU).field == "config.bf16"
    err = _refusal({"bf16": False}, distributed={"mixed_precision": "bf16"})
    assert err.field == "config.bf16" and "bf16-autocast" in str(err)
    with pytest.raises(ValueError, match="float32"):
        parse_job_spec(_job({"precision": "bf16"}))  # the names are the modes, listed in the error


def test_bf16_pure_is_refused_under_deepspeed():
    dist = {"distributed_type": "DEEPSPEED", "num_processes": 1, "deepspeed_config": {"zero_stage": 2}}
    err = _refusal({"precision": "bf16-pure"}, distributed=dist)
    assert err.field == "config.precision" and "bf16-autocast" in str(err)


def test_dtypes_of_each_mode():
    assert [compute_dtype(m) for m in ("float32", "bf16-autocast", "bf16-pure", "fp16-autocast")] == [
        torch.float32,
        torch.bfloat16,
        torch.bfloat16,
        torch.float16,
    ]
    assert weight_dtype("bf16-pure") == torch.bfloat16
    assert weight_dtype("bf16-autocast") == weight_dtype("fp16-autocast") == torch.float32
    assert uses_autocast("bf16-autocast") and not uses_autocast("bf16-pure") and not uses_autocast("float32")


@pytest.mark.parametrize(
    "config,policy_dtype,ref_dtype",
    [
        ({}, torch.float32, torch.float32),
        ({"bf16": True}, torch.float32, torch.bfloat16),
        ({"precision": "bf16-pure"}, torch.bfloat16, torch.bfloat16),
    ],
)
def test_policy_and_reference_dtypes_follow_the_mode(tmp_path, config, policy_dtype, ref_dtype):
    spec = parse_job_spec(_job(config))
    ctx = TrainContext.for_spec(spec, tmp_path)
    policy = load_policy(spec, ctx.device, ctx.dtype)
    ref = load_reference(spec, policy, ctx.device, ctx.dtype)
    assert {p.dtype for p in policy.parameters()} == {policy_dtype}
    assert {p.dtype for p in ref.model.parameters()} == {ref_dtype}
    autocasting = isinstance(ctx.autocast(), torch.autocast)
    assert autocasting == (config.get("bf16") is True)


@pytest.mark.parametrize(
    "precision,teacher_dtype",
    [("float32", torch.float32), ("bf16-autocast", torch.bfloat16), ("bf16-pure", torch.bfloat16)],
)
def test_teacher_dtype_follows_the_mode(tmp_path, precision, teacher_dtype):
    from engine.algorithms.distill import load_teacher

    job = {
        "algorithm": "gkd",
        "model": "tiny:llama",
        "dataset": {"builtin": "chat"},
        "config": {"teacher_model_name_or_path": "tiny:llama", "precision": precision},
    }
    spec = parse_job_spec(job)
    ctx = TrainContext.for_spec(spec, tmp_path)
    teacher = load_teacher(spec, ctx, build_tiny_tokenizer())
    assert {p.dtype for p in teacher.parameters()} == {teacher_dtype}
    assert {p.dtype for p in load_policy(spec, ctx.device, ctx.dtype).parameters()} == {
        torch.bfloat16 if precision == "bf16-pure" else torch.float32
    }


def test_bf16_pure_lora_adapters_train_in_bf16():
    spec = parse_job_spec(
        _job({"precision": "bf16-pure"}, peft_config={"r": 4, "target_modules": ["q_proj"]})
    )
    policy = load_policy(spec, dtype=torch.bfloat16)
    trainable = [p for p in policy.parameters() if p.requires_grad]
    assert trainable and {p.dtype for p in policy.parameters()} == {torch.bfloat16}


# ------------------------------------------------------------------------------ pure-bf16 training runs


def _check_bf16_run(code, events, out, initial, logged=True):
    assert code == 0, [e for e in events if e["type"] == "error"]
    if logged:  # the engine's first log line names the mode
        assert any("precision=bf16-pure" in e.get("message", "") for e in events if e["type"] == "log")
    losses = [e["metrics"]["train/loss"] for e in events if e["type"] == "metrics"]
    assert len(losses) == 2 and all(torch.isfinite(torch.tensor(losses)))
    (ckpt,) = sorted((out / "checkpoints").glob("checkpoint-*"))
    weights = load_file(str(ckpt / "model.safetensors"))
    assert {t.dtype for t in weights.values()} == {torch.bfloat16}
    moved = [k for k, t in weights.items() if not torch.equal(t, initial[k].bfloat16())]
    assert moved, "no weight changed"
    state = torch.load(ckpt / STATE_FILE, weights_only=False)["optimizer"]["state"]
    moments = [t for s in state.values() for k, t in s.items() if k in ("exp_avg", "exp_avg_sq")]
    assert moments and {t.dtype for t in moments} == {torch.bfloat16}


@pytest.mark.slow
@pytest.mark.parametrize("algorithm,builtin", [("sft", "chat"), ("dpo", "preferences")])
def test_bf16_pure_offline_runs_keep_weights_and_optimizer_state_in_bf16(tmp_path, algorithm, builtin):
    spec = tiny_spec(algorithm, builtin, num_rows=8, max_steps=2, learning_rate=1e-3, precision="bf16-pure")
    initial = dict(build_tiny_model().state_dict())
    code, events = run_inprocess(spec, tmp_path)
    _check_bf16_run(code, events, tmp_path, initial)


@pytest.mark.slow
def test_bf16_pure_grpo_trains_with_a_bf16_reference(tmp_path, hash_reward):
    t, stream = trainer(tmp_path, {"precision": "bf16-pure", "beta": 0.04}, reward_funcs=hash_reward)
    assert {p.dtype for p in t.reference.model.parameters()} == {torch.bfloat16}
    initial = dict(build_tiny_model().state_dict())
    t.train()
    events = events_of(stream)
    _check_bf16_run(0, events, tmp_path, initial, logged=False)
    kls = [m["policy/kl"] for m in metrics_of(events)]
    assert all(torch.isfinite(torch.tensor(kls))) and kls[-1] > 0  # the policy moved off its reference


# ------------------------------------------------------------------------------ fp16 loss scaling


def _fp16_step(tmp_path):
    """An OptimizerStep in fp16-autocast on the CPU (a GPU job's spec; the engine refuses fp16 CPU jobs)."""
    spec = parse_job_spec(_job({"fp16": True, "learning_rate": 1e-2, "max_grad_norm": 0.0}, hardware=GPU))
    ctx = TrainContext.for_spec(spec, tmp_path, device=torch.device("cpu"), events=EventWriter(io.StringIO()))
    assert ctx.precision == "fp16-autocast" and ctx.dtype == torch.float16
    model = build_tiny_model()
    return ctx, model, OptimizerStep(ctx, model, build_tiny_tokenizer(), total_steps=4)


def _loss(autocast, model):
    ids = torch.arange(4, 20).unsqueeze(0)
    with autocast():
        return model(input_ids=ids, labels=ids).loss


def test_fp16_scales_the_loss_and_skips_a_step_whose_gradients_overflow(tmp_path):
    from engine.algorithms.common import StepMetrics

    ctx, model, stepper = _fp16_step(tmp_path)
    if not stepper.scaler.is_enabled():
        pytest.skip("this torch has no GradScaler for the CPU")
    scale = stepper.scaler.get_scale()
    assert scale > 1
    # gradients of the scaled loss = scale x gradients of the loss (a float32 forward, so exactly: the scale
    # is a power of two)
    plain = build_tiny_model()
    _loss(contextlib.nullcontext, plain).backward()
    stepper.backward(_loss(contextlib.nullcontext, model))
    for p, q in zip(model.parameters(), plain.parameters(), strict=True):
        torch.testing.assert_close(p.grad / scale, q.grad)
    # an overflowing gradient: the step is skipped and the scale backs off by half
    before = [p.detach().clone() for p in model.parameters()]
    next(model.parameters()).grad[0, 0] = float("inf")
    stepper.step(StepMetrics())
    assert all(torch.equal(a, p) for a, p in zip(before, model.parameters(), strict=True))
    assert stepper.scaler.get_scale() == scale * 0.5
    # a finite step updates the weights with the unscaled gradient
    stepper.backward(_loss(ctx.autocast, model))  # the fp16 forward
    stepper.step(StepMetrics())
    assert any(not torch.equal(a, p) for a, p in zip(before, model.parameters(), strict=True))
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_resolved_spec_json_names_the_mode_the_engine_logs(tmp_path):
    spec = tiny_spec("sft", "chat", num_rows=4, max_steps=1, bf16=True)
    resolved = resolve(parse_job_spec(spec))
    assert resolved["config"]["precision"] == "bf16-autocast"
    code, events = run_inprocess(json.loads(json.dumps(resolved)), tmp_path)
    assert code == 0
    assert any("precision=bf16-autocast" in e.get("message", "") for e in events if e["type"] == "log")
