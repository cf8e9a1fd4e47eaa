"""Lint and render a chart offline with Helm's own library (PyPI `helm-python-sdk`, no helm binary, no
cluster). Runs in the tools environment that `make deploy-tools` builds:

    .venv-deploy/bin/python helm/render.py lint helm/papertrain [-f values.yaml] [--strict]
    .venv-deploy/bin/python helm/render.py template helm/papertrain [-f values.yaml] --out DIR

`lint` prints Helm's report as JSON and exits 1 if it has errors (with --strict, warnings count as errors).
`template` writes every rendered manifest as its own file under DIR (hooks included; NOTES.txt as
NOTES.txt) and prints their paths, one a line.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import helm_python as helm
import yaml

SEVERITY_WARNING, SEVERITY_ERROR = 2, 3


def merged_values(files: list[str]) -> dict:
    """Later files win, key by key, as `helm -f a -f b` does."""

    def merge(base: dict, top: dict) -> dict:
        out = dict(base)
        for key, value in top.items():
            out[key] = (
                merge(out[key], value)
                if isinstance(value, dict) and isinstance(out.get(key), dict)
                else value
            )
        return out

    values: dict = {}
    for file in files:
        values = merge(values, yaml.safe_load(Path(file).read_text()) or {})
    return values


def cmd_lint(args: argparse.Namespace) -> int:
    report = helm.lint(
        args.chart, merged_values(args.values), strict=args.strict, kube_version=args.kube_version
    )
    print(json.dumps(report, indent=2))
    worst = SEVERITY_WARNING if args.strict else SEVERITY_ERROR
    bad = report.get("errors") or [m for m in report.get("messages", []) if m["severity"] >= worst]
    return 1 if bad else 0


def cmd_template(args: argparse.Namespace) -> int:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with helm.Chart.load(args.chart) as chart:
        rendered = chart.render(
            merged_values(args.values), name=args.name, namespace=args.namespace, is_install=True
        )
    for template, text in sorted(rendered.items()):
        if template.endswith("NOTES.txt"):
            (out / "NOTES.txt").write_text(text)
            print(out / "NOTES.txt")
            continue
        docs = [d for d in yaml.safe_load_all(text) if d]
        for i, doc in enumerate(docs):
            path = out / f"{Path(template).stem}-{i}-{doc['kind']}-{doc['metadata']['name']}.yaml"
            path.write_text(yaml.safe_dump(doc, sort_keys=False))
            print(path)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("lint", "template"):
        cmd = sub.add_parser(name)
        cmd.add_argument("chart")
        cmd.add_argument("-f", "--values", action="append", default=[], help="values file (repeatable)")
        if name == "lint":
            cmd.add_argument("--strict", action="store_true")
            cmd.add_argument("--kube-version", default=None, help="e.g. v1.34.0")
        else:
            cmd.add_argument("--out", required=True)
            cmd.add_argument("--name", default="papertrain", help="release name")
            cmd.add_argument("--namespace", default="papertrain")
    args = parser.parse_args(argv)
    try:
        return cmd_lint(args) if args.command == "lint" else cmd_template(args)
    except helm.HelmError as exc:
        print(f"helm: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
