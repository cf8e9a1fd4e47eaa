"""KTO and BCO against their formulas, in plain Python."""

import math

import pytest
import torch

from engine.losses import (
    BCOLossConfig,
    BCOState,
    KTOLossConfig,
    UnpairedBatch,
    UnpairedCounts,
    bco_loss,
    kto_loss,
    kto_reference_point,
    udm_density_weights,
)

D = torch.float64
LP = [-4.0, -6.0, -3.0, -7.5]
REF = [-4.5, -5.0, -3.5, -7.0]
LABELS = [True, False, True, False]
BETA = 0.1


def t(x):
    return torch.tensor(x, dtype=D)


def batch(**kw):
    return UnpairedBatch(
        logps=t(LP).requires_grad_(True), ref_logps=t(REF), labels=torch.tensor(LABELS), **kw
    )


def sig(x):
    return 1 / (1 + math.exp(-x))


def ls(x):
    return -math.log1p(math.exp(-x))


def delta(i):
    return LP[i] - REF[i]


def test_kto_with_reference_point_and_weights():
    z0 = 0.3
    cfg = KTOLossConfig(beta=BETA, desirable_weight=1.5, undesirable_weight=0.5)
    out = kto_loss(batch(), cfg, UnpairedCounts.from_labels(torch.tensor(LABELS)), kl_reference=z0)
    per_row = [
        1.5 * (1 - sig(BETA * (delta(i) - z0))) if LABELS[i] else 0.5 * (1 - sig(BETA * (z0 - delta(i))))
        for i in range(4)
    ]
    assert out.loss.item() == pytest.approx(sum(per_row) / 4, rel=1e-12)
    assert out.metrics["rewards/chosen"].item() == pytest.approx((BETA * delta(0) + BETA * delta(2)) / 2)
    assert out.metrics["rewards/rejected"].item() == pytest.approx((BETA * delta(1) + BETA * delta(3)) / 2)


def test_kto_needs_the_reference_point():
    with pytest.raises(ValueError, match="kl_reference"):
        kto_loss(batch(), KTOLossConfig(), UnpairedCounts(4, 2, 2))


def test_kto_reference_point_is_clamped_mean_and_detached():
    kl_lp = t([-3.0, -4.0]).requires_grad_(True)
    z0 = kto_reference_point(kl_lp, t([-3.5, -3.9]))
    assert z0.item() == pytest.approx((0.5 - 0.1) / 2) and not z0.requires_grad
    assert kto_reference_point(t([-5.0]), t([-3.0])).item() == 0.0


def test_apo_zero_unpaired():
    cfg = KTOLossConfig(beta=BETA, loss_type="apo_zero_unpaired")
    out = kto_loss(batch(), cfg, UnpairedCounts(8, 4, 4))
    per_row = [(1 - sig(BETA * delta(i))) if LABELS[i] else sig(BETA * delta(i)) for i in range(4)]
    assert out.loss.item() == pytest.approx(sum(per_row) / 8, rel=1e-12)


def test_bco_running_mean_and_density_weights():
    state = BCOState()
    weights = t([1.0, 2.0, 1.0, 0.5])
    out = bco_loss(batch(weights=weights), BCOLossConfig(beta=BETA), UnpairedCounts(4, 2, 2), state)
    r = [BETA * delta(i) for i in range(4)]
    d = sum(r) / 4
    per_row = [-ls(r[i] - d) if LABELS[i] else weights[i].item() * -ls(-(r[i] - d)) for i in range(4)]
    assert out.loss.item() == pytest.approx(sum(per_row) / 4, rel=1e-9)
    # a second batch of 2 rewards: mean <- (4 d + 2 m) / 6
    b2 = UnpairedBatch(logps=t([-1.0, -2.0]), ref_logps=t([-1.0, -1.0]), labels=torch.tensor([True, False]))
    bco_loss(b2, BCOLossConfig(beta=BETA), UnpairedCounts(2, 1, 1), state)
    m = (0.0 + BETA * -1.0) / 2
    assert state.running.mean.item() == pytest.approx((4 * d + 2 * m) / 6, rel=1e-9)
    # evaluation does not update the state
    before = state.running.mean.clone()
    bco_loss(b2, BCOLossConfig(beta=BETA), UnpairedCounts(2, 1, 1), state, update_state=False)
    assert torch.equal(state.running.mean, before)


def test_bco_state_round_trip():
    s = BCOState()
    s.running.update(t([1.0, 3.0]))
    s2 = BCOState()
    s2.load_state_dict(s.state_dict())
    assert s2.running.mean.item() == pytest.approx(2.0)


def test_udm_density_weights():
    w = udm_density_weights(t([0.5, 0.01, 0.99]), 0.5, 10.0)
    assert w.tolist() == pytest.approx([1.0, 0.5, 10.0], rel=1e-6)
