# The MLflow tracking server: PostgreSQL backend store, artifacts stored on a volume (or an S3-compatible
# bucket) and served through the server, so workers need no artifact-store credentials.
# Build from the repository root: docker build -f docker/mlflow.Dockerfile -t papertrain-mlflow .
FROM python:3.11.14-slim-bookworm
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv \
    && /opt/venv/bin/pip install mlflow==3.17.2 "psycopg[binary]==3.3.9" boto3==1.44.5 \
    && groupadd --system --gid 10001 mlflow \
    && useradd --system --uid 10001 --gid mlflow --home-dir /mlartifacts --create-home mlflow
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1
USER 10001:10001
EXPOSE 5000
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=5 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:5000/health', timeout=4)"]
CMD ["mlflow", "server", "--host", "0.0.0.0", "--port", "5000", "--serve-artifacts", "--artifacts-destination", "/mlartifacts"]
