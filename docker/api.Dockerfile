# The API image: REST API + dashboard, `papertrain migrate` and `papertrain create-token`. No torch: the
# API only imports the torch-free job spec, so it installs the package's dependencies without extras
# (training libraries are the `engine` extra), at the versions of docker/constraints-api.txt.
# Build from the repository root: docker build -f docker/api.Dockerfile -t papertrain-api .
FROM python:3.11.14-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
COPY docker/constraints-api.txt /tmp/constraints-api.txt
COPY pyproject.toml README.md /src/
# Installs the dependencies pyproject.toml lists, then drops the package itself: the code runs from /app.
RUN mkdir -p /src/api /src/core /src/engine /src/worker /src/papertrain \
    && /opt/venv/bin/pip install -c /tmp/constraints-api.txt /src \
    && /opt/venv/bin/pip uninstall -y papertrain \
    && printf '#!/bin/sh\nexec python -m papertrain "$@"\n' > /opt/venv/bin/papertrain \
    && chmod 0755 /opt/venv/bin/papertrain

# The dashboard's browser assets (uPlot, Swagger UI) from npm, as `make install` gets them.
FROM python:3.11.14-slim-bookworm AS web
RUN apt-get update \
    && apt-get install -y --no-install-recommends npm=9.2.0~ds1-1 \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /web
COPY web/package.json web/package-lock.json ./
RUN npm ci --ignore-scripts --no-audit --no-fund

FROM python:3.11.14-slim-bookworm
RUN groupadd --system --gid 10001 papertrain \
    && useradd --system --uid 10001 --gid papertrain --home-dir /var/lib/papertrain --create-home papertrain
COPY --from=build /opt/venv /opt/venv
# The code runs from /app (the dashboard is found next to it, the migrations inside core/).
WORKDIR /app
COPY pyproject.toml ./
COPY web ./web
COPY --from=web /web/node_modules ./web/node_modules
COPY api ./api
COPY core ./core
COPY engine ./engine
COPY worker ./worker
COPY papertrain ./papertrain
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONPATH=/app \
    PYTHONUNBUFFERED=1 \
    PAPERTRAIN_HOST=0.0.0.0 \
    PAPERTRAIN_PORT=8000 \
    PAPERTRAIN_VAR_DIR=/var/lib/papertrain \
    PAPERTRAIN_EMBEDDED=false
USER 10001:10001
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('PAPERTRAIN_PORT', '8000'), timeout=4)"]
CMD ["papertrain", "api"]
