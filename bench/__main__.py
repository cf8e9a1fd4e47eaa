"""python -m bench [--full] [--only logprobs|sampler|speed|engine|generation|processes] [--models REFS]:
run the benchmarks and print their numbers.

Without `--full` (what `make bench` runs): the speed workloads only (GRPO 4x4x32 with beta 0.04 and 0, SFT
8 rows, DPO 4 pairs) on the tiny model and SmolLM2-135M-Instruct in every precision mode this machine
runs, with a few steps each (about 15 minutes on 2 busy cores, 6.5 GB peak). With `--full` (`make
bench-full`, the numbers of docs/benchmarks.md): the same with more steps, then every other section.
`--models` picks the models of the speed workloads (comma-separated).
"""

from __future__ import annotations

import argparse

from bench import engine_runs, generation, logprobs, sampler, speed_runs

SECTIONS = ["logprobs", "sampler", "speed", "engine", "generation", "processes"]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--only", choices=SECTIONS)
    p.add_argument("--full", action="store_true", help="more steps per run, and every section")
    p.add_argument("--models", "--model", default=",".join(speed_runs.MODELS))
    args = p.parse_args()
    sections = [args.only] if args.only else SECTIONS if args.full else ["speed"]
    if "logprobs" in sections:
        print("# per-token log-probs, forward+backward (SmolLM2-135M shape, random weights)")
        for row in logprobs.main([]):
            print(row)
    if "sampler" in sections:
        print("# sampling: the hf backend's decode loop vs transformers generate (SmolLM2-135M shape)")
        for row in sampler.main([]):
            print(row)
    if "speed" in sections:
        mode = "full" if args.full else "quick"
        print(f"# speed workloads via python -m engine.train ({args.models}), per precision mode, {mode}")
        argv = ["--models", args.models] + ([] if args.full else ["--quick"])
        print("\n".join(speed_runs.table(speed_runs.main(argv))), flush=True)
    if "engine" in sections:
        print("# training runs via python -m engine.train (tiny model)")
        for row in engine_runs.main([]):
            print(row)
    if "generation" in sections:
        print("# generation throughput: transformers vs a vLLM server process (SmolLM2-135M)")
        for row in generation.main([]):
            print(row)
    if "processes" in sections:
        print("# 1 vs 2 processes on the same global batch (torchrun, gloo on CPU)")
        for row in engine_runs.main(["--runs", "sft,grpo", "--processes", "1,2"]):
            print(row)


if __name__ == "__main__":
    main()
