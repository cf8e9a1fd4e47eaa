"""An offline algorithm's micro-step called alone, outside the training loop, checked against its formula."""

from __future__ import annotations

import math

import pytest
import torch

from engine.algorithms.common import StepMetrics, TrainContext
from engine.algorithms.cpo import CPO
from engine.algorithms.kto import KTO
from engine.algorithms.sft import SFT
from engine.spec import parse_job_spec
from tests.engine.conftest import tiny_spec


def _setup(cls, tmp_path, algorithm, builtin, **config):
    spec = parse_job_spec(tiny_spec(algorithm, builtin, num_rows=8, **config))
    algo = cls(spec, TrainContext.for_spec(spec, tmp_path))
    algo.setup()
    return algo


def test_sft_micro_step_alone_is_the_token_mean_nll_of_the_step(tmp_path):
    algo = _setup(SFT, tmp_path, "sft", "chat")
    first, second = algo.collate([0, 1]), algo.collate([2, 3])
    num_tokens = algo.counts([first, second])
    metrics = StepMetrics()
    loss = algo.micro_step(first, num_tokens, metrics)

    # independently: full logits, log-softmax, the targets' log-probs where the loss mask is 1
    with torch.no_grad():
        logits = algo.model(input_ids=first.input_ids, attention_mask=first.attention_mask).logits.float()
    K = first.logits_to_keep
    logps = torch.log_softmax(logits[:, -K - 1 : -1], dim=-1)
    targets = first.input_ids[:, -K:]
    token_logps = logps.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    expected = -(token_logps * first.loss_mask).sum() / num_tokens
    assert num_tokens == first.num_tokens + second.num_tokens
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    loss.backward()  # a micro-step's loss is differentiable on its own
    assert any(p.grad is not None for p in algo.model.parameters())
    assert metrics.compute()["train/num_tokens"] == first.num_tokens


def test_kto_micro_step_alone_at_the_reference_is_half_the_weighted_rows(tmp_path):
    # before any update the policy is its reference: every reward and z0 are 0, so each desirable row
    # costs desirable_weight * (1 - s(0)) and each undesirable row undesirable_weight * (1 - s(0))
    algo = _setup(KTO, tmp_path, "kto", "unpaired", desirable_weight=1.5, undesirable_weight=0.5)
    item = algo.collate([0, 1, 2, 3])
    other = algo.collate([4, 5])
    counts = algo.counts([item, other])
    loss = algo.micro_step(item, counts, StepMetrics())
    n_d = int(item.batch.labels.sum())
    n_u = item.batch.num_rows - n_d
    expected = (1.5 * 0.5 * n_d + 0.5 * 0.5 * n_u) / 6
    assert counts.num_rows == 6
    assert loss.item() == pytest.approx(expected, abs=1e-6)


def test_cpo_micro_step_alone_is_the_sigmoid_loss_plus_the_nll(tmp_path):
    algo = _setup(CPO, tmp_path, "cpo", "preferences", beta=0.1, cpo_alpha=1.0)
    batch = algo.collate([0, 1])
    num_pairs, num_chosen = algo.counts([batch])
    loss = algo.micro_step(batch, (num_pairs, num_chosen), StepMetrics())

    # independently: per-row completion log-prob sums from full logits
    tokens = batch.tokens
    with torch.no_grad():
        logits = algo.model(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask).logits.float()
    K = tokens.logits_to_keep
    logps = torch.log_softmax(logits[:, -K - 1 : -1], dim=-1)
    seq = (logps.gather(-1, tokens.input_ids[:, -K:].unsqueeze(-1)).squeeze(-1) * tokens.loss_mask).sum(-1)
    chosen, rejected = seq[:2].tolist(), seq[2:].tolist()
    pair = sum(-math.log(1 / (1 + math.exp(-0.1 * (c - r)))) for c, r in zip(chosen, rejected, strict=True))
    expected = pair / num_pairs + 1.0 * (-sum(chosen)) / num_chosen
    assert loss.item() == pytest.approx(expected, rel=1e-5)
