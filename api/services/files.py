"""Dataset uploads: stream a JSONL file to `{uploads_dir}/<user id>/<file id>.jsonl`, check that every line
is a JSON object, and record it. A job uses it as `dataset: {"file_id": "file_..."}`.

Only the format is checked here; whether the rows fit the algorithm (prompt/completion, chosen/rejected,
...) is the engine's data loader's job.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import BinaryIO

from sqlalchemy import select
from sqlalchemy.orm import Session

from api.errors import ApiError
from core.models import UploadedFile, User, new_file_id
from core.settings import Settings

CHUNK = 1 << 20
SUFFIXES = (".jsonl", ".json", ".ndjson")


def _bad_file(message: str, remediation: str = "upload JSON Lines: one JSON object per line") -> ApiError:
    return ApiError(422, "invalid_file", message, param="file", remediation=remediation)


def _fix_line(lineno: int) -> str:
    return f"fix line {lineno} so that it holds one complete JSON object, then upload the file again"


def _copy_limited(src: BinaryIO, dest: Path, max_bytes: int) -> int:
    size = 0
    with dest.open("wb") as out:
        while chunk := src.read(CHUNK):
            size += len(chunk)
            if size > max_bytes:
                raise _bad_file(
                    f"file is larger than the {max_bytes} byte limit",
                    "split it, or raise PAPERTRAIN_MAX_UPLOAD_BYTES on the server",
                )
            out.write(chunk)
    return size


def count_jsonl_rows(path: Path) -> int:
    """Rows in a JSONL file; raises a 422 naming the first line that is not a JSON object."""
    rows = 0
    with path.open("rb") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as exc:  # past the end means: the line stops too early
                column = min(exc.pos, len(line.rstrip())) + 1
                raise _bad_file(
                    f"line {lineno} is not valid JSON: {exc.msg} at column {column}", _fix_line(lineno)
                ) from None
            except UnicodeDecodeError:
                raise _bad_file(f"line {lineno} is not UTF-8 text", _fix_line(lineno)) from None
            if not isinstance(value, dict):
                raise _bad_file(
                    f"line {lineno} is a JSON {type(value).__name__}, not an object", _fix_line(lineno)
                )
            rows += 1
    if rows == 0:
        raise _bad_file("the file has no rows")
    return rows


def store_upload(
    session: Session, user: User, filename: str, src: BinaryIO, settings: Settings
) -> UploadedFile:
    name = Path(filename or "").name
    if not name.lower().endswith(SUFFIXES):
        raise _bad_file(f"{name or 'the file'!r} is not a JSONL file (expected one of {list(SUFFIXES)})")
    folder = Path(settings.uploads_dir) / str(user.id)
    folder.mkdir(parents=True, exist_ok=True)
    file_id = new_file_id()
    final = folder / f"{file_id}.jsonl"
    partial = folder / f".{file_id}.partial"
    try:
        size = _copy_limited(src, partial, settings.max_upload_bytes)
        rows = count_jsonl_rows(partial)
        os.replace(partial, final)
        row = UploadedFile(
            id=file_id,
            owner_id=user.id,
            filename=name,
            path=str(final),
            bytes=size,
            rows=rows,
            format="jsonl",
        )
        session.add(row)
        session.commit()
    except BaseException:
        partial.unlink(missing_ok=True)
        final.unlink(missing_ok=True)
        raise
    return row


def list_files(session: Session, user: User) -> list[UploadedFile]:
    query = (
        select(UploadedFile).where(UploadedFile.owner_id == user.id).order_by(UploadedFile.created_at.desc())
    )
    return list(session.scalars(query))
