"""SFT options through the real loop on tiny:llama: loss types, data formats, LoRA, BEMA output."""

import json
import math

import pytest

from engine.spec.names import SFT_LOSS_TYPES
from tests.engine.conftest import metrics_by_step, run_inprocess, tiny_spec


def _run(tmp_path, dataset=None, peft_config=None, **config):
    spec = tiny_spec("sft", "chat", num_rows=8, **{"max_steps": 2, "learning_rate": 1e-3, **config})
    if dataset:
        spec["dataset"] = dataset
    if peft_config:
        spec["peft_config"] = peft_config
    code, events = run_inprocess(spec, tmp_path)
    assert code == 0, events[-1]
    return metrics_by_step(events)


@pytest.mark.parametrize("loss_type", SFT_LOSS_TYPES)
def test_every_loss_type_trains(tmp_path, loss_type):
    m = _run(tmp_path, loss_type=loss_type)[1]
    assert math.isfinite(m["train/loss"]) and m["train/grad_norm"] > 0
    if loss_type == "dft":  # DFT weights each token by its (detached) probability: smaller than the NLL
        assert 0 < m["train/loss"] < m["sft/nll"]
    else:
        assert m["train/loss"] == pytest.approx(m["sft/nll"], rel=1e-6)


def test_first_loss_is_the_mean_nll_of_the_target_tokens(tmp_path):
    # a random tiny model is close to uniform over its vocabulary: mean NLL ~ log(V)
    from engine.models import build_tiny_tokenizer

    m = _run(tmp_path, gradient_accumulation_steps=2)[1]
    assert abs(m["train/loss"] - math.log(len(build_tiny_tokenizer()))) < 0.1


@pytest.mark.parametrize(
    "rows",
    [
        [{"prompt": "Q: 2+2?", "completion": " 4"}] * 4,
        [{"text": "hello world"}] * 4,
        [
            {
                "prompt": [{"role": "user", "content": "hi"}],
                "completion": [{"role": "assistant", "content": "yo"}],
            }
        ]
        * 4,
    ],
    ids=["prompt_completion", "text", "conversational_prompt_completion"],
)
def test_file_datasets_in_each_format_train(tmp_path, rows):
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    _run(tmp_path / "out", dataset={"path": str(path)})


def test_lora_sft_saves_an_adapter(tmp_path):
    m = _run(
        tmp_path, peft_config={"r": 4, "lora_alpha": 8, "target_modules": "all-linear"}, learning_rate=1e-2
    )
    assert m[2]["train/grad_norm"] > 0
    assert (tmp_path / "final" / "adapter_model.safetensors").exists()


def test_bema_weights_are_saved_next_to_the_final_model(tmp_path):
    _run(tmp_path, max_steps=4, bema={"update_freq": 2})
    assert (tmp_path / "final" / "bema" / "model.safetensors").exists()


def test_eval_dataset_is_scored_every_eval_steps_and_at_the_end(tmp_path):
    spec = tiny_spec("sft", "chat", num_rows=8, max_steps=3, eval_steps=2, per_device_eval_batch_size=3)
    spec["eval_dataset"] = {"builtin": "chat", "num_rows": 5, "seed": 9}
    code, events = run_inprocess(spec, tmp_path)
    assert code == 0, events[-1]
    evals = [
        (e["step"], e["metrics"]) for e in events if e["type"] == "metrics" and "eval/loss" in e["metrics"]
    ]
    assert [s for s, _ in evals] == [2, 3]
    assert all(math.isfinite(m["eval/loss"]) and "train/loss" not in m for _, m in evals)
