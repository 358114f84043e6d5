"""One forward pass, then output gradient -> attribution: :func:`pullback` and :func:`gradient`.

Several output gradients cost one forward pass: ``torch.func.vmap(pull)(stacked)``. Outside
``torch.func`` transforms and when nothing differentiates the attribution, the pullback runs on
plain autograd (no transform overhead, no graph of the backward); otherwise on
``torch.func.vjp``, where rules act at this pullback's level only.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from funcattr.attribution.options import check_input, check_params, shown
from funcattr.attribution.targets import AttrOutput, as_attr_output_fn, output_gradient
from funcattr.core import (
    is_differentiated,
    is_transformed,
    no_transform_active,
    reference_path,
    rules_at_this_level,
    uses_reference,
)

__all__ = [
    "Params",
    "SelectedOutput",
    "autograd_pullback",
    "call_model",
    "check_output",
    "checked_pullback",
    "gradient",
    "needs_transforms",
    "pullback",
    "select_output",
    "usable_input",
    "vjp_pullback",
]

Params = Mapping[str, Tensor]

_PICK = ("Pick the output to explain with fn = funcattr.attribution.select_output(fn, 0) for "
         "a tuple or select_output(fn, 'logits') for a dict or an object with that attribute "
         "(or make the model return one tensor)")


def _described(output: Any) -> str:
    if isinstance(output, Mapping):
        return f"a {type(output).__name__} with keys {list(output)[:8]}"
    if isinstance(output, tuple | list):
        inner = ", ".join(f"Tensor{tuple(item.shape)}" if isinstance(item, Tensor)
                          else type(item).__name__ for item in output[:4])
        return f"a {type(output).__name__} of {len(output)} ({inner}{', ...' * (len(output) > 4)})"
    return type(output).__name__


def check_output(output: Any, owner: str, argument: str = "fn") -> Tensor:
    """The model's output, which the attributors and metrics need as one tensor;
    ``argument`` names the model in the caller's signature."""
    if not isinstance(output, Tensor):
        raise TypeError(
            f"{owner}({argument}=...): expected a model that returns one tensor, got "
            f"{_described(output)}. {_PICK}."
        )
    return output


@dataclass(frozen=True)
class SelectedOutput:
    """``fn(params, input)[key]``: one output of a model that returns several
    (:func:`select_output`)."""

    fn: Callable
    key: Any

    def __call__(self, params: Params, input: Any, *args: Any, **kwargs: Any) -> Tensor:
        output = self.fn(params, input, *args, **kwargs)
        key = self.key
        if callable(key):
            return key(output)
        if isinstance(key, str) and not isinstance(output, Mapping) and hasattr(output, key):
            return getattr(output, key)
        try:
            return output[key]
        except (KeyError, IndexError, TypeError):
            raise ValueError(
                f"select_output(key={key!r}): expected a key of the model's output, got one "
                f"that {_described(output)} lacks. Pass an index of the tuple or a key of the "
                f"dict."
            ) from None

    @property
    def plain(self) -> Callable:
        """The same selection of ``fn.plain`` (the model without rules), where ``fn`` has
        one."""
        plain = getattr(self.fn, "plain", None)
        return SelectedOutput(plain, self.key) if callable(plain) else self

    def split_params(self, params: Params):
        """``fn.split_params(params)`` (see :meth:`funcattr.ruled.FunctionalModel.split_params`)."""
        return self.fn.split_params(params)


def select_output(fn: Callable, key: Any) -> SelectedOutput:
    """``fn`` reduced to one of its outputs, for a model that returns a tuple, a dict or an
    object (e.g. a ``transformers`` ``ModelOutput``).

    Parameters
    ----------
    fn : callable
        ``fn(params, input)``, e.g. from :func:`funcattr.functionalize`.
    key : int, str or callable
        An index of a tuple, a key of a dict (or an attribute name), or ``output -> tensor``.

    Examples
    --------
    >>> fn, params = functionalize(model, EpsilonPlusFlat())             # doctest: +SKIP
    >>> logits = select_output(fn, 0)    # the model returns (logits, features)  # doctest: +SKIP
    >>> output, relevance = gradient(logits, params, x, one_hot(3))      # doctest: +SKIP
    """
    if not callable(fn):
        raise TypeError(
            f"select_output(fn={type(fn).__name__}): expected a callable fn(params, input), got "
            f"{type(fn).__name__}. Pass the fn of funcattr.functionalize."
        )
    if not (callable(key) or isinstance(key, int | str)) or isinstance(key, bool):
        raise TypeError(
            f"select_output(key={key!r}): expected an int, a str or a callable output -> "
            f"tensor, got {type(key).__name__}. Pass e.g. key=0 or key='logits'."
        )
    return SelectedOutput(fn, key)


def _parameter_dtype(params: Params) -> torch.dtype | None:
    return next((value.dtype for value in params.values()
                 if isinstance(value, Tensor) and value.is_floating_point()), None)


def call_model(fn: Callable, params: Params, input: Tensor, owner: str,
               argument: str = "fn") -> Tensor:
    """``fn(params, input)``, which must be one tensor; a shape (dtype) mistake becomes a
    ``ValueError`` (``TypeError``) naming ``input``; ``argument`` names the model in the
    caller's signature."""
    try:
        return check_output(fn(params, input), owner, argument)
    except (RuntimeError, ValueError) as error:
        text = str(error)
        dtype = _parameter_dtype(params)
        if (isinstance(error, RuntimeError) and dtype is not None and dtype != input.dtype
                and "type" in text):  # "dtype", "scalar type", "Input type (double) ..."
            raise TypeError(
                f"{owner}(input=tensor of dtype {input.dtype}): expected the dtype of the "
                f"model's parameters, {dtype}, got {input.dtype}. Pass input.to({dtype}) (or "
                f"convert the model)."
            ) from error
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
    if no_transform_active():  # nothing is wrapped: only plain autograd may differentiate
        return torch.is_grad_enabled() and (input.requires_grad or any(
            map(_REQUIRES_GRAD, params.values())))
    values = [input, *params.values()]
    return is_differentiated(values) or any(is_transformed(value) for value in values)


_REQUIRES_GRAD = operator.attrgetter("requires_grad")


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
    check_params(params, owner)
    return checked_pullback(fn, params, input, owner)


def checked_pullback(fn: Callable, params: Params, input: Tensor, owner: str
                     ) -> tuple[Tensor, Callable[..., Tensor]]:
    """:func:`pullback` for an ``input`` and ``params`` the caller has checked already."""
    input = usable_input(input, owner)
    if needs_transforms(input, params):
        return vjp_pullback(fn, params, input, owner)
    return autograd_pullback(fn, params, input, owner)


def usable_input(input: Tensor, owner: str) -> Tensor:
    """``input`` as autograd can take it: a tensor made under ``torch.inference_mode()`` is
    copied (autograd cannot record it); inside inference mode no gradient exists at all."""
    if torch.is_inference_mode_enabled():
        raise RuntimeError(
            f"{owner}(input=...): expected a call outside torch.inference_mode(), got one "
            f"inside it, where autograd records nothing. Call {owner} outside the "
            f"inference_mode block (torch.no_grad() around it is fine)."
        )
    return input.clone() if input.is_inference() else input


def autograd_pullback(fn: Callable, params: Params, input: Tensor, owner: str):
    """:func:`pullback` on plain autograd; ``pull`` also takes ``stacked=True``: one batched
    backward for output gradients stacked in the first dimension."""
    leaf = input.detach().requires_grad_(True)
    # the path (fast or reference) read once for the call, not by each of its rules
    with torch.enable_grad(), rules_at_this_level(), reference_path(uses_reference()):
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
