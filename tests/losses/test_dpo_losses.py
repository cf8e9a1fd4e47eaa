"""DPO-family losses against their formulas, worked out in plain Python."""

import math

import pytest
import torch

from engine.losses import (
    DPOLossConfig,
    DPOState,
    PreferenceBatch,
    dpo_loss,
    f_divergence_score,
    ld_sequence_logps,
    log_sum_squared_probs,
    wpo_weights,
)

D = torch.float64
PC, PR = [-5.0, -3.0, -8.0], [-6.0, -2.5, -9.5]
RC, RR = [-5.5, -3.2, -7.0], [-5.8, -3.0, -9.0]
NC, NR = [4, 2, 5], [3, 3, 6]
NLL = [2.0, 1.0, 3.5]
BETA = 0.1
N = 3


def t(x):
    return torch.tensor(x, dtype=D)


def batch(**kw):
    args = dict(
        chosen_logps=t(PC).requires_grad_(True),
        rejected_logps=t(PR).requires_grad_(True),
        ref_chosen_logps=t(RC),
        ref_rejected_logps=t(RR),
        chosen_lengths=torch.tensor(NC),
        rejected_lengths=torch.tensor(NR),
        chosen_nll=t(NLL),
    )
    args.update(kw)
    return PreferenceBatch(**args)


def ls(x):  # log sigmoid
    return -math.log1p(math.exp(-x))


def sig(x):
    return 1 / (1 + math.exp(-x))


def dc(i):
    return PC[i] - RC[i]


def dr(i):
    return PR[i] - RR[i]


def z(i):
    return dc(i) - dr(i)


def run(loss_type, **cfg_kw):
    cfg = DPOLossConfig(beta=BETA, loss_type=(loss_type,), **cfg_kw)
    return dpo_loss(batch(), cfg, num_pairs=N, num_chosen_tokens=sum(NC), state=DPOState())


def mean(xs):
    return sum(xs) / len(xs)


EXPECTED = {
    "sigmoid": lambda i, e: -(1 - e) * ls(BETA * z(i)) - e * ls(-BETA * z(i)),
    "hinge": lambda i, e: max(0.0, 1 - BETA * z(i)),
    "ipo": lambda i, e: (dc(i) / NC[i] - dr(i) / NR[i] - 1 / (2 * BETA)) ** 2,
    "nca_pair": lambda i, e: -ls(BETA * dc(i)) - 0.5 * ls(-BETA * dc(i)) - 0.5 * ls(-BETA * dr(i)),
    "robust": lambda i, e: (-(1 - e) * ls(BETA * z(i)) + e * ls(-BETA * z(i))) / (1 - 2 * e),
    "sppo_hard": lambda i, e: (dc(i) - 1 / (2 * BETA)) ** 2 + (dr(i) + 1 / (2 * BETA)) ** 2,
    "apo_zero": lambda i, e: (1 - sig(BETA * dc(i))) + sig(BETA * dr(i)),
    "apo_down": lambda i, e: sig(BETA * dc(i)) + (1 - sig(BETA * z(i))),
    "sigmoid_norm": lambda i, e: -ls(BETA * (dc(i) / NC[i] - dr(i) / NR[i])),
}


@pytest.mark.parametrize("loss_type", list(EXPECTED))
@pytest.mark.parametrize("eps", [0.0, 0.1])
def test_pairwise_losses_match_formula(loss_type, eps):
    out = run(loss_type, label_smoothing=eps)
    expected = mean([EXPECTED[loss_type](i, eps) for i in range(N)])
    assert out.loss.item() == pytest.approx(expected, rel=1e-12)


def test_exo_pair():
    eps = 1e-3
    out = run("exo_pair", label_smoothing=eps)

    def exo(i):
        x = BETA * z(i)
        return sig(x) * (ls(x) - math.log(1 - eps)) + sig(-x) * (ls(-x) - math.log(eps))

    assert out.loss.item() == pytest.approx(mean([exo(i) for i in range(N)]), rel=1e-12)


def test_exo_pair_with_zero_smoothing_is_a_clear_error():
    with pytest.raises(ValueError, match="label_smoothing"):
        run("exo_pair", label_smoothing=0.0)


def test_discopop():
    tau = 0.05

    def dp(i):
        s = BETA * z(i)
        w = sig(s / tau)
        return (1 - w) * -ls(s) + w * math.exp(-s)

    assert run("discopop", discopop_tau=tau).loss.item() == pytest.approx(
        mean([dp(i) for i in range(N)]), rel=1e-12
    )


def test_aot_sorts_policy_and_reference_margins_independently():
    eps = 0.05
    u = sorted(PC[i] - PR[i] for i in range(N))
    v = sorted(RC[i] - RR[i] for i in range(N))
    expected = mean(
        [-(1 - eps) * ls(BETA * (u[k] - v[k])) - eps * ls(-BETA * (u[k] - v[k])) for k in range(N)]
    )
    assert run("aot", label_smoothing=eps).loss.item() == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("name", ["aot_pair", "aot_unpaired"])
def test_aot_unpaired_sorts_chosen_and_rejected_logratios(name):
    c = sorted(dc(i) for i in range(N))
    r = sorted(dr(i) for i in range(N))
    expected = mean([-ls(BETA * (c[k] - r[k])) for k in range(N)])
    assert run(name).loss.item() == pytest.approx(expected, rel=1e-12)


def test_aot_with_batch_size_one_is_dpo():
    cfg = DPOLossConfig(beta=BETA, loss_type=("aot",))
    b = PreferenceBatch(t(PC[:1]), t(PR[:1]), t(RC[:1]), t(RR[:1]))
    out = dpo_loss(b, cfg, num_pairs=1, num_chosen_tokens=1)
    assert out.loss.item() == pytest.approx(-ls(BETA * z(0)), rel=1e-12)


def test_bco_pair_shifts_by_a_running_mean_of_batch_rewards():
    state = DPOState()
    cfg = DPOLossConfig(beta=BETA, loss_type=("bco_pair",))
    first = mean([BETA * dc(i) for i in range(N)] + [BETA * dr(i) for i in range(N)])
    out = dpo_loss(batch(), cfg, N, sum(NC), state)
    expected = mean([-ls(BETA * dc(i) - first) - ls(-(BETA * dr(i) - first)) for i in range(N)])
    assert out.loss.item() == pytest.approx(expected, rel=1e-9)
    # second call with shifted log-probs: delta = (first + second) / 2 (each call counts as one sample)
    b2 = batch(chosen_logps=t([x + 1 for x in PC]), rejected_logps=t([x + 1 for x in PR]))
    second = first + BETA
    out2 = dpo_loss(b2, cfg, N, sum(NC), state)
    delta = (first + second) / 2
    expected2 = mean([-ls(BETA * (dc(i) + 1) - delta) - ls(-(BETA * (dr(i) + 1) - delta)) for i in range(N)])
    assert out2.loss.item() == pytest.approx(expected2, rel=1e-9)
    with pytest.raises(ValueError, match="state"):
        dpo_loss(batch(), cfg, N, sum(NC), None)


def test_sft_and_rpo_use_nll_over_global_chosen_tokens():
    nll = sum(NLL) / sum(NC)
    assert run("sft").loss.item() == pytest.approx(nll, rel=1e-12)
    out = run("sigmoid", rpo_alpha=0.5)
    assert out.loss.item() == pytest.approx(mean([-ls(BETA * z(i)) for i in range(N)]) + 0.5 * nll, rel=1e-12)
    assert out.metrics["dpo/nll_loss"].item() == pytest.approx(nll)


def test_multi_loss_weights():
    cfg = DPOLossConfig(beta=BETA, loss_type=("sigmoid", "sft"), loss_weights=(0.8, 0.2))
    out = dpo_loss(batch(), cfg, N, sum(NC))
    expected = 0.8 * mean([-ls(BETA * z(i)) for i in range(N)]) + 0.2 * sum(NLL) / sum(NC)
    assert out.loss.item() == pytest.approx(expected, rel=1e-12)


def test_reference_free_sets_reference_logps_to_zero():
    cfg = DPOLossConfig(beta=BETA, loss_type=("sigmoid",), reference_free=True)
    out = dpo_loss(batch(), cfg, N, sum(NC))
    assert out.loss.item() == pytest.approx(mean([-ls(BETA * (PC[i] - PR[i])) for i in range(N)]), rel=1e-12)
    with pytest.raises(ValueError, match="reference_free"):
        dpo_loss(batch(ref_chosen_logps=None, ref_rejected_logps=None), DPOLossConfig(), N, sum(NC))


@pytest.mark.parametrize(
    "f_type,g",
    [
        ("reverse_kl", lambda d: d),
        ("forward_kl", lambda d: -math.exp(-d)),
        ("js_divergence", lambda d: ls(d)),
        ("alpha_divergence", lambda d: math.exp((0.3 - 1) * d) / (0.3 - 1)),
    ],
)
def test_f_divergences_in_sigmoid(f_type, g):
    out = run("sigmoid", f_divergence_type=f_type, f_alpha_divergence_coef=0.3)
    expected = mean([-ls(BETA * (g(dc(i)) - g(dr(i)))) for i in range(N)])
    assert out.loss.item() == pytest.approx(expected, rel=1e-12)


def test_alpha_divergence_caps_the_exponent_and_falls_back_at_one():
    big = t([-2000.0])
    assert torch.isfinite(f_divergence_score(big, "alpha_divergence", 0.5)).all()
    assert f_divergence_score(t([0.7]), "alpha_divergence", 1.0).item() == pytest.approx(0.7)


def test_raw_logratio_losses_ignore_the_f_divergence():
    for name in ("nca_pair", "sppo_hard", "apo_zero", "discopop"):
        a = run(name, f_divergence_type="reverse_kl").loss.item()
        b = run(name, f_divergence_type="js_divergence").loss.item()
        assert a == pytest.approx(b, rel=1e-12), name


def test_metrics_are_sums_over_global_pairs():
    out = dpo_loss(batch(), DPOLossConfig(beta=BETA), num_pairs=6, num_chosen_tokens=sum(NC))
    m = out.metrics
    assert m["rewards/chosen"].item() == pytest.approx(sum(BETA * dc(i) for i in range(N)) / 6)
    assert m["rewards/rejected"].item() == pytest.approx(sum(BETA * dr(i) for i in range(N)) / 6)
    assert m["rewards/accuracies"].item() == pytest.approx(sum(dc(i) > dr(i) for i in range(N)) / 6)
    assert m["rewards/margins"].item() == pytest.approx(sum(BETA * z(i) for i in range(N)) / 6)
    assert m["logps/chosen"].item() == pytest.approx(sum(PC) / 6)
    assert m["logps/rejected"].item() == pytest.approx(sum(PR) / 6)
    assert out.loss.item() == pytest.approx(sum(-ls(BETA * z(i)) for i in range(N)) / 6)


def test_micro_batches_add_up():
    cfg = DPOLossConfig(beta=BETA, loss_type=("sigmoid", "ipo", "sft"), loss_weights=(1.0, 0.5, 0.1))
    full = dpo_loss(batch(), cfg, N, sum(NC))
    parts = []
    for rows in (slice(0, 1), slice(1, 3)):
        b = batch()
        parts.append(
            dpo_loss(
                PreferenceBatch(
                    b.chosen_logps[rows],
                    b.rejected_logps[rows],
                    b.ref_chosen_logps[rows],
                    b.ref_rejected_logps[rows],
                    b.chosen_lengths[rows],
                    b.rejected_lengths[rows],
                    b.chosen_nll[rows],
                ),
                cfg,
                N,
                sum(NC),
            )
        )
    assert sum(p.loss.item() for p in parts) == pytest.approx(full.loss.item(), rel=1e-12)
    for k in ("rewards/chosen", "rewards/margins", "logps/chosen"):
        assert sum(p.metrics[k].item() for p in parts) == pytest.approx(full.metrics[k].item(), rel=1e-12)


def test_sigmoid_gradient():
    b = batch()
    out = dpo_loss(b, DPOLossConfig(beta=BETA), N, sum(NC))
    out.loss.backward()
    # d/dpc of -log s(beta z) = -beta (1 - s(beta z)) / N
    expected = [-BETA * (1 - sig(BETA * z(i))) / N for i in range(N)]
    assert torch.allclose(b.chosen_logps.grad, t(expected))
    assert torch.allclose(b.rejected_logps.grad, -t(expected))


def test_wpo_weights_and_clamped_product():
    logits = t([[[2.0, 0.0, -1.0], [0.5, 0.5, 0.0]]])
    tokens = torch.tensor([[0, 2]])
    logp = torch.log_softmax(logits, -1)
    token_logps = logp.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    lsp2 = log_sum_squared_probs(logits)
    mask = t([[1, 1]])
    w = wpo_weights(token_logps, lsp2, mask)
    p = logp.exp()
    expected = math.exp(
        mean([math.log(p[0, k, tokens[0, k]].item() / (p[0, k] ** 2).sum().item()) for k in range(2)])
    )
    assert w.item() == pytest.approx(expected, rel=1e-12)
    cfg = DPOLossConfig(beta=BETA, use_weighting=True)
    cw, rw = t([0.5, 2.0, 0.9]), t([0.5, 1.0, 1.5])
    out = dpo_loss(batch(chosen_weights=cw, rejected_weights=rw), cfg, N, sum(NC))
    omega = [min(1.0, cw[i].item() * rw[i].item()) for i in range(N)]
    assert out.loss.item() == pytest.approx(mean([-ls(BETA * z(i)) * omega[i] for i in range(N)]), rel=1e-12)
    with pytest.raises(ValueError, match="aot"):
        dpo_loss(
            batch(chosen_weights=cw, rejected_weights=rw),
            DPOLossConfig(loss_type=("aot",), use_weighting=True),
            N,
            sum(NC),
        )


def test_ld_sequence_logps_weights_tokens_beyond_the_shared_length():
    token_logps = t([[-1.0, -2.0, -3.0, -4.0, 0.0], [-0.5, -0.5, 0.0, 0.0, 0.0]])
    mask = t([[1, 1, 1, 1, 0], [1, 1, 0, 0, 0]])
    other = torch.tensor([2, 5])
    out = ld_sequence_logps(token_logps, mask, other, alpha=0.25)
    # row 0: l_p = min(4, 2) = 2 -> -1 - 2 + 0.25 * (-3 - 4); row 1: l_p = 2 -> every token full weight
    assert out.tolist() == pytest.approx([-3.0 + 0.25 * -7.0, -1.0])
    assert ld_sequence_logps(token_logps, mask, other, alpha=1.0).tolist() == pytest.approx([-10.0, -1.0])


def test_from_spec_uses_effective_label_smoothing():
    from engine.spec.offline import DPOConfig

    cfg = DPOLossConfig.from_spec(DPOConfig(loss_type="exo_pair"))
    assert cfg.loss_type == ("exo_pair",) and cfg.label_smoothing == 1e-3
    cfg2 = DPOLossConfig.from_spec(
        DPOConfig(loss_type=["sigmoid", "sft"], loss_weights=[1.0, 0.5], rpo_alpha=0.3)
    )
    assert cfg2.weights == (1.0, 0.5) and cfg2.rpo_alpha == 0.3
