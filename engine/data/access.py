"""Which files a job may read, and how big a dataset may be.

    check_dataset_path("dataset.path", "/data/train.jsonl", roots=[Path("/data")], uploads_dir=Path("var/uploads"))

On a platform worker a job reads only built-in sets, its owner's uploads (the api turns a `file_id` into the
stored path after checking the owner) and files under the configured data roots; with no roots configured,
no `dataset.path` is allowed at all. The api checks a submitted spec with `check_dataset_path` (no
`uploads_by_path=False`: a user may not name a stored upload by path) and the engine checks the resolved spec again
with the same function. Refusals name the field, never the file's contents or whether it exists.

Models given as a local path are confined the same way (`check_model_path`): a folder under a data root,
a models root, the model cache, or a job output (the api checks the job is the submitter's); hub ids,
`bundled:` and `tiny:` models are not paths.

`DataPolicy` carries the limits the engine enforces while reading; `engine.train` sets it from the
environment the worker gives it (`set_policy`), library use keeps the unconfined default.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from engine.spec.base import SpecError

HF_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


@dataclass(frozen=True)
class DataPolicy:
    confined: bool = False  # True on a platform worker: only uploads and data roots
    roots: tuple[Path, ...] = ()
    uploads_dir: Path | None = None
    max_row_bytes: int = 16 * 1024 * 1024
    max_file_bytes: int = 2 * 1024**3
    http_reward_urls: tuple[str, ...] = ()  # URL prefixes an `http` reward may call (confined: empty = none)
    model_folders: tuple[Path, ...] = ()  # where a local model path may point (confined)


_policy = DataPolicy()


def set_policy(policy: DataPolicy) -> None:
    global _policy
    _policy = policy


def policy() -> DataPolicy:
    return _policy


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or path.is_relative_to(folder)


def check_dataset_path(
    param: str,
    path: str,
    roots: list[Path] | tuple[Path, ...],
    uploads_dir: Path | None = None,
    *,
    uploads_by_path: bool = True,
) -> None:
    """Raise SpecError(param) unless `path` (symlinks resolved) lies under a data root or `uploads_dir`.

    With `uploads_by_path=False` (a submitted spec) a path into `uploads_dir` is refused even when a data
    root contains it: uploads are named by `file_id`, whose owner the api checks."""
    resolved = Path(path).expanduser().resolve()
    folders = [Path(r).resolve() for r in roots]
    if uploads_dir is not None and _inside(resolved, Path(uploads_dir).resolve()):
        if uploads_by_path:
            return
        raise SpecError(param, f'{param}: name an uploaded dataset by {{"file_id": ...}}, not by its path')
    if any(_inside(resolved, folder) for folder in folders):
        return
    if not folders:
        raise SpecError(
            param,
            f"{param}: this platform reads no dataset files by path; upload the file (POST /v1/files) and "
            'use {"file_id": ...}, or ask the operator to configure PAPERTRAIN_DATA_ROOTS',
        )
    raise SpecError(
        param,
        f"{param} {path!r} is outside the folders this platform reads datasets from; upload the file "
        "(POST /v1/files) or place it under a configured data root",
    )


def local_model_path(ref: str) -> Path | None:
    """The folder a model reference names on this machine; None for hub ids, `bundled:` and `tiny:`."""
    if ref.startswith(("tiny:", "bundled:")):
        return None
    path = Path(ref).expanduser()
    if HF_ID.match(ref) and ".." not in ref.split("/") and not path.exists():
        return None
    return path


def model_refs(spec: object) -> list[tuple[str, str]]:
    """(field, reference) of every model a spec loads: the policy, a teacher (and its tokenizer), reward models."""
    refs = [("model", getattr(spec, "model", None))]
    cfg = getattr(spec, "config", None)
    for key in ("teacher_model_name_or_path", "teacher_tokenizer_name_or_path"):
        refs.append((f"config.{key}", getattr(cfg, key, None)))
    for i, reward in enumerate(getattr(spec, "reward_funcs", None) or []):
        refs.append((f"reward_funcs.{i}.model", getattr(reward, "model", None)))
    return [(field, ref) for field, ref in refs if isinstance(ref, str) and ref]


def check_model_path(param: str, ref: str, folders: list[Path] | tuple[Path, ...]) -> Path | None:
    """Raise SpecError(param) when `ref` is a local path outside `folders` (symlinks resolved); the resolved
    path (None for a hub id, `bundled:` or `tiny:`) otherwise."""
    path = local_model_path(ref)
    if path is None:
        return None
    resolved = path.resolve()
    if any(_inside(resolved, Path(folder).resolve()) for folder in folders):
        return resolved
    raise SpecError(
        param,
        f"{param} {ref!r} is a local path outside the folders this platform loads models from; name a "
        "Hugging Face id, 'bundled:...' or 'tiny:...', the final/ folder of one of your jobs, or a folder "
        "under a configured models root (PAPERTRAIN_MODEL_ROOTS)",
    )


def check_hf_id(param: str, hf_id: str) -> None:
    """A hub dataset id (`name` or `org/name`), never a local folder."""
    if not HF_ID.match(hf_id) or ".." in hf_id or Path(hf_id).exists():
        raise SpecError(
            param, f"{param} must be a hub dataset id like 'org/name'; local files are read through uploads"
        )


def url_allowed(url: str, allowed: list[str] | tuple[str, ...]) -> bool:
    """True when `url` has the scheme, host and port of an allowed entry and its path starts with the entry's."""
    from urllib.parse import urlsplit

    try:
        got = urlsplit(url)
        got_port = got.port
    except ValueError:
        return False
    for entry in allowed:
        want = urlsplit(entry.strip())
        if (got.scheme, (got.hostname or "").lower(), got_port) != (
            want.scheme,
            (want.hostname or "").lower(),
            want.port,
        ):
            continue
        prefix = want.path.rstrip("/")
        if got.path == prefix or got.path.startswith(prefix + "/"):
            return True
    return False


def check_http_reward(param: str, url: str, allowed: list[str] | tuple[str, ...]) -> None:
    if not allowed:
        raise SpecError(
            param,
            f"{param}: http rewards are turned off on this platform; use a built-in reward, or ask the "
            "operator to allow the service's URL in PAPERTRAIN_HTTP_REWARD_URLS",
        )
    if not url_allowed(url, allowed):
        raise SpecError(
            param,
            f"{param} {url!r} is not an allowed reward service; allowed URL prefixes: {list(allowed)}",
        )


def check_dataset(prefix: str, dataset: object, policy_: DataPolicy | None = None) -> None:
    """The engine's check of a resolved dataset spec under the active policy."""
    pol = policy_ or _policy
    if not pol.confined or dataset is None:
        return
    path = getattr(dataset, "path", None)
    if path:
        check_dataset_path(f"{prefix}.path", path, pol.roots, pol.uploads_dir)
    hf_id = getattr(dataset, "hf_id", None)
    if hf_id:
        check_hf_id(f"{prefix}.hf_id", hf_id)


def check_models(spec: object, policy_: DataPolicy | None = None) -> None:
    """The engine's check of every model a resolved spec loads under the active policy."""
    pol = policy_ or _policy
    if not pol.confined:
        return
    for field, ref in model_refs(spec):
        check_model_path(field, ref, pol.model_folders)
