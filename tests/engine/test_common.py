import math

import pytest
import torch

from engine.algorithms.common import (
    BatchStream,
    Checkpointer,
    StepMetrics,
    build_optimizer,
    build_scheduler,
    plan_epoch,
    total_optimizer_steps,
)
from engine.spec.offline import DPOConfig, SFTConfig


def test_plan_epoch_uses_every_row_once_and_buckets_by_length():
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(1, 200, (300,), generator=g).tolist()
    batches = plan_epoch(lengths, batch_size=8, seed=1, epoch=0)
    assert sorted(i for b in batches for i in b) == list(range(300))
    assert all(len(b) == 8 for b in batches[:-1]) or sum(len(b) < 8 for b in batches) == 1

    def padding(bs):
        return sum(len(b) * max(lengths[i] for i in b) - sum(lengths[i] for i in b) for b in bs)

    shuffled = torch.randperm(300, generator=g).tolist()
    naive = [shuffled[i : i + 8] for i in range(0, 300, 8)]
    assert padding(batches) < padding(naive) / 3
    assert plan_epoch(lengths, 8, 1, 0) == batches  # deterministic
    assert plan_epoch(lengths, 8, 1, 1) != batches  # a new order every epoch


def test_batch_stream_position_round_trips_across_epochs():
    a = BatchStream(list(range(10)), batch_size=3, seed=5)
    first = a.take(6)  # 4 batches per epoch: crosses into epoch 1
    assert a.epoch == 1 and a.index == 2
    b = BatchStream(list(range(10)), batch_size=3, seed=5)
    b.restore(a.position)
    assert b.take(5) == a.take(5)
    assert first[:4] != first[4:] + first[:2]


def test_total_steps_from_epochs_or_max_steps():
    assert total_optimizer_steps(SFTConfig(max_steps=7), 100) == 7
    assert total_optimizer_steps(SFTConfig(num_train_epochs=2, gradient_accumulation_steps=3), 10) == 7
    assert total_optimizer_steps(SFTConfig(num_train_epochs=0.5), 9) == 5


def test_step_metrics_sums_means_and_averages_over_steps():
    m = StepMetrics()
    m.add_sum("train/loss", torch.tensor(0.25))
    m.add_sum("train/loss", torch.tensor(0.5))
    m.add_mean("x/mean", torch.tensor(6.0), torch.tensor(3.0))
    m.end_step()
    m.add_sum("train/loss", torch.tensor(1.25))
    m.add_mean("x/mean", torch.tensor(2.0), torch.tensor(1.0))
    m.end_step()
    m.set("train/learning_rate", 0.1)
    out = m.compute()
    assert out == pytest.approx({"train/loss": 1.0, "x/mean": 2.0, "train/learning_rate": 0.1})
    assert m.compute() == {}  # reset


def test_optimizer_skips_decay_on_biases_and_norms_and_schedule_warms_up(tiny_model):
    cfg = DPOConfig(learning_rate=1e-3, weight_decay=0.1, warmup_ratio=0.25, lr_scheduler_type="linear")
    opt = build_optimizer(tiny_model, cfg)
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    norm_ids = {id(p) for n, p in tiny_model.named_parameters() if "norm" in n}
    assert norm_ids <= {id(p) for p in no_decay["params"]}
    sched = build_scheduler(opt, cfg, total_steps=8)
    lrs = []
    for _ in range(8):
        lrs.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
    # linear warmup over ceil(0.25 * 8) = 2 steps, then linear decay to 0 at step 8
    expected = [1e-3 * s / 2 for s in range(2)] + [1e-3 * (8 - s) / 6 for s in range(2, 8)]
    assert lrs == pytest.approx(expected)


def test_cosine_schedule_shape(tiny_model):
    cfg = SFTConfig(learning_rate=1.0, lr_scheduler_type="cosine")
    sched = build_scheduler(build_optimizer(tiny_model, cfg), cfg, total_steps=10)
    lrs = []
    for _ in range(10):
        lrs.append(sched.get_last_lr()[0])
        sched.optimizer.step()
        sched.step()
    assert lrs == pytest.approx([0.5 * (1 + math.cos(math.pi * s / 10)) for s in range(10)])


def test_checkpointer_round_trip_prunes_and_finds_latest(tmp_path, tiny_tokenizer):
    from engine.models import build_tiny_model

    model = build_tiny_model()
    cfg = SFTConfig(learning_rate=1e-2)
    opt = build_optimizer(model, cfg)
    sched = build_scheduler(opt, cfg, 10)
    ids = torch.tensor([[5, 6, 7, 8]])
    for _ in range(2):
        model(input_ids=ids, labels=ids).loss.backward()
        opt.step()
        sched.step()
        opt.zero_grad()
    ck = Checkpointer(tmp_path / "checkpoints", save_total_limit=2)
    for step in (1, 2, 3):
        torch.manual_seed(7)
        ck.save(
            step,
            model,
            tiny_tokenizer,
            opt,
            sched,
            data_position={"epoch": 0, "index": step},
            algorithm_state={"k": step},
        )
    expected_rng = torch.rand(3)  # what the RNG gives right after the saved state
    assert [p.name for p in ck.all()] == ["checkpoint-2", "checkpoint-3"]
    assert ck.latest().name == "checkpoint-3"
    (tmp_path / "checkpoints" / ".checkpoint-4.tmp").mkdir()  # a half-written one is ignored
    assert ck.latest().name == "checkpoint-3"

    fresh = build_tiny_model()
    fresh_opt = build_optimizer(fresh, cfg)
    fresh_sched = build_scheduler(fresh_opt, cfg, 10)
    torch.manual_seed(123)
    state = ck.load(ck.latest(), fresh, fresh_opt, fresh_sched)
    assert state["step"] == 3 and state["data_position"] == {"epoch": 0, "index": 3}
    assert state["algorithm_state"] == {"k": 3}
    for (n, a), (_, b) in zip(model.named_parameters(), fresh.named_parameters(), strict=True):
        assert torch.equal(a, b), n
    assert fresh_sched.get_last_lr() == sched.get_last_lr()
    assert fresh_opt.state_dict()["state"][0]["step"] == opt.state_dict()["state"][0]["step"]
    assert torch.equal(torch.rand(3), expected_rng)


def test_sample_batches_is_a_seeded_permutation_per_epoch():
    from engine.algorithms.common import sample_batches

    a = sample_batches(10, 4, seed=1, epoch=0)
    assert [len(b) for b in a] == [4, 4, 2]
    assert sorted(i for b in a for i in b) == list(range(10))
    assert a == sample_batches(10, 4, seed=1, epoch=0) and a != sample_batches(10, 4, seed=1, epoch=1)
    assert sample_batches(5, 2, seed=1, epoch=0, shuffle=False) == [[0, 1], [2, 3], [4]]
