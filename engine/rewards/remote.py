"""`http`: ask a remote service for rewards. Nothing is executed locally; the service is the user's code.

Request (POST `spec.url`, JSON):
    {"prompts": [...], "completions": ["..."], "completion_ids": [[...]], "columns": {"answer": [...], ...}}
Response (JSON): {"rewards": [float | null, ...]} with one entry per completion.

A timeout (`spec.timeout_s`), a non-2xx status or a malformed body raises a `RuntimeError` naming the URL
(the job fails with that message); connection errors are retried twice.
"""

from __future__ import annotations

import json
import math
from typing import Any

from engine.rewards.registry import RewardContext, Rewards, register

RETRIES = 2


class HttpReward:
    name = "http"

    def __init__(self, url: str, timeout_s: float = 30.0) -> None:
        self.url, self.timeout_s = url, timeout_s

    def __call__(self, prompts, completions, completion_ids, **columns) -> Rewards:
        import httpx

        body = json.dumps(
            {
                "prompts": list(prompts),
                "completions": list(completions),
                "completion_ids": [list(map(int, ids)) for ids in completion_ids],
                "columns": {k: list(v) for k, v in columns.items()},
            },
            default=str,
        )
        headers = {"content-type": "application/json"}
        for attempt in range(RETRIES + 1):
            try:
                resp = httpx.post(self.url, content=body, headers=headers, timeout=self.timeout_s)
                break
            except httpx.TransportError as exc:
                if attempt == RETRIES or isinstance(exc, httpx.TimeoutException):
                    raise RuntimeError(f"http reward {self.url}: request failed: {exc}") from exc
        if resp.status_code // 100 != 2:
            raise RuntimeError(f"http reward {self.url}: status {resp.status_code}: {resp.text[:200]}")
        return self._parse(resp, len(completions))

    def _parse(self, resp: Any, n: int) -> Rewards:
        try:
            rewards = resp.json()["rewards"]
        except (ValueError, KeyError, TypeError) as exc:
            raise RuntimeError(f'http reward {self.url}: expected a JSON body {{"rewards": [...]}}') from exc
        if not isinstance(rewards, list) or len(rewards) != n:
            got = len(rewards) if isinstance(rewards, list) else type(rewards).__name__
            raise RuntimeError(f"http reward {self.url}: expected {n} rewards, got {got}")
        out: Rewards = []
        for r in rewards:
            if r is not None and (
                isinstance(r, bool) or not isinstance(r, int | float) or not math.isfinite(r)
            ):
                raise RuntimeError(
                    f"http reward {self.url}: rewards must be finite numbers or null, got {r!r}"
                )
            out.append(None if r is None else float(r))
        return out


@register("http")
def http(spec: Any, ctx: RewardContext) -> HttpReward:
    from engine.data.access import check_http_reward, policy

    if policy().confined:  # the api checked it at submission; a worker's engine checks again
        check_http_reward("reward_funcs.url", spec.url, policy().http_reward_urls)
    return HttpReward(spec.url, spec.timeout_s)
