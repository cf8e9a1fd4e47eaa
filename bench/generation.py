"""Generation throughput of the rollout backends at the same sampling settings: transformers (`hf`, in the
trainer) vs a vLLM server process (`vllm-server`, vLLM's CPU build from `make vllm-cpu`), on SmolLM2-135M.
Prints completions/s and generated tokens/s per backend; the server's start-up and first (warm-up) request
are reported apart and left out of its rate. Run: python -m bench.generation [--model REF] [--rounds N]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

PROMPTS = [f"What is {a} + {b}? Answer with the number." for a, b in ((3, 4), (12, 9), (7, 25), (40, 2))]


def _prompt_ids(tokenizer) -> list[list[int]]:
    rows = []
    for text in PROMPTS:
        chat = [{"role": "user", "content": text}]
        text = tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
        rows.append(tokenizer(text, add_special_tokens=False)["input_ids"])
    return rows


def _rate(name: str, seconds: float, completions: int, tokens: int) -> str:
    return (
        f"{name}: {completions} completions, {tokens} new tokens in {seconds:.2f} s -> "
        f"{completions / seconds:.2f} completions/s, {tokens / seconds:.1f} tokens/s"
    )


def _timed(backend, prompts, generations, params, rounds: int) -> tuple[float, int, int]:
    completions = tokens = 0
    start = time.perf_counter()
    for _ in range(rounds):
        out = backend.generate(prompts, generations, params)
        completions += out.completion_ids.shape[0]
        tokens += int(out.completion_mask.sum())
    return time.perf_counter() - start, completions, tokens


def main(argv: list[str] | None = None) -> list[str]:
    import torch

    from core.settings import VLLM_CPU_PYTHON
    from engine.models import load_model, load_tokenizer, save_model
    from engine.rollout import SamplingParams, make_backend
    from engine.rollout.vllm_server import ServerOptions

    p = argparse.ArgumentParser()
    p.add_argument("--model", default="bundled:smollm2-135m-instruct")
    p.add_argument("--generations", type=int, default=4)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--rounds", type=int, default=2)
    args = p.parse_args(argv)
    torch.manual_seed(0)
    tokenizer = load_tokenizer(args.model)
    model = load_model(args.model)
    prompts = _prompt_ids(tokenizer)
    eos = tuple(
        t for t in (tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|im_end|>")) if t is not None
    )
    params = SamplingParams(
        max_new_tokens=args.max_new_tokens,
        eos_token_ids=eos,
        pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos[0],
        temperature=1.0,
    )
    setting = (
        f"{len(prompts)} prompts x {args.generations} generations, up to {args.max_new_tokens} new tokens"
    )
    rows = [f"# {args.model}, {setting}, temperature 1, {args.rounds} rounds"]

    hf = make_backend("hf", model=model, device="cpu")
    rows.append(
        _rate("hf (transformers generate)", *_timed(hf, prompts, args.generations, params, args.rounds))
    )

    python = os.environ.get("PAPERTRAIN_VLLM_PYTHON") or str(VLLM_CPU_PYTHON)
    if not Path(python).exists():
        rows.append(f"vllm-server: skipped, no vLLM environment at {python} (make vllm-cpu)")
        return rows
    with tempfile.TemporaryDirectory() as tmp:
        folder = save_model(model, tokenizer, Path(tmp) / "model")
        start = time.perf_counter()
        server = make_backend(
            "vllm-server",
            model_dir=folder,
            opts=ServerOptions(python=python, startup_timeout_s=900, dtype="float32"),
            work_dir=Path(tmp) / "server",
            max_model_len=512,
        )
        try:
            started = time.perf_counter() - start
            start = time.perf_counter()
            server.generate(prompts, args.generations, params)
            warm = time.perf_counter() - start
            rows.append(f"vllm-server: start-up {started:.1f} s, first request {warm:.1f} s")
            timed = _timed(server, prompts, args.generations, params, args.rounds)
            rows.append(_rate("vllm-server (vLLM CPU, float32)", *timed))
            start = time.perf_counter()
            server.sync_weights(model, version=1)
            rows.append(f"vllm-server: one full weight sync {time.perf_counter() - start:.2f} s")
        finally:
            server.close()
    return rows


if __name__ == "__main__":
    for line in main():
        print(line)
