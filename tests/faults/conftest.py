"""The fault-injection suite runs the platform against private PostgreSQL, Redis and MLflow servers that it
starts, breaks and restarts itself (127.0.0.1, free ports); the shared services are never touched."""

from __future__ import annotations

import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
for folder in ("worker", "integration"):  # worker_testkit, mlflow_testkit
    if str(TESTS / folder) not in sys.path:
        sys.path.insert(0, str(TESTS / folder))
