"""python -m bench [--only logprobs|engine]: run the benchmarks and print one line per measurement."""

from __future__ import annotations

import argparse

from bench import engine_runs, logprobs


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--only", choices=["logprobs", "engine"])
    args = p.parse_args()
    if args.only in (None, "logprobs"):
        print("# per-token log-probs, forward+backward (SmolLM2-135M shape, random weights)")
        for row in logprobs.main([]):
            print(row)
    if args.only in (None, "engine"):
        print("# training runs via python -m engine.train (tiny model)")
        for row in engine_runs.main([]):
            print(row)


if __name__ == "__main__":
    main()
