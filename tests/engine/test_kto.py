"""KTO on tiny:llama: the CLI run, every loss_type, paired data unpaired, KL rows, reference options, resume,
and learning on the built-in unpaired feedback."""

import json
import math
import statistics

import pytest

from engine.data.unpaired import assign_kl_completions, collate_unpaired, tokenize_unpaired
from engine.losses import registry_names
from tests.engine.conftest import metrics_by_step, run_cli_checked, run_inprocess, tiny_spec
from tests.engine.test_resume import _resume_matches


def _run(tmp_path, builtin="unpaired", peft_config=None, **config):
    spec = tiny_spec("kto", builtin, num_rows=16, **{"max_steps": 2, "learning_rate": 1e-3, **config})
    if peft_config:
        spec["peft_config"] = peft_config
    code, events = run_inprocess(spec, tmp_path)
    assert code == 0, events[-1]
    metrics = metrics_by_step(events)
    assert sorted(metrics) == list(range(1, spec["config"]["max_steps"] + 1))
    for m in metrics.values():
        assert math.isfinite(m["train/loss"]) and m["train/grad_norm"] > 0
    return metrics, events


@pytest.mark.slow
def test_kto_cli_run_emits_a_valid_stream_and_checkpoints(tmp_path):
    spec = tiny_spec("kto", "unpaired", max_steps=3, save_steps=2, learning_rate=1e-3)
    metrics = run_cli_checked(spec, tmp_path)
    assert (tmp_path / "final" / "config.json").exists()
    for m in metrics:
        assert {"train/loss", "kto/kl", "kto/loss", "rewards/chosen", "rewards/rejected"} <= set(m)
        assert {"rewards/margins", "logps/chosen", "logps/rejected"} <= set(m)
        assert all("/" in k for k in m)


@pytest.mark.parametrize("loss_type", registry_names("kto"))
def test_every_loss_type_starts_at_one_half_with_an_identical_reference(tmp_path, loss_type):
    # before any update log pi = log ref, so D = 0 and z0 = 0: every term is 1 - s(0) = s(0) = 1/2
    metrics, _ = _run(tmp_path, loss_type=loss_type)
    m = metrics[1]
    assert m["train/loss"] == pytest.approx(0.5, abs=1e-6)
    assert m["kto/loss"] == pytest.approx(m["train/loss"], rel=1e-6)
    assert m["rewards/margins"] == pytest.approx(0.0, abs=1e-6)
    assert ("kto/kl" in m) == (loss_type == "kto")
    assert metrics[2]["train/loss"] != pytest.approx(0.5, abs=1e-6)  # the policy moved


def test_desirable_weight_scales_the_desirable_terms(tmp_path):
    # one batch of 6 desirable and 2 undesirable rows; at step 1 every term is 1/2, so the loss is
    # (w_D * 6 + w_U * 2) / 2 / 8, with no renormalisation by the weights
    data = tmp_path / "d.jsonl"
    rows = [{"prompt": f"q{i}", "completion": f"a{i}", "label": i < 6} for i in range(8)]
    data.write_text("\n".join(json.dumps(r) for r in rows))
    spec = tiny_spec(
        "kto",
        "unpaired",
        max_steps=1,
        per_device_train_batch_size=8,
        desirable_weight=2.0,
        undesirable_weight=0.5,
    )
    spec["dataset"] = {"path": str(data)}
    code, events = run_inprocess(spec, tmp_path / "out")
    assert code == 0, events[-1]
    assert metrics_by_step(events)[1]["train/loss"] == pytest.approx((2.0 * 6 + 0.5 * 2) / 16, abs=1e-6)
    # 2 * 6 desirable / (0.5 * 2 undesirable) = 12 is outside the KTO paper's [1, 4/3]
    assert any(e["type"] == "log" and "recommends a value in [1, 4/3]" in e["message"] for e in events)


def test_preference_pairs_are_unpaired_and_shuffled(tmp_path, tiny_tokenizer):
    _, events = _run(tmp_path, builtin="preferences")
    log = next(e["message"] for e in events if e["type"] == "log" and e["message"].startswith("kto data"))
    assert "32 rows (unpaired from preference pairs, shuffled): 16 desirable, 16 undesirable" in log

    rows = [{"prompt": f"q{i}", "chosen": f"good {i}", "rejected": f"bad {i}"} for i in range(20)]
    examples, dropped = tokenize_unpaired(rows, "preference", tiny_tokenizer, seed=3)
    assert dropped == 0 and len(examples) == 40 and sum(e.label for e in examples) == 20
    labels = [e.label for e in examples]
    assert labels != [True, False] * 20 and labels != sorted(labels)  # not in pair or label order
    texts = {
        (tiny_tokenizer.decode(e.prompt_ids), tiny_tokenizer.decode(e.completion_ids), e.label)
        for e in examples
    }
    assert ("q7", "good 7<|im_end|>", True) in texts and ("q7", "bad 7<|im_end|>", False) in texts


def test_kl_rows_pair_each_prompt_with_another_prompts_completion(tiny_tokenizer):
    rows = [{"prompt": f"q{i // 2}", "completion": f"a{i}", "label": i % 2 == 0} for i in range(8)]
    examples, _ = tokenize_unpaired(rows, "unpaired", tiny_tokenizer, max_length=5, max_prompt_length=None)
    assign_kl_completions(examples, max_length=5)
    for i, e in enumerate(examples):
        partner = next(
            p for p in examples if p.completion_ids[: len(e.kl_completion_ids)] == e.kl_completion_ids
        )
        assert partner.prompt_ids != e.prompt_ids, i
        assert len(e.prompt_ids) + len(e.kl_completion_ids) <= 5
    batch = collate_unpaired(examples[:4], tiny_tokenizer.pad_token_id, with_kl=True)
    assert batch.kl_tokens.input_ids.shape[0] == 4 and (batch.num_desirable, batch.num_undesirable) == (2, 2)


def test_precomputed_reference_matches_the_live_one(tmp_path):
    live, _ = _run(tmp_path / "live", max_steps=3)
    pre, events = _run(tmp_path / "pre", max_steps=3, precompute_ref_log_probs=True)
    assert any("precomputed reference log-probs" in e.get("message", "") for e in events)
    for step in (1, 2, 3):
        for key in ("train/loss", "rewards/margins", "kto/kl"):
            assert pre[step][key] == pytest.approx(live[step][key], rel=1e-5, abs=1e-7)


def test_lora_kto_trains_against_the_adapter_disabled_reference(tmp_path):
    metrics, _ = _run(tmp_path, peft_config={"r": 4, "lora_alpha": 8}, learning_rate=1e-2, max_steps=3)
    assert metrics[1]["train/loss"] == pytest.approx(0.5, abs=1e-6)  # LoRA B starts at 0
    assert metrics[3]["rewards/margins"] != 0.0
    assert (tmp_path / "final" / "adapter_model.safetensors").exists()


def test_eval_dataset_reports_eval_metrics(tmp_path):
    spec = tiny_spec("kto", "unpaired", num_rows=16, max_steps=2, eval_steps=2, learning_rate=1e-3)
    spec["eval_dataset"] = {"builtin": "preferences", "num_rows": 4, "seed": 5}
    code, events = run_inprocess(spec, tmp_path)
    assert code == 0, events[-1]
    evals = [e["metrics"] for e in events if e["type"] == "metrics" and "eval/loss" in e["metrics"]]
    assert evals and {"eval/kto/kl", "eval/rewards/margins"} <= set(evals[-1])


@pytest.mark.slow
def test_kto_resume_reproduces_the_uninterrupted_run(tmp_path):
    spec = tiny_spec(
        "kto",
        "unpaired",
        num_rows=16,
        max_steps=6,
        gradient_accumulation_steps=2,
        save_steps=3,
        learning_rate=1e-3,
    )
    _resume_matches(tmp_path, spec)


@pytest.mark.slow
def test_kto_margin_between_desirable_and_undesirable_rewards_rises(tmp_path):
    spec = tiny_spec(
        "kto",
        "unpaired",
        num_rows=256,
        max_steps=30,
        per_device_train_batch_size=16,
        learning_rate=3e-3,
        eval_steps=30,
    )
    spec["eval_dataset"] = {"builtin": "unpaired", "num_rows": 64, "seed": 11}  # held out
    code, events = run_inprocess(spec, tmp_path)
    assert code == 0, events[-1]
    m = {e["step"]: e["metrics"] for e in events if e["type"] == "metrics" and "train/loss" in e["metrics"]}
    final_eval = [e["metrics"] for e in events if e["type"] == "metrics" and "eval/loss" in e["metrics"]][-1]
    first = statistics.mean(m[s]["rewards/margins"] for s in range(1, 4))
    last = statistics.mean(m[s]["rewards/margins"] for s in range(21, 31))
    loss_first = statistics.mean(m[s]["train/loss"] for s in range(1, 4))
    loss_last = statistics.mean(m[s]["train/loss"] for s in range(21, 31))
    assert last > first + 0.3, (first, last)
    assert loss_last < loss_first - 0.03, (loss_first, loss_last)
    assert final_eval["eval/rewards/margins"] > 0.2, final_eval
