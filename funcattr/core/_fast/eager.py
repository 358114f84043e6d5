"""Classic-style autograd Functions for plain tensors: the rule's output without a copy.

The transform-safe Functions (:mod:`funcattr.core.functions`) copy the module's output (the
saved output must survive in-place operations downstream) and the input of an in-place
activation. When no transform is active these copies can mostly be avoided:

- :func:`modified_gradient`: the output is an alias of ``y``. A backward that never reads
  ``y`` keeps nothing; otherwise, if something downstream changes the output in place (a
  functional ``out += identity``), the backward computes ``y`` anew, and the call site
  remembers to copy ``y`` from then on;
- :func:`elementwise_rule`: a rule that never reads its input lets an in-place forward
  (``ReLU(inplace=True)``) overwrite it, as in the original model; a rule that reads its
  output keeps it as an alias (computed anew if something changed it in place);
- :func:`scale_gradient`: ``x.detach()`` for a stopped gradient and a view with a gradient
  hook otherwise, where the rule's level is the only differentiation of ``x`` (no copy, and a
  stopped branch is never back-propagated).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from torch import Tensor
from torch._C import _functorch

from funcattr.core import functions
from funcattr.core.functions import elementwise_backward, out_of_place
from funcattr.core.levels import is_transformed, only_rule_level, record_level

__all__ = ["CallSite", "elementwise_rule", "modified_gradient", "scale_gradient"]


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
    """Value ``forward(x)``, input gradient ``backward_fn(x or None, grad[, output])``."""

    @staticmethod
    def forward(ctx, x, forward, backward_fn, reads_input, in_place, reads_output):
        ctx.forward = out_of_place(forward, in_place) if in_place else forward
        ctx.backward_fn, ctx.reads_input, ctx.reads_output = backward_fn, reads_input, reads_output
        record_level(ctx)
        if (in_place and not reads_input and not reads_output and ctx.rule_applies
                and _may_overwrite(x)):
            y = forward(x)
            if y is x:
                ctx.save_for_backward(None)
                ctx.mark_dirty(x)
                return x
        else:
            y = ctx.forward(x)
        ctx.save_for_backward(x)
        if y is x or y._base is x or x._base is y:  # funcattr.core.functions.fresh, inline
            y = y.clone()
        if reads_output:  # an alias; the backward computes it anew if it changed in place
            ctx.kept_output = y.detach()
            ctx.output_version = y._version
        return y

    @staticmethod
    def backward(ctx, grad):
        output = getattr(ctx, "kept_output", None)
        if output is not None and (output._version != ctx.output_version
                                   or torch.is_grad_enabled()):
            output = None  # changed in place downstream, or create_graph: compute it anew
        return elementwise_backward(ctx, grad, output), None, None, None, None, None


def _may_overwrite(x: Tensor) -> bool:
    """Whether autograd lets a custom Function overwrite ``x`` (not a leaf that needs a
    gradient, not a view)."""
    return not (x.requires_grad and x.is_leaf) and x._base is None


def elementwise_rule(x: Tensor, forward: Callable[[Tensor], Tensor],
                     backward_fn: Callable[..., Tensor],
                     reads_input: bool = True, in_place: bool = False,
                     reads_output: bool = False) -> Tensor:
    """:func:`funcattr.core.functions.elementwise_rule` for plain tensors (see the module
    docstring)."""
    return _EagerElementwiseRule.apply(x, forward, backward_fn, reads_input, in_place,
                                       reads_output)


def scale_gradient(x: Tensor, factor: float | Tensor, fresh: bool = False) -> Tensor:
    """:func:`funcattr.core.functions.scale_gradient` without a copy where the rule's level is
    the only differentiation of ``x``: ``x.detach()`` for a factor of 0 (the stopped branch is
    never back-propagated), ``x`` for 1, else a view of ``x`` whose gradient hook scales (``x``
    itself where it is ``fresh``: nothing else holds it, so no other use is scaled).
    Elsewhere (another level differentiates ``x``) the transform-safe Function.

    Plain autograd (no transform active, nothing compiling) is checked first: it is the only
    level there is, so none of the per-level checks are needed (AttnLRP calls this three
    times per attention layer).
    """
    plain = _functorch.maybe_current_level() is None and not torch.compiler.is_compiling()
    if not plain and not only_rule_level(x):
        return functions.scale_gradient(x, factor)
    number = not isinstance(factor, Tensor)
    if number and factor == 0.0:
        return x.detach()
    if number and factor == 1.0:
        return x
    if not plain and is_transformed(x):  # a hook cannot see the level: the Function
        return functions.scale_gradient(x, factor)
    if not (x.requires_grad and torch.is_grad_enabled()):
        return x
    view = x if fresh and not x.is_leaf else x.view_as(x)
    # torch.mul itself as the hook: no Python frame per backward
    view.register_hook(partial(torch.mul, other=factor if number else factor.to(x.dtype)))
    return view
