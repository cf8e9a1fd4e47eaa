"""python -m bench [--only logprobs|sampler|speed|engine|generation|processes] [--model REF]: run the
benchmarks and print one line per measurement.

`--model` picks the model of the speed workloads (default tiny:llama; `bundled:smollm2-135m-instruct` for
the SmolLM2 numbers, which take minutes and about 6.5 GB).
"""

from __future__ import annotations

import argparse

from bench import engine_runs, generation, logprobs, sampler, speed_runs


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--only", choices=["logprobs", "sampler", "speed", "engine", "generation", "processes"])
    p.add_argument("--model", default="tiny:llama")
    args = p.parse_args()
    if args.only in (None, "logprobs"):
        print("# per-token log-probs, forward+backward (SmolLM2-135M shape, random weights)")
        for row in logprobs.main([]):
            print(row)
    if args.only in (None, "sampler"):
        print("# sampling: the hf backend's decode loop vs transformers generate (SmolLM2-135M shape)")
        for row in sampler.main([]):
            print(row)
    if args.only in (None, "speed"):
        print(f"# speed workloads via python -m engine.train ({args.model}), per precision")
        for row in speed_runs.main(["--model", args.model]):
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
