#!/usr/bin/env bash
# The checks that need a CUDA GPU (CI has none): run on a GPU machine from the repository root.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}

# vLLM colocated in the trainer (sleep/wake between generation and training), IS metrics from its log-probs
"$PY" -m pytest -q -m gpu tests/gpu/test_gpu_paths.py -k vllm
