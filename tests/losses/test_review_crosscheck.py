"""Cross-checks of the highest-risk formulas against values worked out by hand from the papers' formulas.

Every expected value below is computed with plain `math` on tiny inputs, never with library helpers,
so a change of sign, clip bound, stop-gradient, clamp or normaliser shows up as a failure.
"""

import math

import pytest
import torch

from engine.advantages import group_advantages, rloo_advantages
from engine.losses import (
    BEMA,
    BCOLossConfig,
    BCOState,
    DPOLossConfig,
    GlobalCounts,
    KTOLossConfig,
    PolicyBatch,
    PolicyLossConfig,
    PreferenceBatch,
    UnpairedBatch,
    UnpairedCounts,
    bco_loss,
    dpo_loss,
    entropy_threshold,
    generalized_jsd_per_token,
    high_entropy_mask,
    kto_loss,
    kto_reference_point,
    off_policy_mask,
    policy_loss,
    vllm_is_weights,
)

D = torch.float64
NAN = float("nan")


def t(x):
    return torch.tensor(x, dtype=D)


def sig(x):
    return 1 / (1 + math.exp(-x))


def ls(x):  # log sigmoid
    return -math.log1p(math.exp(-x))


def counts(mask):
    return GlobalCounts(num_tokens=sum(map(sum, mask)), num_sequences=len(mask))


# --- vLLM importance-sampling weights ----------------------------------------------------------------

# row 0: d = old - sampling = [750, 0] -> e^750 and the sequence product e^750 overflow to inf
# row 1: d = [0.1, -0.2] -> token ratios e^0.1, e^-0.2; sequence ratio e^-0.1
IS_OLD = [[-1.0, -1.0], [-0.5, -0.7]]
IS_SAMP = [[-751.0, -1.0], [-0.6, -0.5]]
IS_MASK = [[1, 1], [1, 1]]


def test_mask_modes_zero_an_overflowing_ratio_instead_of_nan():
    seq = vllm_is_weights(t(IS_OLD), t(IS_SAMP), t(IS_MASK), "sequence_mask", clip_max=3.0)
    assert seq.squeeze(1).tolist() == pytest.approx([0.0, math.exp(-0.1)], rel=1e-12)
    tok = vllm_is_weights(t(IS_OLD), t(IS_SAMP), t(IS_MASK), "token_mask", clip_max=3.0)
    assert tok.flatten().tolist() == pytest.approx([0.0, 1.0, math.exp(0.1), math.exp(-0.2)], rel=1e-12)
    # truncation of the same overflow is clip_max, as before
    trunc = vllm_is_weights(t(IS_OLD), t(IS_SAMP), t(IS_MASK), "sequence_truncate", clip_max=3.0)
    assert trunc.squeeze(1).tolist() == pytest.approx([3.0, math.exp(-0.1)], rel=1e-12)


def test_policy_loss_stays_finite_when_a_sequence_ratio_overflows():
    lp = [[-0.9, -1.2], [-0.4, -0.8]]
    adv = [1.0, -2.0]
    cfg = PolicyLossConfig(
        loss_type="dapo", vllm_is_correction=True, vllm_is_mode="sequence_mask", vllm_is_clip_max=3.0
    )
    b = PolicyBatch(
        logps=t(lp).requires_grad_(True),
        mask=t(IS_MASK),
        advantages=t(adv),
        old_logps=t(IS_OLD),
        sampling_logps=t(IS_SAMP),
    )
    out = policy_loss(b, cfg, counts(IS_MASK))
    w1 = math.exp(-0.1)  # row 0 is masked out (weight 0), row 1 keeps its ratio
    total = 0.0
    for j in range(2):
        r = math.exp(lp[1][j] - IS_OLD[1][j])
        total += -min(r * adv[1], min(max(r, 0.8), 1.2) * adv[1]) * w1
    assert math.isfinite(out.loss.item())
    assert out.loss.item() == pytest.approx(total / 4, rel=1e-12)
    out.loss.backward()
    assert torch.isfinite(b.logps.grad).all()
    assert b.logps.grad[0].tolist() == [0.0, 0.0]


def test_is_bounds_apply_one_sided_when_the_other_is_none():
    old = [[-1.0, -2.0, -0.5]]
    samp = [[-1.5, -1.0, -0.5]]  # d = [0.5, -1.0, 0.0], sum -0.5
    mask = [[1, 1, 1]]
    tok = vllm_is_weights(t(old), t(samp), t(mask), "token_mask", clip_min=0.9, clip_max=None)
    assert tok.flatten().tolist() == pytest.approx([math.exp(0.5), 0.0, 1.0], rel=1e-12)
    seq = vllm_is_weights(t(old), t(samp), t(mask), "sequence_truncate", clip_min=0.9, clip_max=None)
    assert seq.flatten().tolist() == pytest.approx([0.9], rel=1e-12)  # e^-0.5 = 0.61 raised to clip_min


# --- RLOO --------------------------------------------------------------------------------------------


def test_rloo_loss_from_spec_applies_no_vllm_importance_weight():
    from engine.spec.grpo import RLOOConfig

    cfg = PolicyLossConfig.from_spec(RLOOConfig(use_vllm=True))
    assert cfg.loss_type == "rloo" and cfg.beta == 0.0
    assert cfg.vllm_is_correction is False
    lp = [[-1.0, -0.5], [-0.3, -1.2]]
    old = [[-1.1, -0.2], [-0.3, -0.9]]
    samp = [[-3.0, -3.0], [-0.1, -0.1]]  # would weight the rows by e^4 -> 3 and e^-1 if applied
    mask = [[1, 1], [1, 0]]
    adv = [1.5, -0.7]
    b = PolicyBatch(
        logps=t(lp).requires_grad_(True),
        mask=t(mask),
        advantages=t(adv),
        old_logps=t(old),
        sampling_logps=t(samp),
    )
    out = policy_loss(b, cfg, counts(mask))
    per_seq = []
    for i in range(2):
        rho = math.exp(sum((lp[i][j] - old[i][j]) * mask[i][j] for j in range(2)))
        per_seq.append(-min(rho * adv[i], min(max(rho, 0.8), 1.2) * adv[i]))
    assert out.loss.item() == pytest.approx(sum(per_seq) / 2, rel=1e-12)


def test_rloo_leave_one_out_and_group_bessel_std():
    r = [1.0, 4.0, 10.0, 2.0, NAN, 6.0]
    adv, _ = rloo_advantages(t(r), 3)
    # group 0: b_i = (15 - r_i) / 2; group 1: valid rewards 2 and 6 are each other's baseline
    assert adv.tolist() == pytest.approx([1 - 7, 4 - 5.5, 10 - 2.5, 2 - 6, 0.0, 6 - 2], rel=1e-12)
    g, _ = group_advantages(t(r), 3, "group")
    sd0 = math.sqrt(((1 - 5) ** 2 + (4 - 5) ** 2 + (10 - 5) ** 2) / 2)
    sd1 = math.sqrt(((2 - 4) ** 2 + (6 - 4) ** 2) / 1)
    expected = [(x - 5) / (sd0 + 1e-4) for x in r[:3]] + [(2 - 4) / (sd1 + 1e-4), 0.0, (6 - 4) / (sd1 + 1e-4)]
    assert g.tolist() == pytest.approx(expected, rel=1e-12)


# --- GRPO-family surrogates ----------------------------------------------------------------------

LP = [[-1.0, -0.5, -2.0], [-0.3, -1.2, -0.7]]
OLD = [[-1.1, -0.2, -2.5], [-0.3, -0.9, -0.9]]
MASK = [[1, 1, 1], [1, 1, 0]]
ADV = [1.5, -0.7]


def pbatch(adv=ADV, old=OLD, **kw):
    return PolicyBatch(
        logps=t(LP).requires_grad_(True),
        mask=t(MASK),
        advantages=t(adv),
        old_logps=None if old is None else t(old),
        **kw,
    )


def test_gspo_sequence_ratio_clipped_row_has_no_gradient():
    # row 0: mean delta (0.1 - 0.3 + 0.5) / 3 = 0.1 -> s0 = e^0.1 > 1 + 0.05 with A > 0: clipped
    # row 1: mean delta (0 - 0.3) / 2 = -0.15 -> s1 = e^-0.15 = 0.861 > 1 - 0.2: not clipped
    s0, s1 = math.exp(0.1), math.exp(-0.15)
    cfg = PolicyLossConfig(
        loss_type="grpo", importance_sampling_level="sequence", epsilon=0.2, epsilon_high=0.05
    )
    b = pbatch()
    out = policy_loss(b, cfg, counts(MASK))
    assert s0 > 1.05 and s1 > 0.8
    assert out.loss.item() == pytest.approx((-1.05 * 1.5 + 0.7 * s1) / 2, rel=1e-12)
    out.loss.backward()
    g1 = 0.7 * s1 / 2 / 2  # d(-s1 A / 2)/d logp_t = -A s1 (m_t / |o_1|) / 2
    assert torch.allclose(b.logps.grad, t([[0.0, 0.0, 0.0], [g1, g1, 0.0]]), atol=1e-14)


def test_cispo_cap_is_absolute_not_one_plus_epsilon():
    # on-policy ratio 1 is above the absolute cap 0.5, so every token is scaled by 0.5
    b = pbatch(old=None)
    out = policy_loss(b, PolicyLossConfig(loss_type="cispo", epsilon_high=0.5), counts(MASK))
    expected = sum(-0.5 * ADV[i] * LP[i][j] * MASK[i][j] for i in range(2) for j in range(3)) / 5
    assert out.loss.item() == pytest.approx(expected, rel=1e-12)
    out.loss.backward()
    grad = [[-0.5 * ADV[i] * MASK[i][j] / 5 for j in range(3)] for i in range(2)]
    assert torch.allclose(b.logps.grad, t(grad), atol=1e-14)


def test_sapo_temperature_follows_the_sign_of_the_advantage():
    tp, tn = 0.5, 2.0
    adv = [1.5, -0.7]
    cfg = PolicyLossConfig(loss_type="sapo", sapo_temperature_pos=tp, sapo_temperature_neg=tn)
    out = policy_loss(pbatch(adv=adv), cfg, counts(MASK))
    rows = []
    for i, tau in ((0, tp), (1, tn)):
        vals = [
            -(4 / tau) * sig(tau * (math.exp(LP[i][j] - OLD[i][j]) - 1)) * adv[i] * MASK[i][j]
            for j in range(3)
        ]
        rows.append(sum(vals) / sum(MASK[i]))
    assert out.loss.item() == pytest.approx(sum(rows) / 2, rel=1e-12)
    # A = 0 takes tau_neg but contributes neither loss nor gradient
    b0 = pbatch(adv=[0.0, 0.0])
    out0 = policy_loss(b0, cfg, counts(MASK))
    out0.loss.backward()
    assert out0.loss.item() == 0.0 and torch.count_nonzero(b0.logps.grad) == 0


def test_vespo_phi_clamps_token_and_sequence_log_ratios():
    lp = [[-1.0, -2.0], [-0.5, -3.0]]
    # row 0 (A > 0): delta = [-15, -15], sum -30 -> clamped to ln 1e-8
    # row 1 (A < 0): delta = [25, -19.5] -> the 25 is clamped to 20 per token, sum 0.5
    old = [[14.0, 13.0], [-25.5, 16.5]]
    mask = [[1, 1], [1, 1]]
    adv = [1.0, -1.0]
    cfg = PolicyLossConfig(loss_type="vespo", vespo_k_pos=0.5, vespo_lambda_pos=3.0)
    b = PolicyBatch(logps=t(lp).requires_grad_(True), mask=t(mask), advantages=t(adv), old_logps=t(old))
    out = policy_loss(b, cfg, counts(mask))
    lw0 = math.log(1e-8)
    phi0 = math.exp(3.0 + 0.5 * lw0 - 3.0 * math.exp(lw0))
    phi1 = math.exp(2.0 + 3.0 * 0.5 - 2.0 * math.exp(0.5))  # defaults k_neg = 3, lambda_neg = 2
    expected = sum(-phi * a * x for phi, a, row in ((phi0, 1.0, lp[0]), (phi1, -1.0, lp[1])) for x in row) / 4
    assert out.loss.item() == pytest.approx(expected, rel=1e-12)
    assert out.metrics["policy/vespo_phi_mean"].item() == pytest.approx((phi0 + phi1) / 2, rel=1e-12)
    out.loss.backward()
    assert torch.allclose(b.logps.grad, t([[-phi0 / 4] * 2, [phi1 / 4] * 2]), atol=1e-14)


def test_bias_corrected_k3_with_sequence_ratio_carries_gradient_through_the_ratio():
    ref = [[-0.8, -0.6, -1.5], [-0.5, -1.1, -0.6]]
    beta = 0.1
    cfg = PolicyLossConfig(
        loss_type="dapo", importance_sampling_level="sequence", beta=beta, use_bias_correction_kl=True
    )
    b = pbatch(adv=[0.0, 0.0], ref_logps=t(ref))
    out = policy_loss(b, cfg, counts(MASK))
    n = [sum(row) for row in MASK]
    s = [math.exp(sum((LP[i][j] - OLD[i][j]) * MASK[i][j] for j in range(3)) / n[i]) for i in range(2)]
    k3 = [[math.exp(ref[i][j] - LP[i][j]) - (ref[i][j] - LP[i][j]) - 1 for j in range(3)] for i in range(2)]
    row_kl = [sum(k3[i][j] * MASK[i][j] for j in range(3)) for i in range(2)]
    assert out.loss.item() == pytest.approx(beta * (row_kl[0] * s[0] + row_kl[1] * s[1]) / 5, rel=1e-12)
    out.loss.backward()
    grad = [
        [
            beta * MASK[i][j] * ((1 - math.exp(ref[i][j] - LP[i][j])) * s[i] + row_kl[i] * s[i] / n[i]) / 5
            for j in range(3)
        ]
        for i in range(2)
    ]
    assert torch.allclose(b.logps.grad, t(grad), atol=1e-14)


# --- masks ---------------------------------------------------------------------------------------------


def test_off_policy_mask_keeps_kl_equal_to_threshold_and_non_negative_advantages():
    logps = t([[-1.0, -1.0], [-1.0, -1.0], [-1.0, -1.0]])
    behaviour = t([[-0.75, -0.75], [5.0, 5.0], [-0.5, -0.5]])  # mean KL 0.25, 6.0, 0.5
    adv = t([[-1.0], [0.0], [-0.5]])
    keep = off_policy_mask(logps, behaviour, torch.ones(3, 2, dtype=D), adv, threshold=0.25)
    assert keep.squeeze(1).tolist() == [1.0, 1.0, 0.0]


def test_entropy_threshold_interpolates_linearly():
    ent = t([[8.0, 0.5, 2.0], [1.0, 4.0, 100.0]])
    mask = t([[1, 1, 1], [1, 1, 0]])
    # active sorted [0.5, 1, 2, 4, 8]; 1 - 0.3 quantile at position 0.7 * 4 = 2.8 -> 2 + 0.8 * (4 - 2)
    thr = entropy_threshold(ent, mask, 0.3)
    assert thr.item() == pytest.approx(3.6, rel=1e-12)
    assert high_entropy_mask(ent, mask, 0.3).tolist() == [[1, 0, 0], [0, 1, 0]]


# --- preference and unpaired losses ------------------------------------------------------------------


def test_dpo_ipo_and_robust_use_the_f_divergence_score():
    pc, pr, rc, rr = [-5.0, -3.0], [-6.0, -2.5], [-5.5, -3.2], [-5.8, -3.0]
    nc, nr = [4, 2], [3, 3]
    beta, eps = 0.2, 0.1
    b = PreferenceBatch(t(pc), t(pr), t(rc), t(rr), torch.tensor(nc), torch.tensor(nr))
    ipo = dpo_loss(b, DPOLossConfig(beta=beta, loss_type="ipo", f_divergence_type="js_divergence"), 2, 6)
    exp_ipo = [
        (ls((pc[i] - rc[i]) / nc[i]) - ls((pr[i] - rr[i]) / nr[i]) - 1 / (2 * beta)) ** 2 for i in range(2)
    ]
    assert ipo.loss.item() == pytest.approx(sum(exp_ipo) / 2, rel=1e-12)
    robust_cfg = DPOLossConfig(
        beta=beta, loss_type="robust", label_smoothing=eps, f_divergence_type="forward_kl"
    )
    robust = dpo_loss(b, robust_cfg, 2, 6)
    exp_robust = []
    for i in range(2):
        x = beta * (-math.exp(-(pc[i] - rc[i])) + math.exp(-(pr[i] - rr[i])))
        exp_robust.append((-(1 - eps) * ls(x) + eps * ls(-x)) / (1 - 2 * eps))
    assert robust.loss.item() == pytest.approx(sum(exp_robust) / 2, rel=1e-12)


def test_kto_reference_point_is_clamped_and_shifts_the_loss():
    assert kto_reference_point(t([-3.0, -4.0]), t([-2.0, -4.5])).item() == 0.0  # mean -0.25 -> 0
    z0 = kto_reference_point(t([-3.0, -4.0]), t([-3.5, -4.1])).item()
    assert z0 == pytest.approx(0.3, rel=1e-12)
    lp, ref, labels = [-4.0, -6.0, -3.0], [-4.5, -5.0, -3.5], [True, False, False]
    cfg = KTOLossConfig(beta=0.5, desirable_weight=2.0, undesirable_weight=0.5)
    b = UnpairedBatch(logps=t(lp), ref_logps=t(ref), labels=torch.tensor(labels))
    out = kto_loss(b, cfg, UnpairedCounts(6, 2, 4), kl_reference=z0)
    rows = [
        2.0 * (1 - sig(0.5 * (lp[i] - ref[i] - z0)))
        if labels[i]
        else 0.5 * (1 - sig(0.5 * (z0 - lp[i] + ref[i])))
        for i in range(3)
    ]
    assert out.loss.item() == pytest.approx(sum(rows) / 6, rel=1e-12)


def test_bco_running_mean_chan_update_from_count_1e_minus_24():
    state = BCOState()
    cfg = BCOLossConfig(beta=0.5)
    first = UnpairedBatch(
        logps=t([-1.0, -3.0, -0.5]), ref_logps=t([-2.0, -2.0, -2.0]), labels=torch.tensor([True, False, True])
    )
    bco_loss(first, cfg, UnpairedCounts(3, 2, 1), state)
    r1 = [0.5, -0.5, 0.75]
    mu, n = 0.0, 1e-24
    n += 3
    mu += (sum(r1) / 3 - mu) * 3 / n
    assert state.running.mean.item() == pytest.approx(mu, abs=1e-15)
    second = UnpairedBatch(logps=t([0.0]), ref_logps=t([-2.0]), labels=torch.tensor([False]))
    out = bco_loss(second, cfg, UnpairedCounts(1, 0, 1), state)
    n += 1
    mu += (1.0 - mu) * 1 / n  # r = 0.5 * 2 = 1
    assert state.running.mean.item() == pytest.approx(mu, rel=1e-12)
    assert out.loss.item() == pytest.approx(-ls(-(1.0 - mu)), rel=1e-12)


# --- distillation and BEMA -------------------------------------------------------------------------


def _softmax(row):
    e = [math.exp(x) for x in row]
    return [x / sum(e) for x in e]


def _kl(p, q):
    return sum(a * math.log(a / b) for a, b in zip(p, q, strict=True))


def test_gkd_endpoints_are_plain_kls_not_limits_of_the_mixture():
    s, te = [1.0, 0.0, -1.0], [0.5, 0.5, -0.5]
    ps, pt = _softmax(s), _softmax(te)

    def jsd(beta):
        return generalized_jsd_per_token(t([s]), t([te]), beta).item()

    assert jsd(0.0) == pytest.approx(_kl(pt, ps), rel=1e-12)  # forward KL(P_T || P_S)
    assert jsd(1.0) == pytest.approx(_kl(ps, pt), rel=1e-12)  # reverse KL(P_S || P_T)
    assert jsd(1e-6) < 1e-5 and jsd(1 - 1e-6) < 1e-5  # the mixture tends to 0 at both ends
    m = [0.3 * a + 0.7 * b for a, b in zip(pt, ps, strict=True)]
    assert jsd(0.3) == pytest.approx(0.3 * _kl(pt, m) + 0.7 * _kl(ps, m), rel=1e-12)


def test_bema_schedule_uses_absolute_step_and_resets_at_update_after():
    kw = dict(update_freq=3, ema_power=0.7, bias_power=0.3, lag=4, update_after=2, multiplier=0.5)
    p = {"w": torch.zeros(1, dtype=D)}
    bema = BEMA(p, min_ema_multiplier=0.25, **kw)
    updated = []
    for step in range(1, 9):
        p["w"] = torch.full((1,), float(step * step), dtype=D)  # theta_t = t^2
        if bema.step(step, p):
            updated.append(step)
    assert updated == [5, 8]
    theta0 = ema = 4.0  # reset at t = update_after = 2
    for step in (5, 8):
        base = 4 + 0.5 * step
        beta = max(base**-0.7, 0.25)
        alpha = base**-0.3
        ema = (1 - beta) * ema + beta * step * step
        out = ema + alpha * (step * step - theta0)
    assert max((4 + 0.5 * 8) ** -0.7, 0.25) == 0.25  # the floor is active at t = 8
    assert bema.weights["w"].item() == pytest.approx(out, rel=1e-12)
