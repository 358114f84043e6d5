"""The fast LRP backward of a linear layer: a :class:`~funcattr.core._fast.program.Program` run.

It computes what :func:`funcattr.core.reference.lrp_backward` computes, from shared products
(see :mod:`funcattr.core._fast.program`), reusing buffers in place when nothing records the
backward, and folding K stacked output gradients into one convolution.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from typing import Any

import torch
from torch import Tensor

from funcattr.core._fast.linear import LinearOp
from funcattr.core._fast.program import GroupProgram, Plan
from funcattr.core.levels import add_batch_dim, concrete_value, is_batched, stacked_grads
from funcattr.core.terms import (
    Group,
    Stabilizer,
    apply_input_mod,
    apply_param_primitive,
    divide,
    may_vanish,
)

__all__ = ["linear_backward"]


def linear_backward(plan: Plan, op: LinearOp, memo: dict, x: Tensor, y: Tensor | None,
                    tensors: tuple[Tensor, Tensor | None], grad: Tensor) -> Tensor:
    """The relevance at the input of a linear layer ``y = f(x; W) + b``.

    Under a ``vmap`` over output gradients only (the layer's tensors unbatched), the products
    are computed once and all gradients go through one folded convolution, not op-by-op
    batching rules. ``memo`` is the call site's (it keeps Flat's ``f(1; 1)``).
    """
    weight, bias = tensors
    stacked = stacked_grads(grad, (x, y, weight, bias))
    if stacked is not None:
        grads, level = stacked
        return add_batch_dim(_relevance(plan, op, memo, x, y, weight, bias, grads), level)
    return _relevance(plan, op, memo, x, y, weight, bias, grad)


def _input_sign(x: Tensor) -> str | None:
    """``'nonnegative'`` / ``'nonpositive'`` when ``x`` provably is, else ``None``."""
    plain = concrete_value(x)
    if plain is None or plain.numel() == 0:
        return None
    low, high = torch.aminmax(plain)
    if bool(low >= 0):
        return "nonnegative"
    if bool(high <= 0):
        return "nonpositive"
    return None


def _relevance(plan: Plan, op: LinearOp, memo: dict, x: Tensor, y: Tensor | None,
               weight: Tensor, bias: Tensor | None, grad: Tensor) -> Tensor:
    """:func:`linear_backward`; ``grad`` is shaped like ``y`` or stacks K of them."""
    # nothing records this backward and no transform batches it: reuse buffers in place
    inplace = (not torch.is_grad_enabled() and not torch.compiler.is_compiling()
               and not any(is_batched(t) for t in (x, y, grad) if t is not None))
    program = plan.program(_input_sign(x) if plan.splits_sign else None, bias is not None)
    weights: dict[Any, Tensor] = {}
    inputs: dict[Hashable, Tensor] = {}
    products: dict[tuple[Hashable, Any], Tensor] = {}

    def weight_of(primitive: Any) -> Tensor:
        if primitive not in weights:
            weights[primitive] = apply_param_primitive(primitive, weight, "weight")
        return weights[primitive]

    def input_of(key: Hashable) -> Tensor:
        if key not in inputs:
            inputs[key] = apply_input_mod(key, x)
        return inputs[key]

    def product(key: Hashable, primitive: Any) -> tuple[Tensor, bool]:
        """``f(key(x); primitive(W))`` (with a folded bias) and whether it is shared."""
        if (key, primitive) not in products:
            folded = program.folded.get((key, primitive))
            if (key, primitive) == ("ones", "ones") and folded is None and inplace:
                return _ones_product(op, memo, x, weight), True
            products[key, primitive] = op.forward(
                input_of(key), weight_of(primitive),
                None if folded is None else apply_param_primitive(folded, bias, "bias"))
        return products[key, primitive], False

    # 1. z of every group from the shared products; 2. the quotients
    quotients = []
    for group, group_program in zip(plan.groups, program.groups, strict=True):
        z, owned = _denominator(group_program, op, y, bias, grad, product, inplace)
        quotients.append(_gated(plan, group, y, grad, z, inplace,
                                nonnegative=group_program.nonnegative, owned=owned))

    # 3. one VJP per (input, primitive), with output gradients sum_G weight_G c_G s_G
    relevance = None
    for key, primitives in program.vjps:
        vjp = None
        for primitive, uses in primitives:
            output_grad, _ = _lincomb(((quotients[index], c, False) for index, c in uses),
                                      inplace)
            term = op.input_vjp(output_grad, weight_of(primitive), x)
            vjp = term if vjp is None else (vjp.add_(term) if inplace else vjp + term)
        if vjp is None:
            continue
        # 4. multiply by the (modified) input
        if key != "ones":
            vjp = vjp.mul_(input_of(key)) if inplace else input_of(key) * vjp
        relevance = vjp if relevance is None else (
            relevance.add_(vjp) if inplace else relevance + vjp)
    if relevance is None:
        return x.new_zeros(grad.shape[:grad.ndim - x.ndim] + x.shape)
    return relevance


def _denominator(group: GroupProgram, op: LinearOp, y: Tensor | None, bias: Tensor | None,
                 grad: Tensor, product: Any, inplace: bool) -> tuple[Tensor | None, bool]:
    """``z`` of one group and whether this backward owns it (may overwrite it)."""
    items = [(y, group.output, False)] if group.output else []
    for key, primitive, c in group.products:
        tensor, shared = product(key, primitive)
        items.append((tensor, c, not shared and (key, primitive) in group.private))
    z, owned = _lincomb(items, inplace)
    if group.biases:
        bias_total, _ = _lincomb(((apply_param_primitive(primitive, bias, "bias"), c, False)
                                  for primitive, c in group.biases), False)
        bias_total = op.bias_view(bias_total)
        if z is None:
            z, owned = bias_total.expand_as(grad), False
        elif inplace and owned:
            z.add_(bias_total)
        else:
            z, owned = z + bias_total, True
    return z, owned


def _lincomb(items: Iterable[tuple[Tensor, float, bool]], inplace: bool
             ) -> tuple[Tensor | None, bool]:
    """``sum_i c_i t_i`` with one fused pass per term (``torch.add(..., alpha=c)``) and
    whether the result may be overwritten. ``items`` are ``(t_i, c_i, mine_i)``: ``mine``
    says this backward made ``t_i`` and nobody else reads it. With ``inplace`` (no graph
    recorded) the sum is accumulated in the first buffer it allocates or owns."""
    total, owned = None, False
    for tensor, coefficient, mine in items:
        if coefficient == 0.0:
            continue
        if total is None:
            if coefficient == 1.0:
                total, owned = tensor, mine
            else:
                total, owned = tensor * coefficient, True
        elif inplace and owned:
            total.add_(tensor, alpha=coefficient)
        else:
            total, owned = torch.add(total, tensor, alpha=coefficient), True
    return total, owned


def _quotient(plan: Plan, z: Tensor, grad: Tensor, inplace: bool, nonnegative: bool,
              owned: bool) -> Tensor:
    """``grad / stabilizer(z)``; the default stabilizer runs in place when no graph is recorded
    (in ``z`` itself if this backward ``owned`` it; ``nonnegative``: ``z >= 0`` for sure). A
    stabilizer that may give exactly zero divides as the reference does (0 / 0 = 0)."""
    stabilizer = plan.stabilizer
    if may_vanish(stabilizer):
        return divide(grad, stabilizer(z))
    if (inplace and type(stabilizer) is Stabilizer and not stabilizer.clip
            and not stabilizer.norm_scale):
        if nonnegative:  # z >= 0 (also -0): the stabiliser adds +eps everywhere
            denominator = z.add_(stabilizer.epsilon) if owned else z + stabilizer.epsilon
        else:  # sign(z) + 1/2 has the sign of z and is positive at +-0: z + eps (z >= 0), z - eps
            denominator = torch.sign(z).add_(0.5).sign_()
            torch.add(z, denominator, alpha=stabilizer.epsilon, out=denominator)
        if denominator.shape != grad.shape:  # K stacked gradients share one denominator
            return grad / denominator
        return torch.div(grad, denominator, out=denominator)
    return grad / stabilizer(z)


def _gated(plan: Plan, group: Group, y: Tensor | None, grad: Tensor, z: Tensor | None,
           inplace: bool, nonnegative: bool, owned: bool) -> Tensor:
    """Step 2 of the rule for one group: ``gate * R / stabilizer(z)`` (``y``: the layer's
    output, needed only for a gate)."""
    if z is None:
        z, nonnegative, owned = torch.zeros_like(grad), True, True
    quotient = _quotient(plan, z, grad, inplace, nonnegative, owned)
    if group.gate is None:
        return quotient
    keep = y > 0 if group.gate == "positive" else y < 0
    if inplace:  # the quotient is finite (stabilised): zeroing equals multiplying by the mask
        return quotient.masked_fill_(keep.logical_not_(), 0.0)
    return torch.where(keep, quotient, 0.0)


def _ones_product(op: LinearOp, memo: dict, x: Tensor, weight: Tensor) -> Tensor:
    """``f(1; 1)`` (Flat's denominator, the receptive field sizes): it depends only on shapes,
    so the call site remembers the last one. Callers must not modify it."""
    key = (x.shape, x.dtype, x.device, weight.shape)
    cached = memo.get("ones product")
    if cached is None or cached[0] != key:
        cached = memo["ones product"] = (key, op.forward(torch.ones_like(x),
                                                         torch.ones_like(weight)))
    return cached[1]
