"""One forward pass, then output gradient -> attribution: :func:`pullback` and :func:`gradient`.

Several output gradients cost one forward pass: ``torch.func.vmap(pull)(stacked)``. Outside
``torch.func`` transforms and when nothing differentiates the attribution, the pullback runs on
plain autograd (no transform overhead, no graph of the backward); otherwise on
``torch.func.vjp``, where rules act at this pullback's level only.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch import Tensor

from funcattr.attribution.options import check_input, shown
from funcattr.attribution.targets import AttrOutput, as_attr_output_fn, output_gradient
from funcattr.core import is_differentiated, is_transformed, rules_at_this_level

__all__ = [
    "Params",
    "autograd_pullback",
    "call_model",
    "gradient",
    "needs_transforms",
    "pullback",
    "vjp_pullback",
]

Params = Mapping[str, Tensor]


def call_model(fn: Callable, params: Params, input: Tensor, owner: str) -> Tensor:
    """``fn(params, input)``; a shape mistake becomes a ``ValueError`` naming ``input``."""
    try:
        return fn(params, input)
    except (RuntimeError, ValueError) as error:
        text = str(error)
        torch_shape_error = isinstance(error, RuntimeError) and ("shape" in text or "size" in text)
        if not torch_shape_error and "D input (got" not in text:  # e.g. BatchNorm's ValueError
            raise
        raise ValueError(
            f"{owner}(input={shown(input)}): the model could not process an input of this "
            f"shape; expected the shape it takes, got the error {text.splitlines()[0]!r}. Pass "
            f"an input shaped as the model expects, with the batch dimension first."
        ) from error


def needs_transforms(input: Tensor, params: Params) -> bool:
    """Whether the pullback must run on ``torch.func.vjp`` (a transform is active, or someone
    differentiates the attribution) rather than on plain autograd."""
    values = [input, *params.values()]
    return is_differentiated(values) or any(is_transformed(value) for value in values)


def pullback(fn: Callable, params: Params, input: Tensor, *,
             owner: str = "pullback") -> tuple[Tensor, Callable[[Tensor], Tensor]]:
    """Run ``fn(params, input)`` once; return the output and ``output gradient -> attribution``.

    Several output gradients cost one forward pass: ``torch.func.vmap(pull)(stacked)``.
    ``pull(output_grad, last=True)`` says no call follows: the backward then frees the
    forward's graph as it goes, which saves memory and time.

    Parameters
    ----------
    fn, params, input
        As in :func:`gradient`.
    owner : str
        The name error messages give the call (a caller's own name).

    Returns
    -------
    output : Tensor
        ``fn(params, input)``.
    pull : callable
        ``pull(output_grad, last=False) -> attribution`` shaped like ``input``.
    """
    check_input(input, owner)
    if needs_transforms(input, params):
        return vjp_pullback(fn, params, input, owner)
    return autograd_pullback(fn, params, input, owner)


def autograd_pullback(fn: Callable, params: Params, input: Tensor, owner: str):
    """:func:`pullback` on plain autograd; ``pull`` also takes ``stacked=True``: one batched
    backward for output gradients stacked in the first dimension."""
    leaf = input.detach().requires_grad_(True)
    with torch.enable_grad(), rules_at_this_level():
        output = call_model(fn, params, leaf, owner)

    def pull(output_grad: Tensor, stacked: bool = False, last: bool = False) -> Tensor:
        """The attribution for ``output_grad``; with ``stacked``, for each of the output
        gradients stacked in its first dimension, as one batched backward. ``last``: no
        further call follows, so the backward frees the graph as it goes (and its memory is
        reused at once, which is faster)."""
        shape = (*output_grad.shape[:1], *input.shape) if stacked else input.shape
        if not output.requires_grad:  # the output does not depend on the input
            return input.new_zeros(shape)
        if stacked:
            grad = torch.func.vmap(lambda one: torch.autograd.grad(
                output, leaf, one, retain_graph=not last, allow_unused=True)[0])(output_grad)
        else:
            (grad,) = torch.autograd.grad(output, leaf, output_grad, retain_graph=not last,
                                          allow_unused=True)
        return input.new_zeros(shape) if grad is None else grad

    return output.detach(), pull


def vjp_pullback(fn: Callable, params: Params, input: Tensor, owner: str):
    """:func:`pullback` on ``torch.func.vjp`` (under transforms or when differentiated)."""
    differentiated = is_differentiated([input, *params.values()])

    def model(x: Tensor) -> Tensor:
        with rules_at_this_level():
            return call_model(fn, params, x, owner)

    output, vjp_fn = torch.func.vjp(model, input)

    def pull(output_grad: Tensor, last: bool = False) -> Tensor:
        if differentiated or is_differentiated([output_grad]):
            return vjp_fn(output_grad)[0]
        with torch.no_grad():  # nobody differentiates the attribution: record no graph
            return vjp_fn(output_grad)[0]

    return output, pull


def gradient(fn: Callable, params: Params, input: Tensor,
             attr_output_fn: AttrOutput = None) -> tuple[Tensor, Tensor]:
    """The (rule-modified) gradient of ``fn(params, input)`` pulled back from the output.

    Parameters
    ----------
    fn : callable
        ``fn(params, input) -> output``, e.g. from :func:`funcattr.functionalize`.
    params : dict of str to Tensor
        The parameters passed to ``fn``.
    input : Tensor
        The input, batch dimension first.
    attr_output_fn : callable, tensor or None
        The output gradient: ``None`` for the output itself, a tensor, or ``output -> tensor``
        such as :func:`one_hot`.

    Returns
    -------
    output : Tensor
        ``fn(params, input)``.
    attribution : Tensor
        Shaped like ``input``.

    Examples
    --------
    >>> fn, params = functionalize(model, EpsilonPlusFlat())              # doctest: +SKIP
    >>> output, relevance = gradient(fn, params, x, one_hot(3, times_output=True))  # doctest: +SKIP
    """
    attr_output_fn = as_attr_output_fn(attr_output_fn, "gradient")
    output, pull = pullback(fn, params, input, owner="gradient")
    seed = output_gradient(output, attr_output_fn, "gradient")
    return output, pull(seed, last=True)
