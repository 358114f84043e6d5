"""The reference implementation of the general LRP rule: the specification of every LRP rule.

Zennit's ``BasicHook`` in the paper's four steps, for any module ``f``. A rule lists groups
``G`` of terms ``k``; a term is a modified copy of the layer ``sign_k * f(in_k(x); theta_k)``
(an input modifier, a parameter modifier, parameters set to zero, a sign); a group has a
weight and may gate on the sign of the layer's ordinary output ``y``. With ``R`` the relevance
(the gradient) arriving at the output::

    z_G = sum_{k in G} sign_k * f(in_k(x); theta_k)                 # 1. one forward per term
    s_G = gate_G(y) * R / stabilizer(z_G)   (0 / 0 = 0)             # 2. divide
    c_k = (d f(u; theta_k) / d u |_{u = in_k(x)})^T s_G             # 3. one input VJP per term
    relevance = sum_G weight_G sum_{k in G} sign_k * in_k(x) * c_k  # 4. multiply by the input

Each term's forward runs the module itself (``torch.func.functional_call`` with the modified
parameters), each input VJP comes from the layer's registered closed form
(:func:`funcattr.layer.find_input_vjp`) or else ``torch.func.vjp``. Nothing here is clever:
no in-place work, no sharing between terms, no reading of one term off another. The fast
path (:mod:`funcattr.core._fast`) must give the same numbers; a parity test holds it to that.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from torch import Tensor

from funcattr.core.call import ModuleCall
from funcattr.core.functions import Backward, modified_gradient
from funcattr.core.levels import add_batch_dim, stacked_grads
from funcattr.core.terms import Group, Term, apply_input_mod, divide, may_vanish
from funcattr.layer import InputVJP

__all__ = ["LayerFunction", "lrp_backward", "reference_backward", "reference_rule"]


@dataclass(frozen=True, eq=False)
class LayerFunction:
    """One module call as a function of its input and its own parameters, ``f(u; theta)``.

    The other arguments of the call and the module's buffers stay as they were; ``names``
    are the module's own parameters (what a rule modifies); ``vjp`` is the layer's registered
    closed-form input VJP, if any.
    """

    call: ModuleCall
    names: tuple[str, ...]
    buffers: Mapping[str, Tensor]
    args: tuple
    kwargs: Mapping[str, Any]
    vjp: InputVJP | None

    @classmethod
    def of(cls, call: ModuleCall, args: tuple, kwargs: Mapping[str, Any]
           ) -> tuple[LayerFunction, tuple[Tensor, ...]]:
        """The function of ``call(x, *args, **kwargs)`` and its parameters' current values."""
        state = call.state()
        names = tuple(name for name in call.module._parameters if name in state)
        buffers = {name: value for name, value in state.items() if name not in names}
        layer = cls(call, names, buffers, args, kwargs, call.input_vjp(args, kwargs))
        return layer, tuple(state[name] for name in names)

    def __call__(self, u: Tensor, params: Mapping[str, Tensor]) -> Tensor:
        """``f(u; params)``."""
        return self.call.with_state({**self.buffers, **params}, u, *self.args, **self.kwargs)

    def input_vjp(self, u: Tensor, params: Mapping[str, Tensor], grad: Tensor) -> Tensor:
        """``(d f(u; params) / d u)^T grad``."""
        if self.vjp is not None:
            return self.vjp(self.call.module, {**self.buffers, **params}, grad, u, *self.args,
                            **self.kwargs)
        try:
            return torch.func.vjp(lambda v: self(v, params), u)[1](grad)[0]
        except RuntimeError as error:  # torch 2.14 under vmap over samples or torch.func.grad
            kind = type(self.call.module).__name__
            error.add_note(
                f"funcattr: the rule on {self.call.where()} pulls back through "
                f"torch.func.vjp, which torch cannot run inside a rule's backward under every "
                f"transform. Register the layer's input VJP in closed form: "
                f"@funcattr.layer.register_input_vjp({kind}) (see docs/rules.md).")
            raise


def _term_params(term: Term, params: Mapping[str, Tensor], zeroed: tuple[str, ...]
                 ) -> dict[str, Tensor]:
    """``theta_k``: the term's parameter modifier on every parameter, zero where zeroed."""
    zeroed = (*term.zero, *zeroed)
    return {name: torch.zeros_like(value) if name in zeroed else term.param_mod(value, name)
            for name, value in params.items()}


def _gate(group: Group, y: Tensor, s: Tensor) -> Tensor:
    if group.gate is None:
        return s
    keep = y > 0 if group.gate == "positive" else y < 0
    return torch.where(keep, s, 0.0)


def _times(factor: float, tensor: Tensor) -> Tensor:
    return tensor if factor == 1.0 else factor * tensor


def _plus(total: Tensor | None, tensor: Tensor) -> Tensor:
    return tensor if total is None else total + tensor


def lrp_backward(groups: Sequence[Group], stabilizer: Callable[[Tensor], Tensor],
                 zero_params: tuple[str, ...], layer: LayerFunction, x: Tensor,
                 y: Tensor | None, params: Sequence[Tensor], grad: Tensor) -> Tensor:
    """The relevance at the input of one module call (see the module docstring).

    Parameters
    ----------
    groups, stabilizer, zero_params
        The rule: its groups of terms, its stabiliser, the parameters every term zeroes.
    layer : LayerFunction
        ``f(u; theta)`` of this call.
    x, y : Tensor
        The call's input and ordinary output (``y`` is read only by gates).
    params : sequence of Tensor
        The module's parameters in the order of ``layer.names``.
    grad : Tensor
        The relevance arriving at the output (shaped like ``y``).
    """
    named = dict(zip(layer.names, params, strict=True))
    relevance = None
    for group in groups:
        inputs = [apply_input_mod(term.input, x) for term in group.terms]
        thetas = [_term_params(term, named, zero_params) for term in group.terms]
        # 1. z: the group's denominator, one forward per term
        z = None
        for term, u, theta in zip(group.terms, inputs, thetas, strict=True):
            z = _plus(z, _times(term.sign, layer(u, theta)))
        if z is None:  # a group without terms
            continue
        # 2. s: the relevance divided by the stabilised denominator, where the gate is open
        # (0 where the denominator is exactly 0: see terms.divide)
        denominator = stabilizer(z)
        s = _gate(group, y, divide(grad, denominator) if may_vanish(stabilizer)
                  else grad / denominator)
        for term, u, theta in zip(group.terms, inputs, thetas, strict=True):
            # 3. c: one input VJP per term
            c = layer.input_vjp(u, theta, s)
            # 4. the relevance: the modified input times c (c itself for the input of ones),
            # signed and weighted
            contribution = c if term.input == "ones" else u * c
            relevance = _plus(relevance, _times(group.weight * term.sign, contribution))
    return torch.zeros_like(x) if relevance is None else relevance


def _backward(groups: tuple[Group, ...], stabilizer: Callable[[Tensor], Tensor],
              zero_params: tuple[str, ...], layer: LayerFunction, x: Tensor, y: Tensor | None,
              params: tuple[Tensor, ...], grad: Tensor) -> Tensor:
    """:func:`lrp_backward` as a :data:`~funcattr.core.functions.Backward`.

    ``torch.func.vjp`` inside a Function's backward does not batch in torch 2.14: under a
    ``vmap`` over output gradients only (several targets at once), a layer without a closed
    form input VJP takes the K gradients one after another.
    """
    stacked = None if layer.vjp is not None else stacked_grads(grad, (x, y, *params))
    if stacked is not None:
        grads, level = stacked
        rows = [lrp_backward(groups, stabilizer, zero_params, layer, x, y, params, g)
                for g in grads]
        return add_batch_dim(torch.stack(rows), level)
    return lrp_backward(groups, stabilizer, zero_params, layer, x, y, params, grad)


def reference_backward(groups: tuple[Group, ...], stabilizer: Callable[[Tensor], Tensor],
                       zero_params: tuple[str, ...], layer: LayerFunction) -> Backward:
    """The reference rule as ``backward(x, y, params, grad)`` for
    :func:`~funcattr.core.functions.modified_gradient`."""
    return partial(_backward, groups, stabilizer, zero_params, layer)


def reference_rule(groups: tuple[Group, ...], stabilizer: Callable[[Tensor], Tensor],
                   zero_params: tuple[str, ...], call: ModuleCall, x: Tensor, output: Tensor,
                   args: tuple, kwargs: Mapping[str, Any]) -> Tensor:
    """``output`` of ``call(x, *args, **kwargs)`` whose gradient is the reference rule's."""
    layer, params = LayerFunction.of(call, args, kwargs)
    backward = reference_backward(groups, stabilizer, zero_params, layer)
    return modified_gradient(x, output, backward, *params)
