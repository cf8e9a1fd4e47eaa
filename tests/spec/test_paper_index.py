"""Every config block of the paper index is accepted as written, and the presets carry its exact values.

The blocks are read from the reference copy of the paper index that sits beside the repository
(`../shared/reference/paper-index.md`); without it the block tests are skipped, the preset tests still run.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from engine.presets import apply_preset, load_presets
from engine.spec import parse_job_spec
from engine.spec.job import BUILTIN_DATASET_ALGORITHMS

INDEX = Path(__file__).resolve().parents[2].parent / "shared" / "reference" / "paper-index.md"
CONFIG_TO_ALGORITHM = {
    "GRPOConfig": "grpo",
    "DPOConfig": "dpo",
    "KTOConfig": "kto",
    "SFTConfig": "sft",
    "RLOOConfig": "rloo",
    "CPOConfig": "cpo",
    "RewardConfig": "reward",
    "GKDConfig": "gkd",
    "GOLDConfig": "gold",
    "PAPOConfig": "papo",
}
BASE = {"model": "tiny:llama"}
# older names the spec accepts but stores under the current one
STORED_AS = {"vllm_importance_sampling_cap": "vllm_importance_sampling_clip_max"}


def _dataset(algorithm: str) -> dict:
    fits = [name for name, algos in BUILTIN_DATASET_ALGORITHMS.items() if algorithm in algos]
    return {"builtin": fits[0]}


def _add_missing_commas(code: str) -> str:
    """One entry's block lacks commas between keyword arguments (and some use a bare `...`)."""
    lines = [ln for ln in code.splitlines() if ln.strip() not in ("...", "...,")]
    for i, line in enumerate(lines[:-1]):
        body = line.split("#", 1)[0].rstrip()
        nxt = lines[i + 1].strip()
        argument_line = re.match(r"\s+\w+=", body) is not None
        if argument_line and not body.endswith((",", "(")) and re.match(r"\w+=", nxt):
            lines[i] = body + "," + line[len(body) :]
    return "\n".join(lines)


def _blocks() -> list[tuple[str, dict]]:
    if not INDEX.exists():
        return []
    found = []
    for code in re.findall(r"```python\n(.*?)```", INDEX.read_text(), flags=re.S):
        code = _add_missing_commas(code)
        for node in ast.walk(ast.parse(code)):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) in CONFIG_TO_ALGORITHM:
                kwargs = {k.arg: ast.literal_eval(k.value) for k in node.keywords if k.arg}
                found.append((CONFIG_TO_ALGORITHM[node.func.id], kwargs))
    return found


BLOCKS = _blocks()


def _job(algorithm: str, config: dict) -> dict:
    job = {**BASE, "dataset": _dataset(algorithm), "algorithm": algorithm, "config": config}
    if config.get("use_vllm"):
        job["hardware"] = {"accelerator": "gpu", "gpus": 1}
    return job


@pytest.mark.skipif(not BLOCKS, reason="paper index reference copy not found beside the repository")
def test_paper_index_has_the_expected_number_of_config_blocks():
    assert len(BLOCKS) >= 30


@pytest.mark.parametrize("algorithm,config", BLOCKS, ids=[f"{a}-{i}" for i, (a, _) in enumerate(BLOCKS)])
def test_paper_index_block_is_accepted_as_written(algorithm, config):
    spec = parse_job_spec(_job(algorithm, config))
    for key, value in config.items():
        got = getattr(spec.config, STORED_AS.get(key, key))
        if key == "loss_type" and algorithm == "dpo":
            assert got == [value]
        else:
            assert got == value, key


@pytest.mark.parametrize("algorithm,config", BLOCKS, ids=[f"{a}-{i}" for i, (a, _) in enumerate(BLOCKS)])
def test_paper_index_block_has_a_preset_with_its_exact_values(algorithm, config):
    matches = [
        p
        for p in load_presets().values()
        if p.algorithm in (algorithm, "gfpo")
        and all(p.config.get(STORED_AS.get(k, k), _MISSING) == v for k, v in config.items())
    ]
    assert matches, f"no preset carries {config}"


_MISSING = object()


@pytest.mark.parametrize("preset_id", sorted(load_presets()))
def test_every_preset_builds_a_valid_job(preset_id):
    preset = load_presets()[preset_id]
    spec = parse_job_spec(apply_preset(preset, {**BASE, "dataset": _dataset(preset.algorithm)}))
    assert spec.algorithm == preset.algorithm


def test_preset_overrides_win_and_keep_the_rest():
    preset = load_presets()["dapo"]
    raw = apply_preset(
        preset,
        {
            **BASE,
            "dataset": _dataset("grpo"),
            "config": {"max_completion_length": 32, "per_device_train_batch_size": 8},
        },
    )
    spec = parse_job_spec(raw)
    assert spec.config.max_completion_length == 32
    assert spec.config.epsilon_high == 0.28
    assert [r.name for r in spec.reward_funcs] == ["accuracy", "soft_overlong_punishment"]


def test_preset_rejects_a_different_algorithm():
    with pytest.raises(ValueError, match="grpo"):
        apply_preset(load_presets()["dapo"], {**BASE, "algorithm": "dpo"})
