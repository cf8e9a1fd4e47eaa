"""A worker container's health check: `python -m worker.health` exits 0 when the database answers at the
migrated schema and the broker accepts a connection, 1 (with the reason on stderr) otherwise.

It checks what a worker needs to take and run jobs, not the worker process itself: the container's main
process is the worker, so a dead worker already ends the container.
"""

from __future__ import annotations

import sys

from core.settings import Settings, get_settings


def problems(settings: Settings, *, timeout_s: float = 5.0) -> list[str]:
    """What keeps a worker with `settings` from working; empty when healthy."""
    from core.celery_app import make_celery
    from core.db import NotMigratedError, check_migrated, make_engine

    found: list[str] = []
    engine = make_engine(settings.database_url)
    try:
        check_migrated(engine)
    except NotMigratedError as exc:
        found.append(f"database: {exc}")
    finally:
        engine.dispose()
    conn = make_celery(settings).connection_for_write()
    try:
        conn.ensure_connection(max_retries=1, timeout=timeout_s)
    except Exception as exc:
        found.append(f"broker {conn.as_uri()}: {type(exc).__name__}: {exc}")  # as_uri hides the password
    finally:
        conn.release()
    return found


def main() -> int:
    found = problems(get_settings())
    for line in found:
        print(f"unhealthy: {line}", file=sys.stderr)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
