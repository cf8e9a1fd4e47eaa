"""Reward modelling on tiny:llama: the one-label classifier (pooling on the last real token), the CLI run,
margins and centring, over-long pairs, LoRA, resume, and learning on the built-in preferences."""

import json
import math
import statistics

import pytest
import torch

from engine.algorithms.reward import build_tiny_classifier
from engine.data.reward_pairs import collate_reward_pairs, tokenize_reward_pairs
from tests.engine.conftest import metrics_by_step, run_cli_checked, run_inprocess, tiny_spec
from tests.engine.test_resume import _resume_matches


def _run(tmp_path, dataset=None, peft_config=None, **config):
    spec = tiny_spec("reward", "preferences", num_rows=8, **{"max_steps": 2, "learning_rate": 1e-3, **config})
    if dataset:
        spec["dataset"] = dataset
    if peft_config:
        spec["peft_config"] = peft_config
    code, events = run_inprocess(spec, tmp_path)
    assert code == 0, events[-1]
    metrics = metrics_by_step(events)
    assert sorted(metrics) == list(range(1, spec["config"]["max_steps"] + 1))
    for m in metrics.values():
        assert math.isfinite(m["train/loss"]) and m["train/grad_norm"] > 0
    return metrics, events


def _write(path, rows):
    path.write_text("\n".join(json.dumps(r) for r in rows))
    return {"path": str(path)}


def _pairs(n, margin=None):
    rows = [{"prompt": f"{i}+{i}=", "chosen": f"{2 * i}", "rejected": f"{2 * i + 1}"} for i in range(n)]
    if margin is not None:
        for r in rows:
            r["margin"] = margin
    return rows


def test_tiny_classifier_scores_the_last_real_token_whatever_the_padding(tiny_tokenizer):
    model = build_tiny_classifier().eval()
    model.config.pad_token_id = tiny_tokenizer.pad_token_id
    assert model.config.num_labels == 1
    (ex,), _ = tokenize_reward_pairs([{"chosen": "a b c", "rejected": "a b ccccccc"}], tiny_tokenizer)
    batch = collate_reward_pairs([ex], tiny_tokenizer.pad_token_id)  # the chosen row is right-padded
    with torch.no_grad():
        padded = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits[:, 0]
        alone = model(input_ids=torch.tensor([ex.chosen_ids])).logits[0, 0]
    assert padded[0] == pytest.approx(alone.item(), abs=1e-5)
    assert padded[0] != pytest.approx(padded[1].item(), abs=1e-6)


@pytest.mark.slow
def test_reward_cli_run_emits_a_valid_stream_and_saves_a_classifier(tmp_path):
    spec = tiny_spec("reward", "preferences", max_steps=3, save_steps=2, learning_rate=1e-3)
    metrics = run_cli_checked(spec, tmp_path)
    for m in metrics:
        assert {"train/loss", "reward/accuracy", "reward/margin", "reward/mean_reward", "reward/loss"} <= set(
            m
        )
        assert 0.0 <= m["reward/accuracy"] <= 1.0
    from transformers import AutoModelForSequenceClassification

    saved = AutoModelForSequenceClassification.from_pretrained(tmp_path / "final")
    assert type(saved).__name__ == "LlamaForSequenceClassification" and saved.config.num_labels == 1


def test_margin_and_centring_add_their_terms(tmp_path):
    # one pair per step: loss = -log s(r+ - r- - m) + eta (r+ + r-)^2 with d = r+ - r- logged as reward/margin
    rows = _pairs(4)
    plain_metrics, plain_events = _run(
        tmp_path / "plain", _write(tmp_path / "plain.jsonl", rows), per_device_train_batch_size=1
    )
    plain = plain_metrics[1]
    assert any("without a margin column (no margin term)" in e.get("message", "") for e in plain_events)
    d = plain["reward/margin"]
    assert plain["train/loss"] == pytest.approx(math.log1p(math.exp(-d)), rel=1e-5)
    assert "reward/centering" not in plain

    margin_metrics, margin_events = _run(
        tmp_path / "margin",
        _write(tmp_path / "margin.jsonl", _pairs(4, margin=1.5)),
        per_device_train_batch_size=1,
    )
    with_margin = margin_metrics[1]
    assert any("4 pairs with margins" in e.get("message", "") for e in margin_events)
    assert with_margin["reward/margin"] == pytest.approx(d, rel=1e-6)  # metrics do not subtract the margin
    assert with_margin["train/loss"] == pytest.approx(math.log1p(math.exp(-(d - 1.5))), rel=1e-5)

    centred = _run(
        tmp_path / "centred",
        _write(tmp_path / "centred.jsonl", rows),
        per_device_train_batch_size=1,
        center_rewards_coefficient=0.01,
    )[0][1]
    expected = plain["train/loss"] + 0.01 * (2 * centred["reward/mean_reward"]) ** 2
    assert centred["reward/centering"] == pytest.approx((2 * centred["reward/mean_reward"]) ** 2, rel=1e-5)
    assert centred["train/loss"] == pytest.approx(expected, rel=1e-5)


def test_a_bad_margin_names_its_row(tmp_path):
    rows = _pairs(3, margin=1.0)
    rows[2]["margin"] = "high"
    spec = tiny_spec("reward", "preferences")
    spec["dataset"] = _write(tmp_path / "d.jsonl", rows)
    code, events = run_inprocess(spec, tmp_path / "out")
    assert code == 1 and "row 2, column 'margin'" in events[-1]["message"]


def test_over_long_pairs_are_dropped_not_truncated(tmp_path, tiny_tokenizer):
    rows = [{"chosen": "ab", "rejected": "ac"}, {"chosen": "ab", "rejected": "a" + "c" * 40}]
    pairs, dropped = tokenize_reward_pairs(rows, tiny_tokenizer, max_length=10)
    assert dropped == 1 and len(pairs) == 1
    assert tiny_tokenizer.decode(pairs[0].chosen_ids) == "ab<|im_end|>"


def test_lora_reward_model_trains_its_score_head_in_full(tmp_path):
    from safetensors.torch import load_file

    metrics, _ = _run(tmp_path, peft_config={"r": 4, "lora_alpha": 8}, learning_rate=1e-2, max_steps=3)
    assert metrics[3]["train/loss"] != metrics[1]["train/loss"]
    saved = load_file(str(tmp_path / "final" / "adapter_model.safetensors"))
    assert any("score" in k for k in saved) and any("lora_A" in k for k in saved)


@pytest.mark.slow
def test_reward_resume_reproduces_the_uninterrupted_run(tmp_path):
    spec = tiny_spec(
        "reward",
        "preferences",
        num_rows=16,
        max_steps=6,
        gradient_accumulation_steps=2,
        save_steps=3,
        learning_rate=1e-3,
        center_rewards_coefficient=0.01,
    )
    _resume_matches(tmp_path, spec)


@pytest.mark.slow
def test_reward_model_accuracy_rises_above_chance_on_builtin_preferences(tmp_path):
    spec = tiny_spec(
        "reward",
        "preferences",
        num_rows=256,
        max_steps=40,
        per_device_train_batch_size=16,
        learning_rate=1e-3,
        eval_steps=40,
    )
    spec["eval_dataset"] = {"builtin": "preferences", "num_rows": 64, "seed": 11}  # held out
    code, events = run_inprocess(spec, tmp_path)
    assert code == 0, events[-1]
    train = [e["metrics"] for e in events if e["type"] == "metrics" and "train/loss" in e["metrics"]]
    final_eval = [e["metrics"] for e in events if e["type"] == "metrics" and "eval/loss" in e["metrics"]][-1]
    first = statistics.mean(m["reward/accuracy"] for m in train[:3])
    last = statistics.mean(m["reward/accuracy"] for m in train[-10:])
    assert last > 0.65 and last > first + 0.15, (first, last)
    assert final_eval["eval/reward/accuracy"] > 0.6, final_eval
    assert final_eval["eval/loss"] < math.log(2) - 0.08, final_eval
