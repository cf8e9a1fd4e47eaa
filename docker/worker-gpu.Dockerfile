# The GPU worker: Celery consumer + the training engine with CUDA torch, DeepSpeed and vLLM. torch's
# CUDA wheels bring the CUDA runtime, cuDNN and NCCL, so the base stays a slim Python image; the host
# needs an NVIDIA driver and the container toolkit (compose: the `gpu` profile; Kubernetes: nvidia.com/gpu).
# Build from the repository root: docker build -f docker/worker-gpu.Dockerfile -t papertrain-worker-gpu .
FROM python:3.11.14-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
# torch first and pinned (PyPI's Linux wheel is the CUDA build); the constraints keep vLLM from moving it.
RUN /opt/venv/bin/pip install torch==2.13.0 \
    && echo "torch==2.13.0" > /opt/venv/constraints.txt
COPY docker/constraints-worker-gpu.txt /tmp/constraints-worker.txt
COPY pyproject.toml README.md /src/
# Installs the dependencies pyproject.toml lists (with the worker and gpu extras), then drops the package itself:
# the code runs from /app.
RUN mkdir -p /src/api /src/core /src/engine /src/worker /src/papertrain \
    && /opt/venv/bin/pip install -c /opt/venv/constraints.txt -c /tmp/constraints-worker.txt "/src[worker,gpu]" \
    && /opt/venv/bin/pip uninstall -y papertrain \
    && printf '#!/bin/sh\nexec python -m papertrain "$@"\n' > /opt/venv/bin/papertrain \
    && chmod 0755 /opt/venv/bin/papertrain

FROM python:3.11.14-slim-bookworm
RUN groupadd --system --gid 10001 papertrain \
    && useradd --system --uid 10001 --gid papertrain --home-dir /var/lib/papertrain --create-home papertrain
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
COPY pyproject.toml ./
COPY api ./api
COPY core ./core
COPY engine ./engine
COPY worker ./worker
COPY papertrain ./papertrain
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONPATH=/app \
    PYTHONUNBUFFERED=1 \
    HF_HOME=/var/lib/papertrain/hf \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    PAPERTRAIN_VAR_DIR=/var/lib/papertrain \
    PAPERTRAIN_EMBEDDED=false \
    PAPERTRAIN_ENGINE_PYTHON=/opt/venv/bin/python \
    PAPERTRAIN_VLLM_PYTHON=/opt/venv/bin/python \
    PAPERTRAIN_WORKER_QUEUES=gpu-1
USER 10001:10001
HEALTHCHECK --interval=30s --timeout=10s --start-period=60s --retries=3 CMD ["python", "-m", "worker.health"]
CMD ["papertrain", "worker"]
