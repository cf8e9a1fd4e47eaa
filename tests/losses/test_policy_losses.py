"""GRPO-family losses against values worked out from their formulas in plain Python."""

import math

import pytest
import torch

from engine.losses import GlobalCounts, PolicyBatch, PolicyLossConfig, policy_loss

D = torch.float64

LP = [[-1.0, -0.5, -2.0], [-0.3, -1.2, -0.7]]
OLD = [[-1.1, -0.2, -2.5], [-0.3, -0.9, -0.9]]
REF = [[-0.8, -0.6, -1.5], [-0.5, -1.1, -0.6]]
MASK = [[1, 1, 1], [1, 1, 0]]
ADV = [1.5, -0.7]


def t(x):
    return torch.tensor(x, dtype=D)


def batch(lp=LP, old=OLD, adv=ADV, mask=MASK, **kw):
    logps = t(lp).requires_grad_(True)
    return PolicyBatch(
        logps=logps, mask=t(mask), advantages=t(adv), old_logps=None if old is None else t(old), **kw
    )


def counts(mask=MASK, **kw):
    m = t(mask)
    return GlobalCounts(num_tokens=m.sum(), num_sequences=m.shape[0], **kw)


def sigmoid(x):
    return 1 / (1 + math.exp(-x))


def clip_token_loss(r, a, lo=0.2, hi=0.2, delta=None):
    rr = min(r, delta) if delta is not None else r
    return -min(rr * a, min(max(r, 1 - lo), 1 + hi) * a)


def token_ratios(lp=LP, old=OLD):
    return [[math.exp(lp[i][j] - old[i][j]) for j in range(3)] for i in range(2)]


def seq_ratios(lp=LP, old=OLD, mask=MASK):
    out = []
    for i in range(2):
        n = sum(mask[i])
        out.append(math.exp(sum((lp[i][j] - old[i][j]) * mask[i][j] for j in range(3)) / n))
    return out


def aggregate(per_tok, mode, mask=MASK, max_len=None):
    ntok = sum(map(sum, mask))
    nseq = len(mask)
    s = sum(per_tok[i][j] * mask[i][j] for i in range(2) for j in range(3))
    if mode == "token_mean":
        return s / ntok
    if mode == "sequence_mean":
        return sum(sum(per_tok[i][j] * mask[i][j] for j in range(3)) / sum(mask[i]) for i in range(2)) / nseq
    if mode == "sequence_sum":
        return s / nseq
    if mode == "fixed_length":
        return s / (nseq * max_len)
    raise AssertionError(mode)


@pytest.mark.parametrize(
    "loss_type,mode",
    [
        ("grpo", "sequence_mean"),
        ("bnpo", "token_mean"),
        ("dapo", "token_mean"),
        ("luspo", "sequence_sum"),
        ("dr_grpo", "fixed_length"),
    ],
)
def test_clipped_losses_match_formula(loss_type, mode):
    r = token_ratios()
    per_tok = [[clip_token_loss(r[i][j], ADV[i]) for j in range(3)] for i in range(2)]
    expected = aggregate(per_tok, mode, max_len=4)
    cfg = PolicyLossConfig(loss_type=loss_type, max_completion_length=4)
    out = policy_loss(batch(), cfg, counts())
    assert out.loss.item() == pytest.approx(expected, rel=1e-12)


def test_clip_higher_and_delta_cap():
    r = token_ratios()
    per_tok = [
        [clip_token_loss(r[i][j], ADV[i], lo=0.1, hi=0.28, delta=1.35) for j in range(3)] for i in range(2)
    ]
    cfg = PolicyLossConfig(loss_type="dapo", epsilon=0.1, epsilon_high=0.28, delta=1.35)
    out = policy_loss(batch(), cfg, counts())
    assert out.loss.item() == pytest.approx(aggregate(per_tok, "token_mean"), rel=1e-12)
    # delta bounds the unclipped branch for A < 0: ratio e^0.5 = 1.65 on row 0 would otherwise dominate
    assert any(x > 1.35 for x in r[0])


def test_clip_ratio_metrics_count_tokens_by_sign_of_advantage():
    r = token_ratios()
    low = sum(1 for i in range(2) for j in range(3) if MASK[i][j] and r[i][j] < 0.8 and ADV[i] < 0)
    high = sum(1 for i in range(2) for j in range(3) if MASK[i][j] and r[i][j] > 1.2 and ADV[i] > 0)
    out = policy_loss(batch(), PolicyLossConfig(loss_type="dapo"), counts())
    assert out.metrics["policy/clip_ratio_low"].item() == pytest.approx(low / 5)
    assert out.metrics["policy/clip_ratio_high"].item() == pytest.approx(high / 5)
    assert out.metrics["policy/clip_ratio"].item() == pytest.approx((low + high) / 5)
    assert high == 1 and low == 1  # row 0 (A > 0): e^0.5 > 1.2; row 1 (A < 0): e^-0.3 < 0.8
    for v in out.metrics.values():
        assert v.dim() == 0 and not v.requires_grad


def test_gspo_sequence_ratio_value_and_gradient():
    s = seq_ratios()
    cfg = PolicyLossConfig(
        loss_type="grpo", importance_sampling_level="sequence", epsilon=0.9, epsilon_high=0.9
    )
    b = batch()
    out = policy_loss(b, cfg, counts())
    # unclipped (eps 0.9): per-token loss is -s_i A_i on every token, grpo mean -> -(1/2) sum_i s_i A_i
    assert out.loss.item() == pytest.approx(-(s[0] * ADV[0] + s[1] * ADV[1]) / 2, rel=1e-12)
    out.loss.backward()
    expected = [[-ADV[i] * s[i] * MASK[i][j] / sum(MASK[i]) / 2 for j in range(3)] for i in range(2)]
    assert torch.allclose(b.logps.grad, t(expected), atol=1e-12)


def test_gspo_token_equals_sequence_ratio_with_tokenwise_gradient():
    s = seq_ratios()
    adv_tok = [[1.0, 2.0, -1.0], [0.5, -0.5, 3.0]]
    cfg = PolicyLossConfig(
        loss_type="grpo", importance_sampling_level="sequence_token", epsilon=0.9, epsilon_high=0.9
    )
    b = batch(adv=adv_tok)
    out = policy_loss(b, cfg, counts())
    per_seq = [sum(-s[i] * adv_tok[i][j] * MASK[i][j] for j in range(3)) / sum(MASK[i]) for i in range(2)]
    assert out.loss.item() == pytest.approx(sum(per_seq) / 2, rel=1e-12)
    out.loss.backward()
    # d rho_{i,t} / d logp_{i,t} = s_i and nothing flows to other tokens
    expected = [[-s[i] * adv_tok[i][j] * MASK[i][j] / sum(MASK[i]) / 2 for j in range(3)] for i in range(2)]
    assert torch.allclose(b.logps.grad, t(expected), atol=1e-12)


def test_cispo_caps_ratio_with_stop_gradient():
    r = token_ratios()
    cap = 1.2
    cfg = PolicyLossConfig(loss_type="cispo", epsilon_high=cap)
    b = batch()
    out = policy_loss(b, cfg, counts())
    per_tok = [[-min(r[i][j], cap) * ADV[i] * LP[i][j] for j in range(3)] for i in range(2)]
    assert out.loss.item() == pytest.approx(aggregate(per_tok, "token_mean"), rel=1e-12)
    out.loss.backward()
    expected = [[-min(r[i][j], cap) * ADV[i] * MASK[i][j] / 5 for j in range(3)] for i in range(2)]
    assert torch.allclose(b.logps.grad, t(expected), atol=1e-12)
    over = sum(1 for i in range(2) for j in range(3) if MASK[i][j] and r[i][j] > cap and ADV[i] > 0)
    assert out.metrics["policy/cispo_clip_ratio"].item() == pytest.approx(over / 5)


def test_cispo_without_epsilon_high_is_a_clear_error():
    with pytest.raises(ValueError, match="epsilon_high"):
        policy_loss(batch(), PolicyLossConfig(loss_type="cispo"), counts())


def test_sapo_soft_gate_value_and_gradient():
    r = token_ratios()
    tp, tn = 1.0, 1.05
    b = batch()
    out = policy_loss(b, PolicyLossConfig(loss_type="sapo"), counts())

    def tau(a):
        return tp if a > 0 else tn

    per_tok = [
        [-(4 / tau(ADV[i])) * sigmoid(tau(ADV[i]) * (r[i][j] - 1)) * ADV[i] for j in range(3)]
        for i in range(2)
    ]
    assert out.loss.item() == pytest.approx(aggregate(per_tok, "sequence_mean"), rel=1e-12)
    out.loss.backward()

    def grad(i, j):
        x = tau(ADV[i]) * (r[i][j] - 1)
        return -4 * sigmoid(x) * (1 - sigmoid(x)) * r[i][j] * ADV[i] * MASK[i][j] / sum(MASK[i]) / 2

    expected = [[grad(i, j) for j in range(3)] for i in range(2)]
    assert torch.allclose(b.logps.grad, t(expected), atol=1e-12)


def test_sapo_gate_has_unit_slope_on_policy():
    # f(rho) = 4/tau sigmoid(tau (rho - 1)) has f'(1) = 1: on-policy gradient = plain policy gradient
    b = batch(old=None)
    out = policy_loss(b, PolicyLossConfig(loss_type="sapo"), counts())
    out.loss.backward()
    expected = [[-ADV[i] * MASK[i][j] / sum(MASK[i]) / 2 for j in range(3)] for i in range(2)]
    assert torch.allclose(b.logps.grad, t(expected), atol=1e-12)


def test_vespo_gamma_weights():
    k_pos, l_pos, k_neg, l_neg = 2.0, 3.0, 3.0, 2.0
    b = batch()
    out = policy_loss(b, PolicyLossConfig(loss_type="vespo"), counts())
    phis = []
    for i in range(2):
        log_w = sum((LP[i][j] - OLD[i][j]) * MASK[i][j] for j in range(3))
        w = math.exp(log_w)
        k, lam = (k_pos, l_pos) if ADV[i] >= 0 else (k_neg, l_neg)
        phis.append(math.exp(lam) * w**k * math.exp(-lam * w))
    per_tok = [[-phis[i] * ADV[i] * LP[i][j] for j in range(3)] for i in range(2)]
    assert out.loss.item() == pytest.approx(aggregate(per_tok, "token_mean"), rel=1e-12)
    out.loss.backward()
    expected = [[-phis[i] * ADV[i] * MASK[i][j] / 5 for j in range(3)] for i in range(2)]
    assert torch.allclose(b.logps.grad, t(expected), atol=1e-12)
    assert out.metrics["policy/vespo_phi_mean"].item() == pytest.approx(sum(phis) / 2)


def test_vespo_weight_is_one_on_policy():
    out = policy_loss(batch(old=None), PolicyLossConfig(loss_type="vespo"), counts())
    assert out.metrics["policy/vespo_phi_mean"].item() == pytest.approx(1.0)


def test_rloo_uses_sequence_ratio_of_summed_logps():
    sums = [math.exp(sum((LP[i][j] - OLD[i][j]) * MASK[i][j] for j in range(3))) for i in range(2)]
    per_seq = [clip_token_loss(sums[i], ADV[i]) for i in range(2)]
    out = policy_loss(batch(), PolicyLossConfig(loss_type="rloo"), counts())
    assert out.loss.item() == pytest.approx(sum(per_seq) / 2, rel=1e-12)


def test_kl_penalty_k3_and_metric():
    beta = 0.04
    r = token_ratios()
    out = policy_loss(batch(ref_logps=t(REF)), PolicyLossConfig(loss_type="dapo", beta=beta), counts())
    kl = [[math.exp(REF[i][j] - LP[i][j]) - (REF[i][j] - LP[i][j]) - 1 for j in range(3)] for i in range(2)]
    per_tok = [[clip_token_loss(r[i][j], ADV[i]) + beta * kl[i][j] for j in range(3)] for i in range(2)]
    assert out.loss.item() == pytest.approx(aggregate(per_tok, "token_mean"), rel=1e-12)
    assert out.metrics["policy/kl"].item() == pytest.approx(aggregate(kl, "token_mean"), rel=1e-12)


def test_bias_corrected_kl_gradient_flows_through_ratio():
    beta = 0.5
    b = batch(adv=[0.0, 0.0], ref_logps=t(REF))
    cfg = PolicyLossConfig(loss_type="dapo", beta=beta, use_bias_correction_kl=True)
    out = policy_loss(b, cfg, counts())
    r = token_ratios()
    kl = [[math.exp(REF[i][j] - LP[i][j]) - (REF[i][j] - LP[i][j]) - 1 for j in range(3)] for i in range(2)]
    assert out.loss.item() == pytest.approx(
        aggregate([[beta * kl[i][j] * r[i][j] for j in range(3)] for i in range(2)], "token_mean"), rel=1e-12
    )
    out.loss.backward()
    # d/dlp [k3(lp) * e^(lp - old)] = (1 - e^(ref - lp)) rho + k3 rho
    expected = [
        [beta * MASK[i][j] * r[i][j] * (1 - math.exp(REF[i][j] - LP[i][j]) + kl[i][j]) / 5 for j in range(3)]
        for i in range(2)
    ]
    assert torch.allclose(b.logps.grad, t(expected), atol=1e-12)


def test_top_entropy_mask_gradient_only_on_high_entropy_tokens():
    ent = [[0.1, 2.0, 0.5], [1.5, 0.2, 9.0]]  # the 9.0 is padding and must not enter the quantile
    b = batch(old=None, entropies=t(ent))
    cfg = PolicyLossConfig(loss_type="dapo", top_entropy_quantile=0.4)
    out = policy_loss(b, cfg, counts())
    active = sorted([0.1, 2.0, 0.5, 1.5, 0.2])
    pos = 0.6 * (len(active) - 1)  # linear-interpolated 1 - 0.4 quantile
    thr = active[int(pos)] + (pos - int(pos)) * (active[int(pos) + 1] - active[int(pos)])
    keep = [[1.0 if MASK[i][j] and ent[i][j] >= thr else 0.0 for j in range(3)] for i in range(2)]
    assert keep == [[0, 1, 0], [1, 0, 0]]
    out.loss.backward()
    expected = [[-ADV[i] * keep[i][j] / 5 for j in range(3)] for i in range(2)]
    assert torch.allclose(b.logps.grad, t(expected), atol=1e-12)
    assert out.metrics["policy/entropy_mask_ratio"].item() == pytest.approx(2 / 5)


def test_top_entropy_quantile_zero_keeps_the_maximum_and_one_keeps_all():
    ent = [[0.1, 2.0, 0.5], [2.0, 0.2, 9.0]]
    b0 = batch(old=None, entropies=t(ent))
    policy_loss(b0, PolicyLossConfig(loss_type="dapo", top_entropy_quantile=0.0), counts()).loss.backward()
    kept = (b0.logps.grad != 0).to(D)
    assert kept.tolist() == [[0, 1, 0], [1, 0, 0]]  # both tokens tied at the max are kept
    b1 = batch(old=None, entropies=t(ent))
    out1 = policy_loss(b1, PolicyLossConfig(loss_type="dapo", top_entropy_quantile=1.0), counts())
    out1.loss.backward()
    assert (b1.logps.grad != 0).to(D).tolist() == MASK


def test_entropy_bonus_subtracts_coef_times_token_mean_entropy():
    ent = t([[0.1, 2.0, 0.5], [1.5, 0.2, 9.0]]).requires_grad_(True)
    b = batch(entropies=ent)
    out = policy_loss(b, PolicyLossConfig(loss_type="grpo", entropy_coef=0.01), counts())
    mean_h = (0.1 + 2.0 + 0.5 + 1.5 + 0.2) / 5
    assert (out.metrics["policy/policy_loss"] - out.loss).item() == pytest.approx(0.01 * mean_h, rel=1e-12)
    out.loss.backward()
    assert torch.allclose(ent.grad, -0.01 * t(MASK) / 5)


@pytest.mark.parametrize("loss_type", ["dapo", "cispo"])
def test_token_mean_leaves_out_masked_truncated_rows(loss_type):
    # row 1 was truncated and masked (mask_truncated_completions): its tokens are not in the count
    mask = [[1, 1, 1], [0, 0, 0]]
    b = batch(old=None, mask=mask)
    cfg = PolicyLossConfig(loss_type=loss_type, epsilon_high=5.0 if loss_type == "cispo" else None)
    out = policy_loss(b, cfg, GlobalCounts.from_mask(t(mask)))
    # on-policy: ratio 1, so dapo's token loss is -A and cispo's is -A * logp
    per_token = [-ADV[0]] * 3 if loss_type == "dapo" else [-ADV[0] * lp for lp in LP[0]]
    assert out.loss.item() == pytest.approx(sum(per_token) / 3, rel=1e-12)


def test_entropy_bonus_with_entropy_mask_averages_over_the_kept_tokens():
    # quantile 0.4 of the five active entropies keeps 2.0 and 1.5 (see the mask test above)
    ent = t([[0.1, 2.0, 0.5], [1.5, 0.2, 9.0]]).requires_grad_(True)
    keep = [[0, 1, 0], [1, 0, 0]]
    cfg = PolicyLossConfig(loss_type="dapo", top_entropy_quantile=0.4, entropy_coef=0.01)
    b = batch(entropies=ent)
    out = policy_loss(b, cfg, counts())
    assert (out.metrics["policy/policy_loss"] - out.loss).item() == pytest.approx(0.01 * (2.0 + 1.5) / 2)
    out.loss.backward()
    assert torch.allclose(ent.grad, -0.01 * t(keep) / 2)
    # a micro-batch of a larger step divides by the step's kept count, not its own
    b2 = batch(entropies=ent.detach().clone())
    out2 = policy_loss(b2, cfg, counts(entropy_threshold=t(1.2), num_entropy_tokens=7))
    assert (out2.metrics["policy/policy_loss"] - out2.loss).item() == pytest.approx(0.01 * (2.0 + 1.5) / 7)


def test_off_policy_mask_drops_negative_sequences_that_drifted():
    # row 1 has A < 0 and mean(old - logp) = ((-0.3+0.3) + (-0.9+1.2)) / 2 = 0.15 > 0.05 -> dropped
    cfg = PolicyLossConfig(loss_type="grpo", off_policy_mask_threshold=0.05)
    out = policy_loss(batch(), cfg, counts())
    r = token_ratios()
    per_tok = [
        [clip_token_loss(r[i][j], ADV[i]) * (1.0 if i == 0 else 0.0) for j in range(3)] for i in range(2)
    ]
    assert out.loss.item() == pytest.approx(aggregate(per_tok, "sequence_mean"), rel=1e-12)
    assert out.metrics["policy/off_policy_masked"].item() == pytest.approx(1 / 2)


def test_vllm_sequence_mask_weight_multiplies_the_loss():
    samp = [[-1.0, -0.25, -2.6], [-0.5, -1.0, -5.0]]
    cfg = PolicyLossConfig(
        loss_type="dapo", vllm_is_correction=True, vllm_is_mode="sequence_mask", vllm_is_clip_max=1.1
    )
    out = policy_loss(batch(sampling_logps=t(samp)), cfg, counts())
    w = []
    for i in range(2):
        rho = math.exp(sum((OLD[i][j] - samp[i][j]) * MASK[i][j] for j in range(3)))
        w.append(rho if rho <= 1.1 else 0.0)
    assert w[0] > 0 and w[1] == 0.0  # row 1: e^0.3 = 1.35 > 1.1 is masked out
    r = token_ratios()
    per_tok = [[clip_token_loss(r[i][j], ADV[i]) * w[i] for j in range(3)] for i in range(2)]
    assert out.loss.item() == pytest.approx(aggregate(per_tok, "token_mean"), rel=1e-12)


def test_vllm_correction_without_sampling_logps_is_an_error():
    cfg = PolicyLossConfig(loss_type="dapo", vllm_is_correction=True)
    with pytest.raises(ValueError, match="sampling_logps"):
        policy_loss(batch(), cfg, counts())


def test_fully_masked_step_gives_zero_not_nan():
    mask = [[0, 0, 0], [0, 0, 0]]
    for lt in ("grpo", "dapo", "luspo", "dr_grpo", "bnpo"):
        b = batch(mask=mask)
        out = policy_loss(b, PolicyLossConfig(loss_type=lt, max_completion_length=3), counts(mask))
        assert out.loss.item() == 0.0
        out.loss.backward()
        assert torch.equal(b.logps.grad, torch.zeros(2, 3, dtype=D))


def test_fully_masked_row_still_counts_in_grpo_sequence_mean():
    mask = [[1, 1, 1], [0, 0, 0]]
    r = token_ratios()
    out = policy_loss(batch(mask=mask), PolicyLossConfig(loss_type="grpo"), counts(mask))
    row0 = sum(clip_token_loss(r[0][j], ADV[0]) for j in range(3)) / 3
    assert out.loss.item() == pytest.approx(row0 / 2, rel=1e-12)


def test_length_one_completions():
    lp, old = [[-0.4, 0.0, 0.0], [-2.0, 0.0, 0.0]], [[-0.5, 0.0, 0.0], [-1.5, 0.0, 0.0]]
    mask = [[1, 0, 0], [1, 0, 0]]
    for level in ("token", "sequence", "sequence_token"):
        cfg = PolicyLossConfig(loss_type="grpo", importance_sampling_level=level)
        out = policy_loss(batch(lp=lp, old=old, mask=mask), cfg, counts(mask))
        expected = sum(clip_token_loss(math.exp(lp[i][0] - old[i][0]), ADV[i]) for i in range(2)) / 2
        assert out.loss.item() == pytest.approx(expected, rel=1e-12)


def test_zero_advantages_give_zero_policy_gradient():
    b = batch(adv=[0.0, 0.0])
    out = policy_loss(b, PolicyLossConfig(loss_type="grpo"), counts())
    out.loss.backward()
    assert out.loss.item() == 0.0 and torch.count_nonzero(b.logps.grad) == 0


def test_from_spec_reads_grpo_config():
    from engine.spec.grpo import GRPOConfig, RLOOConfig

    cfg = PolicyLossConfig.from_spec(
        GRPOConfig(loss_type="cispo", epsilon_high=5.0, beta=0.02, max_completion_length=64)
    )
    assert (cfg.loss_type, cfg.epsilon_high, cfg.beta, cfg.max_completion_length) == ("cispo", 5.0, 0.02, 64)
    assert cfg.vllm_is_correction is False
    rloo = PolicyLossConfig.from_spec(RLOOConfig())
    assert rloo.loss_type == "rloo" and rloo.beta == 0.0


def test_vespo_folds_the_token_is_ratio_into_its_weight_only():
    samp = [[-1.0, -0.25, -2.6], [-0.5, -1.0, -5.0]]
    cfg = PolicyLossConfig(
        loss_type="vespo", vllm_is_correction=True, vllm_is_mode="token_truncate", vllm_is_clip_max=3.0
    )
    out = policy_loss(batch(sampling_logps=t(samp)), cfg, counts())
    phis = []
    for i in range(2):
        # no clamp is active: log w = sum_t m (logp - old) + sum_t m (old - sampling) = sum_t m (logp - sampling)
        log_w = sum((LP[i][j] - samp[i][j]) * MASK[i][j] for j in range(3))
        k, lam = (2.0, 3.0) if ADV[i] >= 0 else (3.0, 2.0)
        phis.append(math.exp(lam + k * log_w - lam * math.exp(log_w)))
    per_tok = [[-phis[i] * ADV[i] * LP[i][j] for j in range(3)] for i in range(2)]
    assert out.loss.item() == pytest.approx(aggregate(per_tok, "token_mean"), rel=1e-12)
    with pytest.raises(ValueError, match="token_"):
        bad = PolicyLossConfig(loss_type="vespo", vllm_is_correction=True, vllm_is_mode="sequence_mask")
        policy_loss(batch(sampling_logps=t(samp)), bad, counts())
