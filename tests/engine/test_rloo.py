"""RLOO on tiny:llama: `python -m engine.train` with beta = 0 and beta > 0, the KL-penalised
reward and leave-one-out advantages worked out by hand, the loop's rollouts against the same formulas, the
on-policy shortcuts RLOO does not take (old log-probs always) and does take (no reference at beta = 0),
resume, and learning on small sums."""

from __future__ import annotations

import io
import json
import math
import statistics

import pytest
import torch

from engine.advantages import combine_rewards
from engine.algorithms import grpo as grpo_mod
from engine.algorithms.common import TrainContext
from engine.algorithms.grpo import GRPOTrainer
from engine.algorithms.rloo import kl_penalised_advantages, rloo_objective
from engine.data.arithmetic import arithmetic_rows
from engine.events import EventWriter
from engine.spec import parse_job_spec
from engine.spec.grpo import RLOOConfig
from tests.engine.conftest import metrics_by_step, run_inprocess, run_subprocess
from tests.engine.test_resume import _resume_matches
from tests.engine.test_train_cli import _check_stream

REQUIRED_METRICS = {
    "train/loss",
    "train/learning_rate",
    "train/grad_norm",
    "rollout/reward_mean",
    "rollout/reward_std",
    "rollout/frac_reward_zero_std",
    "rollout/completion_length_mean",
    "rollout/completion_length_min",
    "rollout/completion_length_max",
    "rollout/clipped_ratio",
    "policy/clip_ratio",
    "policy/clip_ratio_low",
    "policy/clip_ratio_high",
}


def job(config: dict | None = None, **top) -> dict:
    cfg = {
        "per_device_train_batch_size": 4,
        "num_generations": 2,
        "max_completion_length": 3,
        "max_prompt_length": 64,
        "max_steps": 3,
        "learning_rate": 1e-3,
        "logging_steps": 1,
        "save_steps": 100,
        "beta": 0.0,
    }
    cfg.update(config or {})
    return {
        "algorithm": "rloo",
        "model": "tiny:llama",
        "dataset": {"builtin": "arithmetic", "num_rows": 32},
        "config": cfg,
        **top,
    }


def trainer(tmp_path, config: dict | None = None, **top) -> tuple[GRPOTrainer, io.StringIO]:
    spec = parse_job_spec(job(config, **top))
    stream = io.StringIO()
    ctx = TrainContext.for_spec(spec, tmp_path, events=EventWriter(stream))
    return GRPOTrainer(spec, ctx, rloo_objective(spec.config)), stream


# ------------------------------------------------------------------------------------ python -m engine.train


@pytest.mark.parametrize("beta", [0.0, 0.05])
def test_engine_train_runs_rloo(tmp_path, hash_reward, beta):
    spec = job({"beta": beta, "save_steps": 2}, reward_funcs=hash_reward)
    code, events, stderr = run_subprocess(spec, tmp_path)
    assert code == 0, stderr[-3000:]
    _check_stream([e for e in events if e["type"] != "samples"])
    samples = [e for e in events if e["type"] == "samples"]
    assert samples and all(set(s) == {"prompt", "completion", "reward"} for s in samples[0]["samples"])
    types = [e["type"] for e in events]
    assert types[-1] == "done" and "error" not in types
    assert [e["step"] for e in events if e["type"] == "progress"] == [1, 2, 3]
    assert [e["step"] for e in events if e["type"] == "checkpoint"] == [2, 3]
    assert (tmp_path / "checkpoints" / "checkpoint-3" / "trainer_state.pt").exists()
    assert (tmp_path / "final" / "config.json").exists()

    metrics = metrics_by_step(events)
    assert sorted(metrics) == [1, 2, 3]
    for m in metrics.values():
        assert set(m) >= REQUIRED_METRICS, REQUIRED_METRICS - set(m)
        assert ("policy/kl" in m) == (beta > 0)
        assert all(isinstance(v, float) and "/" in k for k, v in m.items())
        assert m["rollout/completion_length_max"] <= 3
        assert 0 <= m["rollout/reward_mean"] < 1 and m["train/grad_norm"] > 0
    if beta > 0:
        # step 1 samples from the reference itself; later old log-probs come from the updated policy
        assert metrics[1]["policy/kl"] == pytest.approx(0.0, abs=1e-6)
        assert metrics[3]["policy/kl"] != pytest.approx(0.0, abs=1e-6)

    logs = [e["message"] for e in events if e["type"] == "log"]
    plan = next(m for m in logs if m.startswith("rloo: "))
    assert "old log-probs on" in plan
    assert ("reference on" in plan) == (beta > 0)
    counters = next(m for m in logs if m.startswith("rloo counters: "))
    assert "old_logp_forwards=3 " in counters
    assert f"ref_logp_forwards={3 if beta > 0 else 0} " in counters


# --------------------------------------------------------------------- the formulas, worked out by hand


def _by_hand(rewards, old, ref, mask, G, beta, clip=None, normalize=False):
    """The RLOO advantage in plain Python: clip, subtract beta * sum_t m (old - ref), leave one out."""
    shaped = []
    for r, o, f, m in zip(rewards, old, ref, mask, strict=True):
        if clip is not None and not math.isnan(r):
            r = min(max(r, clip[0]), clip[1])
        shaped.append(r - beta * sum(mi * (oi - fi) for oi, fi, mi in zip(o, f, m, strict=True)))
    adv = []
    for g in range(0, len(shaped), G):
        group = shaped[g : g + G]
        valid = [x for x in group if not math.isnan(x)]
        for x in group:
            if math.isnan(x) or len(valid) < 2:
                adv.append(math.nan)
            else:
                adv.append(x - (sum(valid) - x) / (len(valid) - 1))
    if normalize:
        valid = [a for a in adv if not math.isnan(a)]
        mu, sd = statistics.mean(valid), statistics.stdev(valid)
        adv = [(a - mu) / (sd + 1e-4) for a in adv]
    return [0.0 if math.isnan(a) else a for a in adv]


OLD = [
    [-1.0, -2.0, -0.5],
    [-0.2, -0.3, -9.0],
    [-1.5, -1.5, -1.5],
    [-2.0, -1.0, 0.0],
    [-0.7, -0.1, -3.0],
    [-1.0, -1.0, -1.0],
]
REF = [
    [-1.5, -1.0, -0.5],
    [-0.4, -0.2, -1.0],
    [-1.0, -2.5, -0.5],
    [-1.0, -1.0, -4.0],
    [-0.7, -0.6, -2.0],
    [-2.0, -0.5, -1.0],
]
MASK = [[1, 1, 0], [1, 1, 1], [1, 1, 1], [1, 1, 0], [1, 0, 0], [1, 1, 1]]


@pytest.mark.parametrize(
    ("beta", "clip", "normalize"),
    [(0.0, None, False), (0.1, None, False), (0.25, (-0.5, 0.8), False), (0.1, None, True)],
)
def test_kl_enters_the_reward_and_the_baseline_leaves_one_out(beta, clip, normalize):
    rewards = [1.0, 0.0, 0.5, 2.0, -1.0, 0.25]  # two groups of G = 3
    cfg = RLOOConfig(beta=beta, reward_clip_range=clip, normalize_advantages=normalize)
    adv, metrics = kl_penalised_advantages(
        torch.tensor(rewards), 3, cfg, torch.tensor(OLD), torch.tensor(REF), torch.tensor(MASK)
    )
    expected = _by_hand(rewards, OLD, REF, MASK, 3, beta, clip, normalize)
    assert adv.tolist() == pytest.approx(expected, abs=1e-6)
    if beta > 0:
        diffs = [
            (o - f) * m
            for orow, frow, mrow in zip(OLD, REF, MASK, strict=True)
            for o, f, m in zip(orow, frow, mrow, strict=True)
        ]
        assert metrics == {"policy/kl": pytest.approx(sum(diffs) / sum(map(sum, MASK)))}
    else:
        assert metrics == {}


def test_a_worked_example_of_the_kl_penalty():
    # G = 2, beta = 0.5: KL_1 = (-1 - -2) + (-1 - -1) = 1, KL_2 = (-3 - -1) = -2 (masked: second token).
    # r = [1 - 0.5 * 1, 0 - 0.5 * -2] = [0.5, 1.0]; leave-one-out: A = [0.5 - 1.0, 1.0 - 0.5].
    cfg = RLOOConfig(beta=0.5)
    old = torch.tensor([[-1.0, -1.0], [-3.0, -7.0]])
    ref = torch.tensor([[-2.0, -1.0], [-1.0, 0.0]])
    mask = torch.tensor([[1, 1], [1, 0]])
    adv, metrics = kl_penalised_advantages(torch.tensor([1.0, 0.0]), 2, cfg, old, ref, mask)
    assert adv.tolist() == pytest.approx([-0.5, 0.5])
    assert metrics["policy/kl"] == pytest.approx((1.0 + 0.0 - 2.0) / 3)


def test_unscorable_rows_get_no_advantage_and_are_not_in_the_baseline():
    per_func = torch.tensor([[1.0, math.nan], [math.nan, math.nan], [0.0, 0.5], [2.0, math.nan]])
    rewards = combine_rewards(per_func, [1.0, 2.0])  # [1, nan, 1, 2]: the loop's aggregation
    adv, _ = kl_penalised_advantages(rewards, 2, RLOOConfig(beta=0.0))
    assert adv.tolist() == pytest.approx([0.0, 0.0, -1.0, 1.0])


def test_the_objective_uses_the_rloo_loss_without_kl_or_is_weight():
    objective = rloo_objective(RLOOConfig(beta=0.3, epsilon=0.1, epsilon_high=0.3))
    loss = objective.loss
    assert (loss.loss_type, loss.beta, loss.vllm_is_correction) == ("rloo", 0.0, False)
    assert (loss.epsilon, loss.effective_epsilon_high) == (0.1, 0.3)
    assert objective.always_old_logps and objective.aggregation == "sum_then_normalize"


# ----------------------------------------------------------------------------------------------- the loop


def test_rollout_advantages_follow_the_formula(tmp_path, hash_reward):
    t, _ = trainer(
        tmp_path,
        {
            "beta": 0.5,
            "num_generations": 4,
            "per_device_train_batch_size": 8,
            "reward_clip_range": [0.1, 0.9],
        },
        reward_funcs=hash_reward,
    )
    with torch.no_grad():  # move the policy away from the reference, so old != ref
        for p in t.model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    rollout = t.generate()
    assert rollout.old_logps is not None and rollout.ref_logps is not None
    rewards = [s["reward"] for s in rollout.samples]
    mask = rollout.loss_mask.tolist()
    expected = _by_hand(
        rewards, rollout.old_logps.tolist(), rollout.ref_logps.tolist(), mask, 4, 0.5, clip=(0.1, 0.9)
    )
    assert rollout.advantages.tolist() == pytest.approx(expected, abs=1e-5)
    kls = [
        sum(m * (o - f) for o, f, m in zip(orow, frow, mrow, strict=True))
        for orow, frow, mrow in zip(rollout.old_logps.tolist(), rollout.ref_logps.tolist(), mask, strict=True)
    ]
    assert any(abs(k) > 1e-3 for k in kls)  # the KL term did change the rewards
    assert rollout.metrics["rollout/reward_mean"] == pytest.approx(statistics.mean(rewards))  # without KL
    assert rollout.metrics["policy/kl"] == pytest.approx(sum(kls) / sum(map(sum, mask)), rel=1e-5)


def test_beta_zero_loads_no_reference_but_computes_old_logps(tmp_path, monkeypatch):
    def no_reference(*args, **kwargs):
        raise AssertionError("beta = 0 must not load a reference model")

    monkeypatch.setattr(grpo_mod, "load_reference", no_reference)
    t, stream = trainer(tmp_path, {"max_steps": 2})
    t.train()
    assert t.reference is None and t.counters.ref_logp_forwards == 0
    assert t.plan.needs_old_logps and t.counters.old_logp_forwards == 2
    events = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert all("policy/kl" not in e["metrics"] for e in events if e["type"] == "metrics")


def test_old_logps_are_the_policy_at_generation_time(tmp_path, hash_reward):
    t, _ = trainer(tmp_path, {"beta": 0.1}, reward_funcs=hash_reward)
    rollout = t.generate()
    mb = rollout.micro_batch(list(range(len(rollout))))
    with torch.no_grad():
        logps, _ = t._logps(t.model, mb, with_entropy=False)
        ref, _ = t._logps(t.reference.model, mb, with_entropy=False)
    m = mb.loss_mask.bool()
    assert torch.allclose(logps[m], mb.old_logps[m], atol=1e-5)
    assert torch.allclose(ref[m], mb.ref_logps[m], atol=1e-5)  # untrained policy = reference


# ------------------------------------------------------------------------------------------------- resume


def test_resume_reproduces_the_uninterrupted_run(tmp_path, hash_reward):
    spec = job(
        {"beta": 0.05, "max_steps": 6, "save_steps": 3, "save_total_limit": None, "learning_rate": 1e-2},
        reward_funcs=hash_reward,
    )
    _, resumed_dir, metrics = _resume_matches(tmp_path, spec)
    assert metrics[6]["train/loss"] != metrics[4]["train/loss"]  # the model did change
    assert (resumed_dir / "final" / "config.json").exists()


def test_resume_restores_a_reference_moved_by_sync_ref_model(tmp_path, hash_reward):
    spec = job(
        {
            "beta": 0.5,
            "max_steps": 6,
            "save_steps": 3,
            "save_total_limit": None,
            "learning_rate": 1e-2,
            "sync_ref_model": True,
            "ref_model_sync_steps": 1,
            "ref_model_mixup_alpha": 0.5,
        },
        reward_funcs=hash_reward,
    )
    _, _, metrics = _resume_matches(tmp_path, spec)
    assert metrics[6]["policy/kl"] != metrics[4]["policy/kl"]


# ----------------------------------------------------------------------------------------------- learning

STEPS = 50  # ~5-12 s on 2 cores; the last 10 steps average 0.2-0.35 over seeds 1-6


@pytest.mark.slow
def test_rloo_mean_reward_rises_on_small_sums(tmp_path):
    data = tmp_path / "sums.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in arithmetic_rows(256, seed=0, max_operand=2)))
    spec = {
        "algorithm": "rloo",
        "model": "tiny:llama",
        "dataset": {"path": str(data)},
        "reward_funcs": [{"name": "accuracy"}],
        "config": {
            "per_device_train_batch_size": 64,  # 8 prompts x 8 completions per step
            "num_generations": 8,
            "max_completion_length": 3,
            "max_prompt_length": 47,
            "learning_rate": 1e-2,
            "lr_scheduler_type": "constant",
            "beta": 0.0,
            "max_steps": STEPS,
            "logging_steps": 1,
            "save_steps": 1000,
            "seed": 5,
        },
    }
    code, events = run_inprocess(spec, tmp_path / "out")
    assert code == 0, [e for e in events if e["type"] == "error"]
    rewards = [m["rollout/reward_mean"] for m in metrics_by_step(events).values()]
    assert len(rewards) == STEPS
    first, last = sum(rewards[:5]) / 5, sum(rewards[-10:]) / 10
    assert first < 0.1, rewards
    assert last > first + 0.1 and last > 0.15, rewards
