"""Each list of names is written once and the others are derived from it: the algorithms from the job
classes, the built-in sets each algorithm takes, the parameters of each reward, the engine's event types.
These tests check the derived answers behave, and that no layer keeps a copy of its own."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest
from pydantic import ValidationError

from engine.spec import ALGORITHMS, RUNNABLE_ALGORITHMS, parse_job_spec, unsupported
from engine.spec.base import BUILTIN_DATASETS
from engine.spec.grpo import REWARD_PARAMS, RewardFuncSpec
from engine.spec.job import BUILTIN_DATASET_ALGORITHMS, IMAGE_BUILTINS, JOB_CLASSES, family_of
from engine.spec.names import REWARD_FUNCS

REPO = Path(__file__).resolve().parents[2]
TEACHER = {"teacher_model_name_or_path": "tiny:llama"}


def _job(algorithm: str, builtin: str) -> dict:
    config = TEACHER if algorithm in ("gkd", "gold", "minillm") else {}
    model = "tiny:vlm" if builtin in IMAGE_BUILTINS else "tiny:llama"
    return {"algorithm": algorithm, "model": model, "dataset": {"builtin": builtin}, "config": config}


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_a_builtin_set_is_accepted_exactly_when_the_job_class_names_it(algorithm):
    fits = [ds for ds in BUILTIN_DATASETS if algorithm in BUILTIN_DATASET_ALGORITHMS[ds]]
    assert fits, f"{algorithm} has no built-in set"
    for ds in BUILTIN_DATASETS:
        if ds in fits:
            assert parse_job_spec(_job(algorithm, ds)).algorithm == algorithm
        else:
            with pytest.raises(ValidationError, match=f"does not fit algorithm '{algorithm}'"):
                parse_job_spec(_job(algorithm, ds))


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_runnable_means_a_loop_module_exists_and_submission_agrees(algorithm):
    spec = parse_job_spec(_job(algorithm, JOB_CLASSES[algorithm].builtin_datasets[0]))
    problem = unsupported(spec)
    loop = JOB_CLASSES[algorithm].loop
    if algorithm in RUNNABLE_ALGORITHMS:
        assert importlib.util.find_spec(f"engine.algorithms.{loop}") is not None
        assert problem is None, problem
    else:
        assert loop is None and problem is not None and problem.field == "algorithm"


def test_the_engine_dispatches_from_the_same_classes():
    from engine.algorithms import ALGORITHM_MODULES, get_algorithm

    assert set(ALGORITHM_MODULES) == RUNNABLE_ALGORITHMS
    assert ALGORITHM_MODULES["gfpo"] == ALGORITHM_MODULES["grpo"] == "engine.algorithms.grpo"
    not_trained = [a for a in ALGORITHMS if a not in RUNNABLE_ALGORITHMS]
    for name in not_trained:
        with pytest.raises(ValueError, match="no training loop"):
            get_algorithm(name)


def test_families():
    assert family_of("grpo") == family_of("minillm") == "online"
    assert family_of("gkd") == family_of("gold") == "distillation"
    assert family_of("dpo") == family_of("sft") == "offline"


def test_the_generated_sets_are_the_spec_names():
    from engine.data.builtin import BUILTINS

    assert set(BUILTINS) == set(BUILTIN_DATASETS)


def test_each_reward_takes_only_the_fields_marked_for_it():
    assert set(REWARD_PARAMS) == set(REWARD_FUNCS)
    assert REWARD_PARAMS["http"] == {"url", "timeout_s"}
    assert REWARD_PARAMS["accuracy"] == frozenset()
    marked = set().union(*REWARD_PARAMS.values())
    assert marked == set(RewardFuncSpec.model_fields) - {"name"}, "a reward field is marked for no reward"
    assert RewardFuncSpec(name="http", url="http://x", timeout_s=5).timeout_s == 5
    with pytest.raises(ValidationError, match="ngram_size does not apply to the 'http' reward"):
        RewardFuncSpec(name="http", url="http://x", ngram_size=2)


def test_every_engine_event_type_is_stored_as_a_known_kind():
    from core.models import EventKind
    from engine.events import EVENT_TYPES
    from worker.events import to_row

    for type_ in EVENT_TYPES:
        kind, _, data = to_row({"type": type_, "step": 1})
        assert kind == ("log" if type_ == "done" else type_) and EventKind(kind)
        assert "unknown engine event type" not in str(data)
    assert to_row({"type": "nope"})[0] == "log"


def test_the_dashboard_keeps_no_list_of_algorithms():
    """The web page asks the API (/v1/algorithms: runnable, built-in sets, family) instead."""
    quoted = re.compile("[\"'`](" + "|".join(ALGORITHMS) + ")[\"'`]")
    for path in sorted((REPO / "web" / "static" / "js").rglob("*.js")):
        found = quoted.findall(path.read_text(encoding="utf-8"))
        assert not found, f"{path.relative_to(REPO)} names algorithms {found}; ask /v1/algorithms"
