"""Load the rows of a dataset spec: a built-in set, a JSONL/JSON/Parquet file, an uploaded file, or an HF id.

    rows = load_rows(spec.dataset, uploads_dir=Path("var/uploads"))

Returns plain dicts (the first `num_rows` when set). Malformed JSON lines are reported with their line
number. Format checks happen in `engine.data.formats`; this module only reads.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from engine.data.access import check_dataset, policy
from engine.data.builtin import builtin_rows
from engine.data.formats import DataFormatError, RowError

DATA_SUFFIXES = (".jsonl", ".json", ".parquet")


def _too_big(what: str, limit: int) -> DataFormatError:
    return DataFormatError(
        f"{what} is larger than {limit:,} bytes, the limit of this platform; make it smaller"
    )


def read_file(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a JSONL / JSON / Parquet file, refusing files and rows over the active policy's size limits
    while reading (nothing larger than one row is held before it is checked)."""
    path = Path(path)
    limits = policy()
    if not path.is_file():
        raise DataFormatError("the dataset file does not exist")
    if path.stat().st_size > limits.max_file_bytes:
        raise _too_big("the dataset file", limits.max_file_bytes)
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    with path.open("rb") as fh:
        head = fh.read(64).lstrip()
    if suffix == ".json" and head.startswith(b"["):
        rows = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(rows, list):
            raise DataFormatError("a .json dataset must be a list of objects")
        return rows
    rows, errors = [], []
    with path.open("rb") as fh:
        lineno = 0
        while True:
            raw = fh.readline(limits.max_row_bytes + 1)
            if not raw:
                break
            lineno += 1
            if len(raw) > limits.max_row_bytes and not raw.endswith(b"\n"):
                raise _too_big(f"line {lineno}", limits.max_row_bytes)
            line = raw.decode("utf-8", errors="replace")
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                errors.append(
                    RowError(len(rows) + len(errors), None, f"line {lineno} is not valid JSON ({exc.msg})")
                )
    if errors:
        raise DataFormatError(f"{len(errors)} malformed JSON line(s)", errors)
    return rows


def resolve_upload(file_id: str, uploads_dir: str | Path) -> Path:
    """The stored file of an upload: `<uploads_dir>/<file_id>` (a file, or a folder holding one data file)
    or `<uploads_dir>/<file_id>.<jsonl|json|parquet>`."""
    if not file_id or "/" in file_id or "\\" in file_id or file_id.startswith("."):
        raise ValueError(f"invalid file_id {file_id!r}")
    root = Path(uploads_dir)
    direct = root / file_id
    if direct.is_file():
        return direct
    if direct.is_dir():
        found = sorted(p for p in direct.iterdir() if p.suffix.lower() in DATA_SUFFIXES)
        if found:
            return found[0]
    for suffix in DATA_SUFFIXES:
        if (root / f"{file_id}{suffix}").is_file():
            return root / f"{file_id}{suffix}"
    raise FileNotFoundError(f"uploaded file {file_id!r} not found; upload it with POST /v1/files")


def load_rows(dataset: Any, uploads_dir: str | Path = "var/uploads") -> list[dict[str, Any]]:
    """Rows of a `DatasetSpec` (the first `num_rows` of them when set; built-ins generate `num_rows`)."""
    if dataset.builtin:
        return builtin_rows(dataset.builtin, dataset.num_rows, dataset.seed)
    check_dataset("dataset", dataset)
    if dataset.path:
        rows = read_file(dataset.path)
    elif dataset.file_id:
        rows = read_file(resolve_upload(dataset.file_id, uploads_dir))
    elif dataset.hf_id:
        import datasets

        ds = datasets.load_dataset(dataset.hf_id, dataset.config_name, split=dataset.split)
        if dataset.num_rows:
            ds = ds.select(range(min(dataset.num_rows, len(ds))))
        rows = list(ds)
    else:
        raise ValueError("dataset needs one of 'builtin', 'path', 'file_id', 'hf_id'")
    return rows[: dataset.num_rows] if dataset.num_rows else rows
