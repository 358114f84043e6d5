"""Copies of the input stacked into the batch dimension: one model call for many copies.

SmoothGrad's noisy copies, Integrated Gradients' path points and Occlusion's occluded inputs
are *stacked into the batch dimension* and sent through ``fn`` as one large batch (in steps of
``chunk_size`` model inputs, whole copies at a time); the output gradients of all copies come
from one ``vmap`` of ``attr_output_fn`` over the copies. Stacking was measured against
``torch.func.vmap`` over per-copy pullbacks (``benchmarks/bench_attributors.py`` prints both):
the results are the same, stacking is as fast or faster on CPU, and it keeps the plain-autograd
pullback. It assumes what Zennit's loops assume too: the model treats the samples of a batch
independently (eval mode: BatchNorm uses its running statistics, no batch-dependent layers).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor

from funcattr.attribution.options import chunk_ranges, copies_per_step
from funcattr.attribution.pullback import Params, pullback
from funcattr.attribution.targets import output_gradient

__all__ = ["mean_gradient", "output_gradients", "stacked_pullbacks", "unstack", "vmapped"]


def vmapped(function: Callable, items: Tensor, *args: Any) -> Tensor | None:
    """``stack([function(*args, item) for item in items])`` as one ``vmap``; ``None`` if the
    function cannot be vmapped (the caller then loops, which also raises the function's own
    errors with their own messages)."""
    try:
        result = torch.func.vmap(lambda item: function(*args, item))(items)
    except Exception:  # not vmappable (e.g. .item(), data-dependent control flow): loop
        return None
    return result if isinstance(result, Tensor) else None


def output_gradients(outputs: Tensor, attr_output_fn: Callable[[Tensor], Tensor],
                     owner: str) -> Tensor:
    """``attr_output_fn`` of each copy's ``(batch, ...)`` output, stacked like ``outputs``.

    Functions marked ``rowwise`` (``identity``, ``one_hot`` of one class or of the argmax)
    act on each output row alone: one call on all rows. Others: one ``vmap`` over the copies,
    or a loop where the function cannot be vmapped.
    """
    if getattr(attr_output_fn, "rowwise", False):
        rows = outputs.reshape(-1, *outputs.shape[2:])
        return output_gradient(rows, attr_output_fn, owner).reshape(outputs.shape)
    if outputs.shape[0] > 1:
        seeds = vmapped(attr_output_fn, outputs)
        if seeds is not None and seeds.shape == outputs.shape:
            return seeds.to(outputs.dtype) if seeds.dtype != outputs.dtype else seeds
    return torch.stack([output_gradient(output, attr_output_fn, owner) for output in outputs])


def unstack(output: Tensor, copies: int, batch: int, owner: str) -> Tensor:
    """View the output of a stacked batch as ``(copies, batch, ...)``."""
    if output.ndim == 0 or output.shape[0] != copies * batch:
        raise ValueError(
            f"{owner}(fn=...): expected an output with the batch dimension first "
            f"({copies * batch} rows for {copies} stacked copies of a batch of {batch}), got "
            f"shape {tuple(output.shape)}. The batched attributors stack copies of the input "
            f"into the batch dimension; make the model treat batch samples independently."
        )
    return output.reshape(copies, batch, *output.shape[1:])


def stacked_pullbacks(fn: Callable, params: Params, samples: Callable[[int, int], Tensor],
                      count: int, batch: int, attr_output_fn: Callable[[Tensor], Tensor],
                      chunk_size: int | None, owner: str) -> Iterator[tuple[Tensor, Tensor]]:
    """For each step: the copies ``samples(start, stop)`` (``(copies, *input.shape)``) as one
    batch through ``fn``; yields ``(outputs, attributions)`` shaped ``(copies, batch, ...)``."""
    for start, stop in chunk_ranges(count, copies_per_step(chunk_size, batch, count)):
        chunk = samples(start, stop)
        copies = chunk.shape[0]
        output, pull = pullback(fn, params, chunk.reshape(copies * batch, *chunk.shape[2:]),
                                owner=owner)
        outputs = unstack(output, copies, batch, owner)
        seeds = output_gradients(outputs, attr_output_fn, owner)
        yield outputs, pull(seeds.reshape(output.shape), last=True).reshape(chunk.shape)


def mean_gradient(fn: Callable, params: Params, input: Tensor,
                  samples: Callable[[int, int], Tensor], count: int,
                  attr_output_fn: Callable[[Tensor], Tensor], chunk_size: int | None,
                  owner: str) -> tuple[Tensor, Tensor]:
    """``(output of the last copy, sum_n grad_n / count)``, summed in copy order as Zennit does
    (so every ``chunk_size`` adds the same numbers in the same order)."""
    result, output = torch.zeros_like(input), None
    for outputs, grads in stacked_pullbacks(fn, params, samples, count, input.shape[0],
                                            attr_output_fn, chunk_size, owner):
        for grad in grads / count:
            result = result + grad
        output = outputs[-1]
    return output, result
