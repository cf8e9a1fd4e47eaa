# The CPU worker: Celery consumer + the training engine on CPU (torch's CPU build).
# Build from the repository root: docker build -f docker/worker-cpu.Dockerfile -t papertrain-worker-cpu .
FROM python:3.11.14-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
# torch first and pinned, from the CPU index: an unpinned torch would pull a CUDA build.
RUN /opt/venv/bin/pip install --index-url https://download.pytorch.org/whl/cpu torch==2.13.0 \
    && echo "torch==2.13.0" > /opt/venv/constraints.txt
COPY docker/constraints-worker.txt /tmp/constraints-worker.txt
COPY pyproject.toml README.md /src/
# Installs the dependencies pyproject.toml lists (with the worker extra), then drops the package itself: the code runs from /app.
RUN mkdir -p /src/api /src/core /src/engine /src/worker /src/papertrain \
    && /opt/venv/bin/pip install -c /opt/venv/constraints.txt -c /tmp/constraints-worker.txt "/src[worker]" \
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
    PAPERTRAIN_VAR_DIR=/var/lib/papertrain \
    PAPERTRAIN_EMBEDDED=false \
    PAPERTRAIN_ENGINE_PYTHON=/opt/venv/bin/python \
    PAPERTRAIN_WORKER_QUEUES=cpu
USER 10001:10001
HEALTHCHECK --interval=30s --timeout=10s --start-period=30s --retries=3 CMD ["python", "-m", "worker.health"]
CMD ["papertrain", "worker"]
