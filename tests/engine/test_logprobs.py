"""`token_logprobs` against a naive reference: full logits, float32 log_softmax, gather."""

import pytest
import torch
import torch.nn.functional as F

from engine.logprobs import token_logprobs, token_stats


def _naive(model, ids, attn, k, temperature=1.0):
    pos = (attn.cumsum(-1) - 1).clamp(min=0)
    logits = (
        model(input_ids=ids, attention_mask=attn, position_ids=pos).logits[:, -k - 1 : -1].float()
        / temperature
    )
    logp = F.log_softmax(logits, -1)
    tok = logp.gather(-1, ids[:, -k:].unsqueeze(-1)).squeeze(-1)
    ent = -(logp.exp() * logp).sum(-1)
    lsp2 = torch.log((logp.exp() ** 2).sum(-1))
    return tok, ent, lsp2


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(4, 100, (3, 14), generator=g)
    attn = torch.ones_like(ids)
    attn[1, 10:] = 0
    return ids, attn


@pytest.mark.parametrize("chunk_size", [1, 5, 7, None])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_matches_naive_full_logits(tiny_model, batch, chunk_size, temperature):
    ids, attn = batch
    logps, ents = token_logprobs(
        tiny_model, ids, attn, 6, temperature=temperature, with_entropy=True, chunk_size=chunk_size
    )
    ref_lp, ref_ent, _ = _naive(tiny_model, ids, attn, 6, temperature)
    assert logps.shape == ents.shape == (3, 6) and logps.dtype == torch.float32
    torch.testing.assert_close(logps, ref_lp, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ents, ref_ent, atol=1e-5, rtol=1e-5)


def test_entropy_is_none_unless_asked(tiny_model, batch):
    assert token_logprobs(tiny_model, *batch, 3)[1] is None


def test_mask_skips_positions_and_zeroes_them(tiny_model, batch):
    ids, attn = batch
    mask = torch.ones(3, 6)
    mask[1, 2:] = 0
    mask[2, :3] = 0
    logps, _ = token_logprobs(tiny_model, ids, attn, 6, mask=mask, chunk_size=4)
    ref_lp, _, _ = _naive(tiny_model, ids, attn, 6)
    torch.testing.assert_close(logps, ref_lp * mask, atol=1e-5, rtol=1e-5)


def test_log_sum_p2_matches_naive(tiny_model, batch):
    out = token_stats(tiny_model, *batch, 4, with_log_sum_p2=True, chunk_size=3)
    torch.testing.assert_close(out["log_sum_p2"], _naive(tiny_model, *batch, 4)[2], atol=1e-5, rtol=1e-5)


def test_gradients_match_naive(batch):
    from engine.models import build_tiny_model

    a, b = build_tiny_model(), build_tiny_model()
    ids, attn = batch
    w = torch.randn(3, 5, generator=torch.Generator().manual_seed(1))
    lp, ent = token_logprobs(a, ids, attn, 5, with_entropy=True, chunk_size=4)
    ((lp * w).sum() + ent.sum()).backward()
    ref_lp, ref_ent, _ = _naive(b, ids, attn, 5)
    ((ref_lp * w).sum() + ref_ent.sum()).backward()
    for (name, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters(), strict=True):
        torch.testing.assert_close(pa.grad, pb.grad, atol=1e-5, rtol=1e-4, msg=name)


def test_left_padding_scores_like_no_padding(tiny_model):
    ids = torch.tensor([[10, 11, 12, 13, 14]])
    padded = torch.tensor([[0, 0, 10, 11, 12, 13, 14]])
    attn = torch.tensor([[0, 0, 1, 1, 1, 1, 1]])
    plain, _ = token_logprobs(tiny_model, ids, torch.ones_like(ids), 3)
    left, _ = token_logprobs(tiny_model, padded, attn, 3)
    torch.testing.assert_close(left, plain, atol=1e-5, rtol=1e-5)


def test_bad_logits_to_keep_is_explained(tiny_model, batch):
    with pytest.raises(ValueError, match=r"logits_to_keep must be in \[1, T-1\]"):
        token_logprobs(tiny_model, *batch, 14)


def test_fully_masked_batch_still_backpropagates(tiny_model, batch):
    logps, _ = token_logprobs(tiny_model, *batch, 4, mask=torch.zeros(3, 4))
    assert torch.count_nonzero(logps) == 0
    logps.sum().backward()


def _head_calls(model):
    calls = []
    model.get_output_embeddings().register_forward_hook(lambda *_: calls.append(1))
    return calls


@pytest.mark.parametrize("chunk_size, forwards", [(None, 1), (4, 2 * 4)])
def test_lm_head_recomputed_only_when_chunked(batch, chunk_size, forwards):
    """One chunk keeps its logits for the backward (one LM head pass); several chunks are recomputed
    (two passes each: 15 scored positions in chunks of 4 are 4 chunks). Gradients match the naive ones."""
    from engine.models import build_tiny_model

    a, b = build_tiny_model(), build_tiny_model()
    calls = _head_calls(a)
    ids, attn = batch
    w = torch.randn(3, 5, generator=torch.Generator().manual_seed(2))
    lp, ent = token_logprobs(a, ids, attn, 5, with_entropy=True, chunk_size=chunk_size)
    ((lp * w).sum() + ent.sum()).backward()
    assert len(calls) == forwards
    ref_lp, ref_ent, _ = _naive(b, ids, attn, 5)
    ((ref_lp * w).sum() + ref_ent.sum()).backward()
    torch.testing.assert_close(lp, ref_lp, atol=1e-5, rtol=1e-5)
    for (name, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters(), strict=True):
        torch.testing.assert_close(pa.grad, pb.grad, atol=1e-5, rtol=1e-4, msg=name)
