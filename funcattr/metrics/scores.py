"""The model of a metric: ``(fn, params)`` from an ``nn.Module`` or a pure function, and class
scores of (perturbed) inputs, computed in chunks without autograd."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from funcattr.attribution.options import chunk_ranges
from funcattr.attribution.pullback import call_model
from funcattr.functional import functionalize

__all__ = ["Params", "as_model", "chunked_scores", "class_scores"]

Params = Mapping[str, Tensor]


def as_model(model: Any, params: Params | None, owner: str) -> tuple[Callable, dict[str, Tensor]]:
    """``(fn, params)`` for an ``nn.Module`` or a pure ``fn(params, input)`` with ``params``."""
    if isinstance(model, nn.Module):
        fn, own = functionalize(model)
        if params is not None:
            missing = sorted(set(own) - set(params))
            if missing:
                raise ValueError(
                    f"{owner}(params=...): expected the keys of model.named_parameters() and "
                    f"named_buffers(), got a dict missing {missing[:5]}. Pass params=None to "
                    f"use the model's own."
                )
            own = dict(params)
        return fn, own
    if callable(model):
        if params is None:
            raise TypeError(
                f"{owner}(model={type(model).__name__}, params=None): a pure model "
                f"fn(params, x) needs its params; expected a dict, got None. Pass params=... "
                f"(e.g. from funcattr.functionalize), params={{}} for a function without "
                f"parameters, or an nn.Module."
            )
        if not isinstance(params, Mapping):
            raise TypeError(
                f"{owner}(params={type(params).__name__}): expected a dict of str to Tensor, "
                f"got {type(params).__name__}. Pass the params of funcattr.functionalize."
            )
        plain = getattr(model, "plain", None)  # same output, no rule bookkeeping
        return (plain if callable(plain) else model), dict(params)
    raise TypeError(
        f"{owner}(model={type(model).__name__}): expected a torch.nn.Module or a callable "
        f"fn(params, input), got {type(model).__name__}. Pass the model."
    )


def class_scores(fn: Callable, params: Params, input: Tensor, target: Tensor,
                 softmax: bool, owner: str) -> Tensor:
    """``fn(params, input)[i, target[i]]`` (optionally of the softmax), without autograd."""
    with torch.inference_mode():
        output = call_model(fn, params, input, owner, "model")
        if output.ndim != 2:
            raise ValueError(
                f"{owner}(model=...): expected a model output of shape (batch, classes), got "
                f"{tuple(output.shape)}. Wrap the model so that it returns class scores."
            )
        classes = output.shape[1]
        if target.numel() and bool(((target < 0) | (target >= classes)).any()):
            raise ValueError(
                f"{owner}(target=...): target out of range for an output with {classes} "
                f"classes; expected values in [0, {classes - 1}], got "
                f"{target.unique().tolist()}. Pass classes of this model."
            )
        if softmax:
            output = torch.softmax(output, dim=1)
        return output.gather(1, target[:, None].to(output.device))[:, 0]


def chunked_scores(fn: Callable, params: Params, total: int,
                   make: Callable[[Tensor], tuple[Tensor, Tensor]],
                   chunk_size: int | None, softmax: bool, owner: str) -> Tensor:
    """Scores of ``total`` inputs built by ``make(indices) -> (inputs, targets)``, in chunks.

    The perturbed inputs of every step and sample are stacked into batches of ``chunk_size``
    and sent through ``fn`` at once; nothing larger than one chunk is ever built.
    """
    out = []
    for start, stop in chunk_ranges(total, chunk_size):
        inputs, targets = make(torch.arange(start, stop))
        out.append(class_scores(fn, params, inputs, targets, softmax, owner))
    return torch.cat(out) if out else torch.empty(0)
