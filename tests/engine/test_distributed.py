"""Several processes on the CPU (gloo, torchrun): a 2-process job computes what 1 process computes on the
same global batch. 1 process uses per_device_train_batch_size 4, 2 processes 2 each, so both plan the same
global micro-batches. Gradients are compared through a single SGD step without clipping: the weight change
is -learning_rate * gradient.

Tolerances: losses rtol 1e-5 (float32 sums in another order), weight changes atol 1e-6 at lr 1e-1.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from tests.engine.conftest import REPO, metrics_by_step, tiny_spec
from worker.runner import engine_command

pytestmark = pytest.mark.slow

SGD = {"optim": "sgd", "learning_rate": 0.1, "max_grad_norm": 0.0, "warmup_steps": 0}


def run_procs(
    spec: dict[str, Any], out: Path, nproc: int, resume: bool = False, timeout: float = 300
) -> tuple[int, list[dict[str, Any]], str]:
    """Run a job as the worker would (torchrun for nproc > 1); (exit status, events, stderr)."""
    out.mkdir(parents=True, exist_ok=True)
    spec_path = out / "spec.json"
    spec_path.write_text(json.dumps(spec))
    cmd = engine_command(sys.executable, spec_path, out, resume=resume, processes=nproc)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    events = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    return proc.returncode, events, proc.stderr


def two_processes(spec: dict[str, Any], distributed: dict[str, Any] | None = None) -> dict[str, Any]:
    cfg = dict(spec["config"])
    cfg["per_device_train_batch_size"] //= 2
    return {**spec, "config": cfg, "distributed": {"num_processes": 2, **(distributed or {})}}


def weights(out: Path) -> dict[str, torch.Tensor]:
    return load_file(str(out / "final" / "model.safetensors"))


def all_metrics(events: list[dict[str, Any]]) -> dict[int, dict[str, float]]:
    """Every metric of each step, the training ones and the evaluation ones (two events) together."""
    out: dict[int, dict[str, float]] = {}
    for e in events:
        if e["type"] == "metrics":
            out.setdefault(e["step"], {}).update(e["metrics"])
    return out


def compare(tmp_path: Path, spec: dict[str, Any], distributed: dict[str, Any] | None = None) -> tuple:
    code, one, _ = run_procs(spec, tmp_path / "one", 1)
    assert code == 0, one[-1]
    code, two, stderr = run_procs(two_processes(spec, distributed), tmp_path / "two", 2)
    assert code == 0, stderr[-3000:]
    a, b = all_metrics(one), all_metrics(two)
    assert sorted(a) == sorted(b)
    for step in a:
        assert b[step]["train/loss"] == pytest.approx(a[step]["train/loss"], rel=1e-5), step
    return a, b, two


def assert_same_gradients(tmp_path: Path) -> None:
    w1, w2 = weights(tmp_path / "one"), weights(tmp_path / "two")
    from engine.models import build_tiny_model

    w0 = build_tiny_model().state_dict()
    moved = 0
    for k in w1:
        torch.testing.assert_close(w2[k], w1[k], rtol=0, atol=1e-6, msg=k)
        moved += int(not torch.equal(w1[k], w0[k]))
    assert moved > 0  # the step did change the model


def test_sft_two_processes_match_one(tmp_path):
    spec = tiny_spec("sft", "chat", num_rows=8, max_steps=1, **SGD)
    compare(tmp_path, spec)
    assert_same_gradients(tmp_path)


def test_dpo_two_processes_match_one(tmp_path):
    spec = tiny_spec("dpo", "preferences", num_rows=8, max_steps=1, **SGD)
    compare(tmp_path, spec)
    assert_same_gradients(tmp_path)


def test_short_last_batch_leaves_no_rank_idle(tmp_path):
    # 5 rows, global micro-batch 4: the second step's batch has one row, so rank 1 runs a zeroed copy.
    spec = tiny_spec("sft", "chat", num_rows=5, max_steps=2, per_device_train_batch_size=4, **SGD)
    compare(tmp_path, spec)
    assert_same_gradients(tmp_path)


@pytest.mark.parametrize(
    ("algorithm", "builtin", "num_rows", "statistic"),
    [("kto", "preferences", 6, "kto/kl"), ("bco", "unpaired", 5, "bco/delta")],
)
def test_batch_statistics_are_taken_over_every_rank(tmp_path, algorithm, builtin, num_rows, statistic):
    # KTO's z0 and BCO's running reward mean come from the whole micro-batch, not a rank's share. Both are
    # 0 while the policy is its reference, so the job runs 3 steps at a high learning rate. BCO's 5 rows in
    # batches of 4 give a step of 1 row, where rank 1 runs a stand-in that must add nothing to the mean.
    spec = tiny_spec(algorithm, builtin, num_rows=num_rows, max_steps=3, **{**SGD, "learning_rate": 1.0})
    spec["eval_dataset"] = {"builtin": builtin, "num_rows": 3, "seed": 1}  # every rank scores all of it
    one, two, _ = compare(tmp_path, spec)
    assert two[3]["eval/loss"] == pytest.approx(one[3]["eval/loss"], rel=1e-5)
    assert any(abs(m[statistic]) > 1e-4 for m in one.values())  # the statistic did move
    for step in one:
        assert two[step][statistic] == pytest.approx(one[step][statistic], rel=1e-5, abs=1e-7), step


def test_only_rank_zero_writes_events_and_checkpoints(tmp_path):
    spec = two_processes(tiny_spec("sft", "chat", num_rows=8, max_steps=2, save_steps=1))
    code, events, stderr = run_procs(spec, tmp_path, 2)
    assert code == 0, stderr[-3000:]
    assert [e["type"] for e in events].count("done") == 1
    assert [e["step"] for e in events if e["type"] == "checkpoint"] == [1, 2]
    assert any("processes=2" in e.get("message", "") for e in events)
    ck = tmp_path / "checkpoints" / "checkpoint-2"
    assert (ck / "rng-0.pt").exists() and (ck / "rng-1.pt").exists()


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_launchers_on_localhost_form_one_job(tmp_path):
    # What two machines would run: the same command with --nnodes 2 and one c10d rendezvous endpoint.
    spec = {
        **two_processes(tiny_spec("sft", "chat", num_rows=8, max_steps=2)),
        "distributed": {"num_processes": 2, "num_machines": 2},
    }
    spec_path = tmp_path / "spec.json"
    spec_path.write_text(json.dumps(spec))
    cmd = engine_command(
        sys.executable,
        spec_path,
        tmp_path,
        resume=False,
        processes=2,
        machines=2,
        rendezvous=f"127.0.0.1:{free_port()}",
        job_id="two-nodes",
    )
    assert "--nnodes=2" in cmd and "--nproc-per-node=1" in cmd
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    nodes = [
        subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    try:
        outputs = [node.communicate(timeout=300) for node in nodes]
    finally:
        for node in nodes:
            if node.poll() is None:
                node.kill()
    assert [node.returncode for node in nodes] == [0, 0], outputs[0][1][-2000:] + outputs[1][1][-2000:]
    events = [json.loads(line) for out, _ in outputs for line in out.splitlines() if line.startswith("{")]
    assert [e["type"] for e in events].count("done") == 1  # rank 0 speaks for the job
    assert any("processes=2" in e.get("message", "") for e in events)
    assert (tmp_path / "final" / "model.safetensors").exists()


# ------------------------------------------------------------------------------- DeepSpeed ZeRO (CPU)

needs_deepspeed = pytest.mark.skipif(
    importlib.util.find_spec("deepspeed") is None,
    reason="the deepspeed extra is not installed (make deepspeed)",
)


def zero(stage: int) -> dict[str, Any]:
    return {"distributed_type": "DEEPSPEED", "deepspeed_config": {"zero_stage": stage}}


@needs_deepspeed
@pytest.mark.parametrize("stage", [0, 2, 3])
def test_sft_zero_stages_match_one_process(tmp_path, stage):
    spec = tiny_spec("sft", "chat", num_rows=8, max_steps=1, **SGD)
    _, metrics, events = compare(tmp_path, spec, zero(stage))
    if stage == 0:
        assert_same_gradients(tmp_path)
    assert any(f'"stage": {stage}' in e.get("message", "") for e in events)  # DeepSpeed's config, echoed
    assert metrics[1]["train/grad_norm"] > 0


@needs_deepspeed
def test_zero3_in_a_single_process_trains_what_plain_training_does(tmp_path):
    # ZeRO on one GPU: no launcher, DeepSpeed still gets its (one-process) group; same step as without it.
    spec = tiny_spec("sft", "chat", num_rows=8, max_steps=1, **SGD)
    code, plain, _ = run_procs(spec, tmp_path / "one", 1)
    assert code == 0, plain[-1]
    alone = {**spec, "distributed": {"num_processes": 1, **zero(3)}}
    code, events, stderr = run_procs(alone, tmp_path / "two", 1)
    assert code == 0, stderr[-3000:]
    assert any('"stage": 3' in e.get("message", "") for e in events)
    a, b = all_metrics(plain), all_metrics(events)
    assert b[1]["train/loss"] == pytest.approx(a[1]["train/loss"], rel=1e-5)
    assert_same_gradients(tmp_path)


@needs_deepspeed
def test_dpo_zero3_matches_one_process(tmp_path):
    spec = tiny_spec("dpo", "preferences", num_rows=8, max_steps=1, **SGD)
    compare(tmp_path, spec, zero(3))


@needs_deepspeed
def test_resumed_zero3_run_equals_the_uninterrupted_one(tmp_path):
    spec = two_processes(
        tiny_spec("sft", "chat", num_rows=12, max_steps=3, save_steps=1, save_total_limit=None), zero(3)
    )
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    code, events, stderr = run_procs(spec, full, 2)
    assert code == 0, stderr[-3000:]
    (resumed / "checkpoints").mkdir(parents=True)
    shutil.copytree(full / "checkpoints" / "checkpoint-2", resumed / "checkpoints" / "checkpoint-2")
    assert (resumed / "checkpoints" / "checkpoint-2" / "deepspeed").is_dir()  # optimizer shards
    code, again, stderr = run_procs(spec, resumed, 2, resume=True)
    assert code == 0, stderr[-3000:]
    a, b = metrics_by_step(events), metrics_by_step(again)
    assert sorted(b) == [3]
    for key in ("train/loss", "train/grad_norm", "train/learning_rate"):
        assert b[3][key] == pytest.approx(a[3][key], rel=1e-5), key
    w_full, w_resumed = weights(full), weights(resumed)
    for k in w_full:
        torch.testing.assert_close(w_resumed[k], w_full[k], rtol=1e-5, atol=1e-6, msg=k)
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(str(full / "final"))  # a plain Hugging Face model


# ---------------------------------------------------------------------------------------------- GRPO

SEEDED = REPO / "tests" / "engine" / "seeded_rollout.py"


def run_seeded(spec: dict[str, Any], out: Path, nproc: int) -> tuple[int, list[dict[str, Any]], str]:
    out.mkdir(parents=True, exist_ok=True)
    (out / "spec.json").write_text(json.dumps(spec))
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2", "--standalone"]
    cmd = [*(launcher if nproc > 1 else [sys.executable]), str(SEEDED), "--spec", str(out / "spec.json")]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [*cmd, "--out", str(out)], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )
    events = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    return proc.returncode, events, proc.stderr


@pytest.mark.parametrize("distributed", [{}, zero(2)], ids=["gradient-sum", "zero2"])
def test_grpo_two_processes_match_one(tmp_path, distributed, hash_reward):
    if distributed and importlib.util.find_spec("deepspeed") is None:
        pytest.skip("the deepspeed extra is not installed (make deepspeed)")
    # 2 prompts x 4 generations: one process holds both groups, two processes one whole group each.
    spec = {
        "algorithm": "grpo",
        "model": "tiny:llama",
        "dataset": {"builtin": "arithmetic", "num_rows": 8},
        "config": {
            "max_steps": 1,
            "per_device_train_batch_size": 8,
            "num_generations": 4,
            "max_completion_length": 6,
            "beta": 0.04,
            "logging_steps": 1,
            "save_steps": 100,
            **SGD,
        },
        "reward_funcs": hash_reward,  # a reward that differs between completions of a group
    }
    code, one, stderr = run_seeded(spec, tmp_path / "one", 1)
    assert code == 0, stderr[-3000:]
    code, two, stderr = run_seeded(two_processes(spec, distributed), tmp_path / "two", 2)
    assert code == 0, stderr[-3000:]
    a, b = metrics_by_step(one)[1], metrics_by_step(two)[1]
    assert a["rollout/reward_std"] > 0  # the groups' rewards differ: the loss is not trivially 0
    assert b["train/loss"] == pytest.approx(a["train/loss"], rel=1e-5, abs=1e-7)
    assert b["rollout/reward_mean"] == pytest.approx(a["rollout/reward_mean"], rel=1e-6)
    if not distributed:
        assert_same_gradients(tmp_path)


# -------------------------------------------------------------------------------------- distillation


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    """A tiny:llama-shaped teacher with other weights than the student's (the divergence is not 0)."""
    from engine.models import build_tiny_model, build_tiny_tokenizer, save_model

    path = tmp_path_factory.mktemp("teacher")
    save_model(build_tiny_model(seed=7), build_tiny_tokenizer(), path)
    return str(path)


def distill_spec(algorithm: str, teacher: str, **config: Any) -> dict[str, Any]:
    base = {"teacher_model_name_or_path": teacher, "max_new_tokens": 6, "max_completion_length": 6}
    if algorithm == "gkd":
        base.pop("max_completion_length")
    return tiny_spec(algorithm, "chat", num_rows=8, max_steps=1, **{**base, **SGD, **config})


def test_gkd_two_processes_match_one(tmp_path, teacher):
    # lmbda 0: the dataset's completions, the same rows in 1 and 2 processes, so the losses are comparable;
    # the divisor (completion tokens) is summed over the ranks.
    spec = distill_spec("gkd", teacher, lmbda=0.0, padding_free=True)
    a, _, _ = compare(tmp_path, spec)
    assert a[1]["train/loss"] > 0
    assert_same_gradients(tmp_path)


@needs_deepspeed
def test_gold_zero3_matches_one_process_and_samples_from_the_student(tmp_path, teacher):
    # The student's parameters are partitioned, the teacher is whole on each rank. The loss is compared on
    # the dataset's completions (sampled ones differ with the ranks' random streams); a second run has the
    # student sample every completion (lmbda 1) on its gathered weights, ranks decoding different lengths.
    spec = distill_spec("gold", teacher, lmbda=0.0)
    _, _, events = compare(tmp_path, spec, zero(3))
    assert any('"stage": 3' in e.get("message", "") for e in events)
    sampled = two_processes({**spec, "config": {**spec["config"], "lmbda": 1.0, "max_steps": 2}}, zero(3))
    code, events, stderr = run_procs(sampled, tmp_path / "on-policy", 2)
    assert code == 0, stderr[-3000:]
    steps = metrics_by_step(events)
    assert [steps[s]["distill/on_policy_fraction"] for s in (1, 2)] == [1.0, 1.0]
    assert all(steps[s]["train/loss"] > 0 for s in (1, 2))


def _from_main_worker(rank: int, init: str, out: str) -> None:
    from engine import distributed

    os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank))
    torch.distributed.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    try:
        Path(out, f"{rank}.json").write_text(json.dumps(distributed.from_main(0.25 + rank)))
    finally:
        torch.distributed.destroy_process_group()


def test_a_decision_drawn_on_each_rank_is_rank_zeros_everywhere(tmp_path):
    # distillation's per-micro-batch coin: rank 1 drew 1.25, both ranks act on rank 0's 0.25
    import torch.multiprocessing as mp

    init = f"file://{tmp_path / 'store'}"
    mp.spawn(_from_main_worker, args=(init, str(tmp_path)), nprocs=2, join=True)
    assert [json.loads((tmp_path / f"{r}.json").read_text()) for r in (0, 1)] == [0.25, 0.25]
