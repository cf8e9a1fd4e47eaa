"""Sampling speed: the `hf` rollout backend's decode loop against transformers `generate` on the same batch.

The GRPO workload: 4 prompts x 4 completions of 32 new tokens after a 39-token prompt, SmolLM2-135M-shaped
model with random weights (no download; random weights rarely end a row early, so both paths decode all 32
steps). Prints the median over `--repeats` alternating runs of wall seconds and process CPU seconds, and the
per-step draw cost of `torch.multinomial` on softmax against `sample_next` on a (16, 49152) logits batch.
Run: python -m bench.sampler
"""

from __future__ import annotations

import argparse
import statistics
import time


def _timed(fn, repeats: int) -> tuple[float, float]:
    walls, cpus = [], []
    for _ in range(repeats):
        w, c = time.perf_counter(), time.process_time()
        fn()
        walls.append(time.perf_counter() - w)
        cpus.append(time.process_time() - c)
    return statistics.median(walls), statistics.median(cpus)


def main(argv: list[str] | None = None) -> list[dict]:
    import torch

    from bench.logprobs import _model
    from engine.rollout import SamplingParams, make_backend
    from engine.rollout.base import left_pad
    from engine.rollout.sampling import sample_next

    p = argparse.ArgumentParser()
    p.add_argument("--dims", default="smollm2-135m", choices=["smollm2-135m", "tiny"])
    p.add_argument("--prompts", type=int, default=4)
    p.add_argument("--generations", type=int, default=4)
    p.add_argument("--prompt-len", type=int, default=39)
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args(argv)

    model = _model(args.dims).eval()
    vocab = model.config.vocab_size
    eos, pad = vocab - 1, vocab - 2
    g = torch.Generator().manual_seed(0)
    prompts = [
        torch.randint(0, vocab - 2, (args.prompt_len,), generator=g).tolist() for _ in range(args.prompts)
    ]
    params = SamplingParams(args.new_tokens, (eos,), pad, temperature=1.0)
    backend = make_backend("hf", model=model)

    def ours() -> None:
        backend.generate(prompts, args.generations, params)

    def reference() -> None:
        ids, mask = left_pad(prompts, pad)
        ids, mask = ids.repeat_interleave(args.generations, 0), mask.repeat_interleave(args.generations, 0)
        with torch.inference_mode():
            model.generate(
                input_ids=ids,
                attention_mask=mask,
                do_sample=True,
                max_new_tokens=args.new_tokens,
                top_k=0,
                eos_token_id=[eos],
                pad_token_id=pad,
            )

    ours(), reference()  # warm-up
    rows = []
    results: dict[str, list[tuple[float, float]]] = {"decode_loop": [], "generate": []}
    for _ in range(args.repeats):  # interleaved, so that load from other processes hits both alike
        results["decode_loop"].append(_timed(ours, 1))
        results["generate"].append(_timed(reference, 1))
    for name, runs in results.items():
        wall = statistics.median(r[0] for r in runs)
        cpu = statistics.median(r[1] for r in runs)
        rows.append(
            {
                "sampler": name,
                "dims": args.dims,
                "completions": args.prompts * args.generations,
                "new_tokens": args.new_tokens,
                "wall_s": round(wall, 3),
                "cpu_s": round(cpu, 3),
                "completions_per_s": round(args.prompts * args.generations / wall, 1),
            }
        )
    logits = torch.randn(args.prompts * args.generations, vocab, generator=g) * 3
    draw_params = SamplingParams(1, (eos,), pad)
    for name, fn in (
        ("multinomial(softmax)", lambda: torch.multinomial(logits.softmax(-1), 1)),
        ("sample_next", lambda: sample_next(logits, draw_params)),
    ):
        wall, cpu = _timed(fn, 50)
        rows.append({"draw": name, "batch": tuple(logits.shape), "wall_ms": round(wall * 1e3, 2)})
    return rows


if __name__ == "__main__":
    for row in main():
        print(row)
