"""`/v1/files`: upload a JSONL dataset (multipart field `file`) and list your uploads."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from fastapi import APIRouter, UploadFile
from sqlalchemy.exc import IntegrityError

from api.deps import PrincipalDep, SessionDep, SettingsDep
from api.errors import ApiError, ErrorBody
from api.schemas import FileList, FileOut
from api.services import files as service
from api.services import idempotency
from core.models import UploadedFile

router = APIRouter(prefix="/v1/files", tags=["files"], responses={401: {"model": ErrorBody}})


@router.post(
    "",
    status_code=201,
    response_model=FileOut,
    operation_id="upload_file",
    responses={409: {"model": ErrorBody}, 422: {"model": ErrorBody}},
)
def upload_file(
    session: SessionDep,
    user: PrincipalDep,
    settings: SettingsDep,
    file: UploadFile,
    idempotency_key: idempotency.KeyHeader = None,
) -> Any:
    """Returns the `file_...` id to use as `dataset: {"file_id": ...}` in a job spec.

    With an `Idempotency-Key`, the same file (name and bytes) sent again returns the first upload."""
    key = idempotency.check_key(idempotency_key)
    if key is None:
        return service.store_upload(session, user, file.filename or "", file.file, settings)
    digest = _upload_digest(file)
    replay = idempotency.find(session, user, "files", key, digest)
    if replay is not None:
        return session.get(UploadedFile, replay)
    row = service.store_upload(session, user, file.filename or "", file.file, settings)
    try:
        idempotency.remember(session, user, "files", key, digest, row.id)
        session.commit()
        return row
    except IntegrityError:  # a concurrent upload with the same key won: drop this copy, return that one
        session.rollback()
        Path(row.path).unlink(missing_ok=True)
        session.delete(session.get(UploadedFile, row.id))
        session.commit()
        winner = idempotency.find(session, user, "files", key, digest)
        if winner is None:
            raise ApiError(
                409, "idempotency_conflict", "retry the upload", param=idempotency.HEADER
            ) from None
        return session.get(UploadedFile, winner)


def _upload_digest(file: UploadFile) -> str:
    digest = hashlib.sha256((file.filename or "").encode() + b"\0")
    while chunk := file.file.read(service.CHUNK):
        digest.update(chunk)
    file.file.seek(0)
    return digest.hexdigest()


@router.get("", response_model=FileList, operation_id="list_files")
def list_files(session: SessionDep, user: PrincipalDep) -> Any:
    return {"files": service.list_files(session, user)}
