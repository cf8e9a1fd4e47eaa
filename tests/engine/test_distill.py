"""GKD and GOLD (`engine.algorithms.distill`): spec rules, on-policy labels, the chunked loss against full
logits, who writes the completions, teacher checks, CLI runs and a learning run on tiny:llama."""

from __future__ import annotations

import shutil
import statistics

import pytest
import torch
from pydantic import ValidationError

from engine.algorithms.distill import (
    DistillExample,
    build_batch,
    distill_micro_loss,
    sampled_examples,
    tokenize_distill,
)
from engine.losses import DistillLossConfig, generalized_jsd_per_token
from engine.models import build_tiny_model, build_tiny_tokenizer, save_model
from engine.spec import parse_job_spec
from tests.engine.conftest import metrics_by_step, run_inprocess, run_subprocess, tiny_spec

REQUIRED = {
    "progress": {"step", "total_steps", "epoch"},
    "metrics": {"step", "metrics"},
    "samples": {"step", "samples"},
    "checkpoint": {"step", "path"},
    "log": {"level", "message"},
    "done": {"step", "final_path"},
    "error": {"message", "traceback"},
}


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    """A tiny:llama-shaped teacher with other random weights, saved like a job's final/ folder."""
    path = tmp_path_factory.mktemp("teacher")
    save_model(build_tiny_model(seed=7), build_tiny_tokenizer(), path)
    return str(path)


def _spec(algorithm: str, teacher: str, **config):
    base = {"teacher_model_name_or_path": teacher, "max_new_tokens": 8, "learning_rate": 1e-3}
    if algorithm == "gold":
        base.update(max_completion_length=8, max_new_tokens=8)
    return tiny_spec(algorithm, "chat", **{**base, **config})


def _train_metrics(events):
    return {
        e["step"]: e["metrics"] for e in events if e["type"] == "metrics" and "train/loss" in e["metrics"]
    }


# ----------------------------------------------------------------------------------------------- spec


@pytest.mark.parametrize("algorithm", ["gkd", "gold"])
def test_spec_requires_a_teacher_and_names_the_field(algorithm):
    job = {"algorithm": algorithm, "model": "tiny:llama", "dataset": {"builtin": "chat"}, "config": {}}
    with pytest.raises(ValidationError) as info:
        parse_job_spec(job)
    cause = info.value.errors()[0]["ctx"]["error"]
    assert cause.field == "teacher_model_name_or_path"
    job["config"] = {"teacher_model_name_or_path": "tiny:nope"}
    with pytest.raises(ValidationError, match="teacher_model_name_or_path"):
        parse_job_spec(job)
    job["config"] = {"teacher_model_name_or_path": "runs/sft/final"}
    assert parse_job_spec(job).config.teacher_model_name_or_path == "runs/sft/final"


def test_gold_spec_checks_the_generation_batch_and_the_room_for_the_prompt():
    job = {"algorithm": "gold", "model": "tiny:llama", "dataset": {"builtin": "chat"}}
    ok = {"teacher_model_name_or_path": "tiny:llama", "per_device_train_batch_size": 4}
    assert parse_job_spec({**job, "config": {**ok, "num_generations": 2, "generation_batch_size": 2}})
    for bad, field in (
        ({"num_generations": 2, "generation_batch_size": 4}, "generation_batch_size"),
        ({"max_completion_length": 64, "max_length": 64}, "max_completion_length"),
    ):
        with pytest.raises(ValidationError) as info:
            parse_job_spec({**job, "config": {**ok, **bad}})
        assert info.value.errors()[0]["ctx"]["error"].field == field


# ----------------------------------------------------------------------------------------------- data


def test_sampled_labels_stop_after_the_first_eos():
    eos, pad = 3, 0
    completions = torch.tensor(
        [
            [10, 11, eos, 12, 13],  # EOS in the middle: the tokens after it are not labels
            [10, eos, eos, 14, 14],  # two EOS: only the first one counts
            [10, 11, 12, 13, 14],  # no EOS (truncated): every sampled token is a label
            [eos, pad, pad, pad, pad],  # EOS first
        ]
    )
    prompts = [[20, 21], [22], [23, 24, 25], [26]]
    rows = sampled_examples(prompts, completions, eos_token_ids=(eos,))
    assert [r.completion_ids for r in rows] == [[10, 11, eos], [10, eos], [10, 11, 12, 13, 14], [eos]]
    assert [r.prompt_ids for r in rows] == prompts
    batch = build_batch(rows, "student", pad_id=pad)
    tokens = batch.tokens
    T, K = tokens.input_ids.shape[1], tokens.logits_to_keep
    labels = [
        [int(tokens.input_ids[i, T - K + t]) for t in range(K) if tokens.loss_mask[i, t] == 1]
        for i in range(len(rows))
    ]
    assert labels == [r.completion_ids for r in rows]
    assert tokens.num_tokens == 3 + 2 + 5 + 1
    # an end-of-turn token of the generation config ends a completion too
    rows = sampled_examples([[20]], torch.tensor([[10, 7, 11, eos]]), eos_token_ids=(eos, 7))
    assert rows[0].completion_ids == [10, 7]


def test_messages_rows_train_on_the_last_assistant_turn(tiny_tokenizer):
    messages = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "Repeat: cat"},
        {"role": "assistant", "content": "cat"},
    ]
    (ex,), dropped = tokenize_distill([{"messages": messages}], "messages", tiny_tokenizer)
    assert dropped == 0
    assert tiny_tokenizer.decode(ex.prompt_ids).endswith("Repeat: cat<|im_end|>\n<|im_start|>assistant\n")
    assert "hello" in tiny_tokenizer.decode(ex.prompt_ids)
    assert tiny_tokenizer.decode(ex.completion_ids).startswith("cat<|im_end|>")
    # a prompt that fills max_length leaves nothing to train on: the row is dropped
    _, dropped = tokenize_distill([{"messages": messages}], "messages", tiny_tokenizer, max_length=10)
    assert dropped == 1


# ----------------------------------------------------------------------------------------------- loss


@pytest.mark.parametrize(
    ("loss_type", "beta", "temperature"),
    [("gkd", 0.0, 1.0), ("gkd", 0.5, 1.0), ("gkd", 1.0, 1.0), ("gold", 0.3, 0.7)],
)
def test_chunked_loss_matches_full_vocabulary_logits(loss_type, beta, temperature):
    """Same value and gradient as full (B, T, V) logits through the generalized JSD, with chunks that
    cut across rows, and normalised by a global count larger than this micro-batch."""
    student, teacher = build_tiny_model(), build_tiny_model(seed=99)
    rows = [DistillExample([5, 6, 7], [8, 9, 3]), DistillExample([5], [10, 11, 12, 13, 3])]
    tokens = build_batch(rows, "dataset", pad_id=0).tokens
    cfg = DistillLossConfig(loss_type=loss_type, beta=beta, temperature=temperature)
    num_tokens = tokens.num_tokens + 5  # other micro-batches of the step hold 5 more tokens

    loss = distill_micro_loss(student, teacher, tokens, num_tokens, cfg, vocab=101, chunk_size=3)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in student.named_parameters()}
    student.zero_grad()

    K = tokens.logits_to_keep
    pos = (tokens.attention_mask.cumsum(-1) - 1).clamp(min=0)
    s_logits = student(
        input_ids=tokens.input_ids, attention_mask=tokens.attention_mask, position_ids=pos
    ).logits
    with torch.no_grad():
        t_logits = teacher(
            input_ids=tokens.input_ids, attention_mask=tokens.attention_mask, position_ids=pos
        ).logits
    per_token = generalized_jsd_per_token(
        s_logits[:, -K - 1 : -1].float(),
        t_logits[:, -K - 1 : -1].float(),
        beta,
        temperature if loss_type == "gold" else 1.0,
    )
    expected = (per_token * tokens.loss_mask).sum() / num_tokens
    expected.backward()
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-7)
    for n, p in student.named_parameters():
        torch.testing.assert_close(grads[n], p.grad, rtol=1e-4, atol=1e-7, msg=n)


def test_packed_batch_gives_the_padded_batch_loss_and_gradients():
    """Padding-free: rows of different lengths laid end to end (position ids restart per row) give the
    padded batch's loss and gradients: no token attends across a row boundary."""
    student, teacher = build_tiny_model(), build_tiny_model(seed=99)
    rows = [DistillExample([5, 6, 7], [8, 9, 3]), DistillExample([5], [10, 11, 12, 13, 3])]
    cfg = DistillLossConfig(loss_type="gkd", beta=0.5)
    results = []
    for pack in (False, True):
        tokens = build_batch(rows, "dataset", pad_id=0, pack=pack).tokens
        assert (tokens.packed is not None) == pack
        loss = distill_micro_loss(student, teacher, tokens, tokens.num_tokens, cfg, vocab=101, chunk_size=4)
        loss.backward()
        results.append((loss.detach(), {n: p.grad.clone() for n, p in student.named_parameters()}))
        student.zero_grad()
    (padded, g_padded), (packed, g_packed) = results
    assert padded > 0
    torch.testing.assert_close(packed, padded, rtol=1e-5, atol=1e-7)
    for n in g_padded:
        torch.testing.assert_close(g_packed[n], g_padded[n], rtol=1e-4, atol=1e-7, msg=n)


# ---------------------------------------------------------------------------------------- loop, in-process


@pytest.mark.parametrize(
    ("algorithm", "config", "on_policy", "teacher_sampled"),
    [
        ("gkd", {"lmbda": 0.0}, 0.0, None),
        ("gkd", {"lmbda": 1.0}, 1.0, None),
        ("gkd", {"lmbda": 0.0, "seq_kd": True}, 0.0, 1.0),
        ("gold", {"lmbda": 1.0, "num_generations": 2}, 1.0, None),
        ("gkd", {"lmbda": 1.0, "packing": True, "max_length": 256}, 1.0, None),
    ],
)
def test_lmbda_and_seq_kd_decide_who_writes_the_completions(
    tmp_path, teacher_dir, algorithm, config, on_policy, teacher_sampled
):
    spec = _spec(algorithm, teacher_dir, max_steps=2, gradient_accumulation_steps=2, **config)
    code, events = run_inprocess(spec, tmp_path)
    assert code == 0, events[-1]
    m = _train_metrics(events)
    assert sorted(m) == [1, 2]
    for step in m.values():
        assert step["distill/on_policy_fraction"] == on_policy
        assert step.get("distill/teacher_sampled_fraction") == teacher_sampled
        assert step["train/loss"] == pytest.approx(step[f"distill/{algorithm}"])
        assert step["train/loss"] > 0
    samples = [e for e in events if e["type"] == "samples"]
    if on_policy or teacher_sampled:
        assert samples and all(
            s["source"] == ("student" if on_policy else "teacher") for s in samples[-1]["samples"]
        )
        # completions never run past max_new_tokens / max_completion_length
        assert all(st["rollout/completion_length_mean"] <= 8 for st in m.values())
    else:
        assert not samples and "rollout/completion_length_mean" not in m[1]
    if algorithm == "gold":  # each prompt sampled num_generations times, side by side
        prompts = [s["prompt"] for s in samples[-1]["samples"]]
        assert prompts[0] == prompts[1] and prompts[2] == prompts[3]


def test_teacher_with_another_tokenizer_is_refused(tmp_path):
    tokenizer = build_tiny_tokenizer()
    tokenizer.add_tokens(["<extra>"])
    model = build_tiny_model()
    model.resize_token_embeddings(len(tokenizer))
    save_model(model, tokenizer, tmp_path / "other")
    code, events = run_inprocess(_spec("gkd", str(tmp_path / "other")), tmp_path / "out")
    assert code == 1
    message = events[-1]["message"]
    assert "teacher_model_name_or_path" in message and "tokenizer" in message and "other" in message


def test_lora_adapter_without_a_recorded_base_is_refused_as_teacher(tmp_path):
    adapter = tmp_path / "lora-final"
    build_tiny_tokenizer().save_pretrained(adapter)
    (adapter / "adapter_config.json").write_text('{"base_model_name_or_path": null, "peft_type": "LORA"}')
    code, events = run_inprocess(_spec("gkd", str(adapter)), tmp_path / "out")
    assert code == 1
    assert "teacher_model_name_or_path" in events[-1]["message"] and "LoRA" in events[-1]["message"]


def test_gold_refuses_cross_tokenizer_uld_with_a_clear_error(tmp_path, teacher_dir):
    code, events = run_inprocess(_spec("gold", teacher_dir, use_uld_loss=True), tmp_path)
    assert code == 1
    assert "use_uld_loss" in events[-1]["message"] and "not supported" in events[-1]["message"]


def test_eval_dataset_reports_the_divergence_on_dataset_completions(tmp_path, teacher_dir):
    spec = _spec("gkd", teacher_dir, lmbda=1.0, max_steps=2, eval_steps=1, per_device_eval_batch_size=3)
    spec["eval_dataset"] = {"builtin": "chat", "num_rows": 7, "seed": 5}
    code, events = run_inprocess(spec, tmp_path)
    assert code == 0, events[-1]
    evals = [e["metrics"] for e in events if e["type"] == "metrics" and "eval/loss" in e["metrics"]]
    assert len(evals) == 2
    assert all(e["eval/loss"] > 0 and e["eval/distill/gkd"] == pytest.approx(e["eval/loss"]) for e in evals)
    assert all(e["eval/train/num_tokens"] > 0 for e in evals)


def test_resume_reproduces_the_uninterrupted_run(tmp_path, teacher_dir):
    """The on-policy coin, the samples and the data order all come back from the checkpoint."""
    spec = _spec("gkd", teacher_dir, lmbda=0.5, max_steps=4, save_steps=2, save_total_limit=None)
    full_dir, resumed_dir = tmp_path / "full", tmp_path / "resumed"
    code, full = run_inprocess(spec, full_dir)
    assert code == 0, full[-1]
    (resumed_dir / "checkpoints").mkdir(parents=True)
    shutil.copytree(full_dir / "checkpoints" / "checkpoint-2", resumed_dir / "checkpoints" / "checkpoint-2")
    code, resumed = run_inprocess(spec, resumed_dir, resume=True)
    assert code == 0, resumed[-1]
    a, b = metrics_by_step(full), metrics_by_step(resumed)
    assert sorted(b) == [3, 4]
    for step in (3, 4):
        for key in ("train/loss", "distill/on_policy_fraction", "train/num_tokens"):
            assert b[step][key] == pytest.approx(a[step][key], rel=1e-6, abs=1e-8), (step, key)


# --------------------------------------------------------------------------------------------- CLI runs


@pytest.mark.slow
@pytest.mark.parametrize("algorithm", ["gkd", "gold"])
@pytest.mark.parametrize("lmbda", [0.0, 1.0])
def test_engine_runs_distillation_with_a_valid_stream(tmp_path, teacher_dir, algorithm, lmbda):
    spec = _spec(algorithm, teacher_dir, lmbda=lmbda, max_steps=3, save_steps=2)
    code, events, stderr = run_subprocess(spec, tmp_path)
    assert code == 0, stderr[-3000:]
    for e in events:
        assert isinstance(e["ts"], float) and REQUIRED[e["type"]] <= set(e), e
    types = [e["type"] for e in events]
    assert types[-1] == "done" and "error" not in types
    assert [e["step"] for e in events if e["type"] == "progress"] == [1, 2, 3]
    assert [e["step"] for e in events if e["type"] == "checkpoint"] == [2, 3]
    for step in (2, 3):
        assert (tmp_path / "checkpoints" / f"checkpoint-{step}" / "trainer_state.pt").exists()
    assert (tmp_path / "final" / "model.safetensors").exists()
    metrics = [e["metrics"] for e in events if e["type"] == "metrics"]
    assert len(metrics) == 3
    for m in metrics:
        assert {"train/loss", "train/grad_norm", f"distill/{algorithm}", "distill/on_policy_fraction"} <= set(
            m
        )
        assert m["distill/on_policy_fraction"] == lmbda
    assert ("samples" in types) == (lmbda == 1.0)


# -------------------------------------------------------------------------------------------- learning


@pytest.mark.slow
def test_student_divergence_to_a_trained_teacher_falls(tmp_path):
    """A teacher made different by a short SFT run (its final/ folder is the teacher reference); GKD with
    half on-policy steps then pulls the student's distributions onto it: the training divergence and the
    held-out one both fall clearly."""
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
        "gkd",
        "chat",
        num_rows=256,
        max_steps=30,
        per_device_train_batch_size=8,
        learning_rate=3e-3,
        teacher_model_name_or_path=str(tmp_path / "teacher" / "final"),
        lmbda=0.5,
        beta=0.5,
        max_new_tokens=16,
        eval_steps=30,
    )
    spec["eval_dataset"] = {"builtin": "chat", "num_rows": 32, "seed": 11}
    # the held-out divergence before any training: the same job with a zero learning rate
    before = {**spec, "config": {**spec["config"], "max_steps": 1, "eval_steps": 1, "learning_rate": 1e-12}}
    code, start = run_inprocess(before, tmp_path / "before")
    assert code == 0, start[-1]
    code, events = run_inprocess(spec, tmp_path / "student")
    assert code == 0, events[-1]
    m = _train_metrics(events)
    first = statistics.mean(m[s]["train/loss"] for s in range(1, 6))
    last = statistics.mean(m[s]["train/loss"] for s in range(26, 31))
    assert last < 0.5 * first, (first, last)
    eval_before = [
        e["metrics"]["eval/loss"] for e in start if e["type"] == "metrics" and "eval/loss" in e["metrics"]
    ]
    eval_after = [
        e["metrics"]["eval/loss"] for e in events if e["type"] == "metrics" and "eval/loss" in e["metrics"]
    ]
    assert eval_after[-1] < 0.5 * eval_before[-1], (eval_before, eval_after)
