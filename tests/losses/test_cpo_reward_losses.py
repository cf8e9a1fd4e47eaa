"""CPO / SimPO / AlphaPO and Bradley-Terry reward modelling, in plain Python."""

import math

import pydantic
import pytest
import torch

from engine.losses import CPOLossConfig, PreferenceBatch, alphapo_reward, cpo_loss, reward_loss

D = torch.float64
PC, PR = [-6.0, -3.0], [-8.0, -2.0]
NC, NR = [3, 2], [4, 1]
NLL = [6.0, 3.0]
BETA = 0.5


def t(x):
    return torch.tensor(x, dtype=D)


def batch():
    return PreferenceBatch(
        chosen_logps=t(PC),
        rejected_logps=t(PR),
        chosen_lengths=torch.tensor(NC),
        rejected_lengths=torch.tensor(NR),
        chosen_nll=t(NLL),
    )


def ls(x):
    return -math.log1p(math.exp(-x))


def mean(xs):
    return sum(xs) / len(xs)


def test_cpo_sigmoid_with_smoothing_plus_nll():
    cfg = CPOLossConfig(beta=BETA, loss_type="sigmoid", label_smoothing=0.1, cpo_alpha=1.0)
    out = cpo_loss(batch(), cfg, num_pairs=2, num_chosen_tokens=5)
    u = [PC[i] - PR[i] for i in range(2)]
    pair = mean([-(0.9) * ls(BETA * x) - 0.1 * ls(-BETA * x) for x in u])
    assert out.loss.item() == pytest.approx(pair + sum(NLL) / 5, rel=1e-12)
    assert out.metrics["cpo/nll_loss"].item() == pytest.approx(9 / 5)


def test_cpo_hinge_and_ipo():
    u = [PC[i] - PR[i] for i in range(2)]
    hinge = cpo_loss(batch(), CPOLossConfig(beta=BETA, loss_type="hinge", cpo_alpha=0.0), 2, 5)
    assert hinge.loss.item() == pytest.approx(mean([max(0, 1 - BETA * x) for x in u]))
    um = [PC[i] / NC[i] - PR[i] / NR[i] for i in range(2)]
    ipo = cpo_loss(batch(), CPOLossConfig(beta=BETA, loss_type="ipo", cpo_alpha=0.0), 2, 5)
    assert ipo.loss.item() == pytest.approx(mean([(x - 1 / (2 * BETA)) ** 2 for x in um]))


def test_simpo_margin_on_length_normalised_scores():
    gamma = 0.3
    cfg = CPOLossConfig(beta=BETA, loss_type="simpo", simpo_gamma=gamma, cpo_alpha=0.0)
    um = [PC[i] / NC[i] - PR[i] / NR[i] for i in range(2)]
    out = cpo_loss(batch(), cfg, 2, 5)
    assert out.loss.item() == pytest.approx(mean([-ls(BETA * x - gamma) for x in um]), rel=1e-12)


def test_alphapo_reward_shape():
    a, gamma = 0.4, 0.1
    cfg = CPOLossConfig(beta=BETA, loss_type="alphapo", simpo_gamma=gamma, alpha=a, cpo_alpha=0.0)
    out = cpo_loss(batch(), cfg, 2, 5)

    def shape(s):
        return (1 - math.exp(s) ** -a) / a

    u = [shape(PC[i] / NC[i]) - shape(PR[i] / NR[i]) for i in range(2)]
    assert out.loss.item() == pytest.approx(mean([-ls(BETA * x - gamma) for x in u]), rel=1e-12)
    assert alphapo_reward(t([-0.5]), 0.0).item() == -0.5
    assert out.metrics["rewards/chosen"].item() == pytest.approx(
        sum(BETA * shape(PC[i] / NC[i]) for i in range(2)) / 2
    )


@pytest.mark.parametrize("loss_type", ["ipo", "simpo", "alphapo"])
def test_logps_metrics_are_per_token_means_for_length_normalised_losses(loss_type):
    # chosen: -6/3 = -2, -3/2 = -1.5 -> mean -1.75; rejected: -8/4 = -2, -2/1 = -2 -> mean -2
    cfg = CPOLossConfig(beta=BETA, loss_type=loss_type, alpha=0.4 if loss_type == "alphapo" else 0.0)
    out = cpo_loss(batch(), cfg, 2, 5)
    assert out.metrics["logps/chosen"].item() == pytest.approx(-1.75, rel=1e-12)
    assert out.metrics["logps/rejected"].item() == pytest.approx(-2.0, rel=1e-12)


@pytest.mark.parametrize("loss_type", ["sigmoid", "hinge"])
def test_logps_metrics_are_sums_for_summed_losses(loss_type):
    out = cpo_loss(batch(), CPOLossConfig(beta=BETA, loss_type=loss_type), 2, 5)
    assert out.metrics["logps/chosen"].item() == pytest.approx((-6.0 - 3.0) / 2, rel=1e-12)
    assert out.metrics["logps/rejected"].item() == pytest.approx((-8.0 - 2.0) / 2, rel=1e-12)


def test_alphapo_from_spec_has_cpo_alpha_zero():
    from engine.spec.offline import CPOConfig

    cfg = CPOLossConfig.from_spec(CPOConfig(loss_type="alphapo", alpha=0.2))
    assert cfg.cpo_alpha == 0.0 and cfg.alpha == 0.2
    with pytest.raises(pydantic.ValidationError, match="cpo_alpha"):
        CPOConfig(loss_type="alphapo", alpha=0.2, cpo_alpha=1.0)


def test_bradley_terry_with_margin_and_centering():
    rc, rr, m = [1.0, -0.5, 2.0], [0.2, 0.5, 2.5], [0.5, 0.0, 1.0]
    out = reward_loss(t(rc), t(rr), num_pairs=3, margin=t(m), center_rewards_coefficient=0.01)
    expected = mean([-ls(rc[i] - rr[i] - m[i]) for i in range(3)]) + 0.01 * mean(
        [(rc[i] + rr[i]) ** 2 for i in range(3)]
    )
    assert out.loss.item() == pytest.approx(expected, rel=1e-12)
    assert out.metrics["reward/accuracy"].item() == pytest.approx(1 / 3)
    assert out.metrics["reward/margin"].item() == pytest.approx(mean([rc[i] - rr[i] for i in range(3)]))


def test_bradley_terry_gradient():
    rc = t([1.0, -0.5]).requires_grad_(True)
    rr = t([0.2, 0.5])
    reward_loss(rc, rr, num_pairs=2).loss.backward()
    expected = [-(1 - 1 / (1 + math.exp(-(rc[i].item() - rr[i].item())))) / 2 for i in range(2)]
    assert rc.grad.tolist() == pytest.approx(expected)
