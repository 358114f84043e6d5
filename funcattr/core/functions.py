"""The transform-safe autograd Functions through which every rule changes a gradient.

Both are new-style ``torch.autograd.Function`` s (``setup_context``, ``generate_vmap_rule``),
so they run under ``torch.func.vjp``, ``vmap``, ``grad``, ``jacrev`` and ``torch.compile``;
their backward is written with ordinary differentiable operations, so derivatives of an
attribution are exact. Outside :func:`funcattr.core.rules_at_this_level`'s level they give the
true derivative.

- :func:`modified_gradient`: a module's output ``y`` whose gradient with respect to the
  module's input ``x`` is a rule's ``backward(x, y, tensors, grad)`` (the LRP rules);
- :func:`elementwise_rule`: ``forward(x)`` whose input gradient is ``backward(x, grad)``
  (:class:`funcattr.core.ElementwiseRule`: ``Pass``, the modified-ReLU rules), or
  ``backward(x, grad, forward(x))`` for a rule that reads the output (AttnLRP's identity rule);
- :func:`scale_gradient`: ``x`` whose gradient is ``factor * grad`` (``factor=0``: the gradient
  stopped), AttnLRP's uniform rule and CP-LRP's constant attention.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from funcattr.core.levels import record_level

__all__ = [
    "Backward",
    "elementwise_backward",
    "elementwise_rule",
    "fresh",
    "modified_gradient",
    "out_of_place",
    "scale_gradient",
]

#: ``backward(x, y, tensors, grad) -> input gradient`` of :func:`modified_gradient`.
Backward = Callable[[Tensor, Tensor | None, tuple, Tensor], Tensor]


class _ModifiedGradient(torch.autograd.Function):
    """Value ``y`` (a copy, so the saved ``y`` survives in-place operations downstream);
    gradient ``backward(x, y, tensors, grad)`` for ``x`` and nothing for the rest."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x, y, backward, *tensors):
        return y.clone()

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, y, backward, *tensors = inputs
        ctx.save_for_backward(x, y, *tensors)
        ctx.backward, ctx.count = backward, len(tensors)
        record_level(ctx)

    @staticmethod
    def backward(ctx, grad):
        unused = (None,) * (1 + ctx.count)
        if not ctx.rule_applies:  # the true derivative, through the ordinary output y
            return (None, grad, *unused)
        x, y, *tensors = ctx.saved_tensors
        return (ctx.backward(x, y, tuple(tensors), grad), None, *unused)


def modified_gradient(x: Tensor, y: Tensor, backward: Backward, *tensors: Tensor | None
                      ) -> Tensor:
    """Return ``y`` whose gradient with respect to ``x`` is ``backward(x, y, tensors, grad)``.

    ``tensors`` are the other tensors ``backward`` reads (the module's parameters); they, and
    ``y``'s own graph, get no gradient from this output. Under a transform that
    differentiates the attribution itself, ``backward``'s operations are recorded.
    """
    return _ModifiedGradient.apply(x, y, backward, *tensors)


def out_of_place(forward: Callable[[Tensor], Tensor], in_place: bool
                 ) -> Callable[[Tensor], Tensor]:
    """``forward`` that leaves its input intact: an in-place one (``ReLU(inplace=True)``)
    gets a copy."""
    return (lambda u: forward(u.clone())) if in_place else forward


def fresh(y: Tensor, x: Tensor) -> Tensor:
    """``y``, copied if it is ``x`` or shares its storage as a view (a Function's output
    must be a new tensor)."""
    return y.clone() if y is x or y._base is x or x._base is y else y


class _ElementwiseRule(torch.autograd.Function):
    """Value ``forward(x)``, input gradient ``backward_fn(x or None, grad[, forward(x)])``."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x, forward, backward_fn, reads_input, in_place, reads_output):
        return fresh(out_of_place(forward, in_place)(x), x)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, forward, backward_fn, reads_input, in_place, reads_output = inputs
        ctx.save_for_backward(x)
        ctx.forward, ctx.backward_fn = out_of_place(forward, in_place), backward_fn
        ctx.reads_input, ctx.reads_output = reads_input, reads_output
        record_level(ctx)

    @staticmethod
    def backward(ctx, grad):
        return elementwise_backward(ctx, grad), None, None, None, None, None


def elementwise_backward(ctx: Any, grad: Tensor, output: Tensor | None = None) -> Tensor:
    """The input gradient of an element-wise rule's Function: ``ctx.backward_fn`` at the rule's
    level, the true derivative of ``ctx.forward`` (recomputed) elsewhere. A rule that reads the
    output (``ctx.reads_output``) gets ``output``, or ``ctx.forward(x)`` recomputed."""
    (x,) = ctx.saved_tensors
    if not ctx.rule_applies:  # only for derivatives of an attribution
        return torch.func.vjp(ctx.forward, x)[1](grad)[0]
    if getattr(ctx, "reads_output", False):
        y = ctx.forward(x) if output is None else output
        return ctx.backward_fn(x if ctx.reads_input else None, grad, y)
    return ctx.backward_fn(x if ctx.reads_input else None, grad)


def elementwise_rule(x: Tensor, forward: Callable[[Tensor], Tensor],
                     backward_fn: Callable[..., Tensor],
                     reads_input: bool = True, in_place: bool = False,
                     reads_output: bool = False) -> Tensor:
    """Return ``forward(x)`` with the input gradient ``backward_fn(x, grad_output)``.

    The output is computed inside the Function, so it is a fresh tensor that later in-place
    operations may modify. ``reads_input=False`` says ``backward_fn`` ignores ``x`` (it gets
    ``None``). ``in_place`` says ``forward`` overwrites its input: it then gets a copy.
    ``reads_output=True`` says ``backward_fn`` also reads the output:
    ``backward_fn(x, grad_output, forward(x))`` (here ``forward(x)`` is computed anew in the
    backward, so in-place changes of the output downstream do no harm; the fast path keeps it).
    """
    return _ElementwiseRule.apply(x, forward, backward_fn, reads_input, in_place, reads_output)


class _ScaledGradient(torch.autograd.Function):
    """Value ``x`` (a copy), gradient ``factor * grad`` at the rule's level."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x, factor):
        return x.clone()

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.factor = inputs[1]
        record_level(ctx)

    @staticmethod
    def backward(ctx, grad):
        if not ctx.rule_applies:  # the true derivative
            return grad, None
        return scaled(grad, ctx.factor), None


def scaled(grad: Tensor, factor: float | Tensor) -> Tensor:
    """``factor * grad``; a factor of exactly 0 gives zeros (also where ``grad`` is not
    finite), 1 gives ``grad`` itself."""
    if isinstance(factor, Tensor):
        return grad * factor.to(grad.dtype)
    if factor == 0.0:
        return torch.zeros_like(grad)
    return grad if factor == 1.0 else grad * factor


def scale_gradient(x: Tensor, factor: float | Tensor) -> Tensor:
    """Return ``x`` whose gradient is ``factor * grad`` (the transform-safe Function).

    ``factor`` is a number (``0``: the gradient stopped, as CP-LRP holds attention constant)
    or a tensor that broadcasts to ``x`` (e.g. one factor per slice of a packed q/k/v
    projection). Outside :func:`funcattr.core.rules_at_this_level`'s level the gradient is the
    true one, ``grad``, so derivatives of an explanation stay exact.
    :func:`funcattr.core.scale_gradient` chooses between this Function and the fast path.
    """
    return _ScaledGradient.apply(x, factor)
