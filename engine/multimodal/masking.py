"""PAPO's image corruption: pixel inputs with part of each image zeroed, deterministic under a seed.

    masked = mask_vision(vision, ratio=0.6, kind="random", seed=1234, patch=14)

Only `pixel_values` changes (other pixel inputs, such as image sizes, are kept). Zero is the value in the
processor's normalised space, i.e. the dataset mean colour for CLIP/SigLIP-style normalisation.
  random  every pixel value (each channel of each pixel) is zeroed independently with probability `ratio`;
  patch   each image is cut into `patch` x `patch` cells (the vision tower's patch size: one cell is one
          image token) and round(ratio x cells) cells chosen at random are zeroed in every channel;
  grid    the same cells, but an evenly spread fixed pattern: cell k (row-major) is zeroed when
          floor((k+1) ratio) > floor(k ratio), which zeroes round-down(ratio x cells) cells.
`patch` and `grid` need image-shaped pixel values (n, C, H, W). The same (vision, ratio, kind, seed) always
gives the same mask; the masks are drawn on the CPU so they do not depend on the device.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

MASK_TYPES = ("random", "patch", "grid")


def _cells(h: int, w: int, patch: int) -> tuple[int, int]:
    return math.ceil(h / patch), math.ceil(w / patch)


def _expand(cell_mask: Tensor, h: int, w: int, patch: int) -> Tensor:
    """(n, rows, cols) bool -> (n, 1, h, w) bool, each cell covering patch x patch pixels."""
    full = cell_mask.repeat_interleave(patch, dim=1).repeat_interleave(patch, dim=2)
    return full[:, :h, :w].unsqueeze(1)


def pixel_mask(shape: torch.Size, ratio: float, kind: str, generator: torch.Generator, patch: int) -> Tensor:
    """A bool tensor (broadcastable to `shape`), True where a pixel value is zeroed."""
    if kind not in MASK_TYPES:
        raise ValueError(f"mask_type must be one of {list(MASK_TYPES)} (got {kind!r})")
    if kind == "random":
        return torch.rand(shape, generator=generator) < ratio
    if len(shape) != 4:
        raise ValueError(
            f"mask_type {kind!r} needs image-shaped pixel values (n, C, H, W); this model's are {tuple(shape)}: "
            "use mask_type 'random'"
        )
    n, _, h, w = shape
    rows, cols = _cells(h, w, patch)
    total = rows * cols
    if kind == "patch":
        k = round(ratio * total)
        chosen = torch.zeros(n, total, dtype=torch.bool)
        for i in range(n):
            chosen[i, torch.randperm(total, generator=generator)[:k]] = True
    else:
        idx = torch.arange(total, dtype=torch.float64)
        hit = torch.floor((idx + 1) * ratio) > torch.floor(idx * ratio)
        chosen = hit.unsqueeze(0).expand(n, total)
    return _expand(chosen.reshape(n, rows, cols), h, w, patch)


def mask_vision(
    vision: dict[str, Tensor], ratio: float, kind: str, seed: int, patch: int
) -> dict[str, Tensor]:
    """`vision` with its `pixel_values` corrupted (see the module doc)."""
    pixels = vision["pixel_values"]
    generator = torch.Generator().manual_seed(int(seed))
    mask = pixel_mask(pixels.shape, ratio, kind, generator, patch).to(pixels.device)
    return {**vision, "pixel_values": pixels.masked_fill(mask, 0.0)}


def vision_patch_size(model: object, default: int = 14) -> int:
    """The vision tower's patch size (the cell size of `patch` / `grid` masks)."""
    config = getattr(model, "config", None)
    vision = getattr(config, "vision_config", None)
    return int(getattr(vision, "patch_size", None) or default)
