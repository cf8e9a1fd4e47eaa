"""Small PNG thumbnails of prompt images, for sample events (dashboard) and MLflow.

    sample_images(prompt)   # {"images": ["data:image/png;base64,...", ...]} or {} for a text prompt

Each thumbnail fits in THUMBNAIL_SIZE x THUMBNAIL_SIZE pixels (aspect kept), at most MAX_THUMBNAILS per
sample; the same image reference is encoded once per process.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from engine.multimodal.images import ImageSource, load_image, to_data_uri
from engine.multimodal.prompts import prompt_images

THUMBNAIL_SIZE = 64
MAX_THUMBNAILS = 4


def thumbnail(image: Any, size: int = THUMBNAIL_SIZE) -> Any:
    thumb = image.copy()
    thumb.thumbnail((size, size))
    return thumb


@lru_cache(maxsize=512)
def _thumbnail_uri(ref: str, folder: str | None) -> str | None:
    from pathlib import Path

    try:
        image = load_image(ref, ImageSource(Path(folder) if folder else None))
    except ValueError:
        return None
    return to_data_uri(thumbnail(image))


def sample_images(prompt: Any, source: ImageSource | None = None) -> dict[str, list[str]]:
    """The prompt's images as thumbnail data URIs, under "images" ({} when it has none)."""
    refs = prompt_images(prompt)[:MAX_THUMBNAILS]
    if not refs:
        return {}
    folder = str(source.folder) if source is not None and source.folder is not None else None
    uris = [u for u in (_thumbnail_uri(r, folder) for r in refs) if u is not None]
    return {"images": uris} if uris else {}
