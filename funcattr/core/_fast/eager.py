"""Classic-style autograd Functions for plain tensors: the rule's output without a copy.

The transform-safe Functions (:mod:`funcattr.core.functions`) copy the module's output (the
saved output must survive in-place operations downstream) and the input of an in-place
activation. When no transform is active these copies can mostly be avoided:

- :func:`modified_gradient`: the output is an alias of ``y``. A backward that never reads
  ``y`` keeps nothing; otherwise, if something downstream changes the output in place (a
  functional ``out += identity``), the backward computes ``y`` anew, and the call site
  remembers to copy ``y`` from then on;
- :func:`elementwise_rule`: a rule that never reads its input lets an in-place forward
  (``ReLU(inplace=True)``) overwrite it, as in the original model.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from funcattr.core.functions import elementwise_backward, fresh, out_of_place
from funcattr.core.levels import record_level

__all__ = ["CallSite", "elementwise_rule", "modified_gradient"]


class CallSite:
    """What a call site has learnt: whether its output was changed in place downstream."""

    output_changed = False


@dataclass(frozen=True)
class _OutputPolicy:
    keep_output: bool
    recompute: Callable[[Tensor, Sequence[Tensor]], Tensor]
    site: CallSite


def _backward(ctx: Any, grad: Tensor) -> tuple:
    unused = (None,) * (2 + ctx.count)
    if not ctx.rule_applies:  # the true derivative, through the ordinary output y
        return (None, grad, *unused)
    x, y, *tensors = ctx.saved_tensors
    output = getattr(ctx, "kept_output", None)
    if output is not None:  # the output was kept as an alias
        policy = ctx.policy
        if output._version != ctx.output_version:  # changed in place downstream: anew
            policy.site.output_changed = True
            y = policy.recompute(x, tensors)
        elif torch.is_grad_enabled():  # create_graph: y must carry its dependence on x, W
            y = policy.recompute(x, tensors)
        else:
            y = output
    return (ctx.backward(x, y, tuple(tensors), grad), None, *unused)


class _EagerModifiedGradient(torch.autograd.Function):
    """Value ``y`` (an alias unless the site learnt otherwise), gradient ``backward``."""

    @staticmethod
    def forward(ctx, x, y, backward, policy, *tensors):
        ctx.backward, ctx.count = backward, len(tensors)
        record_level(ctx)
        if policy.site.output_changed:
            ctx.save_for_backward(x, y, *tensors)
            return y.clone()
        ctx.save_for_backward(x, None, *tensors)
        if policy.keep_output:
            ctx.kept_output, ctx.output_version, ctx.policy = y.detach(), y._version, policy
        return y.detach()

    backward = staticmethod(_backward)


def modified_gradient(x: Tensor, y: Tensor, backward: Callable, *tensors: Tensor | None,
                      recompute: Callable[[Tensor, Sequence[Tensor]], Tensor], site: CallSite,
                      keep_output: bool = True) -> Tensor:
    """:func:`funcattr.core.functions.modified_gradient` for plain tensors, without copying
    ``y``: ``recompute(x, tensors)`` computes ``y`` again, ``site`` remembers whether the
    output was changed in place before, ``keep_output=False`` says ``backward`` ignores ``y``
    (it gets ``None``)."""
    return _EagerModifiedGradient.apply(
        x, y, backward, _OutputPolicy(keep_output, recompute, site), *tensors)


class _EagerElementwiseRule(torch.autograd.Function):
    """Value ``forward(x)``, input gradient ``backward_fn(x or None, grad)``."""

    @staticmethod
    def forward(ctx, x, forward, backward_fn, reads_input, in_place):
        ctx.forward, ctx.backward_fn = out_of_place(forward, in_place), backward_fn
        ctx.reads_input = reads_input
        record_level(ctx)
        if in_place and not reads_input and ctx.rule_applies and _may_overwrite(x):
            y = forward(x)
            if y is x:
                ctx.save_for_backward(None)
                ctx.mark_dirty(x)
                return x
        else:
            y = ctx.forward(x)
        ctx.save_for_backward(x)
        return fresh(y, x)

    @staticmethod
    def backward(ctx, grad):
        return elementwise_backward(ctx, grad), None, None, None, None


def _may_overwrite(x: Tensor) -> bool:
    """Whether autograd lets a custom Function overwrite ``x`` (not a leaf that needs a
    gradient, not a view)."""
    return not (x.requires_grad and x.is_leaf) and x._base is None


def elementwise_rule(x: Tensor, forward: Callable[[Tensor], Tensor],
                     backward_fn: Callable[[Tensor | None, Tensor], Tensor],
                     reads_input: bool = True, in_place: bool = False) -> Tensor:
    """:func:`funcattr.core.functions.elementwise_rule` for plain tensors (see the module
    docstring)."""
    return _EagerElementwiseRule.apply(x, forward, backward_fn, reads_input, in_place)
