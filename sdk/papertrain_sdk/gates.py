"""Metric gates for CI: `rollout/reward_mean>=0.3` passes when the job's metric meets the threshold.

    gate = parse_gate("max(rollout/reward_mean) >= 0.3")
    gate.check(client.jobs.metrics(job_id))    # GateResult(passed, value, ...)

The left side is a metric name, read at its last logged value, or `last(...)`, `max(...)`, `min(...)`,
`mean(...)` of its history. Operators: >= <= > < == !=.
"""

from __future__ import annotations

import operator
import re
from dataclasses import dataclass

_OPS = {
    ">=": operator.ge,
    "<=": operator.le,
    "==": operator.eq,
    "!=": operator.ne,
    ">": operator.gt,
    "<": operator.lt,
}
_AGGS = {
    "last": lambda v: v[-1],
    "max": max,
    "min": min,
    "mean": lambda v: sum(v) / len(v),
}
_GATE = re.compile(
    r"^\s*(?:(?P<agg>last|max|min|mean)\((?P<inner>[^()]+)\)|(?P<name>[^<>=!\s()]+))\s*"
    r"(?P<op>>=|<=|==|!=|>|<)\s*(?P<value>\S+)\s*$"
)


@dataclass(frozen=True)
class GateResult:
    gate: Gate
    passed: bool
    value: float | None
    reason: str


@dataclass(frozen=True)
class Gate:
    text: str
    metric: str
    agg: str
    op: str
    threshold: float

    def check(self, metrics: dict[str, list[tuple[int | None, float]]]) -> GateResult:
        points = metrics.get(self.metric)
        if not points:
            known = ", ".join(sorted(metrics)) or "none"
            return GateResult(self, False, None, f"metric {self.metric!r} was never logged (logged: {known})")
        value = float(_AGGS[self.agg]([v for _, v in points]))
        passed = bool(_OPS[self.op](value, self.threshold))
        verdict = "met" if passed else "not met"
        return GateResult(
            self,
            passed,
            value,
            f"{self.agg}({self.metric}) = {value:.6g} {self.op} {self.threshold:g}: {verdict}",
        )


def parse_gate(text: str) -> Gate:
    """Parse `metric OP number`; raises ValueError with the expected form."""
    m = _GATE.match(text)
    if not m:
        raise ValueError(
            f"gate {text!r} is not 'METRIC OP NUMBER' (e.g. 'rollout/reward_mean>=0.3' or 'max(train/loss)<2'); "
            f"OP is one of {', '.join(_OPS)}"
        )
    try:
        threshold = float(m["value"])
    except ValueError:
        raise ValueError(f"gate {text!r}: {m['value']!r} is not a number") from None
    return Gate(
        text=text.strip(),
        metric=(m["inner"] or m["name"]).strip(),
        agg=m["agg"] or "last",
        op=m["op"],
        threshold=threshold,
    )
