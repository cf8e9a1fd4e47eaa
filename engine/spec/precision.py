"""The precision a job trains in, named plainly, and how the TRL-style flags map onto it. Torch-free.

    float32        weights, gradients, optimizer states and the forward in float32
    bf16-autocast  float32 weights, gradients and optimizer states; the forward under bf16 autocast
                   (what TRL / HF `bf16: true` means)
    bf16-pure      weights, gradients and optimizer states held in bf16, the forward in bf16
    fp16-autocast  float32 weights; the forward under fp16 autocast; the loss scaled against fp16 underflow
                   (dynamic loss scaling, GPU only; what `fp16: true` means)

`config.precision` names the mode. Left unset, it follows `distributed.mixed_precision`, then `config.fp16`,
then `config.bf16`, and when none is set: bf16-autocast on a GPU job, float32 on a CPU job. The resolved
spec writes the mode out; frozen models (references, teachers, LoRA bases) are held in the compute dtype.
"""

from __future__ import annotations

from typing import Any, Literal

from engine.spec.base import SpecError

PrecisionMode = Literal["float32", "bf16-autocast", "bf16-pure", "fp16-autocast"]
PRECISIONS: tuple[str, ...] = ("float32", "bf16-autocast", "bf16-pure", "fp16-autocast")
_MIXED = {  # distributed.mixed_precision -> (mode, the explicit modes it agrees with)
    "no": ("float32", ("float32", "bf16-pure")),
    "bf16": ("bf16-autocast", ("bf16-autocast", "bf16-pure")),
    "fp16": ("fp16-autocast", ("fp16-autocast",)),
}


def _flags(spec: Any) -> list[tuple[str, str, tuple[str, ...]]]:
    """(field, the mode it implies, the explicit modes it agrees with) for every precision flag the spec
    sets, in the order that decides the mode when `config.precision` is unset."""
    cfg, dist = spec.config, spec.distributed
    flags: list[tuple[str, str, tuple[str, ...]]] = []
    if dist is not None and dist.mixed_precision is not None:
        flags.append(("distributed.mixed_precision", *_MIXED[dist.mixed_precision]))
    if getattr(cfg, "fp16", False):
        flags.append(("config.fp16", "fp16-autocast", ("fp16-autocast",)))
    bf16 = getattr(cfg, "bf16", None)
    if bf16:
        flags.append(("config.bf16", "bf16-autocast", ("bf16-autocast", "bf16-pure")))
    elif bf16 is not None:
        flags.append(("config.bf16", "float32", ("float32", "fp16-autocast")))
    return flags


def precision_of(spec: Any) -> str:
    """The precision mode a (validated) job spec trains in."""
    explicit = getattr(spec.config, "precision", None)
    if explicit is not None:
        return str(explicit)
    flags = _flags(spec)
    if flags:
        return flags[0][1]
    return "bf16-autocast" if spec.hardware.accelerator == "gpu" else "float32"


def check_precision(spec: Any) -> None:
    """Raise SpecError when the precision settings contradict each other or the hardware."""
    explicit = getattr(spec.config, "precision", None)
    flags = _flags(spec)
    mode = precision_of(spec)
    source = "config.precision" if explicit is not None else flags[0][0] if flags else "hardware"
    for field, asked, agrees in flags:
        if mode not in agrees:
            raise SpecError(
                field, f"{field} asks for {asked} but {source} asks for {mode}; remove one or make them agree"
            )
    if mode == "fp16-autocast" and spec.hardware.accelerator != "gpu":
        raise SpecError(
            source,
            "fp16 with loss scaling trains on GPUs only; on a CPU job use config.precision 'bf16-autocast', "
            "'bf16-pure' or 'float32', or set hardware {accelerator: 'gpu', gpus: 1}",
        )
    dist = spec.distributed
    if mode == "bf16-pure" and dist is not None and dist.distributed_type == "DEEPSPEED":
        raise SpecError(
            "config.precision",
            "bf16-pure is not available with DeepSpeed (its bf16 mode keeps float32 master weights): "
            "use 'bf16-autocast'",
        )
