"""The fast path: every speed-up of the rules, held equal to the reference rule.

Delete this folder and every test still passes (apart from the parity test, which compares
the two paths): :mod:`funcattr.core.rule` imports it optionally and otherwise runs every rule
on the reference path (:mod:`funcattr.core.reference`, the specification). The fast path may
call the reference; the reference never calls the fast path. ``FUNCATTR_REFERENCE=1`` or
:func:`funcattr.core.reference_path` switch it off without deleting it.

- :mod:`.program`: a linear rule compiled into coefficient tables (shared products, inputs
  that are exactly zero skipped, ``f(x; W) + b`` read off the output, ``W = W+ + W-``), once
  per call site, in the site's ``memo``;
- :mod:`.backward`: the tables run, with buffers reused in place when nothing records the
  backward, K stacked output gradients folded into one convolution, Flat's ``f(1; 1)`` kept;
- :mod:`.linear`: dense and convolution layers as ``(forward, input VJP)``;
- :mod:`.eager`: classic-style Functions for plain tensors that avoid copying outputs.

Precision is not traded for speed: no small quantity is computed as the difference of large
ones (``tests/test_parity.py`` compares float32 against float64 on both paths).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import Any

import torch
from torch import Tensor
from torch._C import _functorch

from funcattr.core import functions
from funcattr.core._fast import eager
from funcattr.core._fast.backward import linear_backward
from funcattr.core._fast.eager import scale_gradient
from funcattr.core._fast.linear import LinearOp, linear_op
from funcattr.core._fast.program import Plan
from funcattr.core.call import ModuleCall
from funcattr.core.levels import is_transformed
from funcattr.core.reference import LayerFunction, reference_backward

__all__ = ["elementwise_rule", "linear_rule", "replace_gradient", "scale_gradient"]


def _transformed(*tensors: Tensor | None) -> bool:
    """Whether a ``torch.func`` transform or the compiler sees these tensors (then only the
    transform-safe Functions apply)."""
    return torch.compiler.is_compiling() or (
        _functorch.maybe_current_level() is not None
        and any(is_transformed(t) for t in tensors if t is not None)
    ) or any(_functorch.is_legacy_batchedtensor(t) for t in tensors if t is not None)


def _plan(rule: Any, memo: dict) -> Plan:
    """The call site's plan of ``rule`` (built on first use; a site has one rule)."""
    cached = memo.get("plan")
    if cached is None or cached[0] is not rule:
        cached = memo["plan"] = (rule, Plan(rule.groups(), rule.stabilizer_fn(), rule.zeroed()))
    return cached[1]


def _linear_op(call: ModuleCall, args: tuple, kwargs: Mapping[str, Any]) -> LinearOp | None:
    if args or kwargs:
        return None
    if "linear op" not in call.memo:
        call.memo["linear op"] = linear_op(call, (), {})
    return call.memo["linear op"]


def _site(memo: dict) -> eager.CallSite:
    site = memo.get("call site")
    if site is None:
        site = memo["call site"] = eager.CallSite()
    return site


def _recompute_linear(op: LinearOp, x: Tensor, tensors: Sequence[Tensor]) -> Tensor:
    weight, bias = tensors
    return op.forward(x, weight, bias)


def _recompute_layer(layer: LayerFunction, x: Tensor, tensors: Sequence[Tensor]) -> Tensor:
    return layer(x, dict(zip(layer.names, tensors, strict=True)))


def linear_rule(rule: Any, call: ModuleCall, x: Tensor, output: Tensor, args: tuple,
                kwargs: Mapping[str, Any]) -> Tensor | None:
    """``output`` with the gradient of the linear rule ``rule``, or ``None`` where the fast
    path adds nothing to the reference rule (other modules under a transform)."""
    plan = _plan(rule, call.memo)
    op = _linear_op(call, args, kwargs)
    if op is None:  # the reference rule, without copying the output
        if _transformed(x, output):
            return None
        layer, params = LayerFunction.of(call, args, kwargs)
        backward = reference_backward(plan.groups, plan.stabilizer, plan.zero_params, layer)
        return eager.modified_gradient(
            x, output, backward, *params, recompute=partial(_recompute_layer, layer),
            site=_site(call.memo), keep_output=any(group.gate for group in plan.groups))
    weight, bias = op.module.weight, op.module.bias
    backward = partial(linear_backward, plan, op, call.memo)
    if _transformed(x, output, weight, bias):
        return functions.modified_gradient(x, output, backward, weight, bias)
    return eager.modified_gradient(
        x, output, backward, weight, bias, recompute=partial(_recompute_linear, op),
        site=_site(call.memo), keep_output=plan.uses_output(bias is not None))


def elementwise_rule(x: Tensor, forward: Callable[[Tensor], Tensor],
                     backward_fn: Callable[..., Tensor],
                     reads_input: bool, in_place: bool, reads_output: bool = False) -> Tensor:
    """An element-wise rule: the eager Function for plain tensors, else the transform-safe
    one."""
    if torch.compiler.is_compiling() or is_transformed(x):
        return functions.elementwise_rule(x, forward, backward_fn, reads_input, in_place,
                                          reads_output)
    return eager.elementwise_rule(x, forward, backward_fn, reads_input, in_place, reads_output)


def _no_recompute(x: Tensor, tensors: Sequence[Tensor]) -> Tensor:  # pragma: no cover
    raise AssertionError("replace_gradient keeps no output, so it never recomputes one")


def replace_gradient(x: Tensor, y: Tensor, backward: Callable, *tensors: Tensor | None
                     ) -> Tensor:
    """``y`` with the gradient ``backward(x, None, tensors, grad)``: the eager Function
    without a copy of ``y`` for plain tensors, else the transform-safe one."""
    if _transformed(x, y, *tensors):
        return functions.modified_gradient(
            x, y, lambda x, y, tensors, grad: backward(x, None, tensors, grad), *tensors)
    return eager.modified_gradient(x, y, backward, *tensors, recompute=_no_recompute,
                                   site=eager.CallSite(), keep_output=False)
