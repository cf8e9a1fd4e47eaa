"""The built-in `arithmetic` dataset: deterministic, verifiable, in range, and scored by `accuracy`."""

from __future__ import annotations

import re

import pytest

from engine.data.arithmetic import arithmetic_rows
from engine.rewards import build_reward
from engine.spec.grpo import RewardFuncSpec

QUESTION = re.compile(r"^What is (\d+)([+*-])(\d+)\? Answer with the number only\.$")


def parse(row):
    (message,) = row["prompt"]
    assert message["role"] == "user"
    a, op, b = QUESTION.match(message["content"]).groups()
    return int(a), op, int(b)


def test_rows_are_a_pure_function_of_the_arguments():
    assert arithmetic_rows(50, seed=3) == arithmetic_rows(50, seed=3)
    assert arithmetic_rows(50, seed=3) != arithmetic_rows(50, seed=4)
    assert len(arithmetic_rows(7)) == 7


@pytest.mark.parametrize(("max_operand", "ops"), [(9, "+"), (2, "+"), (12, "+-*")])
def test_answers_are_the_results_of_the_questions(max_operand, ops):
    rows = arithmetic_rows(300, seed=0, max_operand=max_operand, ops=ops)
    seen_ops = set()
    for row in rows:
        a, op, b = parse(row)
        seen_ops.add(op)
        assert 0 <= a <= max_operand and 0 <= b <= max_operand
        expected = {"+": a + b, "-": a - b, "*": a * b}[op]
        assert row["answer"] == str(expected) and expected >= 0
    assert seen_ops == set(ops)


def test_default_sums_cover_answers_0_to_18():
    answers = {int(r["answer"]) for r in arithmetic_rows(2000, seed=0)}
    assert answers == set(range(19))


def test_accuracy_reward_scores_the_rows():
    rows = arithmetic_rows(4, seed=1)
    reward = build_reward(RewardFuncSpec(name="accuracy"))
    completions = [f"The answer is {r['answer']}." for r in rows[:2]] + ["no idea", "-1"]
    got = reward(
        prompts=[r["prompt"] for r in rows],
        completions=completions,
        completion_ids=[[1]] * 4,
        answer=[r["answer"] for r in rows],
    )
    assert got == [1.0, 1.0, 0.0, 0.0]


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [({"num_rows": 0}, "num_rows"), ({"max_operand": 0}, "max_operand"), ({"ops": "/"}, "ops")],
)
def test_bad_arguments_name_the_field(kwargs, field):
    args = {"num_rows": 5, **kwargs}
    with pytest.raises(ValueError, match=field):
        arithmetic_rows(**args)
