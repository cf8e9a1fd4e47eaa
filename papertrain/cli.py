"""The `papertrain` command (also `python -m papertrain`): migrate the database, create tokens, start the
platform.

    papertrain up                       # embedded mode: migrate, admin token, worker + api + dashboard
    papertrain migrate                  # alembic upgrade head on PAPERTRAIN_DATABASE_URL
    papertrain create-token --user NAME [--name LABEL]
    papertrain api | papertrain worker [--queues cpu,gpu-1]
    papertrain jobs|presets|files ...   # the client commands of the SDK (papertrain_sdk.cli)

Settings come from the environment (`PAPERTRAIN_*`, see core.settings); this module only wires commands.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from core.settings import Settings, get_settings

ADMIN_USER = "admin"


def cmd_migrate(settings: Settings) -> None:
    from core.db import migrate

    settings.ensure_dirs()
    migrate(settings.database_url)
    print(f"database is at the latest revision: {settings.database_url}")


def cmd_create_token(settings: Settings, user: str, name: str, admin: bool = False) -> None:
    from core.auth import create_user_and_token
    from core.db import check_migrated, get_engine, session_scope

    engine = get_engine(settings.database_url)
    check_migrated(engine)
    with session_scope(engine) as session:
        row, raw = create_user_and_token(session, user, name)
        if admin:
            row.is_admin = True
    print(raw)


def cmd_tokens(settings: Settings, command: str, token_id: int | None) -> int:
    from core.db import check_migrated, get_engine, session_scope
    from core.tokens import list_tokens, revoke_token

    engine = get_engine(settings.database_url)
    check_migrated(engine)
    with session_scope(engine) as session:
        if command == "list":
            print(f"{'id':>5}  {'user':<16} {'name':<16} {'prefix':<11} {'last used':<20} revoked")
            for t in list_tokens(session):
                used = t["last_used_at"].strftime("%Y-%m-%d %H:%M") if t["last_used_at"] else "-"
                revoked = t["revoked_at"].strftime("%Y-%m-%d %H:%M") if t["revoked_at"] else "-"
                print(f"{t['id']:>5}  {t['user']:<16} {t['name']:<16} {t['prefix']:<11} {used:<20} {revoked}")
            return 0
        row = revoke_token(session, int(token_id or 0))
    if row is None:
        print(f"error: no token {token_id}", file=sys.stderr)
        return 1
    print(f"revoked token {row['id']} ({row['user']}/{row['name']})")
    return 0


def ensure_admin_token(settings: Settings) -> tuple[str, bool]:
    """The local admin token from `{var_dir}/admin-token`, created on first start. Returns (token, created)."""
    from core.auth import authenticate, create_user_and_token
    from core.db import get_engine, session_scope

    path = Path(settings.var_dir) / "admin-token"
    with session_scope(get_engine(settings.database_url)) as session:
        if path.exists():
            raw = path.read_text().strip()
            if authenticate(session, raw) is not None:
                return raw, False
        admin, raw = create_user_and_token(session, ADMIN_USER, "embedded-admin")
        admin.is_admin = True
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(raw + "\n")
    return raw, True


def cmd_up(settings: Settings) -> None:
    cmd_migrate(settings)
    raw, created = ensure_admin_token(settings)
    token_file = Path(settings.var_dir) / "admin-token"
    if created:
        print(f"admin token (also written to {token_file}):\n\n    {raw}\n")
    else:
        print(f"admin token: see {token_file}")
    print(f"dashboard: http://{settings.host}:{settings.port}/")
    from papertrain.launcher import run_embedded

    run_embedded(settings)


def cmd_worker(settings: Settings, queues: str | None) -> None:
    from worker.main import run_worker

    if queues:
        settings = settings.model_copy(update={"worker_queues": queues})
    run_worker(settings, settings.queues)


def cmd_api(settings: Settings) -> None:
    import uvicorn

    uvicorn.run("api.main:create_app", factory=True, host=settings.host, port=settings.port)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="papertrain",
        description="Self-hosted LLM post-training platform.",
        epilog="client commands (the SDK's, against a running server): papertrain jobs|presets|files --help. "
        "Settings come from PAPERTRAIN_* environment variables (see `papertrain up --help`).",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("migrate", help="create or upgrade the database schema (alembic upgrade head)")
    token = sub.add_parser("create-token", help="create a user if needed and print a new API token once")
    token.add_argument("--user", required=True, help="user name (created if missing)")
    token.add_argument("--name", default="default", help="label for the token")
    token.add_argument("--admin", action="store_true", help="make the user an operator (sees every job)")
    tokens = sub.add_parser("tokens", help="operators: list API tokens or revoke one")
    tokens_sub = tokens.add_subparsers(dest="tokens_command", required=True)
    tokens_sub.add_parser("list", help="every token: id, user, name, prefix, last use, revoked")
    revoke = tokens_sub.add_parser("revoke", help="revoke a token by id (it stops working at once)")
    revoke.add_argument("token_id", type=int)
    sub.add_parser(
        "up",
        help="embedded mode: migrate, ensure an admin token, run worker + api + dashboard",
        description="Migrate, ensure an admin token, and run a worker, the API and the dashboard in one process "
        "tree (SQLite, a server-less queue, a local MLflow store).",
        epilog="settings: PAPERTRAIN_PORT (default 8000), PAPERTRAIN_HOST (127.0.0.1), PAPERTRAIN_VAR_DIR "
        "(./var: database, queue, MLflow store, jobs, uploads, admin-token), PAPERTRAIN_WORKER_QUEUES (cpu); "
        "e.g. PAPERTRAIN_PORT=8100 PAPERTRAIN_VAR_DIR=/tmp/pt papertrain up",
    )
    worker = sub.add_parser("worker", help="run a worker")
    worker.add_argument(
        "--queues", default=None, help="comma-separated queues (default: settings.worker_queues)"
    )
    sub.add_parser("api", help="run the API server only (uvicorn)")
    return parser


CLIENT_GROUPS = ("jobs", "presets", "files")  # the client CLI's (papertrain_sdk.cli), same command name


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in CLIENT_GROUPS:
        try:
            from papertrain_sdk.cli import main as client_main
        except ImportError:
            print(
                f"papertrain {argv[0]}: a client command; install the SDK: pip install ./sdk", file=sys.stderr
            )
            return 2
        return int(client_main(argv))
    args = build_parser().parse_args(argv)
    settings = get_settings()
    from core.db import NotMigratedError

    try:
        if args.command == "migrate":
            cmd_migrate(settings)
        elif args.command == "create-token":
            cmd_create_token(settings, args.user, args.name, admin=args.admin)
        elif args.command == "tokens":
            return cmd_tokens(settings, args.tokens_command, getattr(args, "token_id", None))
        elif args.command == "up":
            cmd_up(settings)
        elif args.command == "worker":
            cmd_worker(settings, args.queues)
        elif args.command == "api":
            cmd_api(settings)
    except NotMigratedError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except RuntimeError as exc:
        from papertrain.launcher import AlreadyRunning

        if not isinstance(exc, AlreadyRunning):
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
