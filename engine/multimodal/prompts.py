"""Image prompts: dataset rows -> chat prompts with image slots -> token ids and pixel inputs.

    rows = image_rows(raw_rows, dataset_spec, uploads_dir)   # validated, canonical (row-numbered errors)
    encoder = VisionPromptEncoder(processor, rows, max_prompt_length, source)
    ids = encoder.row(i, rows[i]["prompt"]); vision = encoder.vision_for([i, ...])

Accepted rows (online algorithms, `prompt_only` / `prompt_completion`):
  - `prompt` a string or a list of messages, plus `images` (a list of image references, or one `image`):
    the images go, in order, into the image slots of the prompt — `{"type": "image"}` parts of a message's
    content list — or, when the prompt has no slots, before the text of the first user message;
  - messages whose content lists carry the references themselves: `{"type": "image", "image": "<ref>"}`.
Canonical form: `prompt` is a list of messages whose content is a list of `{"type": "text", "text"}` and
`{"type": "image", "image": <ref>}` parts; the `images` / `image` columns are gone. Image references are
described in `engine.multimodal.images`.

Prompts are never truncated: cutting a prompt could cut its image tokens, so a prompt longer than
`max_prompt_length` (image tokens included) is an error that names the row.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from engine.data.formats import ROLES, DataFormatError, RowError, detect_format
from engine.multimodal.images import MAX_IMAGES_PER_ROW, ImageSource, load_image

TEXT_KEYS = ("input_ids", "attention_mask", "token_type_ids", "mm_token_type_ids")


def image_source(dataset: Any, uploads_dir: str | Path | None) -> ImageSource:
    """Where relative image paths of `dataset` are read from."""
    if getattr(dataset, "path", None):
        return ImageSource(folder=Path(dataset.path).expanduser().resolve().parent)
    if getattr(dataset, "file_id", None) and uploads_dir is not None:
        from engine.data.sources import resolve_upload

        folder = resolve_upload(dataset.file_id, uploads_dir).parent
        own = Path(uploads_dir) / dataset.file_id
        return ImageSource(folder=folder, own_upload=own if own.is_dir() else None)
    return ImageSource()


def has_images(rows: list[dict[str, Any]]) -> bool:
    """True when any row names an image (an `images`/`image` column or an image part in its prompt)."""
    for row in rows:
        if not isinstance(row, dict):
            continue
        if row.get("images") or row.get("image"):
            return True
        prompt = row.get("prompt")
        if isinstance(prompt, list):
            for msg in prompt:
                content = msg.get("content") if isinstance(msg, dict) else None
                if isinstance(content, list) and any(
                    isinstance(p, dict) and p.get("type") == "image" for p in content
                ):
                    return True
    return False


def _parts(content: Any, problems: list[str], j: int) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if not isinstance(content, list):
        problems.append(f"message {j} content must be a string or a list of parts")
        return []
    out = []
    for k, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            out.append({"type": "text", "text": part["text"]})
        elif kind == "image":
            out.append({"type": "image", **({"image": part["image"]} if part.get("image") else {})})
        else:
            problems.append(
                f"message {j} part {k} must be {{'type': 'text', 'text': ...}} or {{'type': 'image'}}"
            )
    return out


def canonical_prompt(row: dict[str, Any]) -> list[dict[str, Any]]:
    """The row's prompt in canonical form (see the module doc); ValueError says what is wrong."""
    prompt = row.get("prompt")
    images = row.get("images", row.get("image"))
    if images is None:
        images = []
    elif isinstance(images, str):
        images = [images]
    elif not isinstance(images, list):
        raise ValueError("'images' must be a list of image paths or base64 data URIs")
    problems: list[str] = []
    if isinstance(prompt, str):
        messages = [{"role": "user", "content": [{"type": "text", "text": prompt}]}]
    elif isinstance(prompt, list) and prompt:
        messages = []
        for j, msg in enumerate(prompt):
            if not isinstance(msg, dict) or "role" not in msg or "content" not in msg:
                problems.append(f"message {j} must be an object with 'role' and 'content'")
                continue
            if msg["role"] not in ROLES:
                problems.append(f"message {j} has role {msg['role']!r}; use one of {list(ROLES)}")
            messages.append({"role": msg["role"], "content": _parts(msg["content"], problems, j)})
    else:
        raise ValueError("'prompt' must be a string or a non-empty list of messages")
    if problems:
        raise ValueError("; ".join(problems))
    slots = [p for m in messages for p in m["content"] if p["type"] == "image"]
    filled = [p for p in slots if "image" in p]
    if filled and images:
        raise ValueError("give the images either in the prompt's image parts or in 'images', not both")
    if images:
        if slots and len(slots) != len(images):
            raise ValueError(f"the prompt has {len(slots)} image slot(s) but 'images' lists {len(images)}")
        if not slots:
            user = next((m for m in messages if m["role"] == "user"), None)
            if user is None:
                raise ValueError("the prompt has no user message to put the images in")
            user["content"] = [{"type": "image"} for _ in images] + user["content"]
            slots = [p for p in user["content"] if p["type"] == "image"]
        for slot, ref in zip(slots, images, strict=True):
            slot["image"] = ref
    elif len(filled) != len(slots):
        raise ValueError("an image part of the prompt has no 'image' reference and 'images' is not given")
    if len(slots) > MAX_IMAGES_PER_ROW:
        raise ValueError(f"{len(slots)} images in one row; at most {MAX_IMAGES_PER_ROW} are allowed")
    return messages


def prompt_images(prompt: Any) -> list[str]:
    """The image references of a canonical prompt, in order (empty for text prompts)."""
    if not isinstance(prompt, list):
        return []
    return [
        p["image"]
        for m in prompt
        if isinstance(m, dict) and isinstance(m.get("content"), list)
        for p in m["content"]
        if isinstance(p, dict) and p.get("type") == "image" and "image" in p
    ]


def image_rows(
    rows: list[dict[str, Any]],
    source: ImageSource,
    formats: tuple[str, ...] = ("prompt_only", "prompt_completion"),
) -> list[dict[str, Any]]:
    """Validate rows with images (every image is opened once) and return them in canonical form."""
    fmt = detect_format(rows)
    if fmt not in formats:
        raise DataFormatError(
            f"image prompts need {' or '.join(formats)} rows, but this dataset looks like {fmt} "
            f"(columns {sorted(rows[0])})"
        )
    errors: list[RowError] = []
    out = []
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            errors.append(RowError(i, None, f"expected an object, got {type(row).__name__}"))
            continue
        try:
            prompt = canonical_prompt(row)
        except ValueError as exc:
            errors.append(RowError(i, "prompt", str(exc)))
            continue
        bad = False
        for k, ref in enumerate(prompt_images(prompt)):
            try:
                load_image(ref, source)
            except ValueError as exc:
                errors.append(RowError(i, "images", f"image {k}: {exc}"))
                bad = True
                break
        if not bad:
            out.append({**{c: v for c, v in row.items() if c not in ("images", "image")}, "prompt": prompt})
        if len(errors) > 200:
            break
    if errors:
        raise DataFormatError(f"{len(errors)} invalid image row(s)", errors)
    return out


class VisionPromptEncoder:
    """Token ids (with the processor's image tokens) and pixel inputs of canonical prompts, cached per row."""

    def __init__(self, processor: Any, max_prompt_length: int | None, source: ImageSource) -> None:
        self.processor, self.max_prompt_length, self.source = processor, max_prompt_length, source
        self.tokenizer = processor.tokenizer
        self._cache: dict[int, tuple[list[int], dict[str, torch.Tensor] | None]] = {}

    def encode(self, prompt: Any) -> tuple[list[int], dict[str, torch.Tensor] | None]:
        refs = prompt_images(prompt)
        slots = [
            {
                **m,
                "content": [
                    {"type": p["type"], **({"text": p["text"]} if p["type"] == "text" else {})}
                    for p in m["content"]
                ],
            }
            for m in prompt
        ]
        text = self.tokenizer.apply_chat_template(slots, tokenize=False, add_generation_prompt=True)
        images = [load_image(r, self.source) for r in refs]
        out = self.processor(
            text=[text], images=images or None, return_tensors="pt", add_special_tokens=False
        )
        ids = out["input_ids"][0].tolist()
        if self.max_prompt_length is not None and len(ids) > self.max_prompt_length:
            raise ValueError(
                f"a prompt is {len(ids)} tokens long (image tokens included), more than max_prompt_length="
                f"{self.max_prompt_length}; image prompts are not truncated: raise max_prompt_length"
            )
        vision = {k: v for k, v in out.items() if k not in TEXT_KEYS and isinstance(v, torch.Tensor)}
        return ids, (vision or None) if images else None

    def row(self, index: int, prompt: Any) -> list[int]:
        if index not in self._cache:
            try:
                self._cache[index] = self.encode(prompt)
            except ValueError as exc:
                raise DataFormatError(str(exc), [RowError(index, "prompt", str(exc))]) from None
        return self._cache[index][0]

    def vision_for(self, rows: list[int]) -> list[dict[str, torch.Tensor] | None]:
        """The pixel inputs of encoded rows (None for a row without images)."""
        return [self._cache[i][1] for i in rows]


def concat_vision(items: list[dict[str, torch.Tensor] | None]) -> dict[str, torch.Tensor] | None:
    """One batch's pixel inputs: each key concatenated over the rows (in row order), rows without images
    skipped; None when no row has images."""
    present = [v for v in items if v]
    if not present:
        return None
    return {k: torch.cat([v[k] for v in present]) for k in present[0]}
