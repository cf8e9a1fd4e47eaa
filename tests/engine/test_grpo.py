"""The GRPO loop on `tiny:llama`: events through `python -m engine.train` for every policy loss_type,
the batching plan, on-policy shortcuts (no old log-probs, no reference at beta=0), dynamic sampling, GFPO,
truncation masking, micro-batch invariance and resume. The learning test lives in `test_grpo_learning.py`."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from engine.algorithms import grpo as grpo_mod
from engine.algorithms.common import StepMetrics, TrainContext
from engine.algorithms.grpo import GRPOTrainer, Plan
from engine.events import EventWriter
from engine.spec import parse_job_spec, unsupported
from engine.spec.names import GRPO_LOSS_TYPES

REPO = Path(__file__).resolve().parents[2]
REQUIRED_METRICS = {
    "train/loss",
    "train/learning_rate",
    "train/grad_norm",
    "rollout/reward_mean",
    "rollout/reward_std",
    "rollout/rewards/accuracy_mean",
    "rollout/frac_reward_zero_std",
    "rollout/completion_length_mean",
    "rollout/completion_length_min",
    "rollout/completion_length_max",
    "rollout/clipped_ratio",
}


def job(config: dict | None = None, **top) -> dict:
    cfg = {
        "per_device_train_batch_size": 4,
        "num_generations": 2,
        "max_completion_length": 3,
        "max_prompt_length": 64,
        "max_steps": 2,
        "learning_rate": 1e-3,
        "logging_steps": 1,
        "save_steps": 100,
        "num_completions_to_print": 2,
    }
    cfg.update(config or {})
    return {
        "algorithm": "grpo",
        "model": "tiny:llama",
        "dataset": {"builtin": "arithmetic", "num_rows": 32},
        "config": cfg,
        **top,
    }


def trainer(
    tmp_path: Path, config: dict | None = None, resume: bool = False, **top
) -> tuple[GRPOTrainer, io.StringIO]:
    spec = parse_job_spec(job(config, **top))
    stream = io.StringIO()
    ctx = TrainContext.for_spec(spec, tmp_path, events=EventWriter(stream), resume=resume)
    return GRPOTrainer(spec, ctx), stream


def events_of(stream: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def metrics_of(events: list[dict]) -> list[dict]:
    return [e["metrics"] for e in events if e["type"] == "metrics"]


# ------------------------------------------------------------------------------------ python -m engine.train


def loss_config(loss_type: str) -> dict:
    cfg = {"loss_type": loss_type}
    if loss_type == "cispo":
        cfg["epsilon_high"] = 5.0
    if loss_type == "luspo":
        cfg["importance_sampling_level"] = "sequence"
    return cfg


@pytest.mark.slow
@pytest.mark.parametrize("loss_type", GRPO_LOSS_TYPES)
def test_engine_train_runs_grpo_for_every_loss_type(tmp_path, loss_type):
    spec_path = tmp_path / "spec.json"
    spec_path.write_text(json.dumps(parse_job_spec(job(loss_config(loss_type))).model_dump(mode="json")))
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "engine.train", "--spec", str(spec_path), "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    events = [json.loads(line) for line in proc.stdout.splitlines()]  # every stdout line is one JSON event
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-2000:]
    assert all(isinstance(e["ts"], float) for e in events)
    assert [e["step"] for e in events if e["type"] == "progress"] == [1, 2]
    metrics = metrics_of(events)
    assert len(metrics) == 2
    for m in metrics:
        assert set(m) >= REQUIRED_METRICS, REQUIRED_METRICS - set(m)
        assert "policy/kl" not in m  # beta = 0
        assert all(v is None or isinstance(v, float) for v in m.values())
        assert m["rollout/completion_length_max"] <= 3
    samples = [e for e in events if e["type"] == "samples"]
    assert samples and all(set(s) == {"prompt", "completion", "reward"} for s in samples[0]["samples"])
    assert len(samples[0]["samples"]) == 2
    assert events[-1]["type"] == "done" and events[-1]["step"] == 2
    assert (out / "final" / "config.json").exists() and (out / "checkpoints" / "checkpoint-2").exists()


# ------------------------------------------------------------------------------------------------ batching


@pytest.mark.parametrize(
    ("batch", "ga", "spg", "mu", "prompts", "needs_old"),
    [
        (4, 1, None, 1, 2, False),  # default: one slice per generation, on-policy
        (4, 2, 4, 1, 8, True),  # a generation spans two optimizer steps
        (4, 4, 2, 1, 4, False),  # Lite PPO: two generations per optimizer step, still on-policy
        (4, 2, 2, 2, 4, True),  # num_iterations = 2 reuses a generation across steps
    ],
)
def test_plan_follows_the_trl_batching_rules(batch, ga, spg, mu, prompts, needs_old):
    cfg = parse_job_spec(
        job(
            {
                "per_device_train_batch_size": batch,
                "gradient_accumulation_steps": ga,
                "steps_per_generation": spg,
                "num_iterations": mu,
            }
        )
    ).config
    plan = Plan.from_config(cfg)
    assert plan.prompts_per_generation == prompts
    assert plan.needs_old_logps is needs_old


def test_plan_asserts_what_submission_refuses():
    spec = parse_job_spec(job({"per_device_train_batch_size": 3, "num_generations": 2}))
    assert unsupported(spec).field == "config.per_device_train_batch_size"
    with pytest.raises(AssertionError):
        Plan.from_config(spec.config)


def test_generations_per_optimizer_step(tmp_path):
    t, _ = trainer(tmp_path, {"gradient_accumulation_steps": 4, "steps_per_generation": 2, "max_steps": 2})
    t.train()
    assert t.counters.generations == 4  # two generations feed each optimizer step
    assert t.counters.policy_forwards == 8 and t.counters.old_logp_forwards == 0

    t, _ = trainer(
        tmp_path / "b", {"gradient_accumulation_steps": 1, "steps_per_generation": 2, "max_steps": 4}
    )
    t.train()
    assert t.counters.generations == 2  # one generation feeds two optimizer steps ...
    assert t.counters.old_logp_forwards > 0  # ... so the second one is off-policy


# --------------------------------------------------------------------------------- on-policy shortcuts


def spy_logprob_forwards(monkeypatch) -> list[dict]:
    """Records every log-prob forward of the loop (padded or shared-prompt): grad mode and entropy flag."""
    calls: list[dict] = []
    for name in ("token_logprobs", "shared_prompt_stats"):
        real = getattr(grpo_mod, name)

        def spy(*args, _real=real, **kwargs):
            calls.append({"grad": torch.is_grad_enabled(), "entropy": bool(kwargs.get("with_entropy"))})
            return _real(*args, **kwargs)

        monkeypatch.setattr(grpo_mod, name, spy)
    return calls


def test_on_policy_beta_zero_computes_no_old_logps_and_loads_no_reference(tmp_path, monkeypatch):
    def no_reference(*args, **kwargs):
        raise AssertionError("beta = 0 must not load a reference model")

    monkeypatch.setattr(grpo_mod, "load_reference", no_reference)
    calls = spy_logprob_forwards(monkeypatch)
    t, stream = trainer(tmp_path)
    t.train()
    assert t.reference is None and t.counters.old_logp_forwards == 0 and t.counters.ref_logp_forwards == 0
    assert len(calls) == 2 and all(c["grad"] and not c["entropy"] for c in calls)  # training forwards only
    assert all("policy/kl" not in m for m in metrics_of(events_of(stream)))


def test_beta_loads_a_reference_and_reports_kl(tmp_path, hash_reward):
    t, stream = trainer(tmp_path, {"beta": 0.1, "max_steps": 3}, reward_funcs=hash_reward)
    t.train()
    assert t.reference is not None and t.counters.ref_logp_forwards >= 3
    kls = [m["policy/kl"] for m in metrics_of(events_of(stream))]
    assert kls[0] == pytest.approx(0.0, abs=1e-6)  # the first step's policy is the reference
    assert all(k >= 0 for k in kls) and kls[-1] > 0


def test_entropies_only_when_the_entropy_mask_needs_them(tmp_path, monkeypatch):
    calls = spy_logprob_forwards(monkeypatch)
    t, stream = trainer(tmp_path, {"top_entropy_quantile": 0.2, "max_steps": 1})
    t.train()
    assert [c["entropy"] for c in calls] == [True]
    m = metrics_of(events_of(stream))[0]
    assert m["policy/entropy"] > 0 and 0 <= m["policy/entropy_mask_ratio"] <= 1


# ------------------------------------------------------------------------------------ variants and masks


def test_dynamic_sampling_generates_again_up_to_the_round_limit(tmp_path):
    # `format` is 0 for every completion of a random model, so every group has zero variance.
    t, stream = trainer(
        tmp_path,
        {"dynamic_sampling": True, "max_dynamic_sampling_rounds": 3, "max_steps": 1},
        reward_funcs=[{"name": "format"}],
    )
    t.train()
    assert t.counters.generations == 3
    m = metrics_of(events_of(stream))[0]
    assert m["rollout/dynamic_sampling_rounds"] == 3 and m["rollout/frac_reward_zero_std"] == 1.0
    assert len(t.last_rollout) == 4  # the batch was filled up with zero-variance groups
    assert m["rollout/dynamic_sampling_padded_groups"] == 2  # ... and it says so
    (warning,) = [e for e in events_of(stream) if e["type"] == "log" and "dynamic sampling" in e["message"]]
    assert warning["level"] == "warning" and "2 of 2 groups" in warning["message"]


def test_dynamic_sampling_filters_on_accuracy_not_on_the_length_punishment(tmp_path):
    t, _ = trainer(
        tmp_path,
        {"dynamic_sampling": True, "max_dynamic_sampling_rounds": 2, "max_steps": 1},
        reward_funcs=[{"name": "accuracy"}, {"name": "soft_overlong_punishment"}],
    )

    def wrong(prompts, completions, completion_ids, **columns):
        return [0.0] * len(completions)

    def punished(prompts, completions, completion_ids, **columns):
        return [-(i % 2) * 0.5 for i in range(len(completions))]  # differs inside every group

    wrong.name, punished.name = "accuracy", "soft_overlong_punishment"
    t.reward_funcs = [wrong, punished]
    rollout = t.generate()
    # every group is all wrong: no accuracy signal, so both rounds run and the batch is padded
    assert t.counters.generations == 2
    assert rollout.metrics["rollout/dynamic_sampling_padded_groups"] == 2
    assert rollout.metrics["rollout/frac_reward_zero_std"] == 0.0  # the trained reward does vary


def test_reward_mean_is_the_raw_weighted_reward_under_normalize_then_sum(tmp_path):
    t, _ = trainer(
        tmp_path,
        {"multi_objective_aggregation": "normalize_then_sum", "reward_weights": [2.0]},
        reward_funcs=[{"name": "soft_overlong_punishment", "max_completion_len": 3, "soft_punish_cache": 2}],
    )
    m = t.generate().metrics
    raw_mean = m["rollout/rewards/soft_overlong_punishment_mean"]
    assert raw_mean < 0  # the random model mostly runs to the limit: punished
    assert m["rollout/reward_mean"] == pytest.approx(2.0 * raw_mean)


def test_gfpo_keeps_the_shortest_completions_of_each_group(tmp_path):
    t, _ = trainer(
        tmp_path,
        {
            "num_generations": 4,
            "num_remains_in_group": 2,
            "group_filter": "shortest",
            "max_steps": 1,
            "max_completion_length": 6,
            "per_device_train_batch_size": 8,
        },
    )
    part = t._sample(t._take_slots(2))
    lengths = [len(ids) for ids in part.ids]
    rollout = t._score(part, {})
    assert len(rollout) == 4
    for g in range(2):
        expected = sorted(lengths[4 * g : 4 * g + 4])[:2]
        assert sorted(rollout.completion_lengths[2 * g : 2 * g + 2]) == expected


def test_mask_truncated_completions_zeroes_their_loss_rows(tmp_path):
    t, _ = trainer(tmp_path, {"mask_truncated_completions": True, "max_completion_length": 2})
    rollout = t.generate()
    truncated = rollout.completion_mask[:, -1].bool() & ~torch.isin(
        rollout.completion_ids[:, -1], torch.tensor(t.eos_ids)
    )
    assert truncated.any()
    assert rollout.loss_mask[truncated].sum() == 0
    assert rollout.loss_tokens == rollout.loss_mask.sum(1).tolist()
    assert rollout.metrics["rollout/clipped_ratio"] == pytest.approx(truncated.float().mean().item())


def test_updates_with_every_completion_masked_are_reported_as_warnings(tmp_path):
    """tiny:llama almost never ends an answer in 1 token: with truncated completions masked, nothing is
    left to learn from, and the events say so instead of reporting a quiet success."""
    cfg = {"mask_truncated_completions": True, "max_completion_length": 1, "max_steps": 2}
    t, stream = trainer(tmp_path, cfg)
    t.train()
    events = events_of(stream)
    warnings = [e["message"] for e in events if e["type"] == "log" and e.get("level") == "warning"]
    steps = metrics_of(events)
    assert [m["train/loss"] for m in steps] == [0.0, 0.0] and [m["train/grad_norm"] for m in steps] == [
        0.0,
        0.0,
    ]
    assert any(
        w.startswith("step 1: every update was masked") and "max_completion_length" in w for w in warnings
    )
    assert (
        "2 of 2 optimizer steps had every completion masked out of the loss (loss 0, gradient 0); the model did not change"
        in warnings
    )
    # the same job without masking keeps its completions in the loss and warns of nothing of the kind
    t, stream = trainer(tmp_path / "unmasked", {**cfg, "mask_truncated_completions": False})
    t.train()
    events = events_of(stream)
    assert not [e for e in events if e["type"] == "log" and "masked" in e.get("message", "")]


def _warnings(stream: io.StringIO) -> list[str]:
    return [e["message"] for e in events_of(stream) if e["type"] == "log" and e.get("level") == "warning"]


@pytest.fixture
def constant_then_varied_reward():
    """1.0 for the first generation's 4 completions, then a hash of the text (varies within groups)."""
    from tests.engine.conftest import _text_hash, serve_rewards

    calls = []

    def score(ids: list[int]) -> float:
        calls.append(1)
        return 1.0 if len(calls) <= 4 else (_text_hash(ids) % 1000) / 1000

    yield from serve_rewards(score)


def test_steps_with_a_zero_gradient_are_counted_in_a_warning(tmp_path, constant_then_varied_reward):
    """Equal rewards in every group and beta 0: every advantage is 0, so is the step's gradient. One such
    step of two is reported as such; a run where every step is like that gets the degenerate-run warning."""
    t, stream = trainer(tmp_path, {"beta": 0.0}, reward_funcs=constant_then_varied_reward)
    t.train()
    norms = [m["train/grad_norm"] for m in metrics_of(events_of(stream))]
    assert norms[0] == 0.0 and norms[1] > 0
    zero = [w for w in _warnings(stream) if "zero gradient" in w or "degenerate" in w]
    assert len(zero) == 1 and zero[0].startswith("1 of 2 optimizer steps had a zero gradient"), zero
    t, stream = trainer(
        tmp_path / "again", {"beta": 0.0, "max_steps": 1}, reward_funcs=constant_then_varied_reward
    )
    t.train()  # the server's first 4 scores are spent: this one step has a gradient
    assert not [w for w in _warnings(stream) if "zero gradient" in w or "degenerate" in w]


def test_prompts_are_left_truncated_to_max_prompt_length(tmp_path):
    t, _ = trainer(tmp_path, {"max_prompt_length": 20})
    ids = t.encoder.encode(t.rows[0]["prompt"])
    full = t.tokenizer(
        t.tokenizer.apply_chat_template(t.rows[0]["prompt"], tokenize=False, add_generation_prompt=True),
        add_special_tokens=False,
    )["input_ids"]
    assert len(ids) == 20 and ids == full[-20:]


# ------------------------------------------------------------------------------ micro-batch invariance


def test_step_gradient_does_not_depend_on_the_micro_batch_cut(tmp_path):
    t, _ = trainer(tmp_path, {"per_device_train_batch_size": 8, "num_generations": 4, "beta": 0.05})
    rollout = t.generate()
    rows = list(range(len(rollout)))
    counts = grpo_mod.GlobalCounts(num_tokens=sum(rollout.loss_tokens), num_sequences=len(rows))
    rollout.advantages = torch.linspace(-1, 1, len(rows))  # make every row matter

    def grads(parts):
        t.model.zero_grad(set_to_none=True)
        for part in parts:
            t.micro_step(rollout.micro_batch(part), counts, StepMetrics()).backward()
        return torch.cat([p.grad.flatten() for p in t.model.parameters() if p.grad is not None])

    whole = grads([rows])
    split = grads([rows[:3], rows[3:5], rows[5:]])
    assert torch.allclose(whole, split, atol=1e-6, rtol=1e-4)


def test_entropy_bonus_over_the_mask_uses_the_steps_kept_tokens_whatever_the_cut(tmp_path):
    cfg = {"per_device_train_batch_size": 8, "num_generations": 4, "top_entropy_quantile": 0.5}
    t, _ = trainer(tmp_path, {**cfg, "entropy_coef": 0.05})
    rollout = t.generate()
    rows = list(range(len(rollout)))
    rollout.advantages = torch.linspace(-1, 1, len(rows))
    base = grpo_mod.GlobalCounts(num_tokens=sum(rollout.loss_tokens), num_sequences=len(rows))
    # the step's entropies from one forward of every row, and the tokens at or above their median
    with torch.no_grad():
        mb = rollout.micro_batch(rows)
        _, ent = t._logps(t.model, mb, with_entropy=True)
        active = ent[mb.loss_mask.bool()].double()
        expected = int((active >= torch.quantile(active, 0.5)).sum())
    cuts = {"whole": [rows], "split": [rows[:3], rows[3:5], rows[5:]]}
    grads = {}
    for name, parts in cuts.items():
        counts = t._entropy_step_counts([(rollout, p) for p in parts], base)
        assert int(counts.num_entropy_tokens) == expected
        t.model.zero_grad(set_to_none=True)
        for part in parts:
            t.micro_step(rollout.micro_batch(part), counts, StepMetrics()).backward()
        grads[name] = torch.cat([p.grad.flatten() for p in t.model.parameters() if p.grad is not None])
    assert torch.allclose(grads["whole"], grads["split"], atol=1e-6, rtol=1e-4)
    # no bonus: no extra forwards, and the threshold stays per micro-batch
    t.cfg = t.cfg.model_copy(update={"entropy_coef": 0.0})
    assert t._entropy_step_counts([(rollout, rows)], base) is base


def test_micro_batch_trimming_keeps_the_log_probs(tmp_path):
    t, _ = trainer(
        tmp_path, {"per_device_train_batch_size": 8, "num_generations": 4, "max_completion_length": 6}
    )
    rollout = t.generate()
    everything = rollout.micro_batch(list(range(len(rollout))))
    short = min(range(len(rollout)), key=lambda r: rollout.completion_lengths[r])
    alone = rollout.micro_batch([short])
    assert alone.logits_to_keep == max(1, rollout.completion_lengths[short])
    with torch.no_grad():
        lp_all, _ = t._logps(t.model, everything, with_entropy=False)
        lp_one, _ = t._logps(t.model, alone, with_entropy=False)
    n = rollout.completion_lengths[short]
    assert torch.allclose(lp_all[short, :n], lp_one[0, :n], atol=1e-5)


# ------------------------------------------------------------------------------------------------- resume


def test_resume_continues_from_the_last_checkpoint(tmp_path):
    t, _ = trainer(tmp_path, {"max_steps": 2, "save_steps": 1})
    t.train()
    position = dict(t.sampler.position)
    t2, stream = trainer(tmp_path, {"max_steps": 3, "save_steps": 1}, resume=True)
    assert t2.sampler.position == {"epoch": 0, "index": 0}
    t2.train()
    events = events_of(stream)
    assert any("resumed from" in e.get("message", "") for e in events)
    assert [e["step"] for e in events if e["type"] == "progress"] == [3]
    assert t2.counters.generations == 1
    assert t2.sampler.position["index"] == position["index"] + t2.plan.prompts_per_generation
