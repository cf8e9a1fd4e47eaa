"""`papertrain jobs|presets|files ...`: the client CLI, for people and CI pipelines.

    papertrain jobs submit job.yaml --preset dapo --set config.beta=0.0 --wait \
        --gate "rollout/reward_mean>=0.3" --junit report.xml
    papertrain jobs list | get ID | cancel ID | retry ID | wait ID | logs ID [--follow]
    papertrain presets list | show ID
    papertrain files upload data.jsonl | list

Server: `--url` / PAPERTRAIN_URL (default http://127.0.0.1:8000), token: `--token` / PAPERTRAIN_TOKEN.
On a terminal `--wait` shows one updating progress line; otherwise (CI) plain lines. Progress goes to
stderr; results go to stdout (`--output json` for machines).

The server package installs its admin commands under the same name (`papertrain up|api|worker|migrate|
create-token`); each entry point hands the other's commands over, so either can own the script.

Exit codes: 0 ok (job succeeded, every gate met), 1 job failed, 2 usage error, 3 a gate
not met, 4 job cancelled, 5 request refused (invalid spec, unknown id, conflict), 6 server unreachable
or failing, 7 timed out waiting.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
import uuid
from pathlib import Path
from typing import Any
from xml.sax.saxutils import quoteattr

from papertrain_sdk.client import Client
from papertrain_sdk.errors import InvalidRequest, PapertrainError, ServerError, Unreachable, WaitTimeout
from papertrain_sdk.gates import GateResult, parse_gate
from papertrain_sdk.models import DryRun, Job

EXIT = {
    "ok": 0,
    "failed": 1,
    "usage": 2,
    "gate_not_met": 3,
    "cancelled": 4,
    "refused": 5,
    "unreachable": 6,
    "timeout": 7,
}
CLIENT_GROUPS = ("jobs", "presets", "files")
SERVER_COMMANDS = ("up", "api", "worker", "migrate", "create-token")


class UsageError(Exception):
    pass


# ------------------------------------------------------------------------------------------ spec input


# YAML 1.1 reads 2e-4 (no dot) as a string; JSON and YAML 1.2 read it as a number, as users expect.
_FLOAT = re.compile(
    r"^[-+]?(?:\d[\d_]*(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?$|^[-+]?\.(?:inf|Inf|INF)$|^\.(?:nan|NaN|NAN)$"
)


def _yaml_load(text: str) -> Any:
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    Loader.yaml_implicit_resolvers = {k: list(v) for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()}
    Loader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT, list("-+0123456789."))
    return yaml.load(text, Loader=Loader)  # a SafeLoader subclass: no arbitrary objects


def load_spec(path: str | None) -> dict[str, Any]:
    """A job spec from a YAML or JSON file (`-` reads stdin); {} without a file."""
    if path is None:
        return {}
    import yaml

    text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
    try:
        data = _yaml_load(text)
    except yaml.YAMLError as exc:
        raise UsageError(f"{path}: not valid YAML/JSON: {exc}") from None
    if not isinstance(data, dict):
        raise UsageError(f"{path}: a job spec must be a mapping, got {type(data).__name__}")
    return data


def apply_set(spec: dict[str, Any], assignment: str) -> None:
    """`config.beta=0.0` sets spec["config"]["beta"] = 0.0 (the value is read as YAML: numbers, booleans,
    lists)."""
    path, sep, raw = assignment.partition("=")
    if not sep or not path.strip():
        raise UsageError(f"--set {assignment!r}: expected KEY=VALUE, e.g. config.beta=0.0")
    keys = path.strip().split(".")
    node = spec
    for key in keys[:-1]:
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise UsageError(f"--set {assignment!r}: {key!r} is not a mapping in the spec")
        node = child
    node[keys[-1]] = _yaml_load(raw) if raw.strip() else ""


# ------------------------------------------------------------------------------------------ output


class Printer:
    def __init__(self, output: str, stream=None) -> None:
        self.output = output
        self.err = stream or sys.stderr
        self.tty = self.err.isatty()
        self._line_open = False

    def result(self, payload: Any, text: str) -> None:
        if self.output == "json":
            print(json.dumps(payload, indent=2, default=str))
        else:
            print(text)

    def note(self, text: str) -> None:
        self.end_line()
        print(text, file=self.err, flush=True)

    def progress(self, text: str) -> None:
        if self.tty:
            self.err.write("\r\x1b[2K" + text)
            self.err.flush()
            self._line_open = True
        else:
            print(text, file=self.err, flush=True)

    def end_line(self) -> None:
        if self._line_open:
            self.err.write("\n")
            self._line_open = False


def _job_line(job: Job) -> str:
    step = f"{job.last_step or 0}/{job.total_steps or '?'}"
    return f"{job.id}  {job.status:<10}  {job.algorithm:<8}  step {step:<9}  {job.name or ''}"


def dry_run_text(dry: DryRun) -> str:
    """What a dry run found, for a person: the spec is valid, what differs from the preset, the size."""
    spec = dry.spec
    preset = f", preset {dry.preset['id']} v{dry.preset['version']}" if dry.preset else ""
    lines = [f"valid: {spec.get('algorithm')} on {spec.get('model')}{preset} (nothing was submitted)"]
    for d in dry.preset_diff:
        was = json.dumps(d.get("preset_value")) if d.get("preset_fixed") else "not set"
        mark = ", part of its objective" if d.get("objective") else ""
        lines.append(f"  {d['param']} = {json.dumps(d.get('value'))} (preset: {was}{mark})")
    est = dry.estimate
    if est:
        steps = est.get("steps") if est.get("steps") is not None else "?"
        tokens = f", at most {est['max_tokens']:,} tokens" if est.get("max_tokens") else ""
        lines.append(f"estimate: {steps} steps of {est.get('sequences_per_step')} sequences{tokens}")
    return "\n".join(lines)


def _fmt_eta(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class Follower:
    """Turns the event stream into progress output: steps, ETA and the latest metrics."""

    def __init__(self, printer: Printer, show_logs: bool = False) -> None:
        self.p = printer
        self.show_logs = show_logs
        self.step = 0
        self.total: int | None = None
        self.metrics: dict[str, float] = {}
        self.started: float | None = None
        self.now = 0.0
        self.first_step = 0
        self._last_plain = 0.0

    def __call__(self, event: Any) -> None:
        kind, data = event.kind, event.data
        if kind == "progress":
            self.step, self.total = data.get("step", self.step), data.get("total_steps", self.total)
            # the engine's own clock: replayed history (a job already under way) keeps its real pace
            ts = data.get("ts")
            self.now = float(ts) if isinstance(ts, int | float) else time.monotonic()
            if self.started is None:
                self.started, self.first_step = self.now, self.step
            self._draw()
        elif kind == "metrics":
            self.metrics.update(
                {k: v for k, v in (data.get("metrics") or {}).items() if isinstance(v, int | float)}
            )
            self._draw(force_plain=not self.p.tty)
        elif kind == "status":
            self.p.note(
                f"status: {data.get('from') or '-'} -> {data.get('to')}"
                + (f" ({data['reason']})" if data.get("reason") else "")
            )
        elif kind == "checkpoint":
            self.p.note(f"checkpoint at step {event.step}")
        elif kind == "error":
            self.p.note(f"error: {data.get('message')}")
        elif kind == "log" and (self.show_logs or data.get("level") in ("warning", "error")):
            self.p.note(f"[{data.get('level', 'info')}] {data.get('message')}")

    def _draw(self, force_plain: bool = False) -> None:
        total = self.total or 0
        parts = [f"step {self.step}/{total or '?'}"]
        if total:
            parts.append(f"{100 * self.step / total:3.0f}%")
        if self.started is not None and total and self.step > self.first_step:
            rate = (self.now - self.started) / (self.step - self.first_step)
            parts.append(f"ETA {_fmt_eta(rate * (total - self.step))}")
        shown = [k for k in ("train/loss", "rollout/reward_mean", "policy/kl") if k in self.metrics]
        shown = shown or sorted(self.metrics)[:3]
        parts += [f"{k}={self.metrics[k]:.4g}" for k in shown]
        line = "  ".join(parts)
        if self.p.tty:
            bar_w = 20
            filled = int(bar_w * self.step / total) if total else 0
            self.p.progress(f"[{'#' * filled}{'.' * (bar_w - filled)}] {line}")
        elif force_plain:
            self.p.progress(line)


# ------------------------------------------------------------------------------------------ junit


def write_junit(path: str, job: Job, results: list[GateResult], elapsed: float) -> None:
    cases = []
    ok = job.status == "succeeded"
    message = (job.error or {}).get("message") or job.status
    cases.append(
        f'  <testcase classname="papertrain.job" name={quoteattr(f"job {job.id} succeeded")} time="{elapsed:.1f}">'
        + ("" if ok else f"<failure message={quoteattr(str(message))}/>")
        + "</testcase>"
    )
    for r in results:
        cases.append(
            f'  <testcase classname="papertrain.gate" name={quoteattr(r.gate.text)} time="0">'
            + ("" if r.passed else f"<failure message={quoteattr(r.reason)}/>")
            + "</testcase>"
        )
    failures = (0 if ok else 1) + sum(not r.passed for r in results)
    xml = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f'<testsuite name="papertrain" tests="{len(cases)}" failures="{failures}" errors="0" time="{elapsed:.1f}">\n'
        + "\n".join(cases)
        + "\n</testsuite>\n"
    )
    Path(path).write_text(xml, encoding="utf-8")


# ------------------------------------------------------------------------------------------ commands


def _finish(client: Client, printer: Printer, args: argparse.Namespace, job: Job, started: float) -> int:
    """Wait for `job` (following its events), check the gates, write the reports; returns the exit code."""
    gates = [parse_gate(g) for g in args.gate or []]
    follower = Follower(printer)
    deadline = None if args.timeout is None else time.monotonic() + args.timeout
    try:
        for event in client.jobs.stream(job.id):
            follower(event)
            if deadline is not None and time.monotonic() > deadline:
                raise WaitTimeout(f"job {job.id} did not finish within {args.timeout}s", code="wait_timeout")
        job = client.jobs.wait(job.id, timeout=30, poll_s=1.0)  # the stream ended: the job is terminal
    finally:
        printer.end_line()
    results = [g.check(client.jobs.metrics(job.id)) for g in gates] if job.status == "succeeded" else []
    if args.junit:
        write_junit(args.junit, job, results, time.monotonic() - started)
    for r in results:
        printer.note(f"gate {r.gate.text}: {'passed' if r.passed else 'FAILED'} ({r.reason})")
    if job.status == "succeeded":
        code = EXIT["ok"] if all(r.passed for r in results) else EXIT["gate_not_met"]
    else:
        code = EXIT["cancelled"] if job.status == "cancelled" else EXIT["failed"]
    payload = {
        "job": job.model_dump(mode="json"),
        "gates": [
            {"gate": r.gate.text, "passed": r.passed, "value": r.value, "reason": r.reason} for r in results
        ],
        "exit_code": code,
    }
    error = f" ({(job.error or {}).get('message')})" if job.error else ""
    printer.result(payload, f"{job.id} {job.status}{error}")
    return code


def cmd_submit(client: Client, printer: Printer, args: argparse.Namespace) -> int:
    started = time.monotonic()
    spec = load_spec(args.file)
    if args.preset:
        spec["preset"] = args.preset
    if args.name:
        spec["name"] = args.name
    for assignment in args.set or []:
        apply_set(spec, assignment)
    if not spec:
        raise UsageError("give a spec file or --preset")
    for gate in args.gate or []:
        parse_gate(gate)  # a typo in a gate fails before anything is submitted
    if args.dry_run:
        dry = client.jobs.validate(spec)
        for w in dry.warnings:
            printer.note(f"warning [{w.param}]: {w.message}")
        printer.result(dry.model_dump(mode="json"), dry_run_text(dry))
        return EXIT["ok"]
    key = args.idempotency_key or str(uuid.uuid4())  # a retried POST inside this run never submits twice
    job = client.jobs.create(spec, idempotency_key=key)
    printer.note(
        f"submitted {job.id} ({job.algorithm}{', preset ' + job.preset_id if job.preset_id else ''})"
    )
    if not args.wait:
        printer.result(job.model_dump(mode="json"), job.id)
        return EXIT["ok"]
    return _finish(client, printer, args, job, started)


def cmd_wait(client: Client, printer: Printer, args: argparse.Namespace) -> int:
    return _finish(client, printer, args, client.jobs.get(args.job_id), time.monotonic())


def cmd_list(client: Client, printer: Printer, args: argparse.Namespace) -> int:
    page = client.jobs.list(status=args.status, limit=args.limit)
    printer.result(
        [j.model_dump(mode="json") for j in page.jobs],
        "\n".join(_job_line(j) for j in page.jobs) or "(no jobs)",
    )
    return EXIT["ok"]


def _show_job(printer: Printer, job: Job) -> int:
    printer.result(job.model_dump(mode="json"), _job_line(job))
    return EXIT["ok"]


def cmd_logs(client: Client, printer: Printer, args: argparse.Namespace) -> int:
    def line(event: Any) -> str:
        data = event.data
        if event.kind == "log":
            return f"[{data.get('level', 'info')}] {data.get('message')}"
        if event.kind == "status":
            return f"status {data.get('from') or '-'} -> {data.get('to')}"
        if event.kind == "metrics":
            return f"step {event.step} " + " ".join(
                f"{k}={v:.4g}" for k, v in (data.get("metrics") or {}).items() if isinstance(v, int | float)
            )
        return f"{event.kind} {json.dumps(data, default=str)}"

    def emit(event: Any) -> None:
        if printer.output == "json":
            print(json.dumps(event.model_dump(mode="json")), flush=True)
        else:
            print(f"{event.id:>6} {line(event)}", flush=True)

    if args.follow:
        for event in client.jobs.stream(args.job_id):
            emit(event)
        return EXIT["ok"]
    after = 0
    while True:
        page = client.jobs.events(args.job_id, after=after, limit=1000)
        for event in page.events:
            emit(event)
        after = page.next_cursor or after
        if not page.has_more:
            return EXIT["ok"]


def cmd_presets_list(client: Client, printer: Printer, args: argparse.Namespace) -> int:
    presets = client.presets.list()
    text = "\n".join(
        f"{p.id:<32} {p.algorithm:<8} {'' if p.runnable else '(not runnable) '}{p.title}" for p in presets
    )
    printer.result([p.model_dump(mode="json") for p in presets], text)
    return EXIT["ok"]


def cmd_presets_show(client: Client, printer: Printer, args: argparse.Namespace) -> int:
    import yaml

    preset = client.presets.get(args.preset_id)
    printer.result(
        preset.model_dump(mode="json"), yaml.safe_dump(preset.model_dump(mode="json"), sort_keys=False)
    )
    return EXIT["ok"]


def cmd_files_upload(client: Client, printer: Printer, args: argparse.Namespace) -> int:
    info = client.files.upload(args.path, idempotency_key=args.idempotency_key)
    printer.result(info.model_dump(mode="json"), f"{info.id}  {info.rows} rows  {info.filename}")
    return EXIT["ok"]


def cmd_files_list(client: Client, printer: Printer, args: argparse.Namespace) -> int:
    files = client.files.list()
    printer.result(
        [f.model_dump(mode="json") for f in files],
        "\n".join(f"{f.id}  {f.rows:>7} rows  {f.filename}" for f in files) or "(no files)",
    )
    return EXIT["ok"]


# ------------------------------------------------------------------------------------------ parser


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--url", default=None, help="server URL (default: $PAPERTRAIN_URL or http://127.0.0.1:8000)"
    )
    common.add_argument("--token", default=None, help="API token (default: $PAPERTRAIN_TOKEN)")
    common.add_argument(
        "--output", "-o", choices=("text", "json"), default="text", help="result format on stdout"
    )

    wait_opts = argparse.ArgumentParser(add_help=False)
    wait_opts.add_argument(
        "--gate",
        action="append",
        metavar="EXPR",
        help="metric condition, e.g. 'rollout/reward_mean>=0.3' or 'max(train/loss)<2' (repeatable)",
    )
    wait_opts.add_argument(
        "--timeout", type=float, default=None, help="give up waiting after N seconds (exit 7)"
    )
    wait_opts.add_argument("--junit", metavar="FILE", help="write a JUnit XML report (the job and each gate)")

    parser = argparse.ArgumentParser(
        prog="papertrain",
        description="papertrain client: jobs, presets, files. (Server commands up, api, worker, migrate, "
        "create-token come from the server package.)",
        epilog=__doc__.split("Exit codes", 1)[1].join(["Exit codes", ""]),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    groups = parser.add_subparsers(dest="group", required=True)

    jobs = groups.add_parser("jobs", help="submit, watch and control jobs").add_subparsers(
        dest="cmd", required=True
    )
    submit = jobs.add_parser("submit", parents=[common, wait_opts], help="submit a job spec (YAML or JSON)")
    submit.add_argument("file", nargs="?", help="job spec file (YAML/JSON; '-' for stdin)")
    submit.add_argument("--preset", help="start from this paper preset")
    submit.add_argument("--set", action="append", metavar="KEY=VALUE", help="override, e.g. config.beta=0.0")
    submit.add_argument("--name", help="display name")
    submit.add_argument(
        "--wait", action="store_true", help="follow the job until it ends, then check the gates"
    )
    submit.add_argument("--dry-run", action="store_true", help="validate only: warnings and the estimate")
    submit.add_argument("--idempotency-key", help="default: a fresh UUID per run")
    submit.set_defaults(func=cmd_submit)
    wait = jobs.add_parser("wait", parents=[common, wait_opts], help="wait for a job, then check the gates")
    wait.add_argument("job_id")
    wait.set_defaults(func=cmd_wait)
    lst = jobs.add_parser("list", parents=[common], help="your jobs, newest first")
    lst.add_argument("--status", help="filter: one status or a comma-separated list")
    lst.add_argument("--limit", type=int, default=20)
    lst.set_defaults(func=cmd_list)
    for name, action in (("get", "get"), ("cancel", "cancel"), ("retry", "retry")):
        p = jobs.add_parser(name, parents=[common], help=f"{name} a job")
        p.add_argument("job_id")
        p.set_defaults(func=lambda c, pr, a, _act=action: _show_job(pr, getattr(c.jobs, _act)(a.job_id)))
    logs = jobs.add_parser("logs", parents=[common], help="a job's events")
    logs.add_argument("job_id")
    logs.add_argument("--follow", "-f", action="store_true", help="keep streaming until the job ends")
    logs.set_defaults(func=cmd_logs)

    presets = groups.add_parser("presets", help="paper presets").add_subparsers(dest="cmd", required=True)
    presets.add_parser("list", parents=[common]).set_defaults(func=cmd_presets_list)
    show = presets.add_parser("show", parents=[common])
    show.add_argument("preset_id")
    show.set_defaults(func=cmd_presets_show)

    files = groups.add_parser("files", help="dataset uploads").add_subparsers(dest="cmd", required=True)
    up = files.add_parser("upload", parents=[common], help="upload a JSONL dataset")
    up.add_argument("path")
    up.add_argument("--idempotency-key")
    up.set_defaults(func=cmd_files_upload)
    files.add_parser("list", parents=[common]).set_defaults(func=cmd_files_list)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in SERVER_COMMANDS:
        try:
            from papertrain.cli import main as server_main
        except ImportError:
            print(
                f"papertrain {argv[0]}: a server command; install the papertrain server package",
                file=sys.stderr,
            )
            return EXIT["usage"]
        return server_main(argv)
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    printer = Printer(args.output)
    try:
        with Client(args.url, args.token) as client:
            return args.func(client, printer, args)
    except (UsageError, ValueError, OSError) as exc:
        printer.note(f"error: {exc}")
        return EXIT["usage"]
    except WaitTimeout as exc:
        printer.note(f"error: {exc}")
        return EXIT["timeout"]
    except (Unreachable, ServerError) as exc:
        printer.note(f"error: {exc}")
        return EXIT["unreachable"]
    except (InvalidRequest, PapertrainError) as exc:
        printer.note(f"error: {exc}")
        if printer.output == "json":
            print(
                json.dumps(
                    {
                        "error": {
                            "code": exc.code,
                            "message": exc.message,
                            "param": exc.param,
                            "status": exc.status,
                        }
                    }
                )
            )
        return EXIT["refused"]


if __name__ == "__main__":
    sys.exit(main())
