"""Regions of the input and the values that replace removed ones.

A *region* is a square (cube) ``patch_size`` patch of features on a grid; perturbing a region
perturbs every channel of it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from funcattr.attribution.options import check_int
from funcattr.metrics.inputs import image_view

__all__ = ["Fill", "check_patch_size", "fill_tensor", "region_index", "region_relevance",
           "select_fill"]

Fill = float | str | Tensor

_FILLS = "a number, 'mean' (per-channel image mean), 'uniform' (noise in the image's value " \
         "range) or a tensor broadcastable to the input"


def check_patch_size(patch_size: Any, spatial: Sequence[int], owner: str) -> int:
    """An int >= 1 that divides every spatial size."""
    check_int(patch_size, "patch_size", owner, minimum=1, example="8")
    remainders = tuple(size % patch_size for size in spatial)
    if any(remainders):
        divisors = [d for d in range(1, min(spatial) + 1) if all(s % d == 0 for s in spatial)]
        raise ValueError(
            f"{owner}(patch_size={patch_size}): expected a patch size that divides the spatial "
            f"shape {tuple(spatial)}, got remainders {remainders}. Use one of {divisors}."
        )
    return patch_size


def region_index(spatial: Sequence[int], patch_size: int, device=None) -> tuple[Tensor, int]:
    """For each location (flattened), the index of its ``patch_size`` region; and the count."""
    grid = [size // patch_size for size in spatial]
    index = torch.zeros((), dtype=torch.long, device=device)
    for size, cells in zip(spatial, grid):
        axis = torch.arange(size, device=device) // patch_size
        index = index[..., None] * cells + axis
    return index.reshape(-1), math.prod(grid)


def region_relevance(pooled: Tensor, locations: Tensor, regions: int) -> Tensor:
    """Sum of pooled relevance per region: ``(batch, regions)``."""
    flat = pooled.reshape(pooled.shape[0], -1)
    out = flat.new_zeros(flat.shape[0], regions)
    return out.index_add_(1, locations, flat)


def fill_tensor(fill: Fill, input: Tensor, generator: torch.Generator | None,
                owner: str) -> Tensor:
    """The replacement values for removed features, broadcastable to the image view of
    ``input``; ``'uniform'`` draws from ``generator`` (None: torch's global generator)."""
    view = image_view(input)
    if isinstance(fill, bool) or not isinstance(fill, int | float | str | Tensor):
        called = repr(fill) if isinstance(fill, bool) else type(fill).__name__
        raise TypeError(
            f"{owner}(fill={called}): expected a number, 'mean', 'uniform' or a tensor, got "
            f"{type(fill).__name__}. Pass e.g. fill=0.0 or fill='mean'."
        )
    if isinstance(fill, int | float):
        return view.new_full((1,) * view.ndim, float(fill))
    if isinstance(fill, str):
        reduce = tuple(range(2, view.ndim))
        if fill == "mean":
            return view.mean(dim=reduce, keepdim=True)
        if fill == "uniform":
            low = view.amin(dim=tuple(range(1, view.ndim)), keepdim=True)
            high = view.amax(dim=tuple(range(1, view.ndim)), keepdim=True)
            noise = torch.rand(view.shape, generator=generator, dtype=view.dtype)
            return low + (high - low) * noise.to(view.device)
        raise ValueError(
            f"{owner}(fill={fill!r}): expected {_FILLS}, got {fill!r}. Pass e.g. fill='mean'."
        )
    fill = fill.to(view.dtype)
    fill = fill[:, None] if input.ndim == 2 and fill.shape == input.shape else fill
    try:
        torch.broadcast_shapes(fill.shape, view.shape)
    except RuntimeError:
        raise ValueError(
            f"{owner}(fill=tensor of shape {tuple(fill.shape)}): expected a tensor "
            f"broadcastable to the input's shape {tuple(input.shape)}, got "
            f"{tuple(fill.shape)}. Pass e.g. a blurred copy of the input."
        ) from None
    return fill


def select_fill(fill: Tensor, rows: Tensor) -> Tensor:
    """The fill values of the samples ``rows`` (fill may be shared by the batch)."""
    return fill[rows] if fill.shape[0] != 1 else fill
