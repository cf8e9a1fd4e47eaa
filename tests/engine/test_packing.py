"""Packed / padding-free batches: the same per-sequence log-probs (and gradients) as padded ones, no attention
across sequences, best-fit packs, and SFT / DPO runs whose first loss equals the padded run's."""

from __future__ import annotations

import pytest
import torch

from engine.algorithms import get_algorithm
from engine.algorithms.common import TrainContext
from engine.algorithms.reference import summed_logps
from engine.data.collate import collate_preferences, collate_sft, pack_bins
from engine.data.tokenize import PreferenceExample, SFTExample
from engine.data.unpaired import UnpairedExample, assign_kl_completions, collate_unpaired
from engine.logprobs import token_logprobs
from engine.models import build_tiny_model
from engine.spec import parse_job_spec
from tests.engine.conftest import metrics_by_step, run_inprocess, tiny_spec


def sft_examples() -> list[SFTExample]:
    g = torch.Generator().manual_seed(0)
    out = []
    for n, prompt in ((9, 4), (3, 1), (14, 6), (6, 0)):  # a text row (prompt 0) trains on its first tokens
        ids = torch.randint(5, 90, (n,), generator=g).tolist()
        out.append(SFTExample(input_ids=ids, loss_mask=[0] * prompt + [1] * (n - prompt)))
    return out


def _logps(model, batch, packed: bool):
    return token_logprobs(
        model,
        batch.input_ids,
        batch.attention_mask,
        batch.logits_to_keep,
        with_entropy=True,
        mask=batch.loss_mask,
        index=batch.target_index,
        packed=batch.packed if packed else None,
    )


def test_packed_batch_gives_the_padded_log_probs_and_gradients():
    model = build_tiny_model()
    padded = collate_sft(sft_examples(), pad_id=0)
    packed = collate_sft(sft_examples(), pad_id=0, pack=True)
    assert packed.packed.input_ids.shape == (1, sum(len(e.input_ids) for e in sft_examples()))
    grads = []
    results = []
    for batch, use in ((padded, False), (packed, True)):
        model.zero_grad()
        logps, ents = _logps(model, batch, use)
        logps.sum().backward()
        results.append((logps.detach(), ents.detach()))
        grads.append(torch.cat([p.grad.reshape(-1) for p in model.parameters() if p.grad is not None]))
    (lp_pad, ent_pad), (lp_pack, ent_pack) = results
    m = padded.loss_mask.bool()
    assert m.sum() == padded.num_tokens == packed.num_tokens
    assert torch.allclose(lp_pack, lp_pad, atol=1e-5) and torch.allclose(ent_pack, ent_pad, atol=1e-5)
    assert (lp_pack[~m] == 0).all()
    assert torch.allclose(grads[0], grads[1], atol=1e-5)


def test_no_attention_crosses_a_packed_boundary():
    """Changing the first sequence does not move the second one's log-probs when packed."""
    model = build_tiny_model()
    a, b = sft_examples()[:2]
    other = SFTExample(input_ids=[t + 1 for t in a.input_ids], loss_mask=a.loss_mask)
    with torch.no_grad():
        first, _ = _logps(model, collate_sft([a, b], 0, pack=True), True)
        second, _ = _logps(model, collate_sft([other, b], 0, pack=True), True)
    assert torch.equal(first[1], second[1]) and not torch.equal(first[0], second[0])


def test_packed_preference_batch_matches_the_padded_one():
    model = build_tiny_model()
    pairs = [
        PreferenceExample(prompt_ids=[5, 6, 7], chosen_ids=[8, 9], rejected_ids=[10, 11, 12, 13]),
        PreferenceExample(prompt_ids=[20], chosen_ids=[21, 22, 23], rejected_ids=[24]),
    ]
    with torch.no_grad():
        lp_pad, _ = _logps(model, collate_preferences(pairs, 0).tokens, False)
        lp_pack, _ = _logps(model, collate_preferences(pairs, 0, pack=True).tokens, True)
    assert torch.allclose(lp_pad, lp_pack, atol=1e-5)


def test_pack_bins_best_fit_decreasing():
    lengths = [5, 3, 7, 2, 9, 1, 4]
    bins = pack_bins(lengths, 10)
    assert sorted(i for b in bins for i in b) == list(range(7))
    assert all(sum(lengths[i] for i in b) <= 10 for b in bins)
    assert len(bins) == 4  # 31 tokens need at least 4 bins of 10
    assert pack_bins([12, 3], 10) == [[0], [1]]  # too long: a bin of its own


@pytest.mark.parametrize("option", ["padding_free", "packing"])
def test_sft_padding_free_and_packing_train(tmp_path, option):
    base = {"max_steps": 1, "per_device_train_batch_size": 2, "learning_rate": 1e-3, "max_length": 512}
    code, padded = run_inprocess(tiny_spec("sft", "chat", num_rows=8, **base), tmp_path / "pad")
    assert code == 0
    code, events = run_inprocess(
        tiny_spec("sft", "chat", num_rows=8, **base, **{option: True}), tmp_path / "p"
    )
    assert code == 0, events[-1]
    assert not [e for e in events if e["type"] == "log" and e.get("level") == "warning"]
    first, reference = metrics_by_step(events)[1], metrics_by_step(padded)[1]
    if option == "padding_free":  # the same batches without padding: the same loss
        assert first["train/loss"] == pytest.approx(reference["train/loss"], rel=1e-5)
    else:  # packs of <= 512 tokens: more examples per step, a loss of the same size
        assert first["train/num_tokens"] > reference["train/num_tokens"]
        assert first["train/loss"] == pytest.approx(reference["train/loss"], rel=0.1)
        assert any("packing:" in e.get("message", "") for e in events)


def test_dpo_padding_free_first_loss_equals_the_padded_one(tmp_path):
    base = {"max_steps": 1, "per_device_train_batch_size": 4, "learning_rate": 1e-3}
    code, padded = run_inprocess(tiny_spec("dpo", "preferences", num_rows=8, **base), tmp_path / "pad")
    assert code == 0
    spec = tiny_spec("dpo", "preferences", num_rows=8, padding_free=True, **base)
    code, events = run_inprocess(spec, tmp_path / "free")
    assert code == 0, events[-1]
    a, b = metrics_by_step(events)[1], metrics_by_step(padded)[1]
    assert a["train/loss"] == pytest.approx(b["train/loss"], rel=1e-5)
    assert a["logps/chosen"] == pytest.approx(b["logps/chosen"], rel=1e-5)


def test_packed_unpaired_batch_gives_each_row_and_kl_row_its_padded_log_prob():
    model = build_tiny_model()
    rows = [
        UnpairedExample(prompt_ids=[5, 6, 7], completion_ids=[8, 9], label=True),
        UnpairedExample(prompt_ids=[20], completion_ids=[21, 22, 23, 24, 25], label=False),
        UnpairedExample(prompt_ids=[30, 31, 32, 33], completion_ids=[34], label=True),
    ]
    assign_kl_completions(rows)
    padded = collate_unpaired(rows, 0, with_kl=True)
    packed = collate_unpaired(rows, 0, with_kl=True, pack=True)
    assert packed.tokens.packed is not None and packed.kl_tokens.packed is not None
    assert packed.tokens.packed.input_ids.shape == (1, 5 + 6 + 5)
    with torch.no_grad():
        for which in ("tokens", "kl_tokens"):
            pad, pack = getattr(padded, which), getattr(packed, which)
            torch.testing.assert_close(summed_logps(model, pack), summed_logps(model, pad), rtol=0, atol=1e-5)
            # and each row's sum is that of the row scored alone, without any padding
            for i, ex in enumerate(rows):
                alone = collate_unpaired([ex], 0, with_kl=True)
                torch.testing.assert_close(
                    summed_logps(model, getattr(packed, which))[i],
                    summed_logps(model, getattr(alone, which))[0],
                    rtol=0,
                    atol=1e-5,
                )


@pytest.mark.parametrize(
    ("algorithm", "builtin"), [("kto", "unpaired"), ("cpo", "preferences"), ("bco", "unpaired")]
)
def test_padding_free_trains_like_the_padded_batches(tmp_path, algorithm, builtin):
    base = {"max_steps": 2, "per_device_train_batch_size": 4, "learning_rate": 1e-2}
    code, padded = run_inprocess(tiny_spec(algorithm, builtin, num_rows=8, **base), tmp_path / "pad")
    assert code == 0
    spec = tiny_spec(algorithm, builtin, num_rows=8, padding_free=True, **base)
    code, events = run_inprocess(spec, tmp_path / "free")
    assert code == 0, events[-1]
    assert not [e for e in events if e["type"] == "log" and e.get("level") == "warning"]
    free, pad = metrics_by_step(events), metrics_by_step(padded)
    parsed = parse_job_spec(spec)
    algo = getattr(get_algorithm(algorithm), algorithm.upper())(
        parsed, TrainContext.for_spec(parsed, tmp_path)
    )
    algo.setup()
    batch = algo.collate([0, 1])
    assert getattr(batch, "batch", batch).tokens.packed is not None  # the micro-batches really run packed
    for step in (1, 2):
        for key in ("train/loss", "logps/chosen", "logps/rejected"):
            assert free[step][key] == pytest.approx(pad[step][key], rel=1e-5, abs=1e-6), (step, key)
