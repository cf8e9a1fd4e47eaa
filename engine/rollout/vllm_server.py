"""The `vllm-server` rollout backend: generation by a vLLM engine in another process, over HTTP.

The server (`engine/rollout/vllm_serve.py`) runs in vLLM's own Python environment. Either the backend starts
it for the job (`ServerOptions.python`, on 127.0.0.1 and a free port, stopped by `close()` and by the
server itself once this process is gone) or it uses a long-lived one at `ServerOptions.url`. A started server
that dies is started again (at most `max_restarts` times) with the last synced weights.

Weights: the engine starts from a model folder in Hugging Face format. `sync_weights` sends the policy's
full state dict (LoRA adapters merged into a copy of the weights, names of the base model) as safetensors
bytes; the server loads them in place and answers with the new policy version. Every `RolloutOutput` carries
the version its completions were sampled with, and the vLLM sampling log-prob of every generated token.

Seeds: `generate` takes one seed per completion and asks for each completion under its own seed, so a
completion depends on its seed, prompt and the weights only (not on which process asks, nor beside which
other requests). Several training processes share one server: the main process starts it (or uses the
configured `url`) and sends the weights; the other processes are clients (`sends_weights=False`) that
only sample. Only a server started by a single process is restarted when it dies; with several
processes the job fails instead (the clients could not tell a restarted server's weights apart).
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import torch

from engine.rollout.base import RolloutBackend, RolloutOutput, SamplingParams, output_from_token_rows
from engine.rollout.vllm import merged_state_items

SERVE_SCRIPT = Path(__file__).with_name("vllm_serve.py")


@dataclass(frozen=True)
class ServerOptions:
    """Where the rollout server lives and how long to wait for it (the platform's `vllm_*` settings)."""

    url: str = ""  # a running server; empty: start one for the job with `python`
    python: str = sys.executable  # the interpreter of vLLM's environment (the worker passes `vllm_python`)
    startup_timeout_s: float = 300.0
    request_timeout_s: float = 600.0
    max_restarts: int = 2
    dtype: str = "auto"  # the server's weights dtype ("auto": the model folder's)
    enforce_eager: bool = True  # no graph capture: a CPU engine starts in ~30 s instead of ~2 min

    @classmethod
    def from_env(cls, env: dict[str, str] | os._Environ[str]) -> ServerOptions:
        """From the `PAPERTRAIN_VLLM_*` variables the worker passes to the engine."""
        d = cls()
        return cls(
            url=env.get("PAPERTRAIN_VLLM_SERVER_URL", d.url),
            python=env.get("PAPERTRAIN_VLLM_PYTHON") or sys.executable,
            startup_timeout_s=float(env.get("PAPERTRAIN_VLLM_STARTUP_TIMEOUT_S", d.startup_timeout_s)),
            request_timeout_s=float(env.get("PAPERTRAIN_VLLM_REQUEST_TIMEOUT_S", d.request_timeout_s)),
            max_restarts=int(env.get("PAPERTRAIN_VLLM_MAX_RESTARTS", d.max_restarts)),
            dtype=env.get("PAPERTRAIN_VLLM_DTYPE", d.dtype),
        )


class ServerError(RuntimeError):
    """The rollout server could not be started or did not answer."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServerProcess:
    """One `vllm_serve.py` process: start, wait for /health, stop. Its output goes to `log_path`."""

    def __init__(
        self,
        python: str,
        model_dir: Path,
        log_path: Path,
        opts: ServerOptions,
        *,
        seed: int,
        max_model_len: int,
        gpu_memory_utilization: float,
    ) -> None:
        if not python or not Path(python).exists():
            raise ServerError(
                f"the vLLM environment's python {python!r} does not exist: run `make vllm-cpu` (CPU) or set "
                "PAPERTRAIN_VLLM_PYTHON to an interpreter with vllm installed, or PAPERTRAIN_VLLM_SERVER_URL to a "
                "running server"
            )
        self.python, self.model_dir, self.log_path, self.opts = python, model_dir, log_path, opts
        self.args = [
            "--dtype", opts.dtype, "--seed", str(seed), "--max-model-len", str(max_model_len),
            "--gpu-memory-utilization", str(gpu_memory_utilization),
        ] + (["--enforce-eager"] if opts.enforce_eager else [])  # fmt: skip
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""

    def start(self) -> str:
        port = free_port()
        cmd = [self.python, str(SERVE_SCRIPT), "--model", str(self.model_dir), "--port", str(port),
               "--parent-pid", str(os.getpid()), *self.args]  # fmt: skip
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
        env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB of KV cache on a CPU engine
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env)
        self.url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + self.opts.startup_timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ServerError(
                    f"the vLLM server exited with status {self.proc.returncode} while starting:\n{self.log_tail()}"
                )
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/health", timeout=2.0).status_code == 200:
                    return self.url
            time.sleep(0.5)
        self.stop()
        raise ServerError(
            f"the vLLM server did not answer /health within {self.opts.startup_timeout_s:.0f} s "
            f"(PAPERTRAIN_VLLM_STARTUP_TIMEOUT_S):\n{self.log_tail()}"
        )

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def log_tail(self, lines: int = 25) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""


class VLLMServerRollout(RolloutBackend):
    name = "vllm-server"
    seeded = True

    def __init__(
        self,
        model_dir: str | Path,
        opts: ServerOptions,
        *,
        work_dir: str | Path | None = None,
        seed: int = 0,
        max_model_len: int = 512,
        gpu_memory_utilization: float = 0.3,
        sends_weights: bool = True,
    ) -> None:
        self.opts, self.sends_weights = opts, sends_weights
        self.version = 0
        self.work_dir = Path(work_dir or tempfile.mkdtemp(prefix="vllm-rollout-"))
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.weights_path = self.work_dir / "weights.safetensors"  # the last synced weights (for restarts)
        self.process: ServerProcess | None = None
        self.restarts = 0
        if opts.url:  # a long-lived server: it holds whatever it was started with until the first sync
            self.url = opts.url.rstrip("/")
            self.needs_first_sync = True
            self._check_health()
        else:
            self.process = ServerProcess(
                opts.python,
                Path(model_dir),
                self.work_dir / "server.log",
                opts,
                seed=seed,
                max_model_len=max_model_len,
                gpu_memory_utilization=gpu_memory_utilization,
            )
            self.url = self.process.start()
        self.client = httpx.Client(timeout=opts.request_timeout_s)

    # -- HTTP ------------------------------------------------------------------------------------------

    def _check_health(self) -> None:
        try:
            httpx.get(f"{self.url}/health", timeout=10.0).raise_for_status()
        except httpx.HTTPError as exc:
            raise ServerError(f"the vLLM server at {self.url} does not answer /health ({exc})") from exc

    def _post(self, route: str, **kwargs: Any) -> dict[str, Any]:
        """POST with one restart-and-retry when a server this backend started has died."""
        for attempt in range(2):
            try:
                resp = self.client.post(f"{self.url}{route}", **kwargs)
            except httpx.TransportError as exc:
                if attempt or not self._restart(exc):
                    raise ServerError(f"the vLLM server at {self.url} failed on {route}: {exc}") from exc
                continue
            if resp.status_code != 200:
                raise ServerError(
                    f"the vLLM server answered {resp.status_code} on {route}: {resp.text[:500]}"
                )
            return dict(resp.json())
        raise AssertionError("unreachable")

    def _restart(self, cause: Exception) -> bool:
        if self.process is None or self.process.alive() or self.restarts >= self.opts.max_restarts:
            return False
        self.restarts += 1
        print(f"vllm-server: the server died ({cause}); restart {self.restarts}", file=sys.stderr, flush=True)
        self.process.stop()
        self.url = self.process.start()
        if self.weights_path.exists():
            self._send_weights()
        return True

    # -- the backend -----------------------------------------------------------------------------------

    def generate(
        self,
        prompt_ids: Sequence[Sequence[int]],
        num_generations: int,
        params: SamplingParams,
        seeds: Sequence[int] | None = None,
    ) -> RolloutOutput:
        """`seeds`: one per completion (prompt by prompt, `num_generations` each): each is asked for alone."""
        prompts = [[int(t) for t in ids] for ids in prompt_ids]
        body: dict[str, Any] = {"prompts": prompts, "n": num_generations}
        if seeds is not None:
            if len(seeds) != len(prompts) * num_generations:
                raise ValueError(f"{len(seeds)} seeds for {len(prompts)} prompts x {num_generations}")
            body = {
                "prompts": [ids for ids in prompts for _ in range(num_generations)],
                "n": 1,
                "seeds": [int(s) for s in seeds],
            }
        body |= {
            "max_tokens": params.max_new_tokens,
            "temperature": params.temperature,
            "top_p": params.top_p,
            "top_k": params.top_k or 0,
            "min_p": params.min_p or 0.0,
            "repetition_penalty": params.repetition_penalty,
            "stop_token_ids": list(params.eos_token_ids),
        }
        reply = self._post("/generate", json=body)
        rows = [c for group in reply["outputs"] for c in group]
        if len(rows) != len(prompt_ids) * num_generations:
            raise ServerError(
                f"the vLLM server returned {len(rows)} completions for {len(prompt_ids)} x {num_generations}"
            )
        if any(len(r["logprobs"]) != len(r["token_ids"]) for r in rows):
            raise ServerError("the vLLM server returned a completion without one log-prob per token")
        return output_from_token_rows(
            prompt_ids,
            num_generations,
            [r["token_ids"] for r in rows],
            [r["logprobs"] for r in rows],
            params,
            policy_version=int(reply["version"]),
        )

    def score(self, prompt_ids: Sequence[int], completion_ids: Sequence[int]) -> list[float]:
        """The server's log-probs (temperature 1) of a fixed completion, token by token."""
        body = {
            "prompt_ids": [int(t) for t in prompt_ids],
            "completion_ids": [int(t) for t in completion_ids],
        }
        return [float(x) for x in self._post("/score", json=body)["logprobs"]]

    def sync_weights(self, model: torch.nn.Module, version: int | None = None) -> None:
        """Send the weights (a client only records the version: the main process sends them)."""
        from safetensors.torch import save_file

        if not self.sends_weights:
            self.version = self.version + 1 if version is None else version
            return
        items = merged_state_items(model)
        state = {name: t.detach().to("cpu").contiguous() for name, t in items}
        save_file(state, str(self.weights_path))
        self.version = self.version + 1 if version is None else version
        self._send_weights()

    def _send_weights(self) -> None:
        reply = self._post(
            "/load_weights",
            params={"version": self.version},
            content=self.weights_path.read_bytes(),
            headers={"Content-Type": "application/octet-stream"},
        )
        if int(reply["version"]) != self.version:
            raise ServerError(
                f"the vLLM server reports version {reply['version']} after loading {self.version}"
            )

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.client.close()
        if self.process is not None:
            self.process.stop()
            self.process = None
        if self.sends_weights:  # a client's work folder is the sender's
            with contextlib.suppress(OSError):
                self.weights_path.unlink()
