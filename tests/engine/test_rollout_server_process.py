"""The rollout server's process handling without vLLM: start-up failures, the start-up timeout, a restart
with the last synced weights when a started server dies, per-completion seeds, the batching of queued
requests, the clients of a multi-process job, and a multi-machine job without a server every machine
reaches. A stand-in server (same routes, canned answers) takes the place of `vllm_serve.py` by being the
"python" the backend runs it with; the batching test gives the server's engine a stand-in vLLM.
"""

from __future__ import annotations

import io
import sys
import textwrap
import threading
import time
import types
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest

from engine.models import build_tiny_model
from engine.rollout import SamplingParams
from engine.rollout.vllm_server import ServerError, ServerOptions, ServerProcess, VLLMServerRollout

STAND_IN = textwrap.dedent(
    """
    import json, sys
    from http.server import BaseHTTPRequestHandler, HTTPServer
    from urllib.parse import parse_qs, urlparse
    port = int(sys.argv[sys.argv.index("--port") + 1])
    state = {"version": 0}
    class H(BaseHTTPRequestHandler):
        def log_message(self, *a): pass
        def _reply(self, body):
            data = json.dumps(body).encode()
            self.send_response(200); self.send_header("Content-Length", str(len(data))); self.end_headers()
            self.wfile.write(data)
        def do_GET(self):
            self._reply({"status": "ok", "version": state["version"]})
        def do_POST(self):
            url = urlparse(self.path)
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if url.path == "/load_weights":
                state["version"] = int(parse_qs(url.query)["version"][0])
                self._reply({"version": state["version"], "tensors": 0})
            else:
                req = json.loads(body)
                seeds = req.get("seeds") or [None] * len(req["prompts"])
                def one(seed):  # a seeded request answers 10 + its seed as the first token
                    first = 7 if seed is None else 10 + seed
                    return {"token_ids": [first, 3], "logprobs": [-0.5, -0.25], "finish_reason": "stop"}
                self._reply({"outputs": [[one(s)] * req["n"] for s in seeds], "version": state["version"]})
    HTTPServer(("127.0.0.1", port), H).serve_forever()
    """
)
PARAMS = SamplingParams(max_new_tokens=4, eos_token_ids=(3,), pad_token_id=0)


def launcher(tmp_path: Path, body: str) -> str:
    """An executable that stands in for vLLM's python: it ignores the script path and runs `body`."""
    script = tmp_path / "stand_in.py"
    script.write_text(body)
    exe = tmp_path / "python"
    exe.write_text(f'#!/bin/sh\nshift\nexec "{sys.executable}" "{script}" "$@"\n')
    exe.chmod(0o755)
    return str(exe)


def backend(tmp_path: Path, python: str, **opts) -> VLLMServerRollout:
    options = ServerOptions(python=python, startup_timeout_s=opts.pop("startup_timeout_s", 60), **opts)
    return VLLMServerRollout(tmp_path / "model", options, work_dir=tmp_path / "work")


def test_a_missing_environment_names_the_make_target(tmp_path):
    with pytest.raises(ServerError, match="make vllm-cpu"):
        backend(tmp_path, str(tmp_path / "no-such-python"))


def test_a_server_that_exits_at_start_up_reports_its_log(tmp_path):
    with pytest.raises(ServerError, match="exited with status 3") as info:
        backend(
            tmp_path,
            launcher(tmp_path, "import sys\nprint('no engine here', file=sys.stderr)\nsys.exit(3)\n"),
        )
    assert "no engine here" in str(info.value)


def test_start_up_timeout_stops_the_process(tmp_path):
    opts = ServerOptions(python=launcher(tmp_path, "import time\ntime.sleep(60)\n"), startup_timeout_s=1.5)
    proc = ServerProcess(opts.python, tmp_path, tmp_path / "log", opts, seed=0, max_model_len=64,
                         gpu_memory_utilization=0.3)  # fmt: skip
    with pytest.raises(ServerError, match="PAPERTRAIN_VLLM_STARTUP_TIMEOUT_S"):
        proc.start()
    assert proc.proc is None  # stopped, not left running


def test_a_dead_server_is_restarted_with_the_last_weights(tmp_path):
    rollout = backend(tmp_path, launcher(tmp_path, STAND_IN), max_restarts=1)
    try:
        out = rollout.generate([[5, 6], [7]], 2, PARAMS)
        assert out.completion_ids.shape == (4, 2) and out.policy_version == 0
        assert out.sampling_logps[0].tolist() == [-0.5, -0.25] and not out.is_truncated.any()
        rollout.sync_weights(build_tiny_model(), version=4)
        first_url = rollout.url
        rollout.process.proc.kill()
        rollout.process.proc.wait()
        out = rollout.generate([[5, 6]], 2, PARAMS)  # restarted, weights sent again
        assert rollout.restarts == 1 and rollout.url != first_url
        assert out.policy_version == 4
        rollout.process.proc.kill()
        rollout.process.proc.wait()
        with pytest.raises(ServerError, match="failed on /generate"):  # out of restarts
            rollout.generate([[5, 6]], 2, PARAMS)
    finally:
        url = rollout.url
        rollout.close()
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{url}/health", timeout=2.0)


def test_each_completion_is_asked_for_under_its_own_seed_and_clients_send_no_weights(tmp_path):
    rollout = backend(tmp_path, launcher(tmp_path, STAND_IN))
    client = VLLMServerRollout("", ServerOptions(url=rollout.url), sends_weights=False)
    try:
        out = client.generate([[5, 6], [7]], 2, PARAMS, seeds=[20, 21, 22, 23])
        assert out.completion_ids[:, 0].tolist() == [30, 31, 32, 33]  # one request per completion
        assert out.prompt_ids[:, -1].tolist() == [6, 6, 7, 7]
        with pytest.raises(ValueError, match="3 seeds for 2 prompts x 2"):
            client.generate([[5, 6], [7]], 2, PARAMS, seeds=[1, 2, 3])
        client.sync_weights(build_tiny_model(), version=3)  # a client records the version only
        assert client.version == 3 and httpx.get(f"{rollout.url}/health").json()["version"] == 0
        rollout.sync_weights(build_tiny_model(), version=3)
        assert httpx.get(f"{rollout.url}/health").json()["version"] == 3
    finally:
        client.close()
        rollout.close()


def test_a_job_on_several_machines_needs_a_server_every_machine_reaches(tmp_path):
    from engine.algorithms.common import TrainContext
    from engine.algorithms.grpo import GRPOTrainer
    from engine.errors import JobError
    from engine.events import EventWriter
    from engine.spec import parse_job_spec

    spec = parse_job_spec(
        {
            "algorithm": "grpo",
            "model": "tiny:llama-hd32",
            "dataset": {"builtin": "arithmetic", "num_rows": 8},
            "config": {"num_generations": 4, "use_vllm": True, "vllm_mode": "server"},
            "distributed": {"num_processes": 2, "num_machines": 2},
        }
    )
    ctx = TrainContext.for_spec(spec, tmp_path, events=EventWriter(io.StringIO()))
    with pytest.raises(JobError, match="127.0.0.1 of the first machine") as info:
        GRPOTrainer(spec, ctx)  # refused before any server starts
    assert info.value.param == "distributed.num_machines"
    assert "PAPERTRAIN_VLLM_SERVER_URL" in str(info.value.remediation)


def test_generation_requests_that_queue_meet_in_one_engine_call(monkeypatch):
    fake = types.ModuleType("vllm")
    fake.SamplingParams = lambda **kw: SimpleNamespace(**kw)
    monkeypatch.setitem(sys.modules, "vllm", fake)
    from engine.rollout.vllm_serve import Engine

    calls: list[list[tuple[int, int]]] = []
    release = threading.Event()

    class LLM:  # answers each prompt with its first token and an EOS
        def generate(self, prompts, params, use_tqdm):
            calls.append([(p["prompt_token_ids"][0], s.seed) for p, s in zip(prompts, params, strict=True)])
            if len(calls) == 1:
                release.wait(30)  # busy while two more requests queue
            done = SimpleNamespace(index=0, logprobs=None, finish_reason="stop")
            return [
                SimpleNamespace(
                    outputs=[SimpleNamespace(**vars(done), token_ids=[p["prompt_token_ids"][0], 3])]
                )
                for p in prompts
            ]

    engine = Engine(LLM(), "model")
    answers: dict[int, dict] = {}

    def ask(first: int) -> None:
        answers[first] = engine.generate({"prompts": [[first]], "max_tokens": 2, "seeds": [first + 100]})

    threads = [threading.Thread(target=ask, args=(k,)) for k in (1, 2, 3)]
    threads[0].start()
    while not calls:
        time.sleep(0.01)
    threads[1].start()
    threads[2].start()
    while len(engine.queue) < 2:
        time.sleep(0.01)
    release.set()
    for t in threads:
        t.join(30)
    assert calls[0] == [(1, 101)] and sorted(calls[1]) == [(2, 102), (3, 103)] and len(calls) == 2
    for k in (1, 2, 3):
        assert answers[k]["outputs"] == [[{"token_ids": [k, 3], "logprobs": [], "finish_reason": "stop"}]]
