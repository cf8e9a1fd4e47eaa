"""Vision-language models (image-text-to-text) by reference: processor, model, LoRA targets.

    is_vision_model("tiny:vlm")          # True; a local folder / hub id: its config's architecture decides
    processor = load_processor(ref)      # image processor + tokenizer + chat template with image slots
    model = load_vision_model(ref)       # AutoModelForImageTextToText (tiny:vlm: a random LLaVA)

Use them through `engine.models` (`load_processor`, `load_model`), which supplies the tiny text tokenizer.

`tiny:vlm` is a randomly initialised LLaVA: a 1-layer CLIP vision tower on 32x32 images in 8x8 patches (16
image tokens per image), a 2-layer projector and the `tiny:llama` language model, with the character
tokenizer of `tiny:llama` plus an `<image>` token. No download, deterministic, CPU-fast.

The engine feeds the language model 1-D positions (from the attention mask), as for text models; VLMs with
multimodal rotary positions (Qwen2-VL and later) are refused with a clear error rather than trained with the
wrong positions.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Any

import torch

IMAGE_TOKEN = "<image>"
TINY_VLM = "tiny:vlm"
TINY_IMAGE_SIZE = 32
TINY_PATCH = 8
# ChatML with image slots: a message's content is a string or a list of {"type": "text"|"image"} parts.
VLM_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}{{ '<image>' }}{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{{ '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
MROPE_MODEL_TYPES = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl", "qwen3_vl_moe", "glm4v", "glm4v_moe")


def build_tiny_vlm_tokenizer(tok: Any) -> Any:
    """The tiny text tokenizer (`engine.models.build_tiny_tokenizer()`, passed in) with an image token and
    the image-slot chat template."""
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", IMAGE_TOKEN]})
    tok.chat_template = VLM_CHAT_TEMPLATE
    return tok


def build_tiny_vlm_processor(text_tokenizer: Any) -> Any:
    from transformers import LlavaProcessor
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": TINY_IMAGE_SIZE},
        crop_size={"height": TINY_IMAGE_SIZE, "width": TINY_IMAGE_SIZE},
    )
    return LlavaProcessor(
        image_processor=image_processor,
        tokenizer=build_tiny_vlm_tokenizer(text_tokenizer),
        patch_size=TINY_PATCH,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,  # CLIP's class token, dropped by the "default" strategy
        chat_template=VLM_CHAT_TEMPLATE,
        image_token=IMAGE_TOKEN,
    )


def build_tiny_vlm(text_tokenizer: Any, seed: int = 1234) -> Any:
    """A random LlavaForConditionalGeneration sized for the tiny VLM tokenizer; the global RNG is untouched."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    from engine.spec.base import TINY_ARCHS

    tok = build_tiny_vlm_tokenizer(text_tokenizer)
    text = LlamaConfig(
        vocab_size=len(tok),
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
        bos_token_id=None,
        tie_word_embeddings=False,
        initializer_range=0.02,
        **TINY_ARCHS["llama"],
    )
    vision = CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        image_size=TINY_IMAGE_SIZE,
        patch_size=TINY_PATCH,
        projection_dim=32,
    )
    config = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=tok.convert_tokens_to_ids(IMAGE_TOKEN),
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
        image_seq_length=(TINY_IMAGE_SIZE // TINY_PATCH) ** 2,
        tie_word_embeddings=False,
    )
    config.pad_token_id = tok.pad_token_id
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlavaForConditionalGeneration(config)
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    return model


def _model_type(path: str) -> str | None:
    """The `model_type` of a local folder or hub id's config: a local folder as it is now; a hub id from
    the local cache first and the hub only when it is not cached (as `from_pretrained` would), asked once
    per process. None when nothing answers."""
    local = Path(path).expanduser()
    if local.exists():
        return _config_type(str(local), True)
    return _hub_model_type(path)


@functools.lru_cache(maxsize=64)
def _hub_model_type(hub_id: str) -> str | None:
    return _config_type(hub_id, True) or _config_type(hub_id, False)


def _config_type(path: str, local_only: bool) -> str | None:
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(path, local_files_only=local_only).model_type
    except Exception:  # not a folder with a config, not cached, or no hub access
        return None


def is_vision_model(model_ref: str, cache_dir: Path | None = None) -> bool:
    """True for `tiny:vlm` and for models whose config is an image-text-to-text architecture."""
    if model_ref.startswith("tiny:"):
        return model_ref == TINY_VLM
    if model_ref.startswith("bundled:"):
        return False
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES

    kind = _model_type(model_ref)
    return kind is not None and kind in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES


def check_supported(model: Any) -> None:
    kind = getattr(model.config, "model_type", "")
    if kind in MROPE_MODEL_TYPES:
        raise ValueError(
            f"model: {kind} uses multimodal rotary positions, which this engine does not feed yet; use a "
            "VLM with 1-D positions (LLaVA, Idefics3/SmolVLM, Gemma 3, ...) or 'tiny:vlm'"
        )


def load_processor(model_ref: str, text_tokenizer: Any = None) -> Any:
    """The processor of a VLM (its tokenizer gets a pad token and right padding, as text models);
    `tiny:vlm` needs the tiny text tokenizer."""
    if model_ref == TINY_VLM:
        processor = build_tiny_vlm_processor(text_tokenizer)
    else:
        from transformers import AutoProcessor

        processor = AutoProcessor.from_pretrained(model_ref)
    tok = processor.tokenizer
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "right"
    if getattr(processor, "chat_template", None) and not getattr(tok, "chat_template", None):
        tok.chat_template = processor.chat_template
    return processor


def load_vision_model(model_ref: str, dtype: torch.dtype = torch.float32, text_tokenizer: Any = None) -> Any:
    if model_ref == TINY_VLM:
        model = build_tiny_vlm(text_tokenizer).to(dtype)
    else:
        from transformers import AutoModelForImageTextToText

        model = AutoModelForImageTextToText.from_pretrained(model_ref, dtype=dtype)
    check_supported(model)
    return model


def language_model_prefix(model: Any) -> str:
    """The qualified module name of the language model (decoder) inside a VLM."""
    decoder = model.get_decoder()
    for name, module in model.named_modules():
        if module is decoder:
            return name
    raise ValueError("could not find the language model inside this vision-language model")


def language_lora_targets(model: Any, target_modules: list[str] | str | None) -> str:
    """A peft `target_modules` regex that adapts only the language model: the named projections (default
    q_proj and v_proj, as for Llama), or every linear layer of it for "all-linear". The vision tower and the
    projector stay frozen."""
    prefix = re.escape(language_model_prefix(model))
    if target_modules == "all-linear":
        names = sorted(
            {
                n.rsplit(".", 1)[-1]
                for n, m in model.named_modules()
                if isinstance(m, torch.nn.Linear) and n.startswith(language_model_prefix(model) + ".")
            }
        )
    elif isinstance(target_modules, str):
        return target_modules  # a regex of the user's own: used as written
    else:
        names = list(target_modules or ["q_proj", "v_proj"])
    return rf"^{prefix}\..*\.({'|'.join(re.escape(n) for n in names)})$"
