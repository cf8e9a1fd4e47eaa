"""The rollout server: one vLLM engine behind a small JSON-over-HTTP API. It runs in vLLM's own environment
(`make vllm-cpu` builds one for CPUs), so it imports only the standard library and vLLM:

    .venv-vllm/bin/python engine/rollout/vllm_serve.py --model DIR --port 8011 [--dtype float32]

Routes (JSON in and out unless noted):
  GET  /health         -> {"status": "ok", "version": V, "model": DIR}
  POST /generate       {"prompts": [[ids]], "n", "max_tokens", "temperature", "top_p", "top_k", "min_p",
                        "repetition_penalty", "stop_token_ids", "seeds"?} -> {"outputs": [[{"token_ids",
                        "logprobs", "finish_reason"}] x n] per prompt, "version": V}; `logprobs` are the
                        sampling distribution's log-probs of the sampled tokens (after temperature and
                        penalties); `seeds` (one per prompt) makes each prompt's samples depend on its seed
                        only, not on the other requests or the engine's random state.
  POST /score          {"prompt_ids": [ids], "completion_ids": [ids]} -> {"logprobs": [...]}: the model's
                        log-probs of a fixed completion (temperature 1), to compare against the trainer's.
  POST /load_weights   body: safetensors bytes (the full state dict, model's own names); query `?version=V`
                        -> {"version": V, "tensors": count}; the next generation uses these weights.

The engine serves one call at a time; generation requests that arrive while it is busy (the training
processes of one job ask together) are answered by one engine call when it is free, so they are batched
together. The server exits when the process that started it is gone (`--parent-pid`), so a killed trainer
never leaves an engine behind.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
import traceback
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

# Run as a script, this folder would come first on the path and its `vllm.py` would shadow the vllm package.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]


def build_engine(args: argparse.Namespace) -> Any:
    # The engine core stays in this process, so its model object is reachable for weight loads.
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    from vllm import LLM

    return LLM(
        model=args.model,
        dtype=args.dtype,
        max_model_len=args.max_model_len,
        gpu_memory_utilization=args.gpu_memory_utilization,
        enforce_eager=args.enforce_eager,
        seed=args.seed,
        logprobs_mode="processed_logprobs",  # the distribution tokens were actually sampled from
        enable_prefix_caching=False,  # weights change between requests
        skip_tokenizer_init=True,  # token ids in, token ids out
    )


class Pending:
    """One /generate request waiting for the engine: its prompts, their sampling params, and the answer."""

    def __init__(self, prompts: list[dict[str, Any]], params: list[Any]) -> None:
        self.prompts, self.params = prompts, params
        self.results: list[Any] | None = None
        self.version = 0
        self.error: BaseException | None = None


class Engine:
    """The vLLM engine, its weights version and a lock: vLLM's offline engine serves one caller at a time.
    Generation requests queue; whichever request gets the engine runs every queued one in one call."""

    def __init__(self, llm: Any, model: str) -> None:
        from vllm import SamplingParams

        self.llm, self.model, self.version = llm, model, 0
        self.SamplingParams = SamplingParams
        self.lock = threading.Lock()
        self.queue: list[Pending] = []
        self.queue_lock = threading.Lock()

    def generate(self, req: dict[str, Any]) -> dict[str, Any]:
        seeds = req.get("seeds")
        if seeds is not None and len(seeds) != len(req["prompts"]):
            raise ValueError(f"{len(seeds)} seeds for {len(req['prompts'])} prompts: give one per prompt")
        prompts = [{"prompt_token_ids": [int(t) for t in ids]} for ids in req["prompts"]]
        if seeds is None:
            params = [self._params(req, None)] * len(prompts)
        else:
            params = [self._params(req, int(seed)) for seed in seeds]
        pending = Pending(prompts, params)
        with self.queue_lock:
            self.queue.append(pending)
        with self.lock:
            if pending.results is None and pending.error is None:  # not answered by an earlier call
                with self.queue_lock:
                    batch, self.queue = self.queue, []
                self._run(batch)
        if pending.error is not None:
            raise pending.error
        return self._answer(pending)

    def _run(self, batch: list[Pending]) -> None:
        """One engine call for the queued requests (the caller holds the engine lock)."""
        try:
            results = self.llm.generate(
                [p for r in batch for p in r.prompts], [s for r in batch for s in r.params], use_tqdm=False
            )
        except Exception as exc:
            for r in batch:
                r.error = exc
            return
        start = 0
        for r in batch:
            r.results, r.version = results[start : start + len(r.prompts)], self.version
            start += len(r.prompts)

    def _answer(self, pending: Pending) -> dict[str, Any]:
        outputs = []
        for res in pending.results or []:
            group = []
            for comp in sorted(res.outputs, key=lambda c: c.index):
                tokens = list(comp.token_ids)
                lps = [step[t].logprob for step, t in zip(comp.logprobs or [], tokens, strict=False)]
                group.append({"token_ids": tokens, "logprobs": lps, "finish_reason": comp.finish_reason})
            outputs.append(group)
        return {"outputs": outputs, "version": pending.version}

    def _params(self, req: dict[str, Any], seed: int | None) -> Any:
        return self.SamplingParams(
            n=int(req.get("n", 1)),
            max_tokens=int(req["max_tokens"]),
            temperature=float(req.get("temperature", 1.0)),
            top_p=float(req.get("top_p", 1.0)),
            top_k=int(req.get("top_k") or -1),
            min_p=float(req.get("min_p") or 0.0),
            repetition_penalty=float(req.get("repetition_penalty", 1.0)),
            stop_token_ids=[int(t) for t in req.get("stop_token_ids", [])],
            logprobs=0,  # the sampled token's log-prob only
            detokenize=False,
            seed=seed,
        )

    def score(self, req: dict[str, Any]) -> dict[str, Any]:
        prompt = [int(t) for t in req["prompt_ids"]]
        completion = [int(t) for t in req["completion_ids"]]
        params = self.SamplingParams(max_tokens=1, temperature=1.0, prompt_logprobs=0, detokenize=False)
        with self.lock:
            (res,) = self.llm.generate([{"prompt_token_ids": prompt + completion}], params, use_tqdm=False)
        steps = res.prompt_logprobs[len(prompt) :]
        return {"logprobs": [step[t].logprob for step, t in zip(steps, completion, strict=True)]}

    def load_weights(self, payload: bytes, version: int) -> dict[str, Any]:
        from safetensors.torch import load

        tensors = load(payload)
        items = list(tensors.items())
        with self.lock:
            # vLLM's in-place reload: checkpoint-format weights, re-processed into the kernels' layout.
            self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": items})
            self.llm.reset_prefix_cache()
            self.version = version
        return {"version": version, "tensors": len(items)}


def make_handler(engine: Engine) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # requests are not logged
            return

        def _reply(self, code: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            if urlparse(self.path).path == "/health":
                self._reply(200, {"status": "ok", "version": engine.version, "model": engine.model})
            else:
                self._reply(404, {"error": f"no route {self.path}"})

        def do_POST(self) -> None:
            url = urlparse(self.path)
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            try:
                if url.path == "/load_weights":
                    version = int(parse_qs(url.query).get("version", ["0"])[0])
                    self._reply(200, engine.load_weights(body, version))
                elif url.path == "/generate":
                    self._reply(200, engine.generate(json.loads(body)))
                elif url.path == "/score":
                    self._reply(200, engine.score(json.loads(body)))
                else:
                    self._reply(404, {"error": f"no route {url.path}"})
            except (KeyError, TypeError, ValueError) as exc:
                self._reply(400, {"error": f"{type(exc).__name__}: {exc}"})
            except Exception as exc:  # an engine failure: report it, keep serving
                traceback.print_exc()
                self._reply(500, {"error": f"{type(exc).__name__}: {exc}"})

    return Handler


def watch_parent(parent_pid: int, server: ThreadingHTTPServer) -> None:
    while True:
        time.sleep(1.0)
        try:
            os.kill(parent_pid, 0)
        except ProcessLookupError:
            print("vllm_serve: parent process is gone; exiting", file=sys.stderr, flush=True)
            server.shutdown()
            return


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, help="model folder in Hugging Face format")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--max-model-len", type=int, default=512)
    parser.add_argument("--gpu-memory-utilization", type=float, default=0.3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--enforce-eager", action="store_true", help="no graph capture: starts much faster")
    parser.add_argument("--parent-pid", type=int, default=0, help="exit when this process is gone")
    args = parser.parse_args(argv)
    engine = Engine(build_engine(args), args.model)
    server = ThreadingHTTPServer((args.host, args.port), make_handler(engine))
    if args.parent_pid:
        threading.Thread(target=watch_parent, args=(args.parent_pid, server), daemon=True).start()
    print(f"vllm_serve: ready on http://{args.host}:{args.port}", file=sys.stderr, flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
