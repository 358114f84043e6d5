"""LRP and modified-backward rules as small frozen values.

Each LRP rule is data on top of :class:`funcattr.core.LinearRule`: a tuple of
:class:`~funcattr.core.Group` s of :class:`~funcattr.core.Term` s. The element-wise rules
(``Pass`` and the modified-ReLU rules) are :class:`funcattr.core.ElementwiseRule` s: they map
the gradient directly.

Shared parameters
-----------------
stabilizer : float or callable
    Keeps denominators away from zero: a float ``eps`` means ``z + eps * sign0(z)``; any
    callable ``z -> stabilised z`` (e.g. :class:`funcattr.core.Stabilizer`) is used as is.
zero_params : str or sequence of str, optional
    Names of layer parameters (e.g. ``'bias'``) set to zero in every modified copy.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from funcattr.core import (
    ElementwiseRule,
    Group,
    LinearRule,
    ParamMod,
    Rule,
    Stabilizer,
    Term,
    check_number,
    expand,
)
from funcattr.core.call import describe_value

__all__ = [
    "AlphaBeta",
    "Epsilon",
    "Flat",
    "Gamma",
    "Norm",
    "Pass",
    "ReLUBetaSmooth",
    "ReLUDeconvNet",
    "ReLUGuidedBackprop",
    "WSquare",
    "ZBox",
    "ZPlus",
]

ZeroParams = str | Sequence[str] | None
_POS, _NEG = "positive", "negative"
_NO_BIAS = ("bias",)
_TOLERANCE = 1e-9  # of alpha - beta = 1


@dataclass(frozen=True)
class Epsilon(LinearRule):
    """LRP-epsilon: ``R_i = x_i sum_j w_ji R_j / (z_j + eps sign0(z_j))`` [bach2015].

    ``epsilon=0`` is LRP-0; where ``z_j`` is exactly 0 (no contributions) the quotient is 0
    (0 / 0 = 0, Zennit gives NaN), so LRP-0 equals input times gradient everywhere.
    ``epsilon`` must be ``>= 0`` (or a callable stabiliser). See the module docstring for
    ``zero_params``.

    Examples
    --------
    >>> Epsilon(epsilon=1e-3)
    Epsilon(epsilon=0.001, zero_params=None)
    """

    epsilon: float | Callable[[Tensor], Tensor] = 1e-6
    zero_params: ZeroParams = None

    @property
    def stabilizer(self):
        return self.epsilon

    def stabilizer_fn(self):
        return Stabilizer.ensure(self.epsilon, owner="Epsilon", name="epsilon")

    def __post_init__(self):
        self.check_settings()

    def groups(self):
        return (Group((Term(),)),)


@dataclass(frozen=True)
class ZPlus(LinearRule):
    """LRP z+: relevance follows positive contributions only (alpha=1, beta=0) [bach2015].

    ``z = W+ x+ + W- x- + b+``; ``R_in = x+ * W+^T (R/z) + x- * W-^T (R/z)``.

    Examples
    --------
    >>> ZPlus()
    ZPlus(stabilizer=1e-06, zero_params=None)
    """

    stabilizer: float | Callable[[Tensor], Tensor] = 1e-6
    zero_params: ZeroParams = None

    def __post_init__(self):
        self.check_settings()

    def groups(self):
        return (Group((Term(_POS, _POS), Term(_NEG, _NEG, zero=_NO_BIAS))),)


@dataclass(frozen=True)
class AlphaBeta(LinearRule):
    """LRP alpha-beta: ``R = alpha R+ - beta R-`` with ``alpha - beta = 1`` [bach2015].

    Examples
    --------
    >>> AlphaBeta(alpha=2.0, beta=1.0)
    AlphaBeta(alpha=2.0, beta=1.0, stabilizer=1e-06, zero_params=None)
    """

    alpha: float = 2.0
    beta: float = 1.0
    stabilizer: float | Callable[[Tensor], Tensor] = 1e-6
    zero_params: ZeroParams = None

    def __post_init__(self):
        for name in ("alpha", "beta"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Real):
                raise TypeError(f"AlphaBeta({name}={value!r}): expected a number >= 0, got "
                                f"{type(value).__name__}. Use e.g. AlphaBeta(alpha=2.0, "
                                f"beta=1.0).")
        if not (math.isfinite(self.alpha) and math.isfinite(self.beta)) or (
                self.alpha < 0 or self.beta < 0):
            raise ValueError(
                f"AlphaBeta(alpha={self.alpha}, beta={self.beta}): alpha and beta must both be "
                f"non-negative; expected finite numbers >= 0, got {self.alpha} and {self.beta}. "
                f"Use e.g. AlphaBeta(alpha=2.0, beta=1.0)."
            )
        # a tolerance: AlphaBeta(2.2, 1.2) gives 1.0000000000000002 in floating point
        if not math.isclose(self.alpha - self.beta, 1.0, rel_tol=0.0, abs_tol=_TOLERANCE):
            raise ValueError(
                f"AlphaBeta(alpha={self.alpha}, beta={self.beta}): alpha - beta must equal 1, "
                f"got {self.alpha - self.beta}. Use e.g. AlphaBeta(alpha=2.0, beta=1.0)."
            )
        self.check_settings()

    def groups(self):
        alpha = Group((Term(_POS, _POS), Term(_NEG, _NEG, zero=_NO_BIAS)), weight=self.alpha)
        if self.beta == 0.0:  # the beta group contributes exactly nothing
            return (alpha,)
        return (alpha,
                Group((Term(_POS, _NEG), Term(_NEG, _POS, zero=_NO_BIAS)), weight=-self.beta))


@dataclass(frozen=True)
class Gamma(LinearRule):
    """Generalised LRP-gamma: favour positive contributions by ``W + gamma W+`` [andeol2021].

    Where the layer output is positive, ``z = (W + gamma W+) x+ + (W + gamma W-) x- + b``
    splits the relevance; where it is negative, the roles of ``W+`` and ``W-`` swap.

    Examples
    --------
    >>> Gamma(gamma=0.25)
    Gamma(gamma=0.25, stabilizer=1e-06, zero_params=None)
    """

    gamma: float = 0.25
    stabilizer: float | Callable[[Tensor], Tensor] = 1e-6
    zero_params: ZeroParams = None

    def __post_init__(self):
        check_number(self.gamma, "Gamma", "gamma", example="0.25")
        self.check_settings()

    def groups(self):
        up = ParamMod((("identity", 1.0), (_POS, self.gamma)))
        down = ParamMod((("identity", 1.0), (_NEG, self.gamma)))
        return (
            Group((Term(_POS, up), Term(_NEG, down, zero=_NO_BIAS)), gate="positive"),
            Group((Term(_POS, down), Term(_NEG, up, zero=_NO_BIAS)), gate="negative"),
        )


@dataclass(frozen=True, eq=False)
class ZBox(LinearRule):
    """LRP z-box for bounded inputs ``low <= x <= high`` (first layer) [montavon2017].

    ``z = W x - W+ low - W- high``; ``R_in = x c - low c+ - high c-``. ``low`` and ``high``
    are scalars or tensors broadcastable to the input, e.g. of shape ``(1, C, 1, 1)``.

    Examples
    --------
    >>> ZBox(low=-3.0, high=3.0)
    ZBox(low=-3.0, high=3.0, stabilizer=1e-06, zero_params=None)
    """

    low: float | Tensor
    high: float | Tensor
    stabilizer: float | Callable[[Tensor], Tensor] = 1e-6
    zero_params: ZeroParams = None

    def __post_init__(self):
        for name in ("low", "high"):
            value = getattr(self, name)
            if not isinstance(value, int | float | Tensor) or isinstance(value, bool):
                raise TypeError(
                    f"ZBox({name}={value!r}): expected a number or a tensor, got "
                    f"{type(value).__name__}. Pass e.g. ZBox(low=-3.0, high=3.0)."
                )
        low, high = torch.as_tensor(self.low), torch.as_tensor(self.high)
        try:
            above = bool((low > high).any())
        except RuntimeError:  # the shapes do not broadcast against each other
            raise ValueError(
                f"ZBox(low={describe_value(self.low)}, high={describe_value(self.high)}): "
                f"expected bounds that broadcast against each other, got shapes "
                f"{tuple(low.shape)} and {tuple(high.shape)}. Give both in the same shape, e.g. "
                f"(1, C, 1, 1)."
            ) from None
        if above or not bool(torch.isfinite(low).all() & torch.isfinite(high).all()):
            raise ValueError(
                f"ZBox(low={describe_value(self.low)}, high={describe_value(self.high)}): "
                f"expected finite bounds with low <= high everywhere, got "
                f"{'low > high' if above else 'a bound that is not finite'}. Pass the input's "
                f"smallest and largest values, e.g. ZBox(low=-3.0, high=3.0)."
            )
        self.check_settings()

    def groups(self):
        return (Group((
            Term(),
            Term(_Bound(self.low), _POS, sign=-1.0),
            Term(_Bound(self.high), _NEG, sign=-1.0),
        )),)

    def check_input(self, x: Tensor) -> str | None:
        for name in ("low", "high"):
            value = getattr(self, name)
            if isinstance(value, Tensor):
                try:
                    expand(value, x.shape, cut_batch_dim=True)
                except ValueError:
                    return (f"expected {name} to broadcast to the input shape {tuple(x.shape)}, "
                            f"got a tensor of shape {tuple(value.shape)}. Give a scalar, a "
                            f"tensor shaped like the input, or one with singleton dimensions "
                            f"such as (1, C, 1, 1).")
        return None

    def __eq__(self, other: object) -> bool:
        if type(other) is not ZBox:
            return NotImplemented
        return (_same(self.low, other.low) and _same(self.high, other.high)
                and self.stabilizer == other.stabilizer and self.zero_params == other.zero_params)

    def __hash__(self) -> int:
        return hash((ZBox, self.stabilizer, str(self.zero_params)))


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, Tensor) or isinstance(b, Tensor):
        return isinstance(a, Tensor) and isinstance(b, Tensor) and a.shape == b.shape and bool(
            torch.equal(a, b)
        )
    return a == b


@dataclass(frozen=True, eq=False)
class _Bound:
    """Input modifier of ZBox: the bound broadcast to the input's shape, dtype and device."""

    value: float | Tensor

    def __call__(self, x: Tensor) -> Tensor:
        return expand(self.value, x.shape, cut_batch_dim=True).to(x)


@dataclass(frozen=True)
class Norm(LinearRule):
    """Normalise by the layer's output: ``R_i = x_i (df/dx)^T (R / f(x))`` (Sum, avg-pooling).

    Examples
    --------
    >>> Norm()
    Norm(stabilizer=1e-06)
    """

    stabilizer: float | Callable[[Tensor], Tensor] = 1e-6

    def __post_init__(self):
        self.check_settings()

    def groups(self):
        return (Group((Term(),)),)


@dataclass(frozen=True)
class WSquare(LinearRule):
    """LRP w-square: ``R_i = sum_j w_ji^2 R_j / sum_i w_ji^2`` (bias squared too) [montavon2017].

    Examples
    --------
    >>> WSquare()
    WSquare(stabilizer=1e-06, zero_params=None)
    """

    stabilizer: float | Callable[[Tensor], Tensor] = 1e-6
    zero_params: ZeroParams = None
    requires = ("weight",)

    def __post_init__(self):
        self.check_settings()

    def groups(self):
        return (Group((Term("ones", "square"),)),)


@dataclass(frozen=True)
class Flat(LinearRule):
    """LRP flat: relevance spread evenly over each output's receptive field [lapuschkin2019].

    Weights become ones and the bias is always zero.

    Examples
    --------
    >>> Flat()
    Flat(stabilizer=1e-06, zero_params=None)
    """

    stabilizer: float | Callable[[Tensor], Tensor] = 1e-6
    zero_params: ZeroParams = None
    requires = ("weight",)

    def __post_init__(self):
        self.check_settings()

    def groups(self):
        return (Group((Term("ones", "ones", zero=_NO_BIAS),)),)


# --------------------------------------------------------------------------------------------
# Element-wise rules
# --------------------------------------------------------------------------------------------

_SIZES = {nn.Linear: ("in_features", "out_features"),
          nn.modules.conv._ConvNd: ("in_channels", "out_channels")}


@dataclass(frozen=True)
class Pass(ElementwiseRule):
    """Pass the relevance through unchanged: ``R_in = R_out`` (activations, BatchNorm).

    Examples
    --------
    >>> Pass()
    Pass()
    """

    reads_input: ClassVar[bool] = False

    def check(self, module: nn.Module) -> str | None:
        """Report layers whose output shape surely differs from the input's (checked again
        at the call for the rest)."""
        for kind, (a, b) in _SIZES.items():
            if isinstance(module, kind) and getattr(module, a) != getattr(module, b):
                return (f"changes the shape ({a}={getattr(module, a)}, {b}={getattr(module, b)});"
                        f" Pass needs the output shaped like the input")
        return None

    def backward(self, x: Tensor, grad: Tensor) -> Tensor:
        return grad


def _check_activation(rule: Rule, module: nn.Module) -> str | None:
    from funcattr import types

    if not isinstance(module, types.Activation):
        return "is not an element-wise activation; this rule modifies a ReLU's gradient"
    return None


@dataclass(frozen=True)
class ReLUDeconvNet(ElementwiseRule):
    """DeconvNet: ``R_in = max(R_out, 0)``, ignoring the forward mask [zeiler2014].

    Examples
    --------
    >>> ReLUDeconvNet()
    ReLUDeconvNet()
    """

    reads_input: ClassVar[bool] = False

    check = _check_activation

    def backward(self, x, grad):
        return grad.clamp(min=0)


@dataclass(frozen=True)
class ReLUGuidedBackprop(ElementwiseRule):
    """Guided backprop: ``R_in = R_out * 1[x > 0] * 1[R_out > 0]`` [springenberg2015].

    Examples
    --------
    >>> ReLUGuidedBackprop()
    ReLUGuidedBackprop()
    """

    check = _check_activation

    def backward(self, x, grad):
        return grad * ((x > 0) & (grad > 0)).to(grad.dtype)


@dataclass(frozen=True)
class ReLUBetaSmooth(ElementwiseRule):
    """Softplus surrogate: ``R_in = sigmoid(beta x) R_out``, for second order [dombrowski2019].

    Examples
    --------
    >>> ReLUBetaSmooth(beta_smooth=10.0)
    ReLUBetaSmooth(beta_smooth=10.0)
    """

    beta_smooth: float = 10.0
    check = _check_activation

    def __post_init__(self):
        check_number(self.beta_smooth, "ReLUBetaSmooth", "beta_smooth", example="10.0",
                     positive=True)

    def backward(self, x, grad):
        return torch.sigmoid(self.beta_smooth * x) * grad
