"""What the ``torch.func`` transforms around a rule look like, and at which level rules act.

Rules run inside ``vmap``, ``grad``, ``jacrev`` and ``torch.compile``. These helpers tell a
rule what it is looking at: whether a tensor is wrapped by a transform, whether it may be
differentiated, its plain value when there is one, and whether the current differentiation
level is the one an attribution asked the rules to act on.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

import torch
from torch import Tensor, nn
from torch._C import _functorch

__all__ = [
    "add_batch_dim",
    "concrete_value",
    "is_batched",
    "is_differentiated",
    "is_transformed",
    "no_transform_active",
    "only_rule_level",
    "record_level",
    "rules_at_this_level",
    "stacked_grads",
]


def concrete_value(tensor: Tensor) -> Tensor | None:
    """The plain tensor under functorch wrappers, or ``None`` if its values cannot be read.

    Values are unreadable under ``vmap`` (batched), while compiling, and for fake tensors.
    """
    if torch.compiler.is_compiling():
        return None
    while _functorch.is_functorch_wrapped_tensor(tensor):
        if _functorch.is_batchedtensor(tensor):
            return None
        tensor = _functorch.get_unwrapped(tensor)
    if type(tensor) is not Tensor and not isinstance(tensor, nn.Parameter):
        return None
    return tensor


def is_transformed(value: Any) -> bool:
    """Whether ``value`` is a tensor wrapped by a ``torch.func`` transform (vmap, grad, ...)."""
    return isinstance(value, Tensor) and (
        _functorch.is_functorch_wrapped_tensor(value) or _functorch.is_legacy_batchedtensor(value)
    )


def no_transform_active() -> bool:
    """Whether no ``torch.func`` transform is active and nothing is being compiled: plain
    autograd is then the only differentiation, so a rule acts at the one level there is and
    a plain ``torch.autograd.Function`` carries it exactly."""
    return _functorch.maybe_current_level() is None and not torch.compiler.is_compiling()


def is_batched(tensor: Tensor) -> bool:
    """Whether a ``vmap`` level batches this tensor (in-place ops would mix batch levels)."""
    while True:
        if _functorch.is_batchedtensor(tensor) or _functorch.is_legacy_batchedtensor(tensor):
            return True
        if not _functorch.is_functorch_wrapped_tensor(tensor):
            return False
        tensor = _functorch.get_unwrapped(tensor)


def is_differentiated(values: Iterable[Any]) -> bool:
    """Whether autograd or an outer ``torch.func`` transform may differentiate through any of
    these tensors (then computations on them must be recorded)."""
    for value in values:
        if not isinstance(value, Tensor):
            continue
        while _functorch.is_functorch_wrapped_tensor(value):
            if not _functorch.is_batchedtensor(value):
                return True  # a grad/jvp level wraps it
            value = _functorch.get_unwrapped(value)
        if torch.is_grad_enabled() and value.requires_grad:
            return True
    return False


def stacked_grads(grad: Tensor, tensors: Iterable[Tensor | None]) -> tuple[Tensor, int] | None:
    """``(K stacked plain gradients, vmap level)`` when ``grad`` is the only batched tensor:
    one ``vmap`` level over output gradients only (several output gradients pulled back at
    once, e.g. multi-target) over plain tensors, nothing recorded; else ``None``.

    :func:`add_batch_dim` turns a result stacked the same way back into a batched tensor.
    """
    if (not _functorch.is_batchedtensor(grad) or torch.is_grad_enabled()
            or torch.compiler.is_compiling()
            or any(t is not None and is_transformed(t) for t in tensors)):
        return None
    inner = _functorch.get_unwrapped(grad)
    if is_transformed(inner) or type(inner) is not Tensor:
        return None
    return inner.movedim(_functorch.maybe_get_bdim(grad), 0), _functorch.maybe_get_level(grad)


def add_batch_dim(stacked: Tensor, level: int) -> Tensor:
    """The tensor ``vmap`` at ``level`` sees as one row of ``stacked`` (batched on dim 0)."""
    return _functorch._add_batch_dim(stacked, 0, level)


# --------------------------------------------------------------------------------------------
# Which differentiation level the rules act on
# --------------------------------------------------------------------------------------------

_EVERY_LEVEL = object()
_RULE_LEVEL: ContextVar[Any] = ContextVar("funcattr_rule_level", default=_EVERY_LEVEL)


@contextmanager
def rules_at_this_level() -> Iterator[None]:
    """Within this block, rules modify only the gradient of the current ``torch.func`` level.

    An attribution is one pullback through the rule-applied model. When it is itself
    differentiated (``torch.func.grad`` of an explanation loss, ``create_graph``), the outer
    derivative of the forward pass must be the model's true derivative, as with Zennit's
    ``inactive()``. Outside such a block (a user differentiating ``fn`` directly) every
    level's gradient is the rule's.
    """
    token = _RULE_LEVEL.set(_functorch.maybe_current_level())
    try:
        yield
    finally:
        _RULE_LEVEL.reset(token)


def record_level(ctx: Any) -> None:
    """Store on an autograd ``ctx`` whether the rule applies to its backward
    (``ctx.rule_applies``): outside :func:`rules_at_this_level`, or at that level."""
    level = _RULE_LEVEL.get()
    ctx.rule_applies = level is _EVERY_LEVEL or level == _functorch.maybe_current_level()


def only_rule_level(tensor: Tensor) -> bool:
    """Whether every differentiation that can reach ``tensor`` is one the rules act on.

    True for a plain tensor under plain autograd (the pullback's own level), for a tensor
    differentiated only at :func:`rules_at_this_level`'s level (``vmap`` levels do not count),
    and everywhere outside such a block (rules then act at every level). Where it holds, a rule
    may drop a gradient by ``detach`` instead of a Function that zeroes it at one level only.
    False while compiling (the transform-safe Functions then apply).
    """
    if torch.compiler.is_compiling():
        return False
    level = _RULE_LEVEL.get()
    if level is _EVERY_LEVEL:
        return True
    while _functorch.is_functorch_wrapped_tensor(tensor):
        if not _functorch.is_batchedtensor(tensor) and (
                _functorch.maybe_get_level(tensor) != level):
            return False  # another grad/jvp level differentiates it
        tensor = _functorch.get_unwrapped(tensor)
    if _functorch.is_legacy_batchedtensor(tensor):
        return False
    # plain autograd below the functorch levels differentiates it too, unless it is the rule's
    return level is None or not (torch.is_grad_enabled() and tensor.requires_grad)
