"""Every DPO loss_type and option trains a few steps on tiny:llama through the real loop."""

import math

import pytest

from engine.spec.names import DPO_LOSS_TYPES, F_DIVERGENCES
from tests.engine.conftest import metrics_by_step, run_inprocess, tiny_spec


def _run(tmp_path, peft_config=None, **config):
    spec = tiny_spec("dpo", "preferences", num_rows=8, **{"max_steps": 2, "learning_rate": 1e-3, **config})
    if peft_config:
        spec["peft_config"] = peft_config
    code, events = run_inprocess(spec, tmp_path)
    assert code == 0, events[-1]
    metrics = metrics_by_step(events)
    assert sorted(metrics) == list(range(1, spec["config"]["max_steps"] + 1))
    for m in metrics.values():
        assert math.isfinite(m["train/loss"]) and m["train/grad_norm"] > 0
        assert 0.0 <= m["rewards/accuracies"] <= 1.0
    return metrics


@pytest.mark.parametrize("loss_type", DPO_LOSS_TYPES)
def test_every_loss_type_trains(tmp_path, loss_type):
    metrics = _run(tmp_path, loss_type=[loss_type])
    assert f"dpo/loss_{loss_type}" in metrics[1]


@pytest.mark.parametrize("f_divergence_type", F_DIVERGENCES)
def test_every_f_divergence_trains(tmp_path, f_divergence_type):
    _run(tmp_path, f_divergence_type=f_divergence_type)


@pytest.mark.parametrize(
    "config",
    [
        {"loss_type": ["sigmoid", "bco_pair", "sft"], "loss_weights": [0.8, 0.2, 1.0]},
        {"use_weighting": True},
        {"ld_alpha": 0.5},
        {"rpo_alpha": 1.0},
        {"label_smoothing": 0.1, "loss_type": ["robust"]},
        {"gradient_accumulation_steps": 2},
    ],
    ids=["multi_loss", "wpo", "ld_dpo", "rpo", "robust_smoothing", "grad_accum"],
)
def test_options_train(tmp_path, config):
    metrics = _run(tmp_path, **config)
    if "rpo_alpha" in config:
        assert "dpo/nll_loss" in metrics[1]


def test_step_loss_is_the_weighted_sum_of_the_named_losses(tmp_path):
    m = _run(tmp_path, loss_type=["sigmoid", "hinge"], loss_weights=[0.25, 2.0])[1]
    assert m["train/loss"] == pytest.approx(
        0.25 * m["dpo/loss_sigmoid"] + 2.0 * m["dpo/loss_hinge"], rel=1e-5
    )


def test_reference_free_loads_no_reference(tmp_path, monkeypatch):
    import engine.algorithms.dpo as dpo

    def refuse(*a, **k):
        raise AssertionError("no reference model may be loaded when reference_free")

    monkeypatch.setattr(dpo, "load_reference", refuse)
    m = _run(tmp_path, reference_free=True)[1]
    # with no reference, the reward of a response is beta * its log-prob
    assert m["rewards/chosen"] == pytest.approx(0.1 * m["logps/chosen"], rel=1e-5)


def test_precomputed_reference_matches_the_live_one(tmp_path):
    live = _run(tmp_path / "live")
    pre = _run(tmp_path / "pre", precompute_ref_log_probs=True)
    for step in (1, 2):
        for key in ("train/loss", "rewards/margins", "rewards/chosen"):
            assert pre[step][key] == pytest.approx(live[step][key], rel=1e-5, abs=1e-7)


def test_first_step_starts_at_log_two_with_an_identical_reference(tmp_path):
    # before any update the policy equals its reference: every log-ratio is 0, sigmoid loss = log 2
    m = _run(tmp_path)[1]
    assert m["train/loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert m["rewards/margins"] == pytest.approx(0.0, abs=1e-6)


def test_lora_dpo_trains_with_the_adapter_disabled_reference(tmp_path):
    m = _run(tmp_path / "full", learning_rate=1e-2, max_steps=3)
    lm = _run(tmp_path / "lora", peft_config={"r": 4, "lora_alpha": 8}, learning_rate=1e-2, max_steps=3)
    assert lm[1]["train/loss"] == pytest.approx(math.log(2), abs=1e-6)  # LoRA B starts at 0
    assert lm[3]["rewards/margins"] != 0.0
    assert (tmp_path / "lora" / "final" / "adapter_model.safetensors").exists()
    assert m[3]["train/loss"] != lm[3]["train/loss"]


def test_tr_dpo_moves_the_reference_and_eval_reports_rewards(tmp_path):
    spec = tiny_spec(
        "dpo",
        "preferences",
        num_rows=8,
        max_steps=3,
        learning_rate=1e-2,
        sync_ref_model=True,
        ref_model_sync_steps=1,
        ref_model_mixup_alpha=1.0,  # the reference becomes the policy after every step
        eval_steps=3,
    )
    spec["eval_dataset"] = {"builtin": "preferences", "num_rows": 4, "seed": 5}
    code, events = run_inprocess(spec, tmp_path)
    assert code == 0, events[-1]
    final_eval = [e["metrics"] for e in events if e["type"] == "metrics" and "eval/loss" in e["metrics"]][-1]
    # with alpha = 1 the reference equals the current policy: every log-ratio is 0 on the eval set
    assert final_eval["eval/rewards/margins"] == pytest.approx(0.0, abs=1e-6)
    assert final_eval["eval/loss"] == pytest.approx(math.log(2), abs=1e-6)


def test_tr_dpo_with_lora_is_refused_with_a_fix(tmp_path):
    spec = tiny_spec("dpo", "preferences", num_rows=8, sync_ref_model=True)
    spec["peft_config"] = {"r": 4}
    code, events = run_inprocess(spec, tmp_path)
    assert code == 1 and "sync_ref_model needs a separate reference model" in events[-1]["message"]
