"""The inputs and attributions of the metrics, and their layout.

* ``input`` is a batch: ``(batch, channels, *spatial)`` (images, volumes, sequences) or
  ``(batch, features)`` (tabular, treated as one channel along one spatial axis).
* A *feature* is one spatial location with **all its channels**.
* Attributions are shaped like ``input`` or lack the channel axis or have one channel; they
  are pooled over channels by summing.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from funcattr.attribution.options import check_batched
from funcattr.attribution.options import check_input as check_tensor

__all__ = ["LAYOUTS", "check_finite", "check_input", "check_samples", "image_view",
           "pool_attribution", "to_input_shape"]

#: The layouts a metric's input may have.
LAYOUTS = "(batch, features) or (batch, channels, *spatial)"


def check_input(input: Any, owner: str, name: str = "input") -> Tensor:
    """A finite floating point batch in one of :data:`LAYOUTS`, detached."""
    check_tensor(input, owner, name)
    check_batched(input, owner, minimum=2, name=name, layouts=LAYOUTS)
    check_samples(input.shape[0], owner, f"{name}=tensor of shape {tuple(input.shape)}")
    if not input.is_floating_point():
        raise TypeError(
            f"{owner}({name}=tensor of dtype {input.dtype}): expected a floating point tensor, "
            f"got {input.dtype}. Pass {name}.float()."
        )
    return input.detach()


def check_samples(batch: int, owner: str, argument: str) -> None:
    """At least one sample: a metric of an empty batch is undefined (its mean is NaN)."""
    if batch == 0:
        raise ValueError(
            f"{owner}({argument}): expected at least one sample, got an empty batch. Evaluate "
            f"a batch with samples (a score of none is undefined)."
        )


def check_finite(attribution: Tensor, owner: str, name: str = "attribution") -> Tensor:
    """An attribution without NaN or infinity (a metric of one would be meaningless)."""
    bad = int((~torch.isfinite(attribution.detach())).sum()) if (
        attribution.is_floating_point() or attribution.is_complex()) else 0
    if bad:
        raise ValueError(
            f"{owner}({name}=tensor of shape {tuple(attribution.shape)}): expected finite "
            f"values, got NaN or infinity in {bad} of {attribution.numel()} entries. Fix the "
            f"method that made it, or clean it first (e.g. torch.nan_to_num)."
        )
    return attribution


def image_view(input: Tensor) -> Tensor:
    """``(batch, channels, *spatial)`` view; ``(batch, features)`` becomes ``(batch, 1, F)``."""
    return input[:, None] if input.ndim == 2 else input


def to_input_shape(view: Tensor, input: Tensor) -> Tensor:
    """Undo :func:`image_view` for a batch built in the image view of ``input``."""
    return view[:, 0] if input.ndim == 2 else view


def pool_attribution(attribution: Any, input: Tensor, owner: str,
                     name: str = "attribution") -> Tensor:
    """Sum an attribution over channels: ``(batch, *spatial)`` of the image view of ``input``."""
    if not isinstance(attribution, Tensor):
        raise TypeError(
            f"{owner}({name}={type(attribution).__name__}): expected a tensor, got "
            f"{type(attribution).__name__}. Pass torch.as_tensor({name})."
        )
    check_finite(attribution, owner, name)
    view = image_view(input)
    batch, _, *spatial = view.shape
    shape = tuple(attribution.shape)
    if input.ndim == 2 and shape == tuple(input.shape):
        return attribution.detach().to(input.dtype)
    if shape == tuple(view.shape) or shape == (batch, 1, *spatial):
        return attribution.detach().to(input.dtype).sum(dim=1)
    if shape == (batch, *spatial):
        return attribution.detach().to(input.dtype)
    raise ValueError(
        f"{owner}({name}=tensor of shape {shape}): expected the input's shape "
        f"{tuple(input.shape)}, or {(batch, *spatial)} / {(batch, 1, *spatial)} for one value "
        f"per location, got {shape}. Pass one attribution per sample of the input."
    )
