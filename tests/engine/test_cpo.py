"""CPO / SimPO / AlphaPO on tiny:llama: the CLI run, every loss_type, the NLL term (forced off by alphapo),
AlphaPO shaping, no reference model, resume, and learning on the built-in preferences."""

import math
import statistics

import pytest

from engine.losses import registry_names
from tests.engine.conftest import metrics_by_step, run_cli_checked, run_inprocess, tiny_spec
from tests.engine.test_resume import _resume_matches

BETA = 0.1


def _run(tmp_path, peft_config=None, zero_grad_ok=False, **config):
    spec = tiny_spec("cpo", "preferences", num_rows=8, **{"max_steps": 2, "learning_rate": 1e-3, **config})
    if peft_config:
        spec["peft_config"] = peft_config
    code, events = run_inprocess(spec, tmp_path)
    assert code == 0, events[-1]
    metrics = metrics_by_step(events)
    assert sorted(metrics) == list(range(1, spec["config"]["max_steps"] + 1))
    for m in metrics.values():
        assert math.isfinite(m["train/loss"]) and (m["train/grad_norm"] > 0 or zero_grad_ok)
        assert 0.0 <= m["rewards/accuracies"] <= 1.0
    return metrics


@pytest.mark.slow
def test_cpo_cli_run_emits_a_valid_stream_and_checkpoints(tmp_path):
    spec = tiny_spec("cpo", "preferences", max_steps=3, save_steps=2, learning_rate=1e-3)
    metrics = run_cli_checked(spec, tmp_path)
    assert (tmp_path / "final" / "config.json").exists()
    for m in metrics:
        assert {"train/loss", "cpo/loss", "cpo/nll_loss", "rewards/accuracies", "rewards/margins"} <= set(m)
        assert {"rewards/chosen", "rewards/rejected", "logps/chosen", "logps/rejected"} <= set(m)


@pytest.mark.parametrize("loss_type", ["sigmoid", "hinge", "ipo", "simpo", "alphapo"])
def test_every_loss_type_trains(tmp_path, loss_type):
    assert loss_type in registry_names("cpo")
    m = _run(tmp_path, loss_type=loss_type)
    assert m[1]["train/loss"] == pytest.approx(m[1]["cpo/loss"], rel=1e-6)
    # alphapo is SimPO without the NLL term; every other type keeps cpo_alpha = 1
    assert ("cpo/nll_loss" in m[1]) == (loss_type != "alphapo")
    if loss_type in ("sigmoid", "hinge"):  # scores are sums: reward = beta * summed log-prob
        assert m[1]["rewards/chosen"] == pytest.approx(BETA * m[1]["logps/chosen"], rel=1e-5)


def _softplus(x):
    return math.log1p(math.exp(-abs(x))) + max(-x, 0.0)  # -log s(x)


PAIR_LOSS = {  # per-pair loss from the logged margin m = beta * u, gamma = 0.5
    "sigmoid": lambda m: _softplus(m),
    "hinge": lambda m: max(0.0, 1 - m),
    "ipo": lambda m: (m / BETA - 1 / (2 * BETA)) ** 2,
    "simpo": lambda m: _softplus(m - 0.5),
    "alphapo": lambda m: _softplus(m - 0.5),
}


@pytest.mark.parametrize("loss_type", sorted(PAIR_LOSS))
def test_one_pair_per_step_gives_the_formula_of_the_loss_type(tmp_path, loss_type):
    alpha = 0.3 if loss_type == "alphapo" else 0.0  # the shape on summed log-probs would saturate
    m = _run(
        tmp_path,
        zero_grad_ok=loss_type == "hinge",  # a pair past the hinge (beta u > 1) has no gradient
        loss_type=loss_type,
        cpo_alpha=0.0,
        per_device_train_batch_size=1,
        max_steps=3,
        alpha=alpha,
    )
    for step in (1, 2, 3):
        expected = PAIR_LOSS[loss_type](m[step]["rewards/margins"])
        assert m[step]["train/loss"] == pytest.approx(expected, rel=1e-5, abs=1e-6), step


def test_loss_is_the_pair_loss_plus_cpo_alpha_times_nll(tmp_path):
    with_nll = _run(tmp_path / "nll", max_steps=1, cpo_alpha=2.0)[1]
    without = _run(tmp_path / "plain", max_steps=1, cpo_alpha=0.0)[1]
    assert "cpo/nll_loss" not in without and with_nll["cpo/nll_loss"] > 0
    assert with_nll["train/loss"] == pytest.approx(
        without["train/loss"] + 2.0 * with_nll["cpo/nll_loss"], rel=1e-5
    )


def test_alpha_shapes_the_rewards(tmp_path):
    plain = _run(tmp_path / "plain", max_steps=1, loss_type="simpo")[1]
    shaped = _run(tmp_path / "shaped", max_steps=1, loss_type="simpo", alpha=0.5)[1]
    assert shaped["logps/chosen"] == pytest.approx(plain["logps/chosen"], rel=1e-6)  # same model, same data
    assert shaped["rewards/chosen"] != pytest.approx(plain["rewards/chosen"], rel=1e-3)


def test_cpo_never_loads_a_reference(tmp_path, monkeypatch):
    import engine.models

    def refuse(*a, **k):
        raise AssertionError("CPO is reference-free")

    monkeypatch.setattr(engine.models, "load_reference", refuse)
    _run(tmp_path, max_steps=1)


def test_lora_cpo_trains_and_saves_an_adapter(tmp_path):
    m = _run(tmp_path, peft_config={"r": 4, "lora_alpha": 8}, learning_rate=1e-2, max_steps=2)
    assert m[2]["train/loss"] != m[1]["train/loss"]
    assert (tmp_path / "final" / "adapter_model.safetensors").exists()


@pytest.mark.slow
def test_cpo_resume_reproduces_the_uninterrupted_run(tmp_path):
    spec = tiny_spec(
        "cpo",
        "preferences",
        num_rows=16,
        max_steps=6,
        gradient_accumulation_steps=2,
        save_steps=3,
        learning_rate=1e-3,
    )
    _resume_matches(tmp_path, spec)


@pytest.mark.slow
def test_cpo_accuracy_and_margin_rise_on_builtin_preferences(tmp_path):
    spec = tiny_spec(
        "cpo",
        "preferences",
        num_rows=256,
        max_steps=40,
        per_device_train_batch_size=16,
        learning_rate=2e-3,
        eval_steps=40,
    )
    spec["eval_dataset"] = {"builtin": "preferences", "num_rows": 64, "seed": 11}  # held out
    code, events = run_inprocess(spec, tmp_path)
    assert code == 0, events[-1]
    m = {e["step"]: e["metrics"] for e in events if e["type"] == "metrics" and "train/loss" in e["metrics"]}
    final_eval = [e["metrics"] for e in events if e["type"] == "metrics" and "eval/loss" in e["metrics"]][-1]
    acc_first = statistics.mean(m[s]["rewards/accuracies"] for s in range(1, 4))
    acc_last = statistics.mean(m[s]["rewards/accuracies"] for s in range(31, 41))
    margin_first = statistics.mean(m[s]["rewards/margins"] for s in range(1, 4))
    margin_last = statistics.mean(m[s]["rewards/margins"] for s in range(31, 41))
    assert acc_last > acc_first + 0.15, (acc_first, acc_last)
    assert margin_last > margin_first + 0.5, (margin_first, margin_last)
    assert final_eval["eval/rewards/margins"] > 0.3, final_eval
