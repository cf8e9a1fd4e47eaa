"""Per-token log-probs: `engine.logprobs.token_logprobs` against the naive full-logits path.

Measures forward+backward time and the process's peak RSS for a SmolLM2-135M-shaped model with random
weights (no download), batch B x T with the last K positions scored. Run: python -m bench.logprobs
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


def _model(dims: str):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    if dims == "smollm2-135m":
        cfg = LlamaConfig(
            vocab_size=49152,
            hidden_size=576,
            intermediate_size=1536,
            num_hidden_layers=30,
            num_attention_heads=9,
            num_key_value_heads=3,
            tie_word_embeddings=True,
        )
    else:
        cfg = LlamaConfig(
            vocab_size=49152,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=4,
            tie_word_embeddings=True,
        )
    return LlamaForCausalLM(cfg)


def run_one(variant: str, dims: str, batch: int, seq: int, keep: int, repeats: int) -> dict:
    import torch

    from engine.logprobs import token_logprobs

    model = _model(dims)
    ids = torch.randint(0, model.config.vocab_size, (batch, seq))
    attn = torch.ones_like(ids)

    def step() -> None:
        if variant == "naive":
            logits = model(input_ids=ids, attention_mask=attn).logits[:, -keep - 1 : -1].float()
            logps = logits.log_softmax(-1).gather(-1, ids[:, -keep:, None]).squeeze(-1)
        else:
            logps, _ = token_logprobs(model, ids, attn, logits_to_keep=keep)
        logps.sum().backward()
        model.zero_grad(set_to_none=True)

    step()  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        step()
    seconds = (time.perf_counter() - start) / repeats
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "variant": variant,
        "dims": dims,
        "batch": batch,
        "seq": seq,
        "keep": keep,
        "s_per_step": round(seconds, 3),
        "tokens_per_s": round(batch * seq / seconds),
        "peak_rss_mb": round(peak_mb),
    }


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser()
    p.add_argument("--dims", default="smollm2-135m", choices=["smollm2-135m", "tiny"])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--keep", type=int, default=128)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--variant", choices=["naive", "chunked"])
    args = p.parse_args(argv)
    if args.variant:  # child process: one measurement, printed as JSON
        row = run_one(args.variant, args.dims, args.batch, args.seq, args.keep, args.repeats)
        print(json.dumps(row))
        raise SystemExit(0)
    rows = []
    for variant in ("naive", "chunked"):
        cmd = [
            sys.executable,
            "-m",
            "bench.logprobs",
            "--variant",
            variant,
            "--dims",
            args.dims,
            "--batch",
            str(args.batch),
            "--seq",
            str(args.seq),
            "--keep",
            str(args.keep),
            "--repeats",
            str(args.repeats),
        ]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    return rows


if __name__ == "__main__":
    for row in main():
        print(row)
