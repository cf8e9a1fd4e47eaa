"""Images in dataset rows: references, checks and decoding.

An image reference is a string: a `data:image/<kind>;base64,...` URI, or a file path. Relative paths are
read from the dataset file's folder. On a platform worker (a confined data policy, `engine.data.access`) a
path must lie under a configured data root, or inside the job's own uploaded folder; never in another
upload. Limits per image: `MAX_IMAGE_BYTES` encoded, `MAX_IMAGE_PIXELS` decoded; per row: `MAX_IMAGES_PER_ROW`.
Errors are `ValueError`s that say what is wrong and what to do; the caller adds the row number.
"""

from __future__ import annotations

import base64
import binascii
import io
from pathlib import Path
from typing import Any

from engine.data.access import check_dataset_path, policy

MAX_IMAGES_PER_ROW = 8
MAX_IMAGE_BYTES = 8 * 1024 * 1024
MAX_IMAGE_PIXELS = 4096 * 4096
DATA_URI_PREFIX = "data:image/"


class ImageSource:
    """Where a dataset's relative image paths live, and which folder (an upload) may be read besides the
    data roots."""

    def __init__(self, folder: Path | None = None, own_upload: Path | None = None) -> None:
        self.folder = folder
        self.own_upload = own_upload

    def path(self, ref: str) -> Path:
        p = Path(ref).expanduser()
        if not p.is_absolute():
            if self.folder is None:
                raise ValueError(
                    f"relative image path {ref!r} has no dataset folder to be read from; use an absolute path "
                    "under a data root or a base64 data URI"
                )
            p = self.folder / p
        resolved = p.resolve()
        pol = policy()
        if pol.confined:
            own = self.own_upload.resolve() if self.own_upload is not None else None
            if own is None or not resolved.is_relative_to(own):
                try:
                    check_dataset_path(
                        "image", str(resolved), pol.roots, pol.uploads_dir, uploads_by_path=False
                    )
                except Exception:
                    raise ValueError(
                        f"image path {ref!r} is outside the folders this platform reads; put the image under a "
                        "data root, or send it inline as a base64 data URI"
                    ) from None
        return resolved


def image_bytes(ref: Any, source: ImageSource) -> bytes:
    """The encoded bytes of an image reference (size-checked)."""
    if not isinstance(ref, str) or not ref.strip():
        raise ValueError(f"an image must be a path or a base64 data URI string, got {type(ref).__name__}")
    if ref.startswith(DATA_URI_PREFIX):
        header, sep, payload = ref.partition(",")
        if not sep or not header.endswith(";base64"):
            raise ValueError("a data URI image must look like 'data:image/png;base64,<data>'")
        if len(payload) * 3 // 4 > MAX_IMAGE_BYTES:
            raise ValueError(f"the image is larger than {MAX_IMAGE_BYTES:,} bytes; make it smaller")
        try:
            return base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("the data URI image is not valid base64") from None
    path = source.path(ref)
    if not path.is_file():
        raise ValueError(f"image file {ref!r} does not exist")
    if path.stat().st_size > MAX_IMAGE_BYTES:
        raise ValueError(f"image file {ref!r} is larger than {MAX_IMAGE_BYTES:,} bytes; make it smaller")
    return path.read_bytes()


def decode_image(data: bytes) -> Any:
    """An RGB PIL image from encoded bytes, refusing what is not an image or is too large."""
    from PIL import Image, UnidentifiedImageError

    try:
        img = Image.open(io.BytesIO(data))
        width, height = img.size
        if width * height > MAX_IMAGE_PIXELS:
            raise ValueError(
                f"the image is {width}x{height} pixels, more than {MAX_IMAGE_PIXELS:,}; scale it down"
            )
        img.load()
    except (UnidentifiedImageError, OSError):
        raise ValueError("the image cannot be decoded (use PNG, JPEG, GIF, BMP or WebP)") from None
    return img.convert("RGB")


def load_image(ref: Any, source: ImageSource) -> Any:
    return decode_image(image_bytes(ref, source))


def to_data_uri(image: Any, fmt: str = "PNG") -> str:
    """A PIL image as a base64 data URI."""
    buf = io.BytesIO()
    image.save(buf, format=fmt)
    return f"data:image/{fmt.lower()};base64," + base64.b64encode(buf.getvalue()).decode("ascii")
