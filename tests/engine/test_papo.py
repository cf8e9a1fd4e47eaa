"""PAPO: image masks (random / patch / grid, deterministic under the job's seed) and the perception and
double-entropy terms of a real micro-step, checked against a float64 computation from full logits."""

from __future__ import annotations

import copy
import io
import math

import pytest
import torch

from engine.algorithms.common import StepMetrics, TrainContext
from engine.algorithms.papo import PAPOTrainer, mask_seed
from engine.events import EventWriter
from engine.functional import GlobalCounts
from engine.multimodal.masking import mask_vision, pixel_mask
from engine.spec import parse_job_spec


def pixels(n: int = 2) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(0)) + 5.0  # no zeros


@pytest.mark.parametrize("kind", ["random", "patch", "grid"])
def test_masks_are_deterministic_under_the_seed(kind):
    v = {"pixel_values": pixels()}
    a, b = mask_vision(v, 0.5, kind, seed=7, patch=8), mask_vision(v, 0.5, kind, seed=7, patch=8)
    assert torch.equal(a["pixel_values"], b["pixel_values"])
    if kind != "grid":  # the grid pattern is fixed; the others change with the seed
        c = mask_vision(v, 0.5, kind, seed=8, patch=8)
        assert not torch.equal(a["pixel_values"], c["pixel_values"])
    kept = a["pixel_values"] != 0
    assert torch.equal(a["pixel_values"][kept], v["pixel_values"][kept])  # the rest is untouched


def test_random_mask_zeroes_each_pixel_value_with_probability_ratio():
    m = pixel_mask(torch.Size([64, 3, 32, 32]), 0.6, "random", torch.Generator().manual_seed(1), 8)
    assert m.float().mean().item() == pytest.approx(0.6, abs=0.01)
    assert not torch.equal(m[:, 0], m[:, 1])  # channels are drawn independently


def test_patch_mask_zeroes_whole_cells_round_ratio_of_them():
    m = pixel_mask(torch.Size([3, 3, 32, 32]), 0.3, "patch", torch.Generator().manual_seed(2), 8)
    cells = m[:, 0].reshape(3, 4, 8, 4, 8).permute(0, 1, 3, 2, 4).reshape(3, 16, 64)
    assert torch.all(cells.all(-1) | ~cells.any(-1))  # every 8x8 cell is all zeroed or all kept
    assert cells.all(-1).sum(-1).tolist() == [round(0.3 * 16)] * 3
    assert not torch.equal(cells[0], cells[1])  # each image draws its own cells


def test_grid_mask_spreads_floor_ratio_cells_evenly():
    m = pixel_mask(torch.Size([1, 3, 32, 32]), 0.25, "grid", torch.Generator(), 8)
    chosen = [k for k in range(16) if m[0, 0, (k // 4) * 8, (k % 4) * 8]]
    assert chosen == [3, 7, 11, 15]  # floor((k+1)/4) > floor(k/4)


def test_patch_masks_need_image_shaped_pixels():
    with pytest.raises(ValueError, match="mask_type 'random'"):
        pixel_mask(torch.Size([10, 588]), 0.5, "patch", torch.Generator(), 14)


def papo_trainer(tmp_path, **config) -> PAPOTrainer:
    cfg = {
        "per_device_train_batch_size": 4,
        "num_generations": 2,
        "max_completion_length": 4,
        "max_prompt_length": 128,
        "max_steps": 1,
        "perception_loss_weight": 0.5,  # large, so every term matters in the comparison
        "der_loss_weight1": 0.07,
        "der_loss_weight2": 0.11,
        "mask_ratio": 0.6,
        "seed": 3,
        **config,
    }
    spec = parse_job_spec(
        {
            "algorithm": "papo",
            "model": "tiny:vlm",
            "dataset": {"builtin": "shapes", "num_rows": 8},
            "reward_funcs": [{"name": "accuracy"}],
            "config": cfg,
        }
    )
    ctx = TrainContext.for_spec(spec, tmp_path, events=EventWriter(io.StringIO()))
    return PAPOTrainer(spec, ctx)


def expected_terms(model, mb, masked_pixels, cfg, n_tokens: int) -> float:
    """-gamma KL_prc + eta1 H + eta2 H_mask in float64, token by token from the full logits."""
    m = copy.deepcopy(model).double().eval()
    pos = (mb.attention_mask.cumsum(-1) - 1).clamp(min=0)
    K = mb.logits_to_keep

    def per_token(pixel_values):
        with torch.no_grad():
            z = (
                m(
                    input_ids=mb.input_ids,
                    attention_mask=mb.attention_mask,
                    position_ids=pos,
                    pixel_values=pixel_values.double(),
                ).logits[:, -K - 1 : -1]
                / cfg.temperature
            )
        out = []
        for i in range(z.shape[0]):
            row = []
            for t in range(K):
                zz = z[i, t].tolist()
                top = max(zz)
                logz = top + math.log(sum(math.exp(v - top) for v in zz))
                target = int(mb.input_ids[i, -K + t])
                entropy = -sum(math.exp(v - logz) * (v - logz) for v in zz)
                row.append((zz[target] - logz, entropy))
            out.append(row)
        return out

    real, masked = per_token(mb.vision["pixel_values"]), per_token(masked_pixels)
    total = 0.0
    for i in range(len(real)):
        for t in range(K):
            if not mb.loss_mask[i, t]:
                continue
            (lp, h), (lpm, hm) = real[i][t], masked[i][t]
            kl = min(max(math.exp(lpm - lp) - (lpm - lp) - 1.0, 0.0), 0.2)
            total += -cfg.perception_loss_weight * kl + cfg.der_loss_weight1 * h + cfg.der_loss_weight2 * hm
    return total / n_tokens


@pytest.mark.parametrize("mask_type", ["random", "patch"])
def test_perception_and_entropy_terms_match_a_float64_computation(tmp_path, mask_type):
    trainer = papo_trainer(tmp_path, mask_type=mask_type)
    rollout = trainer.generate()
    mb = rollout.micro_batch(list(range(len(rollout))))
    n = int(mb.loss_mask.sum())
    counts = GlobalCounts(num_tokens=torch.tensor(float(n)), num_sequences=torch.tensor(float(len(rollout))))
    logps, entropies = trainer._logps(trainer.model, mb, with_entropy=True)
    metrics = StepMetrics()
    got = trainer.auxiliary_loss(mb, logps, entropies, counts, metrics)
    seed = mask_seed(trainer.ctx.seed, trainer.ctx.step, 0)
    masked = mask_vision(mb.vision, 0.6, mask_type, seed, trainer.patch)["pixel_values"]
    want = expected_terms(trainer.model, mb, masked, trainer.cfg, n)
    assert got.item() == pytest.approx(want, rel=1e-4, abs=1e-6)
    values = metrics.compute()
    assert {"papo/perception_kl", "papo/entropy", "papo/masked_entropy", "papo/loss"} <= set(values)
    assert values["papo/entropy"] > 0 and values["papo/masked_entropy"] > 0
    got.backward()  # the terms carry gradients to the policy
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in trainer.model.parameters())


def test_masks_follow_the_job_seed_and_the_step(tmp_path):
    a, b = papo_trainer(tmp_path / "a"), papo_trainer(tmp_path / "b")
    mb = a.generate().micro_batch([0, 1])
    first = a.masked_vision(mb)["pixel_values"]
    assert torch.equal(first, b.masked_vision(mb)["pixel_values"])  # same seed, same step, same place
    assert not torch.equal(first, a.masked_vision(mb)["pixel_values"])  # the next micro-step differs
    c = papo_trainer(tmp_path / "c", seed=4)
    assert not torch.equal(first, c.masked_vision(mb)["pixel_values"])
