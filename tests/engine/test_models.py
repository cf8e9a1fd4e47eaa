import pytest
import torch

from engine.models import (
    build_tiny_model,
    build_tiny_tokenizer,
    load_model,
    load_policy,
    load_reference,
    load_tokenizer,
)
from engine.spec import parse_job_spec


def test_tiny_tokenizer_is_character_level_with_chatml(tiny_tokenizer):
    tok = tiny_tokenizer
    text = "Reverse the word: cat\n12+3=15!"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert len(ids) == len(text)
    assert tok.decode(ids) == text
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<pad>"
    assert tok.pad_token_id != tok.eos_token_id
    rendered = tok.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
    )
    assert rendered == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    assert tok.convert_ids_to_tokens(tok(rendered, add_special_tokens=False)["input_ids"][:1]) == [
        "<|im_start|>"
    ]


def test_tiny_model_loads_offline_and_is_deterministic():
    a, b = build_tiny_model(), load_model("tiny:llama")
    cfg = a.config
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads) == (64, 2, 4)
    assert cfg.vocab_size == len(build_tiny_tokenizer())
    for (na, pa), (nb, pb) in zip(a.named_parameters(), b.named_parameters(), strict=True):
        assert na == nb and torch.equal(pa, pb)
    # building the model leaves the global RNG alone
    torch.manual_seed(0)
    x = torch.rand(1)
    torch.manual_seed(0)
    build_tiny_model()
    assert torch.equal(torch.rand(1), x)


def test_unknown_references_are_clear_errors():
    with pytest.raises(ValueError, match="unknown tiny model 'tiny:gpt9'"):
        load_tokenizer("tiny:gpt9")
    with pytest.raises(ValueError, match="unknown bundled model"):
        load_tokenizer("bundled:nope")


def _spec(**kw):
    return parse_job_spec(
        {"algorithm": "dpo", "model": "tiny:llama", "dataset": {"builtin": "preferences"}, **kw}
    )


def test_full_reference_is_a_frozen_copy_of_the_initial_policy():
    policy = load_policy(_spec())
    ref = load_reference(_spec(), policy, dtype=torch.bfloat16)
    assert all(p.requires_grad for p in policy.parameters())
    assert all(p.dtype == torch.float32 for p in policy.parameters())  # float32 master weights
    assert not any(p.requires_grad for p in ref.model.parameters())
    assert all(p.dtype == torch.bfloat16 for p in ref.model.parameters())
    with torch.no_grad():
        next(policy.parameters()).add_(1.0)
    assert not torch.equal(next(policy.parameters()).bfloat16(), next(ref.model.parameters()))


def test_lora_reference_is_the_policy_with_the_adapter_disabled():
    spec = _spec(peft_config={"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"]})
    policy = load_policy(spec)
    trainable = [n for n, p in policy.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    ref = load_reference(spec, policy)
    assert ref.model is policy and ref.adapter_disabled
    # make the adapter matter, then compare against the plain base model
    with torch.no_grad():
        for n, p in policy.named_parameters():
            if "lora_B" in n:
                p.fill_(0.5)
    ids = torch.tensor([[5, 6, 7, 8]])
    base = build_tiny_model()
    with torch.no_grad():
        expected = base(ids).logits
        adapted = policy(input_ids=ids).logits
    with ref.use() as m:
        disabled = m(input_ids=ids).logits
    assert policy.training  # mode restored after the context
    assert torch.allclose(disabled, expected, atol=1e-5)
    assert not torch.allclose(adapted, expected, atol=1e-3)


def _lora_targets(model) -> set[str]:
    return {n.split(".lora_A")[0].rsplit(".", 1)[-1] for n, _ in model.named_parameters() if ".lora_A" in n}


def test_lora_without_target_modules_keeps_peft_default():
    # peft's default for Llama, the LoRA paper's W_q and W_v; all-linear only when asked for
    assert _lora_targets(load_policy(_spec(peft_config={}))) == {"q_proj", "v_proj"}
    explicit = load_policy(_spec(peft_config={"target_modules": "all-linear"}))
    assert _lora_targets(explicit) == {
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    }


def test_reward_model_lora_keeps_peft_default():
    from engine.algorithms.reward import load_reward_model

    spec = parse_job_spec(
        {
            "algorithm": "reward",
            "model": "tiny:llama",
            "dataset": {"builtin": "preferences"},
            "peft_config": {},
        }
    )
    model = load_reward_model(spec, build_tiny_tokenizer(), "cpu", torch.float32)
    assert _lora_targets(model) == {"q_proj", "v_proj"}
    assert any(
        "score" in n and p.requires_grad for n, p in model.named_parameters()
    )  # the head trains in full
