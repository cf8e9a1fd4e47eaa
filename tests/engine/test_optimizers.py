"""`optim` names: each known name builds its optimizer and takes a step; AdamW is fused on the CPU too;
an unknown name is refused with the known ones listed."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError

from engine.algorithms.common import allocate_adamw_state, build_optimizer
from engine.models import build_tiny_model
from engine.spec import parse_job_spec

KNOWN = ["adamw_torch_fused", "adamw_torch", "adafactor", "sgd", "adagrad", "rmsprop"]


def _spec(**config):
    return parse_job_spec(
        {"algorithm": "sft", "model": "tiny:llama", "dataset": {"builtin": "chat"}, "config": config}
    )


@pytest.mark.parametrize("name", KNOWN)
def test_every_known_optim_steps(name):
    model = build_tiny_model()
    opt = build_optimizer(model, _spec(optim=name, learning_rate=1e-2, weight_decay=0.1).config)
    before = model.lm_head.weight.detach().clone()
    model(input_ids=torch.tensor([[5, 6, 7]])).logits.float().pow(2).mean().backward()
    opt.step()
    assert not torch.equal(before, model.lm_head.weight)
    if name.startswith("adamw"):
        assert isinstance(opt, torch.optim.AdamW)
        assert bool(opt.defaults["fused"]) == (name == "adamw_torch_fused")  # fused on this CPU too
        assert [g["weight_decay"] for g in opt.param_groups] == [0.1, 0.0]


def test_fused_adamw_is_the_default_and_matches_plain_adamw():
    assert _spec().config.optim == "adamw_torch_fused"
    torch.manual_seed(0)
    weights = []
    for name in ("adamw_torch_fused", "adamw_torch"):
        model = build_tiny_model()
        opt = build_optimizer(model, _spec(optim=name, learning_rate=1e-2).config)
        for _ in range(3):
            model(input_ids=torch.tensor([[5, 6, 7, 8]])).logits.float().pow(2).mean().backward()
            opt.step()
            opt.zero_grad()
        weights.append(torch.cat([p.detach().reshape(-1) for p in model.parameters()]))
    assert torch.allclose(weights[0], weights[1], atol=1e-5)  # the same update up to rounding (moves ~3e-2)


def test_unknown_optim_is_refused_listing_the_known_names():
    with pytest.raises(ValidationError) as info:
        _spec(optim="adamw_bnb_8bit")
    err = info.value.errors()[0]
    assert err["loc"][-1] == "optim"
    for name in KNOWN:
        assert name in err["msg"]


@pytest.mark.parametrize("name", ["adamw_torch_fused", "adamw_torch"])
def test_adamw_state_made_up_front_trains_exactly_like_the_lazy_one(name):
    """Moments created before the first step (so they are not placed among freed activations) leave
    every update and every state entry bit for bit as AdamW's own first step makes them."""
    runs = []
    for up_front in (True, False):
        model = build_tiny_model()
        opt = build_optimizer(model, _spec(optim=name, learning_rate=1e-2, weight_decay=0.1).config)
        if up_front:
            allocate_adamw_state(opt)
            assert all(len(opt.state[p]) == 3 for p in model.parameters())
        for step in range(3):
            ids = torch.tensor([[5, 6, 7, 8 + step]])
            model(input_ids=ids).logits.float().pow(2).mean().backward()
            opt.step()
            opt.zero_grad()
        runs.append((model, opt))
    (a, opt_a), (b, opt_b) = runs
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb)
        sa, sb = opt_a.state[pa], opt_b.state[pb]
        assert sa.keys() == sb.keys()
        for key in sa:
            assert sa[key].dtype == sb[key].dtype and sa[key].device == sb[key].device, key
            assert torch.equal(sa[key], sb[key]), key


def test_adamw_state_up_front_leaves_other_optimizers_alone():
    model = build_tiny_model()
    opt = build_optimizer(model, _spec(optim="sgd").config)
    allocate_adamw_state(opt)
    assert len(opt.state) == 0
