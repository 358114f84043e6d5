"""Occlusion: the model's score on occluded inputs, each window given its score.

All occluded inputs of all windows run as stacked batches, without gradients (a composite's
rules change gradients, not values, so the model runs without them).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from itertools import product

import torch
from torch import Tensor

from funcattr.attribution.layout import in_fast_layout
from funcattr.attribution.options import (
    check_batched,
    check_chunk_size,
    check_input,
    check_params,
    check_same_dtype,
    check_window,
    chunk_ranges,
    copies_per_step,
)
from funcattr.attribution.pullback import Params, SelectedOutput, call_model
from funcattr.attribution.stacking import output_gradients, unstack, vmapped
from funcattr.attribution.targets import AttrOutput, as_attr_output_fn
from funcattr.core import is_differentiated
from funcattr.functional import FunctionalModel

__all__ = ["occlude_independent", "occlusion"]


def occlude_independent(input: Tensor, mask: Tensor, fill_fn: Callable[[Tensor], Tensor] =
                        torch.zeros_like, invert: bool = False) -> Tensor:
    """Keep ``input`` where ``mask`` is True and fill the rest with ``fill_fn(input)``.

    Zennit's default occlusion: the window is *kept* and everything outside it is filled
    (with ``invert=True`` the window is filled instead).
    """
    if invert:
        mask = ~mask
    return input * mask + ~mask * fill_fn(input)


def _window_and_stride(window: int | tuple[int, ...], stride: int | tuple[int, ...],
                       shape: tuple[int, ...], owner: str) -> tuple[tuple[int, ...], ...]:
    """Zennit's resolution: an int is clipped to each non-batch size; a short tuple covers the
    last dimensions, the leading ones take the full size (window) and the window (stride)."""
    ndim = len(shape)
    for name, value in (("window", window), ("stride", stride)):
        if isinstance(value, tuple) and len(value) > ndim:
            raise ValueError(
                f"{owner}({name}={value!r}): expected at most {ndim} sizes for an input of shape "
                f"{shape}, got {len(value)}. Pass sizes for the last dimensions only, e.g. "
                f"{name}=(8, 8) for images."
            )
    given = window
    if isinstance(window, int):
        window = tuple(min(window, size) for size in shape[1:])
    if isinstance(stride, int):
        stride = tuple(min(stride, size) for size in shape[1:])
    window = shape[:ndim - len(window)] + window
    stride = window[:len(window) - len(stride)] + stride
    if any(w > size for w, size in zip(window, shape)):
        raise ValueError(
            f"{owner}(window={given!r}): the window is larger than the input of shape {shape}; "
            f"expected a window that fits, got the resolved window {window}. Pass a smaller "
            f"window, or an int window, which is clipped to the input's size."
        )
    return window, stride


def _window_masks(shape: tuple[int, ...], window: tuple[int, ...], offsets: Tensor) -> Tensor:
    """``(len(offsets), *shape)`` boolean masks: the box ``[0, window)`` rolled by each offset
    (wrapping around), i.e. ``(i - offset) mod size < window`` in every dimension."""
    masks = None
    for dim, (size, extent) in enumerate(zip(shape, window)):
        index = torch.arange(size, device=offsets.device)
        inside = torch.remainder(index - offsets[:, dim, None], size) < extent
        view = [offsets.shape[0]] + [1] * len(shape)
        view[dim + 1] = size
        inside = inside.reshape(view)
        masks = inside if masks is None else masks & inside
    return masks.expand(offsets.shape[0], *shape)


def _occluded(occlusion_fn: Callable | None, input: Tensor, masks: Tensor, owner: str) -> Tensor:
    if occlusion_fn is None:  # keep the window, zeros outside: one broadcast
        return input * masks
    occluded = vmapped(lambda mask: occlusion_fn(input, mask), masks)
    if occluded is None or occluded.shape != masks.shape:
        occluded = torch.stack([occlusion_fn(input, mask) for mask in masks])
    if occluded.shape != masks.shape:
        raise ValueError(
            f"{owner}(occlusion_fn=...): expected an occluded input of the input's shape "
            f"{tuple(input.shape)}, got {tuple(occluded.shape[1:])}. Return a tensor shaped "
            f"like the input from occlusion_fn(input, mask)."
        )
    check_same_dtype(occluded, input, "occlusion_fn=...", owner, "occluded inputs",
                     "Fill in the input's dtype, e.g. with fill_fn=torch.zeros_like")
    return occluded


def _forward_only(fn: Callable) -> Callable:
    """The model without rules where ``fn`` offers it (rules change gradients, not values)."""
    return fn.plain if isinstance(fn, FunctionalModel | SelectedOutput) else fn


def occlusion(fn: Callable, params: Params, input: Tensor, attr_output_fn: AttrOutput = None,
              *, occlusion_fn: Callable[[Tensor, Tensor], Tensor] | None = None,
              window: int | tuple[int, ...] = 8, stride: int | tuple[int, ...] = 8,
              chunk_size: int | None = None) -> tuple[Tensor, Tensor]:
    """Occlusion: score the model on occluded inputs and give each window its score.

    Zennit's semantics: a box mask of size ``window`` is moved by ``stride`` over every
    dimension, wrapping around the borders (``roll``); for each position the model sees
    ``occlusion_fn(input, mask)`` (default: keep the window, zeros outside), the window's score
    is ``attr_output_fn(output)`` summed over each sample's non-batch dimensions, and the
    attribution adds ``mask * score``: no normalisation by overlap, no difference to the clean
    output (pass ``attr_output_fn=one_hot(k, times_output=True)`` for the class score). All
    occluded inputs run as one batch (see ``chunk_size``), without gradients.

    Parameters
    ----------
    fn, params, input, attr_output_fn
        As in :func:`gradient`; a composite's rules do not change the result.
    occlusion_fn : callable, optional
        ``(input, mask) -> occluded input``; default ``occlude_independent`` with zeros.
    window, stride : int or tuple of int
        An int is used for every non-batch dimension (clipped to its size); a shorter tuple
        applies to the last dimensions, e.g. ``(8, 8)`` for images ``(batch, C, H, W)``.
    chunk_size : int, optional
        Model inputs per step (whole occluded copies of the batch, at least one); ``None``:
        all windows at once. Bounds memory; any value gives the same result.

    Returns
    -------
    output : Tensor
        ``fn(params, input)``.
    attribution : Tensor
        Shaped like ``input``.

    Examples
    --------
    >>> output, attribution = occlusion(fn, params, x, one_hot(3, times_output=True),
    ...                                 window=(8, 8), stride=(4, 4))  # doctest: +SKIP
    """
    owner = "occlusion"
    attr_output_fn = as_attr_output_fn(attr_output_fn, owner)
    check_input(input, owner)
    check_params(params, owner)
    check_batched(input, owner)
    check_window(window, "window", owner)
    check_window(stride, "stride", owner)
    check_chunk_size(chunk_size, owner)
    if occlusion_fn is not None and not callable(occlusion_fn):
        raise TypeError(
            f"{owner}(occlusion_fn={type(occlusion_fn).__name__}): expected a callable "
            f"(input, mask) -> occluded input, or None, got {type(occlusion_fn).__name__}. "
            f"Pass e.g. occlusion_fn=occlude_independent."
        )
    shape = tuple(input.shape)
    model = _forward_only(fn)
    if shape[0] == 0:  # an empty batch: an empty result, as from every attributor
        with torch.no_grad():
            return call_model(model, params, input, owner), torch.zeros_like(input)
    window, stride = _window_and_stride(window, stride, shape, owner)
    offsets = torch.tensor(
        list(product(*(range(0, size, step) for size, step in zip(shape, stride)))),
        dtype=torch.long, device=input.device,
    )
    batch = shape[0]
    differentiated = is_differentiated([input, *params.values()])
    result = torch.zeros_like(input)

    def scores_of(stacked: Tensor) -> Tensor:
        return call_model(model, params, stacked, owner)

    with contextlib.nullcontext() if differentiated else torch.no_grad():
        # the clean output on its own: appending it to a batch of windows can push the batch
        # size past a convolution-kernel threshold (measured: 49 -> 50 costs 40% on a CNN)
        output = call_model(model, params, input, owner)
        step = copies_per_step(chunk_size, batch, len(offsets))
        for start, stop in chunk_ranges(len(offsets), step):
            masks = _window_masks(shape, window, offsets[start:stop])
            occluded = _occluded(occlusion_fn, input, masks, owner)
            stacked = occluded.reshape(-1, *shape[1:])
            outputs = unstack(scores_of(stacked) if differentiated
                              else in_fast_layout(scores_of, stacked),
                              stop - start, batch, owner)
            seeds = output_gradients(outputs, attr_output_fn, owner)
            scores = seeds.sum(tuple(range(2, seeds.ndim))) if seeds.ndim > 2 else seeds
            weights = masks.to(result.dtype)  # one conversion instead of one per window
            for weight, score in zip(weights, scores):
                result = result + weight * score.reshape(batch, *(1,) * (input.ndim - 1))
    return output, result
