"""Rewards -> advantages against plain-Python statistics."""

import math
import statistics

import pytest
import torch

from engine.advantages import (
    combine_rewards,
    gfpo_keep_mask,
    group_advantages,
    reward_stats,
    rloo_advantages,
    rloo_sequence_kl,
    soft_overlong_punishment,
    zero_variance_groups,
)

D = torch.float64
NAN = float("nan")


def t(x):
    return torch.tensor(x, dtype=D)


REWARDS = [1.0, 2.0, 4.0, 0.5, 3.0, 3.0, 3.0, 3.0]  # two groups of 4; the second has equal rewards


def test_group_scaling():
    adv, stats = group_advantages(t(REWARDS), 4, "group")
    g0 = REWARDS[:4]
    mu, sd = statistics.mean(g0), statistics.stdev(g0)
    expected = [(r - mu) / (sd + 1e-4) for r in g0] + [0.0] * 4
    assert adv.tolist() == pytest.approx(expected, rel=1e-12)
    assert stats["rollout/frac_reward_zero_std"].item() == 0.5
    assert stats["rollout/reward_std"].item() == pytest.approx(statistics.stdev(REWARDS))


def test_batch_scaling_uses_group_mean_and_batch_std():
    adv, _ = group_advantages(t(REWARDS), 4, "batch")
    sd = statistics.stdev(REWARDS)
    means = [statistics.mean(REWARDS[:4])] * 4 + [3.0] * 4
    assert adv.tolist() == pytest.approx([(r - m) / (sd + 1e-4) for r, m in zip(REWARDS, means, strict=True)])


def test_no_scaling_and_boolean_aliases():
    adv, _ = group_advantages(t(REWARDS), 4, "none")
    mu = statistics.mean(REWARDS[:4])
    assert adv.tolist() == pytest.approx([r - mu for r in REWARDS[:4]] + [0.0] * 4)
    assert torch.equal(group_advantages(t(REWARDS), 4, False)[0], adv)
    assert torch.equal(group_advantages(t(REWARDS), 4, True)[0], group_advantages(t(REWARDS), 4, "group")[0])


def test_two_generations_give_plus_minus_one_over_sqrt_two():
    adv, _ = group_advantages(t([0.0, 1.0]), 2, "group")
    d = 1 / math.sqrt(2)
    assert adv.tolist() == pytest.approx([-0.5 / (d + 1e-4), 0.5 / (d + 1e-4)])


def test_unscorable_rows_are_left_out_and_get_zero():
    r = [1.0, NAN, 3.0, 2.0]
    adv, stats = group_advantages(t(r), 4, "group")
    valid = [1.0, 3.0, 2.0]
    mu, sd = statistics.mean(valid), statistics.stdev(valid)
    assert adv.tolist() == pytest.approx(
        [(1 - mu) / (sd + 1e-4), 0.0, (3 - mu) / (sd + 1e-4), (2 - mu) / (sd + 1e-4)]
    )
    assert stats["rollout/reward_mean"].item() == pytest.approx(mu)
    all_nan, _ = group_advantages(t([NAN, NAN, 1.0, 2.0]), 2, "group")
    assert all_nan[:2].tolist() == [0.0, 0.0]


def test_reward_stats_are_on_the_raw_weighted_reward():
    # weights (1, 2); NaN counts as 0 in a row with another value; an all-NaN row is left out
    per_func = t([[1.0, 0.5], [0.0, -1.0], [1.0, NAN], [NAN, NAN]])
    stats = reward_stats(per_func, [1.0, 2.0])
    raw = [2.0, -2.0, 1.0]
    assert stats["rollout/reward_mean"].item() == pytest.approx(1 / 3)
    assert stats["rollout/reward_std"].item() == pytest.approx(statistics.stdev(raw))
    # normalize_then_sum would train on rewards whose mean is 0; the logged mean is the raw one
    per_func = t([[1.0], [3.0], [0.0], [2.0]])
    assert reward_stats(per_func)["rollout/reward_mean"].item() == pytest.approx(1.5)
    assert combine_rewards(per_func, None, "normalize_then_sum", 2).sum().item() == pytest.approx(0.0)


def test_group_size_must_divide_the_batch():
    with pytest.raises(ValueError, match="num_generations"):
        group_advantages(t([1.0, 2.0, 3.0]), 2)
    with pytest.raises(ValueError, match="scale_rewards"):
        group_advantages(t([1.0, 2.0]), 2, "global")


def test_combine_sum_then_normalize_with_missing_values():
    per = t([[1.0, NAN], [NAN, NAN], [0.5, 2.0]])
    out = combine_rewards(per, [2.0, 0.5], "sum_then_normalize")
    assert out[0].item() == 2.0 and math.isnan(out[1].item()) and out[2].item() == pytest.approx(2.0)


def test_combine_normalize_then_sum_and_batch_whitening():
    per = [[1.0, 10.0], [3.0, 20.0], [2.0, 5.0], [2.0, 7.0]]
    w = [1.0, 0.5]
    out = combine_rewards(t(per), w, "normalize_then_sum", num_generations=2)
    expected = []
    for g in (per[:2], per[2:]):
        cols = list(zip(*g, strict=True))
        normed = [
            [(row[k] - statistics.mean(cols[k])) / (statistics.stdev(cols[k]) + 1e-4) for k in range(2)]
            for row in g
        ]
        expected += [sum(w[k] * row[k] for k in range(2)) for row in normed]
    assert out.tolist() == pytest.approx(expected, rel=1e-12)
    adv, _ = group_advantages(out, 2, "group", aggregation="normalize_then_sum")
    mu, sd = statistics.mean(expected), statistics.stdev(expected)
    assert adv.tolist() == pytest.approx([(x - mu) / (sd + 1e-4) for x in expected], rel=1e-12)


def test_combine_checks_weights():
    with pytest.raises(ValueError, match="reward_weights"):
        combine_rewards(t([[1.0, 2.0]]), [1.0])


def test_rloo_leave_one_out_closed_form():
    r = [1.0, 2.0, 6.0, 0.0, 0.0, 4.0]
    adv, _ = rloo_advantages(t(r), 3)
    expected = []
    for g in (r[:3], r[3:]):
        expected += [3 / 2 * (x - statistics.mean(g)) for x in g]
    assert adv.tolist() == pytest.approx(expected, rel=1e-12)


def test_rloo_clip_kl_nan_and_normalisation():
    r = [5.0, -1.0, NAN, 0.5, NAN, NAN]
    kl = [1.0, 2.0, 0.0, 0.0, 0.0, 0.0]
    adv, _ = rloo_advantages(t(r), 2, kl=t(kl), beta=0.1, reward_clip_range=(-0.5, 2.0))
    a0 = (2.0 - 0.1) - (-0.5 - 0.2)
    assert adv.tolist() == pytest.approx([a0, -a0, 0.0, 0.0, 0.0, 0.0])  # single valid reward -> 0
    norm, _ = rloo_advantages(t([1.0, 2.0, 3.0, 5.0]), 2, normalize_advantages=True)
    raw = [-1.0, 1.0, -2.0, 2.0]
    sd = statistics.stdev(raw)
    assert norm.tolist() == pytest.approx([x / (sd + 1e-4) for x in raw])


def test_rloo_sequence_kl():
    old = t([[-1.0, -2.0, -3.0]])
    ref = t([[-1.5, -1.0, 0.0]])
    assert rloo_sequence_kl(old, ref, t([[1, 1, 0]])).tolist() == pytest.approx([0.5 - 1.0])


def test_soft_overlong_punishment():
    out = soft_overlong_punishment(torch.tensor([50, 80, 90, 100, 110]), 100, 20)
    assert out.tolist() == pytest.approx([0.0, 0.0, -0.5, -1.0, -1.0])
    zero_cache = soft_overlong_punishment(torch.tensor([100, 101]), 100, 0)
    assert zero_cache.tolist() == [0.0, -1.0]


def test_zero_variance_groups():
    r = t([1.0, 1.0, 0.0, 1.0, NAN, 2.0, 3.0, 3.0])
    assert zero_variance_groups(r, 2).tolist() == [True, False, True, True]


def test_gfpo_keep_shortest_and_reward_per_token():
    lengths = torch.tensor([10, 3, 7, 3, 20, 5, 8, 1])
    keep = gfpo_keep_mask(4, 2, lengths, metric="shortest")
    assert keep.tolist() == [False, True, False, True, False, True, False, True]
    rewards = t([1.0, 0.0, 1.4, 0.6, 2.0, 1.0, NAN, 0.05])
    keep2 = gfpo_keep_mask(4, 2, lengths, rewards=rewards, metric="reward_per_token")
    # group 0: 0.1, 0, 0.2, 0.2 -> rows 2, 3; group 1: 0.1, 0.2, nan, 0.05 -> rows 4, 5
    assert keep2.tolist() == [False, False, True, True, True, True, False, False]
    with pytest.raises(ValueError, match="num_remains_in_group"):
        gfpo_keep_mask(4, 5, lengths)
