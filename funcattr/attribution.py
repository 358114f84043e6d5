"""Attributors: pure functions on ``(fn, params, input, attr_output_fn)`` and Zennit-style classes.

The pure layer is built on :func:`pullback`, which runs the model once and returns its output
and a function from output gradients to input attributions (``torch.func.vjp``). The classes
(:class:`Attributor`, :class:`Gradient`) keep Zennit's signatures and delegate to it.

``attr_output_fn`` (Zennit's ``attr_output``) says which output gradient to pull back:
``None`` uses the output itself, a tensor is used as it is, and a callable is called on the
output, e.g. ``one_hot(target)``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from funcattr.core import _peek, is_differentiated, is_transformed, rules_at_this_level

__all__ = [
    "Attributor",
    "Gradient",
    "constant",
    "gradient",
    "identity",
    "one_hot",
    "pullback",
]

AttrOutput = Tensor | Callable[[Tensor], Tensor] | None
Params = Mapping[str, Tensor]


def identity(obj: Any) -> Any:
    """Return ``obj`` unchanged (the default ``attr_output_fn``: pull back the output)."""
    return obj


def constant(obj: Any) -> Callable[..., Any]:
    """Return a function that ignores its arguments and returns ``obj``."""

    def constant_fn(*args, **kwargs):
        return obj

    return constant_fn


def _as_attr_output_fn(attr_output: AttrOutput, owner: str) -> Callable[[Tensor], Tensor]:
    if attr_output is None:
        return identity
    if callable(attr_output):
        return attr_output
    if isinstance(attr_output, Tensor):
        return constant(attr_output)
    raise TypeError(
        f"{owner}(attr_output={type(attr_output).__name__}): expected None, a tensor shaped like "
        f"the output, or a callable output -> output gradient such as one_hot(target)."
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
    if isinstance(target, bool) or not (
        target is None or isinstance(target, int | Tensor)
        or (isinstance(target, Sequence) and all(isinstance(t, int) for t in target))
    ):
        raise TypeError(
            f"one_hot(target={target!r}): expected an int, a sequence of ints, an integer tensor "
            f"or None."
        )
    if isinstance(target, Tensor) and (target.is_floating_point() or target.ndim > 1):
        raise TypeError(
            f"one_hot(target=tensor of dtype {target.dtype}, shape {tuple(target.shape)}): "
            f"expected an integer tensor of shape (batch,)."
        )

    def one_hot_fn(output: Tensor) -> Tensor:
        if output.ndim != 2:
            raise ValueError(
                f"one_hot(target={target!r}): expected a (batch, classes) output, got shape "
                f"{tuple(output.shape)}. Pass a tensor or your own callable as attr_output_fn."
            )
        batch, classes = output.shape
        index = output.argmax(dim=1) if target is None else torch.as_tensor(
            target, device=output.device
        )
        index = index.expand(batch) if index.ndim == 0 else index
        if index.shape != (batch,):
            raise ValueError(
                f"one_hot(target={target!r}): expected one target or one per sample ({batch}), "
                f"got {tuple(index.shape)}."
            )
        plain = _peek(index)
        if plain is not None and bool(((plain < 0) | (plain >= classes)).any()):
            raise ValueError(
                f"one_hot(target={target!r}): target out of range for an output with {classes} "
                f"classes; expected values in [0, {classes - 1}]."
            )
        result = torch.nn.functional.one_hot(index, classes).to(output.dtype)
        return result * output if times_output else result

    one_hot_fn.__qualname__ = f"one_hot({target!r})"
    return one_hot_fn


def _check_input(input: Any, owner: str) -> None:
    if not isinstance(input, Tensor):
        raise TypeError(f"{owner}(input={type(input).__name__}): expected a torch.Tensor.")
    plain = _peek(input)
    if plain is not None and plain.is_floating_point() and not bool(torch.isfinite(plain).all()):
        raise ValueError(
            f"{owner}(input=tensor of shape {tuple(input.shape)}): expected finite values, got "
            f"NaN or infinity. Clean the input (e.g. torch.nan_to_num) before explaining it."
        )


def _call_model(fn: Callable, params: Params, input: Tensor, owner: str) -> Tensor:
    try:
        return fn(params, input)
    except RuntimeError as error:
        if "shape" not in str(error) and "size" not in str(error):
            raise
        raise ValueError(
            f"{owner}(input=tensor of shape {tuple(input.shape)}): the model could not process "
            f"an input of this shape ({str(error).splitlines()[0]}). Pass an input shaped as "
            f"the model expects, with the batch dimension first."
        ) from error


def pullback(fn: Callable, params: Params, input: Tensor, *,
             owner: str = "pullback") -> tuple[Tensor, Callable[[Tensor], Tensor]]:
    """Run ``fn(params, input)`` once; return the output and ``output gradient -> attribution``.

    Several output gradients cost one forward pass: ``torch.func.vmap(pull)(stacked)``.
    Outside ``torch.func`` transforms and when nothing differentiates the attribution, the
    pullback runs on plain autograd (no transform overhead, no graph of the backward);
    otherwise on ``torch.func.vjp``, where rules act at this pullback's level only.
    """
    _check_input(input, owner)
    values = [input, *params.values()]
    if is_differentiated(values) or any(is_transformed(value) for value in values):
        return _vjp_pullback(fn, params, input, owner)
    return _autograd_pullback(fn, params, input, owner)


def _autograd_pullback(fn, params, input, owner):
    leaf = input.detach().requires_grad_(True)
    with torch.enable_grad(), rules_at_this_level():
        output = _call_model(fn, params, leaf, owner)

    def pull(output_grad: Tensor) -> Tensor:
        if not output.requires_grad:  # the output does not depend on the input
            return torch.zeros_like(input)
        (grad,) = torch.autograd.grad(output, leaf, output_grad, retain_graph=True,
                                      allow_unused=True)
        return torch.zeros_like(input) if grad is None else grad

    return output.detach(), pull


def _vjp_pullback(fn, params, input, owner):
    differentiated = is_differentiated([input, *params.values()])

    def model(x: Tensor) -> Tensor:
        with rules_at_this_level():
            return _call_model(fn, params, x, owner)

    output, vjp_fn = torch.func.vjp(model, input)

    def pull(output_grad: Tensor) -> Tensor:
        if differentiated or is_differentiated([output_grad]):
            return vjp_fn(output_grad)[0]
        with torch.no_grad():  # nobody differentiates the attribution: record no graph
            return vjp_fn(output_grad)[0]

    return output, pull


def _seed(output: Tensor, attr_output_fn: Callable[[Tensor], Tensor], owner: str) -> Tensor:
    """The output gradient ``attr_output_fn(output)``, checked against the output's shape."""
    seed = attr_output_fn(output)
    if not isinstance(seed, Tensor) or seed.shape != output.shape:
        got = tuple(seed.shape) if isinstance(seed, Tensor) else type(seed).__name__
        raise ValueError(
            f"{owner}(attr_output_fn=...): expected an output gradient of the output's shape "
            f"{tuple(output.shape)}, got {got}."
        )
    return seed.to(output.dtype) if seed.dtype != output.dtype else seed


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
    attr_output_fn = _as_attr_output_fn(attr_output_fn, "gradient")
    output, pull = pullback(fn, params, input, owner="gradient")
    seed = _seed(output, attr_output_fn, "gradient")
    return output, pull(seed)


# --------------------------------------------------------------------------------------------
# Zennit-compatible stateful layer
# --------------------------------------------------------------------------------------------

class Attributor(ABC):
    """Base of the Zennit-style attributors: ``with Gradient(model, composite) as attributor``.

    Parameters
    ----------
    model : torch.nn.Module
        The model; never changed.
    composite : Composite, optional
        Rules to apply. While the attributor is active (inside ``with`` or a call),
        ``self.model`` is a rule-applied view of the model, so subclasses written for Zennit
        that call ``self.model`` get rule-modified gradients.
    attr_output : tensor or callable, optional
        Default output gradient (see :func:`gradient`); a call-time ``attr_output`` wins.
    """

    def __init__(self, model: nn.Module, composite=None, attr_output: AttrOutput = None) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(
                f"{type(self).__name__}(model={type(model).__name__}): expected a torch.nn.Module."
            )
        self._model = model
        self.composite = composite
        self.attr_output_fn = _as_attr_output_fn(attr_output, type(self).__name__)
        self._depth = 0
        self._state: tuple | None = None

    # -- the functional state, built on entering ------------------------------------------
    @property
    def model(self) -> nn.Module:
        """The rule-applied model while active, the original model otherwise."""
        if self._state is not None and self.composite is not None:
            return self._state[2]
        return self._model

    @model.setter
    def model(self, value: nn.Module) -> None:
        self._model = value

    @property
    def fn(self) -> Callable:
        """The functionalized model (built on entering the attributor)."""
        return self._active_state()[0]

    @property
    def params(self) -> dict[str, Tensor]:
        """The model's params dict for :attr:`fn`."""
        return self._active_state()[1]

    def _active_state(self) -> tuple:
        if self._state is None:
            raise RuntimeError(
                f"{type(self).__name__}: not active; use `with {type(self).__name__}(...) as "
                f"attributor:` or call the attributor."
            )
        return self._state

    def __enter__(self) -> Attributor:
        if self._depth == 0:
            from funcattr.functional import RuledModule, functionalize

            fn, params = functionalize(self._model, self.composite)
            ruled = RuledModule(self._model, self.composite) if self.composite is not None else None
            self._state = (fn, params, ruled)
        self._depth += 1
        return self

    def __exit__(self, *exc_info) -> None:
        self._depth -= 1
        if self._depth == 0:
            self._state = None

    def __call__(self, input: Tensor, attr_output: AttrOutput = None) -> tuple[Tensor, Tensor]:
        """Attribute ``input``; returns ``(output, attribution)``."""
        attr_output_fn = (
            self.attr_output_fn if attr_output is None
            else _as_attr_output_fn(attr_output, type(self).__name__)
        )
        with self:
            return self.forward(input, attr_output_fn)

    @abstractmethod
    def forward(self, input: Tensor, attr_output_fn: Callable[[Tensor], Tensor]):
        """Compute ``(output, attribution)``; override in subclasses."""


class Gradient(Attributor):
    """The (rule-modified) gradient, Zennit's ``Gradient``.

    Parameters
    ----------
    create_graph : bool
        Keep the graph so the attribution can be differentiated (input must require grad).
    retain_graph : bool, optional
        Accepted for Zennit compatibility; the pure pullback needs no retained graph.
    """

    def __init__(self, model, composite=None, attr_output=None, create_graph: bool = False,
                 retain_graph: bool | None = None) -> None:
        super().__init__(model, composite, attr_output)
        self.create_graph = create_graph
        self.retain_graph = retain_graph

    def forward(self, input, attr_output_fn):
        if not self.create_graph:
            input = input.detach()
        elif not input.requires_grad:
            input = input.detach().requires_grad_(True)
        with torch.set_grad_enabled(self.create_graph or torch.is_grad_enabled()):
            return gradient(self.fn, self.params, input, attr_output_fn)
