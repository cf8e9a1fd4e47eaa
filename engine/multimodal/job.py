"""What an online job with image prompts sets up: canonical rows, the processor, the prompt encoder.

    setup = vision_setup(spec, raw_rows, uploads_dir, cache_dir, formats)   # None for a text-only job

A job is an image job when its model is a vision-language model or its rows name images. Images with a
text-only model, vLLM sampling with images, and PAPO without images are refused here with what to change.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.multimodal.images import ImageSource
from engine.multimodal.prompts import VisionPromptEncoder, has_images, image_rows, image_source


def placeholder_token_ids(processor: Any) -> tuple[int, ...]:
    tok = processor.tokenizer
    ids = set()
    for name in ("image_token", "boi_token", "eoi_token", "video_token", "fake_image_token"):
        token = getattr(processor, name, None)
        if isinstance(token, str) and token in tok.get_vocab():
            ids.add(int(tok.convert_tokens_to_ids(token)))
    return tuple(sorted(ids))


@dataclass
class VisionSetup:
    rows: list[dict[str, Any]]
    processor: Any
    encoder: VisionPromptEncoder
    source: ImageSource

    @property
    def tokenizer(self) -> Any:
        return self.processor.tokenizer

    @property
    def placeholder_ids(self) -> tuple[int, ...]:
        """Token ids that stand for image content in prompts; a completion must never contain them."""
        return placeholder_token_ids(self.processor)


def vision_setup(
    spec: Any,
    rows: list[dict[str, Any]],
    uploads_dir: str | Path | None,
    formats: tuple[str, ...],
    vlm: bool,
    load_processor: Callable[[], Any],
) -> VisionSetup | None:
    """`vlm`: whether the job's model is a vision-language model; `load_processor()` loads its processor."""
    images = has_images(rows)
    if spec.algorithm == "papo" and not (vlm and images):
        raise ValueError(
            "PAPO trains a vision-language model on image prompts: "
            + (
                "the dataset's rows name no images (give each row 'images')"
                if vlm
                else f"model {spec.model!r} is not a vision-language model"
            )
        )
    if not vlm and not images:
        return None
    if not vlm:
        raise ValueError(
            f"the dataset's prompts hold images but model {spec.model!r} is not a vision-language model; use "
            "'tiny:vlm' or an image-text-to-text model"
        )
    if getattr(spec.config, "use_vllm", False):
        raise ValueError("config.use_vllm: image prompts are sampled with transformers; remove use_vllm")
    source = image_source(spec.dataset, uploads_dir)
    canonical = image_rows(rows, source, formats)
    processor = load_processor()
    encoder = VisionPromptEncoder(processor, spec.config.max_prompt_length, source)
    return VisionSetup(canonical, processor, encoder, source)
