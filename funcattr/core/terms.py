"""The vocabulary of a rule: stabilisers, input and parameter modifiers, terms and groups.

A rule is data. Each modified copy of a layer is a :class:`Term` (an input modifier, a
parameter modifier, a sign); copies that share one stabilised denominator form a
:class:`Group`. :mod:`funcattr.core.reference` turns these values into a relevance.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "Group",
    "InputMod",
    "ParamMod",
    "ParamPrimitive",
    "Stabilizer",
    "Term",
    "apply_input_mod",
    "apply_param_primitive",
    "check_number",
    "check_zero_params",
    "divide",
    "expand",
    "may_vanish",
    "normalize_zero_params",
    "stabilize",
]


def check_number(value: Any, owner: str, name: str, *, example: str,
                 positive: bool = False) -> float:
    """A rule's numeric setting: a finite real number ``>= 0`` (``> 0`` with ``positive``).

    Raises ``TypeError`` for anything but a real number (bools included) and ``ValueError``
    for a number out of range, as ``<owner>(<name>=<value>): expected ..., got .... <fix>.``
    """
    bound = "> 0" if positive else ">= 0"
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{owner}({name}={value!r}): expected a number {bound}, got "
                        f"{type(value).__name__}. Pass e.g. {name}={example}.")
    if not math.isfinite(value) or value < 0 or (positive and value == 0):
        raise ValueError(f"{owner}({name}={value!r}): expected a finite number {bound}, got "
                         f"{value!r}. Pass e.g. {name}={example}.")
    return float(value)


# --------------------------------------------------------------------------------------------
# Stabilizer
# --------------------------------------------------------------------------------------------

def stabilize(
    input: Tensor,
    epsilon: float = 1e-6,
    clip: bool = False,
    norm_scale: bool = False,
    dim: Sequence[int] | None = None,
) -> Tensor:
    """Move a denominator away from zero, keeping its sign (zero and -0.0 count as positive).

    Default: ``z + epsilon * sign0(z)``; ``clip=True``: ``sign0(z) * max(|z|, epsilon)``;
    ``norm_scale=True`` first multiplies ``epsilon`` by the root mean square of ``z`` over
    ``dim`` (default: every dimension but the first).
    """
    if not norm_scale and not clip:  # the common case in three passes
        step = torch.tensor(epsilon, dtype=input.dtype, device=input.device)
        return input + torch.where(input < 0, -step, step)
    sign = torch.where(input < 0, -1.0, 1.0).to(input.dtype)
    if norm_scale:
        dims = tuple(range(1, input.ndim)) if dim is None else tuple(dim)
        epsilon = epsilon * (input**2).mean(dim=dims, keepdim=True).sqrt()
    if clip:
        return sign * torch.maximum(input.abs(), torch.as_tensor(epsilon).to(input))
    return input + sign * epsilon


@dataclass(frozen=True)
class Stabilizer:
    """A configured :func:`stabilize`; rules call it on each denominator.

    Parameters
    ----------
    epsilon : float
        The stabilising constant.
    clip : bool
        Clip the magnitude to at least ``epsilon`` instead of adding ``epsilon``.
    norm_scale : bool
        Scale ``epsilon`` by the root mean square of the denominator over ``dim``.
    dim : tuple of int, optional
        Dimensions for ``norm_scale`` (default: all but the batch dimension).
    """

    epsilon: float = 1e-6
    clip: bool = False
    norm_scale: bool = False
    dim: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        check_number(self.epsilon, "Stabilizer", "epsilon", example="1e-6")

    def __call__(self, input: Tensor) -> Tensor:
        return stabilize(input, self.epsilon, self.clip, self.norm_scale, self.dim)

    @classmethod
    def ensure(cls, value: Any, *, owner: str = "Stabilizer.ensure", name: str = "value"):
        """Return ``value`` as a stabilizer: numbers (finite, ``>= 0``; ``0`` stabilises
        nothing) become ``Stabilizer(epsilon=value)``.

        A callable ``z -> stabilised z`` is returned as it is.
        """
        if isinstance(value, bool):
            raise TypeError(f"{owner}({name}={value!r}): expected a float or a callable, got "
                            f"bool. Pass e.g. {name}=1e-6.")
        if isinstance(value, numbers.Real):
            if not math.isfinite(value):
                raise ValueError(f"{owner}({name}={value!r}): expected a finite number, got "
                                 f"{value!r}. Pass e.g. {name}=1e-6.")
            if value < 0:
                raise ValueError(f"{owner}({name}={value!r}): expected a number >= 0 (0 "
                                 f"stabilises nothing), got {value!r}. Pass e.g. {name}=1e-6.")
            return cls(epsilon=float(value))
        if callable(value):
            return value
        raise TypeError(
            f"{owner}({name}={value!r}): expected a float or a callable z -> stabilised z, "
            f"got {type(value).__name__}. Pass e.g. {name}=1e-6 or {name}=Stabilizer(1e-6)."
        )


def may_vanish(stabilizer: Callable[[Tensor], Tensor]) -> bool:
    """Whether ``stabilizer(z)`` can be exactly zero: a :class:`Stabilizer` with
    ``epsilon=0`` or ``norm_scale`` (a denominator that is zero over a whole sample), or any
    other callable."""
    return not (isinstance(stabilizer, Stabilizer) and stabilizer.epsilon > 0
                and not stabilizer.norm_scale)


def divide(numerator: Tensor, denominator: Tensor) -> Tensor:
    """``numerator / denominator``, zero where ``denominator`` is exactly zero.

    The quotient of an LRP rule where the stabilised denominator vanishes (``Epsilon(0)`` on a
    layer output that is exactly 0): no contribution, no relevance. So 0/0 is 0, as a ReLU
    passes no gradient at 0, and LRP-0 equals input times gradient there too. Derivatives stay
    finite (the division never sees a zero).
    """
    zero = denominator == 0
    return torch.where(zero, 0.0, numerator / torch.where(zero, 1.0, denominator))


def expand(value: Any, shape: Sequence[int], cut_batch_dim: bool = False) -> Tensor:
    """Broadcast ``value`` to ``shape`` the way Zennit does for ZBox bounds.

    Scalars broadcast everywhere; a tensor with fewer dimensions gets trailing singleton
    dimensions appended when its leading dimensions fit; with ``cut_batch_dim`` a larger
    first dimension is cut to ``shape[0]``.
    """
    tensor = value if isinstance(value, Tensor) else torch.tensor(value)
    shape = tuple(shape)
    if tensor.ndim == 0:
        return tensor.expand(shape)
    if tensor.ndim < len(shape):
        lead = tensor.shape
        fits = all(a in (1, b) for a, b in zip(lead, shape[: tensor.ndim], strict=True))
        if fits:
            tensor = tensor.reshape(*lead, *(1,) * (len(shape) - tensor.ndim))
    if tensor.ndim == len(shape):
        if cut_batch_dim and tensor.shape[0] > shape[0]:
            tensor = tensor[: shape[0]]
        try:
            return tensor.expand(shape)
        except RuntimeError:
            pass
    raise ValueError(
        f"expand(value of shape {tuple(tensor.shape)}): cannot broadcast to the input shape "
        f"{shape}. Give a scalar, a tensor shaped like the input, or one with singleton "
        f"dimensions such as (1, C, 1, 1)."
    )


# --------------------------------------------------------------------------------------------
# Modifiers: inputs and parameters of one term
# --------------------------------------------------------------------------------------------

InputMod = str | Callable[[Tensor], Tensor]
"""``'identity'``, ``'positive'``, ``'negative'``, ``'ones'``, or a callable ``x -> x'``."""

ParamPrimitive = str | Callable[[Tensor, str], Tensor]
"""``'identity'``, ``'positive'``, ``'negative'``, ``'ones'``, ``'square'``, or a callable
``(param, name) -> param'``."""

_INPUT_MODS: dict[str, Callable[[Tensor], Tensor]] = {
    "identity": lambda x: x,
    "positive": lambda x: x.clamp(min=0),
    "negative": lambda x: x.clamp(max=0),
    "ones": torch.ones_like,
}

_PARAM_MODS: dict[str, Callable[[Tensor], Tensor]] = {
    "identity": lambda p: p,
    "positive": lambda p: p.clamp(min=0),
    "negative": lambda p: p.clamp(max=0),
    "ones": torch.ones_like,
    "square": lambda p: p**2,
}


def apply_input_mod(modifier: InputMod, x: Tensor) -> Tensor:
    """The modified input ``modifier(x)`` (a name from :data:`InputMod` or a callable)."""
    if isinstance(modifier, str):
        return _INPUT_MODS[modifier](x)
    return modifier(x)


def apply_param_primitive(primitive: ParamPrimitive, param: Tensor, name: str) -> Tensor:
    """One primitive of a :class:`ParamMod` applied to the parameter called ``name``."""
    if isinstance(primitive, str):
        return _PARAM_MODS[primitive](param)
    return primitive(param, name)


@dataclass(frozen=True)
class ParamMod:
    """A parameter modifier as a linear combination of primitives, e.g. ``W + gamma * W+``.

    Parameters
    ----------
    terms : tuple of (primitive, coefficient)
        Primitives are names from ``('identity', 'positive', 'negative', 'ones', 'square')``
        or callables ``(param, name) -> param``.
    """

    terms: tuple[tuple[ParamPrimitive, float], ...] = (("identity", 1.0),)

    @classmethod
    def of(cls, value: ParamMod | ParamPrimitive) -> ParamMod:
        """Wrap a primitive (name or callable) as a one-term modifier."""
        return value if isinstance(value, ParamMod) else cls(((value, 1.0),))

    def __call__(self, param: Tensor, name: str) -> Tensor:
        total = None
        for primitive, coefficient in self.terms:
            value = apply_param_primitive(primitive, param, name)
            value = value if coefficient == 1.0 else coefficient * value
            total = value if total is None else total + value
        return total


@dataclass(frozen=True)
class Term:
    """One modified copy of a layer: ``sign * f(input(x); params(theta))``.

    Parameters
    ----------
    input : str or callable
        Input modifier (see :data:`InputMod`).
    params : ParamMod or str or callable
        Parameter modifier; the bias gets the same modifier unless zeroed.
    sign : float
        Sign of this copy in the denominator and in the final sum (ZBox uses -1).
    zero : tuple of str
        Parameters set to zero in this copy (e.g. ``('bias',)`` for negative-input terms).
    """

    input: InputMod = "identity"
    params: ParamMod | ParamPrimitive = "identity"
    sign: float = 1.0
    zero: tuple[str, ...] = ()

    @property
    def param_mod(self) -> ParamMod:
        return ParamMod.of(self.params)


@dataclass(frozen=True)
class Group:
    """Terms that share one stabilised denominator.

    Parameters
    ----------
    terms : tuple of Term
        The copies of the layer whose outputs are summed into the denominator.
    weight : float
        Factor of the group's relevance (``alpha``, ``-beta``).
    gate : {None, 'positive', 'negative'}
        Pass relevance only where the layer's ordinary output is > 0 (or < 0), as in Gamma.
    """

    terms: tuple[Term, ...]
    weight: float = 1.0
    gate: str | None = None


def normalize_zero_params(zero_params: str | Iterable[str] | None) -> tuple[str, ...]:
    """``zero_params`` as a tuple of names (``None`` is none, a string is one name)."""
    if zero_params is None:
        return ()
    if isinstance(zero_params, str):
        return (zero_params,)
    return tuple(zero_params)


def check_zero_params(zero_params: Any, owner: str) -> None:
    """``zero_params``: ``None``, a parameter name or a sequence of names (which exist on the
    rule's layer is checked when the rule meets it: :meth:`funcattr.core.LinearRule.check`)."""
    if zero_params is None or isinstance(zero_params, str):
        return
    if isinstance(zero_params, Iterable) and not isinstance(zero_params, bytes | Tensor):
        items = list(zero_params)
        if all(isinstance(item, str) for item in items):
            return
        got = f"an item of type {next(type(i).__name__ for i in items if not isinstance(i, str))}"
    else:
        got = type(zero_params).__name__
    raise TypeError(f"{owner}(zero_params={zero_params!r}): expected None, a parameter name or a "
                    f"sequence of names, got {got}. Pass e.g. zero_params='bias'.")
