"""`/v1/files`: upload a JSONL dataset (multipart field `file`) and list your uploads."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, UploadFile

from api.deps import PrincipalDep, SessionDep, SettingsDep
from api.errors import ErrorBody
from api.schemas import FileList, FileOut
from api.services import files as service

router = APIRouter(prefix="/v1/files", tags=["files"], responses={401: {"model": ErrorBody}})


@router.post(
    "",
    status_code=201,
    response_model=FileOut,
    operation_id="upload_file",
    responses={422: {"model": ErrorBody}},
)
def upload_file(session: SessionDep, user: PrincipalDep, settings: SettingsDep, file: UploadFile) -> Any:
    """Returns the `file_...` id to use as `dataset: {"file_id": ...}` in a job spec."""
    return service.store_upload(session, user, file.filename or "", file.file, settings)


@router.get("", response_model=FileList, operation_id="list_files")
def list_files(session: SessionDep, user: PrincipalDep) -> Any:
    return {"files": service.list_files(session, user)}
