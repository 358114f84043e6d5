"""What is explained: output gradients (``attr_output_fn``) and class targets.

``attr_output_fn`` (Zennit's ``attr_output``) says which output gradient is pulled back:
``None`` uses the output itself, a tensor is used as it is, and a callable is called on the
output, e.g. ``one_hot(target)``. A *target* is a class index: one for the whole batch or one
per sample; :func:`funcattr.attribution.multi_target` takes ``K`` of them (``targets``).
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from funcattr.attribution.options import check_int, sequence_of_ints, shown
from funcattr.core import concrete_value

__all__ = [
    "AttrOutput",
    "as_attr_output_fn",
    "check_target",
    "check_targets",
    "constant",
    "from_numpy",
    "identity",
    "one_hot",
    "output_gradient",
    "target_index",
    "top_k_targets",
]

AttrOutput = Tensor | Callable[[Tensor], Tensor] | None


def identity(obj: Any) -> Any:
    """Return ``obj`` unchanged (the default ``attr_output_fn``: pull back the output)."""
    return obj


identity.rowwise = True  # acts on each output row alone (see batched.output_gradients)


def constant(obj: Any) -> Callable[..., Any]:
    """Return a function that ignores its arguments and returns ``obj``."""

    def constant_fn(*args, **kwargs):
        return obj

    return constant_fn


def as_attr_output_fn(attr_output: AttrOutput, owner: str,
                      argument: str = "attr_output_fn") -> Callable[[Tensor], Tensor]:
    """``attr_output`` as a function of the output (``None`` -> :func:`identity`, a tensor ->
    :func:`constant`); ``argument`` is its name in the caller's signature."""
    if attr_output is None:
        return identity
    if callable(attr_output):
        return attr_output
    if isinstance(attr_output, Tensor):
        return constant(attr_output)
    raise TypeError(
        f"{owner}({argument}={type(attr_output).__name__}): expected None, a tensor shaped like "
        f"the output, or a callable output -> output gradient, got "
        f"{type(attr_output).__name__}. Pass e.g. {argument}=one_hot(target)."
    )


def output_gradient(output: Tensor, attr_output_fn: Callable[[Tensor], Tensor],
                    owner: str) -> Tensor:
    """``attr_output_fn(output)``, checked against the output's shape, in its dtype."""
    seed = attr_output_fn(output)
    if not isinstance(seed, Tensor) or seed.shape != output.shape:
        got = tuple(seed.shape) if isinstance(seed, Tensor) else type(seed).__name__
        raise ValueError(
            f"{owner}(attr_output_fn=...): expected an output gradient of the output's shape "
            f"{tuple(output.shape)}, got {got}. Return a tensor shaped like the output, e.g. "
            f"from one_hot(target)."
        )
    return seed.to(output.dtype) if seed.dtype != output.dtype else seed


def from_numpy(value: Any) -> Any:
    """A numpy array of integers as a tensor and a numpy integer as an int; anything else
    unchanged (numpy labels work wherever targets do)."""
    if isinstance(value, np.ndarray) and np.issubdtype(value.dtype, np.integer):
        return torch.from_numpy(value.astype(np.int64))
    if isinstance(value, np.integer):
        return int(value)
    return value


def _check_target_kind(target: Any, owner: str) -> None:
    if isinstance(target, bool) or not (
        target is None or isinstance(target, numbers.Integral | Tensor)
        or sequence_of_ints(target)
    ):
        raise TypeError(
            f"{owner}(target={target!r}): expected an int, a sequence of ints, an integer tensor "
            f"or None, got {type(target).__name__}. Pass e.g. target=3 or target=[3, 1]."
        )
    if isinstance(target, Tensor) and (target.is_floating_point() or target.is_complex()
                                       or target.dtype == torch.bool or target.ndim > 1):
        got = f"{target.ndim} dimensions" if target.ndim > 1 else f"dtype {target.dtype}"
        raise TypeError(
            f"{owner}(target=tensor of dtype {target.dtype}, shape {tuple(target.shape)}): "
            f"expected an integer tensor of shape (batch,), got {got}. Pass class indices, "
            f"e.g. target.long()."
        )


def one_hot(target: int | Sequence[int] | Tensor | None = None, *,
            times_output: bool = False) -> Callable[[Tensor], Tensor]:
    """Output gradient selecting ``target`` classes: ``attr_output_fn`` for classifiers.

    Parameters
    ----------
    target : int, sequence of int, tensor, or None
        One class for the whole batch, one per sample (shape ``(batch,)``), or ``None`` for
        each sample's predicted class (argmax of the output).
    times_output : bool
        Multiply by the output (Zennit's relevance convention ``output * one_hot``).

    Returns
    -------
    callable
        ``output -> tensor`` shaped like the ``(batch, classes)`` output.

    Examples
    --------
    >>> output, relevance = gradient(fn, params, x, one_hot([3, 1]))  # doctest: +SKIP
    """
    target = from_numpy(target)
    _check_target_kind(target, "one_hot")

    def one_hot_fn(output: Tensor) -> Tensor:
        if output.ndim != 2:
            raise ValueError(
                f"one_hot(target={target!r}): expected a (batch, classes) output, got shape "
                f"{tuple(output.shape)}. Pass a tensor or your own callable as attr_output_fn."
            )
        batch, classes = output.shape
        index = output.argmax(dim=1) if target is None else torch.as_tensor(
            target, device=output.device,
            dtype=None if isinstance(target, Tensor) else torch.long)  # [] is no float
        index = index.expand(batch) if index.ndim == 0 else index
        if index.shape != (batch,):
            raise ValueError(
                f"one_hot(target={target!r}): expected one target or one per sample ({batch}), "
                f"got {tuple(index.shape)}. Pass one class, or one per sample of the batch."
            )
        plain = concrete_value(index)
        if plain is not None and bool(((plain < 0) | (plain >= classes)).any()):
            raise ValueError(
                f"one_hot(target={target!r}): target out of range for an output with {classes} "
                f"classes; expected values in [0, {classes - 1}], got {plain.tolist()}. Pass "
                f"classes of this model."
            )
        result = torch.nn.functional.one_hot(index, classes).to(output.dtype)
        return result * output if times_output else result

    one_hot_fn.__qualname__ = f"one_hot({target!r})"
    # row by row (the same class for every sample): stacked copies need no vmap
    one_hot_fn.rowwise = target is None or isinstance(target, numbers.Integral) or (
        isinstance(target, Tensor) and target.ndim == 0)
    return one_hot_fn


def check_target(target: Any, batch: int, owner: str) -> Tensor:
    """One integer class per sample as a ``(batch,)`` long tensor (an int or a 0-dim tensor
    stands for every sample)."""
    target = from_numpy(target)
    if isinstance(target, bool) or not isinstance(target, numbers.Integral | Tensor | Sequence) \
            or isinstance(target, str | bytes):
        raise TypeError(
            f"{owner}(target={target!r}): expected an int, a sequence of ints or an integer "
            f"tensor of shape (batch,), got {type(target).__name__}. Pass e.g. "
            f"target=[3, 1] (one class per sample)."
        )
    target = torch.as_tensor(target, dtype=torch.long if isinstance(target, Sequence) and
                             len(target) == 0 else None)  # [] is no float tensor of classes
    if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
        raise TypeError(
            f"{owner}(target=tensor of dtype {target.dtype}): expected integer classes, got "
            f"{target.dtype}. Pass target.long()."
        )
    if target.ndim == 0:
        target = target.expand(batch)
    if target.shape != (batch,):
        raise ValueError(
            f"{owner}(target=tensor of shape {tuple(target.shape)}): expected one class for "
            f"the batch or one per sample, shape ({batch},), got {tuple(target.shape)}. Pass "
            f"one class per sample of the input."
        )
    return target.long()


def top_k_targets(k: int) -> Callable[[Tensor], Tensor]:
    """Targets for :func:`funcattr.attribution.multi_target`: each sample's ``k`` best classes.

    Returns
    -------
    callable
        ``output -> (k, batch)`` class indices, highest score first.

    Examples
    --------
    >>> output, relevance = multi_target(fn, params, x, top_k_targets(5))  # doctest: +SKIP
    """
    check_int(k, "k", "top_k_targets", minimum=1, example="5")

    def top_k(output: Tensor) -> Tensor:
        if output.ndim != 2 or output.shape[1] < k:
            raise ValueError(
                f"top_k_targets(k={k}): expected a (batch, classes) output with at least {k} "
                f"classes, got shape {tuple(output.shape)}. Pass a smaller k."
            )
        return output.topk(k, dim=1).indices.T

    top_k.__qualname__ = f"top_k_targets({k})"
    return top_k


def check_targets(targets: Any, owner: str) -> None:
    """``multi_target``'s targets: a sequence, a tensor or a callable (checked before any
    compute; their values are checked against the output by :func:`target_index`)."""
    targets = from_numpy(targets)
    if not (callable(targets) or isinstance(targets, Tensor | Sequence)) or isinstance(
        targets, str | bytes
    ):
        raise TypeError(
            f"{owner}(targets={targets!r}): expected a sequence of ints, an integer tensor of "
            f"shape (K,) or (K, batch), or a callable output -> (K, batch), got "
            f"{type(targets).__name__}. Pass e.g. targets=[3] or targets=top_k_targets(5)."
        )


def target_index(targets: Any, output: Tensor, owner: str) -> Tensor:
    """``multi_target``'s targets as a ``(K, batch)`` integer tensor, checked against the
    output."""
    check_targets(targets, owner)
    targets = from_numpy(targets)
    described = shown(targets) if isinstance(targets, Tensor) else repr(targets)
    if (targets.numel() if isinstance(targets, Tensor) else
            len(targets) if isinstance(targets, Sequence) else 1) == 0:
        raise ValueError(
            f"{owner}(targets={described}): expected K >= 1 targets, got K = 0. Pass at least "
            f"one class, e.g. targets=[3]."
        )
    index = targets(output) if callable(targets) else torch.as_tensor(targets,
                                                                      device=output.device)
    if not isinstance(index, Tensor) or index.is_floating_point() or index.is_complex() or (
        index.dtype == torch.bool
    ):
        got = index.dtype if isinstance(index, Tensor) else type(index).__name__
        raise TypeError(
            f"{owner}(targets={described}): expected integer class indices, got {got}. "
            f"Pass class indices, e.g. targets=[3, 5]."
        )
    if output.ndim != 2:
        raise ValueError(
            f"{owner}(targets=...): expected a (batch, classes) output, got shape "
            f"{tuple(output.shape)}. Explain a classifier, or use gradient with your own "
            f"attr_output_fn."
        )
    batch, classes = output.shape
    if index.ndim == 1:
        index = index[:, None].expand(index.shape[0], batch)
    if index.ndim != 2 or index.shape[1] != batch or index.shape[0] == 0:
        raise ValueError(
            f"{owner}(targets={described}): expected K >= 1 targets, as a sequence of K "
            f"classes (the same for every sample) or a (K, batch={batch}) tensor, got shape "
            f"{tuple(index.shape)}. Pass e.g. targets=[3, 5]."
        )
    plain = concrete_value(index)
    if plain is not None and bool(((plain < 0) | (plain >= classes)).any()):
        raise ValueError(
            f"{owner}(targets={described}): target out of range for an output with "
            f"{classes} classes; expected values in [0, {classes - 1}], got "
            f"{plain.unique().tolist()}. Pass classes of this model."
        )
    return index
