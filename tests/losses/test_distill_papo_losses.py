"""Distillation losses and PAPO perception terms, against their formulas in plain Python."""

import math

import pytest
import torch
import torch.nn.functional as F

from engine.losses import DistillLossConfig, distill_loss, minillm_rkl_advantages, papo_perception_loss
from engine.losses.registry import get_loss

D = torch.float64
S = [[[1.0, 0.0, -1.0], [0.2, 0.3, 0.1]], [[2.0, 1.0, 0.0], [0.0, 0.0, 5.0]]]
TCH = [[[0.5, 0.5, -0.5], [1.0, -1.0, 0.0]], [[0.0, 1.0, 2.0], [3.0, 0.0, 0.0]]]
MASK = [[1, 1], [1, 0]]


def t(x):
    return torch.tensor(x, dtype=D)


def softmax(row, temp=1.0):
    e = [math.exp(x / temp) for x in row]
    z = sum(e)
    return [x / z for x in e]


def kl(p, q):
    return sum(a * math.log(a / b) for a, b in zip(p, q, strict=True))


def jsd(srow, trow, beta, temp=1.0):
    p_s, p_t = softmax(srow, temp), softmax(trow, temp)
    if beta == 0:
        return kl(p_t, p_s)
    if beta == 1:
        return kl(p_s, p_t)
    m = [beta * a + (1 - beta) * b for a, b in zip(p_t, p_s, strict=True)]
    return beta * kl(p_t, m) + (1 - beta) * kl(p_s, m)


def expected(beta, temp=1.0, n=3):
    return sum(jsd(S[i][j], TCH[i][j], beta, temp) for i in range(2) for j in range(2) if MASK[i][j]) / n


@pytest.mark.parametrize("beta", [0.0, 0.3, 0.5, 1.0])
def test_gkd_generalized_jsd(beta):
    out = distill_loss(
        t(S), t(TCH), t(MASK), 3, DistillLossConfig(loss_type="gkd", beta=beta, temperature=0.5)
    )
    assert out.loss.item() == pytest.approx(expected(beta), rel=1e-10)  # gkd ignores the temperature


def test_gkd_beta_one_is_reverse_kl_of_torch():
    out = distill_loss(
        t(S), t(TCH), torch.ones(2, 2, dtype=D), 4, DistillLossConfig(loss_type="gkd", beta=1.0)
    )
    ref = F.kl_div(F.log_softmax(t(TCH), -1), F.softmax(t(S), -1), reduction="sum") / 4
    assert out.loss.item() == pytest.approx(ref.item(), rel=1e-10)


def test_identical_distributions_give_zero_and_beta_half_is_symmetric():
    cfg = DistillLossConfig(beta=0.5)
    assert distill_loss(t(S), t(S), t(MASK), 3, cfg).loss.item() == pytest.approx(0.0, abs=1e-14)
    a = distill_loss(t(S), t(TCH), t(MASK), 3, cfg).loss.item()
    b = distill_loss(t(TCH), t(S), t(MASK), 3, cfg).loss.item()
    assert a == pytest.approx(b, rel=1e-10)


def test_gold_uses_temperature_on_both_logits():
    out = distill_loss(
        t(S), t(TCH), t(MASK), 3, DistillLossConfig(loss_type="gold", beta=0.5, temperature=0.9)
    )
    assert out.loss.item() == pytest.approx(expected(0.5, 0.9), rel=1e-10)


def test_minillm_single_step_reverse_kl():
    out = distill_loss(t(S), t(TCH), t(MASK), 3, DistillLossConfig(loss_type="minillm", temperature=2.0))
    assert out.loss.item() == pytest.approx(expected(1.0, 2.0), rel=1e-10)


def test_from_spec_picks_the_loss():
    from engine.spec.grpo import MiniLLMConfig
    from engine.spec.offline import GKDConfig, GOLDConfig

    teacher = "tiny:llama"  # the configs require one
    gkd = GKDConfig(beta=0.2, teacher_model_name_or_path=teacher)
    assert DistillLossConfig.from_spec(gkd) == DistillLossConfig("gkd", 0.2, 1.0)
    gold = GOLDConfig(teacher_model_name_or_path=teacher)
    assert DistillLossConfig.from_spec(gold) == DistillLossConfig("gold", 0.5, 0.9)
    minillm = MiniLLMConfig(kd_temperature=2.0, teacher_model_name_or_path=teacher)
    assert DistillLossConfig.from_spec(minillm).loss_type == "minillm"


def test_uld_sorted_l1_with_zero_padding():
    student = t([[[0.7, 0.2, 0.1], [0.5, 0.5, 0.0]]])
    teacher = t([[[0.1, 0.6, 0.2, 0.1], [0.25, 0.25, 0.25, 0.25]]])
    mask = t([[1, 1]])
    out = get_loss("distill", "uld")(student, teacher, mask, 1)
    d0 = abs(0.7 - 0.6) + abs(0.2 - 0.2) + abs(0.1 - 0.1) + abs(0 - 0.1)
    d1 = abs(0.5 - 0.25) * 2 + 0.25 + 0.25
    assert out.loss.item() == pytest.approx((d0 + d1) / 2, rel=1e-12)


def test_minillm_rkl_advantages_discounted_and_normalised():
    s = t([[-1.0, -2.0, -0.5], [-0.3, -0.2, 0.0]])
    te = t([[-0.5, -2.5, -1.0], [-0.1, -0.4, -7.0]])
    mask = t([[1, 1, 1], [1, 1, 0]])
    r = [[0.5, -0.5, -0.5], [0.2, -0.2, 0.0]]
    assert torch.allclose(minillm_rkl_advantages(s, te, mask), t(r))
    g = 0.5
    m_tilde = [[1, 1, 1], [1, 1, 1e-4]]

    def disc(i, j, vals):
        return sum(g ** (k - j) * vals[i][k] for k in range(j, 3))

    plain = [[disc(i, j, r) for j in range(3)] for i in range(2)]
    normed = [[disc(i, j, r) / disc(i, j, m_tilde) for j in range(3)] for i in range(2)]
    assert torch.allclose(minillm_rkl_advantages(s, te, mask, g, length_normalization=False), t(plain))
    assert torch.allclose(minillm_rkl_advantages(s, te, mask, g, length_normalization=True), t(normed))
    assert not minillm_rkl_advantages(s.requires_grad_(True), te, mask, g).requires_grad


def test_papo_perception_terms():
    lp = t([[-1.0, -0.5], [-2.0, -9.0]]).requires_grad_(True)
    lpm = t([[-1.5, -0.4], [-3.0, 0.0]])
    h, hm = t([[1.0, 2.0], [0.5, 7.0]]), t([[1.5, 2.5], [0.1, 7.0]])
    mask = t([[1, 1], [1, 0]])
    out = papo_perception_loss(
        lp,
        lpm,
        h,
        hm,
        mask,
        num_tokens=3,
        perception_loss_weight=0.1,
        der_loss_weight1=0.03,
        der_loss_weight2=0.02,
    )

    def k3c(a, b):  # clamp(e^(b - a) - (b - a) - 1, 0, 0.2)
        return min(max(math.exp(b - a) - (b - a) - 1, 0.0), 0.2)

    kls = [k3c(-1.0, -1.5), k3c(-0.5, -0.4), k3c(-2.0, -3.0)]
    expected = -0.1 * sum(kls) / 3 + 0.03 * (1.0 + 2.0 + 0.5) / 3 + 0.02 * (1.5 + 2.5 + 0.1) / 3
    assert kls[2] == 0.2  # clamped, so no gradient through that token
    assert out.loss.item() == pytest.approx(expected, rel=1e-12)
    out.loss.backward()
    assert lp.grad[1, 0].item() == 0.0 and lp.grad[1, 1].item() == 0.0
