#!/usr/bin/env bash
# The checks that need a CUDA GPU (CI has none): run on a GPU machine from the repository root.
# Installs the GPU extras, runs the GPU tests (vLLM colocated in the trainer with sleep/wake and IS metrics
# from its log-probs included), then a ZeRO-3 bf16 SFT job and a GRPO job on SmolLM2 over every GPU,
# printing steps/s and tokens/s.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
MODEL=${MODEL:-bundled:smollm2-135m-instruct}
GPUS=$("$PY" -c "import torch; print(torch.cuda.device_count())")
if [ "$GPUS" -lt 1 ]; then echo "gpu-check: no CUDA device visible" >&2; exit 1; fi
echo "== $GPUS GPU(s): $(nvidia-smi --query-gpu=name --format=csv,noheader | sort | uniq -c | xargs)"

echo "== GPU extras"
"$PY" -m pip install -q -c .venv/constraints.txt -e ".[gpu]"

echo "== pytest -m gpu"
"$PY" -m pytest -q -m gpu -p no:cacheprovider

echo "== SFT, DeepSpeed ZeRO-3, bf16, $GPUS process(es), $MODEL"
"$PY" -m bench.engine_runs --model "$MODEL" --runs sft --processes "$GPUS" --zero 3 --bf16

echo "== GRPO, $GPUS process(es), $MODEL"
"$PY" -m bench.engine_runs --model "$MODEL" --runs grpo --processes "$GPUS" --bf16
