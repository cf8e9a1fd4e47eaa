"""The architecture holds: the import contracts of pyproject.toml (`lint-imports`), mypy on the typed layers,
and what the api can import loads no training library when it is actually imported."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import grimp
import pytest

REPO = Path(__file__).resolve().parents[1]
ROOTS = ("papertrain", "api", "worker", "core", "engine")
HEAVY = ("torch", "transformers", "peft", "accelerate", "datasets", "mlflow", "vllm", "deepspeed")


def _run(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=timeout)


def test_import_contracts_hold() -> None:
    code = "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())"
    done = _run("-c", code, "--no-cache", "--no-logo", timeout=300)
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]
    assert "0 broken" in done.stdout


def test_everything_the_api_and_the_spec_import_loads_no_training_library() -> None:
    # The contracts read import statements; importing a module also runs its packages' __init__ files, so
    # import every module the api and the spec reach (lazy imports included) and look at what got loaded.
    graph = grimp.build_graph(*ROOTS)
    reached = {"api", "engine.spec"}
    for source in ("api", "engine.spec"):
        for module in graph.find_descendants(source) | {source}:
            reached |= graph.find_upstream_modules(module)
    assert "engine.spec.base" in reached and "core.models" in reached  # the walk found the real imports
    code = (
        f"import importlib, json, sys\nfor m in {sorted(reached)!r}: importlib.import_module(m)\n"
        f"print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
    )
    done = _run("-c", code, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []


@pytest.mark.slow
def test_mypy_finds_no_errors_in_the_typed_layers() -> None:
    done = _run("-m", "mypy", timeout=900)  # which packages, and how strict: [tool.mypy] in pyproject.toml
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]
