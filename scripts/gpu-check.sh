#!/usr/bin/env bash
# The checks that need a CUDA GPU (CI has none), run from the repository root in one call of about 5 minutes:
# `pytest -m gpu` (tests/gpu; the vLLM test skips when vLLM is absent), then a bf16 SFT job and a GRPO job on
# the tiny model and, when DeepSpeed is there, a ZeRO-3 bf16 SFT job over every GPU, each printing its
# seconds per step and tokens/s.
#
# On a GPU machine without network whose python3 already has torch, transformers, peft and accelerate:
# first, on a machine with network, `make gpu-wheelhouse` puts the missing pure-Python wheels and DeepSpeed's
# source into .whl/ (git ignores it; about 10 MB). Then copy the working tree and the ignored .whl/ there
# (carry: [".whl"]) and run, in one command of at most 10 minutes (timeout_s: 600):
#     set -o pipefail; PYTHONUNBUFFERED=1 bash scripts/gpu-check.sh 2>&1 | tee "${OUT:-.}/gpu-check.log"
# The script installs from .whl/ only what is missing or older (into a folder of its own, never into the
# machine's Python) and builds DeepSpeed there without compiling its ops (DS_BUILD_OPS=0).
# On a machine set up with `make install`: PY=.venv/bin/python scripts/gpu-check.sh (nothing is installed).
# GPU_CHECK_DRY=1 checks the wheelhouse and prints the plan without a GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${PY:-}" ]; then PY=python3; [ -x .venv/bin/python ] && PY=.venv/bin/python; fi
MODEL=${MODEL:-tiny:llama}
WHEELS=${WHEELS:-.whl}
SITE=${SITE:-/tmp/papertrain-gpu-site}
DRY=${GPU_CHECK_DRY:-0}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

echo "== python: $("$PY" -c 'import sys, torch; print(sys.version.split()[0], "torch", torch.__version__)')"

# The wheelhouse's packages this Python lacks or has older: "install PATH" lines, and one line on each.
plan() {
    "$PY" - "$WHEELS" <<'PLAN'
import importlib.metadata as md
import pathlib
import sys

from packaging.version import Version

for path in sorted(pathlib.Path(sys.argv[1]).glob("*")):
    if not path.name.endswith((".whl", ".tar.gz")):
        continue
    name, version = path.name.removesuffix(".tar.gz").split("-")[:2]
    try:
        have = md.version(name)
    except md.PackageNotFoundError:
        have = None
    if have is None or Version(have) < Version(version):
        print(f"install {path}")
    print(f"- {name} {version}: {'installed ' + have if have else 'missing'}")
PLAN
}

if [ -d "$WHEELS" ]; then
    echo "== wheelhouse $WHEELS ($(du -sh "$WHEELS" | cut -f1)):"
    wheels=() sdists=()
    while read -r word rest; do
        case "$word $rest" in
            "install "*.whl) wheels+=("$rest") ;;
            "install "*) sdists+=("$rest") ;;
            *) echo "   $rest" ;;
        esac
    done < <(plan)
    todo=(${wheels[@]+"${wheels[@]}"} ${sdists[@]+"${sdists[@]}"})
    if [ "$DRY" = 1 ]; then
        echo "== would install: ${todo[*]:-nothing}"
    elif [ ${#todo[@]} -gt 0 ]; then
        export PIP_ROOT_USER_ACTION=ignore  # the machine is throwaway and runs as root
        pip_install=("$PY" -m pip install -q --no-index --no-deps --no-cache-dir --upgrade --target "$SITE")
        if [ ${#wheels[@]} -gt 0 ]; then "${pip_install[@]}" --no-compile "${wheels[@]}"; fi
        export PYTHONPATH="$PYTHONPATH:$SITE"
        for sdist in ${sdists[@]+"${sdists[@]}"}; do  # DeepSpeed: no compiled ops, built against this torch
            DS_BUILD_OPS=0 "${pip_install[@]}" --no-build-isolation "$sdist" \
                || echo "gpu-check: could not install $sdist; what needs it is skipped" >&2
        done
    fi
fi
has() { "$PY" -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('$1') is None)"; }
for module in pydantic sqlalchemy pytest; do
    has "$module" || { echo "gpu-check: $module is missing; run make gpu-wheelhouse and carry $WHEELS" >&2; exit 1; }
done
if has vllm; then VLLM=yes; else VLLM="no (the vLLM test skips)"; fi
if has deepspeed; then DEEPSPEED=yes; else DEEPSPEED="no (the ZeRO-3 run is skipped)"; fi
echo "== vLLM: $VLLM; DeepSpeed: $DEEPSPEED"

if [ "$DRY" = 1 ]; then
    echo "== dry run: pytest -m gpu tests/gpu; bench.engine_runs sft,grpo on $MODEL; ZeRO-3 SFT if DeepSpeed"
    exit 0
fi
GPUS=$("$PY" -c "import torch; print(torch.cuda.device_count())")
if [ "$GPUS" -lt 1 ]; then echo "gpu-check: no CUDA device visible" >&2; exit 1; fi
echo "== $GPUS GPU(s): $(nvidia-smi --query-gpu=name --format=csv,noheader | sort | uniq -c | xargs)"

failed=()
step() {  # run one check; a failure is reported at the end and does not stop the others
    echo "== $1"
    shift
    "$@" || failed+=("$*")
}
step "pytest -m gpu" "$PY" -m pytest -q -m gpu -p no:cacheprovider tests/gpu
step "SFT and GRPO, bf16, 1 process, $MODEL" \
    "$PY" -m bench.engine_runs --model "$MODEL" --runs sft,grpo --processes 1 --bf16
if [ "$DEEPSPEED" = yes ]; then
    step "SFT, DeepSpeed ZeRO-3, bf16, $GPUS process(es), $MODEL" \
        "$PY" -m bench.engine_runs --model "$MODEL" --runs sft --processes "$GPUS" --zero 3 --bf16
fi
if [ ${#failed[@]} -gt 0 ]; then
    printf 'gpu-check: FAILED: %s\n' "${failed[@]}" >&2
    exit 1
fi
echo "== gpu-check passed"
