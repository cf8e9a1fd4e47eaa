"""python -m bench [--only logprobs|engine|generation|processes]: run the benchmarks and print one line per
measurement."""

from __future__ import annotations

import argparse

from bench import engine_runs, generation, logprobs


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--only", choices=["logprobs", "engine", "generation", "processes"])
    args = p.parse_args()
    if args.only in (None, "logprobs"):
        print("# per-token log-probs, forward+backward (SmolLM2-135M shape, random weights)")
        for row in logprobs.main([]):
            print(row)
    if args.only in (None, "engine"):
        print("# training runs via python -m engine.train (tiny model)")
        for row in engine_runs.main([]):
            print(row)
    if args.only in (None, "generation"):
        print("# generation throughput: transformers vs a vLLM server process (SmolLM2-135M)")
        for row in generation.main([]):
            print(row)
    if args.only in (None, "processes"):
        print("# 1 vs 2 processes on the same global batch (torchrun, gloo on CPU)")
        for row in engine_runs.main(["--runs", "sft,grpo", "--processes", "1,2"]):
            print(row)


if __name__ == "__main__":
    main()
