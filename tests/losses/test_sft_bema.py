"""SFT token losses and the BEMA averager, against their formulas in plain Python."""

import math

import pytest
import torch

from engine.losses import BEMA, sft_loss

D = torch.float64
LOGPS = [[-0.5, -1.5, -3.0], [-0.1, -2.0, -9.0]]
MASK = [[1, 1, 1], [1, 1, 0]]


def t(x):
    return torch.tensor(x, dtype=D)


@pytest.mark.parametrize("loss_type", ["nll", "chunked_nll"])
def test_nll_over_global_token_count(loss_type):
    out = sft_loss(t(LOGPS), t(MASK), loss_type, num_tokens=10)
    assert out.loss.item() == pytest.approx((0.5 + 1.5 + 3.0 + 0.1 + 2.0) / 10, rel=1e-12)


def test_chunked_nll_upcasts_low_precision():
    out = sft_loss(t(LOGPS).to(torch.bfloat16), t(MASK), "chunked_nll", num_tokens=5)
    assert out.loss.dtype == torch.float32


def test_dft_weights_by_detached_probability():
    lp = t(LOGPS).requires_grad_(True)
    out = sft_loss(lp, t(MASK), "dft", num_tokens=5)
    vals = [(LOGPS[i][j], MASK[i][j]) for i in range(2) for j in range(3)]
    assert out.loss.item() == pytest.approx(-sum(math.exp(v) * v * m for v, m in vals) / 5, rel=1e-12)
    out.loss.backward()
    expected = [[-math.exp(LOGPS[i][j]) * MASK[i][j] / 5 for j in range(3)] for i in range(2)]
    assert torch.allclose(lp.grad, t(expected))


def test_dft_uniform_two_token_vocab_is_half_cross_entropy():
    lp = t([[math.log(0.5)] * 4])
    mask = t([[1.0] * 4])
    dft = sft_loss(lp, mask, "dft", 4).loss.item()
    assert dft == pytest.approx(sft_loss(lp, mask, "nll", 4).loss.item() / 2)


def test_no_valid_token_gives_connected_zero():
    lp = t(LOGPS).requires_grad_(True)
    out = sft_loss(lp, torch.zeros(2, 3, dtype=D), "nll", num_tokens=0)
    assert out.loss.item() == 0.0
    out.loss.backward()
    assert torch.count_nonzero(lp.grad) == 0


def test_unknown_sft_loss_lists_known_names():
    with pytest.raises(KeyError, match="dft"):
        sft_loss(t(LOGPS), t(MASK), "cross_entropy", 5)


def run_bema(steps, **kw):
    p = {"w": torch.zeros(2, dtype=D)}
    bema = BEMA(p, **kw)
    updated = []
    for step in range(1, steps + 1):
        p["w"] = p["w"] + 1.0  # theta_t = t
        if bema.step(step, p):
            updated.append(step)
    return bema, updated


@pytest.mark.parametrize(
    "kw,expected",
    [
        ({"update_freq": 2}, [2, 4, 6, 8]),
        ({"update_freq": 3}, [3, 6, 9]),
        ({"update_freq": 2, "update_after": 3}, [5, 7, 9]),
    ],
)
def test_bema_update_schedule(kw, expected):
    assert run_bema(9, **kw)[1] == expected


def test_bema_values_follow_the_formula():
    lag, kappa, eta = 10, 0.5, 0.2
    bema, _ = run_bema(4, update_freq=2, lag=lag, ema_power=kappa, bias_power=eta)
    ema, theta0 = 0.0, 0.0
    for step in (2, 4):
        beta = (lag + step) ** -kappa
        alpha = (lag + step) ** -eta
        ema = (1 - beta) * ema + beta * step
        out = ema + alpha * (step - theta0)
    assert bema.weights["w"].tolist() == pytest.approx([out, out])


def test_bema_power_zero_edge_cases():
    bema, _ = run_bema(4, update_freq=1, ema_power=0.0, bias_power=0.0)
    # beta = 1 -> EMA = theta_t; alpha = 1 -> BEMA = 2 theta_t - theta_0
    assert bema.weights["w"].tolist() == pytest.approx([8.0, 8.0])


def test_bema_update_after_resets_the_anchor():
    bema, _ = run_bema(5, update_freq=2, update_after=3, ema_power=0.0, bias_power=0.0)
    # reset at t = 3 (theta0 = 3), update at t = 5: EMA = 5, BEMA = 5 + (5 - 3)
    assert bema.weights["w"].tolist() == pytest.approx([7.0, 7.0])


def test_bema_min_ema_multiplier_and_list_params():
    params = [torch.zeros(1, dtype=D)]
    bema = BEMA(params, update_freq=1, ema_power=5.0, min_ema_multiplier=0.25, bias_power=0.0, lag=10)
    assert bema.coefficients(1)[0] == 0.25
    bema.step(1, [torch.ones(1, dtype=D)])
    assert bema.weights["0"].item() == pytest.approx(0.25 + 1.0)
    state = bema.state_dict()
    other = BEMA(params)
    other.load_state_dict(state)
    assert other.weights["0"].item() == pytest.approx(1.25)
