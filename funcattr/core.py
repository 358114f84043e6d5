"""The rule mechanism: how a rule turns one module call into a call with a modified gradient.

A rule never hooks a module. The rule-applied call computes the module's ordinary output
``y = module(x)`` and passes it through a new-style ``torch.autograd.Function`` whose value is
``y`` and whose backward is the rule. The backward is written with ordinary differentiable
torch operations, so the result composes with ``torch.func.vjp``, ``vmap``, ``grad``,
``jacrev`` and ``torch.compile``, and derivatives of an attribution are exact.

The general LRP rule (Zennit's ``BasicHook``) is one function, :func:`lrp_backward`. A rule
states its *terms*: modified copies of the layer, each with an input modifier, a parameter
modifier and a sign; terms are collected in *groups* that share one stabilised denominator.
With ``R`` the relevance arriving at the layer output, the four steps of the LRP paper are::

    z_G = sum_{k in G} sign_k * f(in_k(x); theta_k)          # 1. forward of every term
    s_G = gate_G * R / stabilizer(z_G)                       # 2. divide by the denominator
    c_k = (d f(u; theta_k) / d u)^T s_G                      # 3. one VJP per term
    relevance = sum_G weight_G sum_{k in G} sign_k in_k(x) * c_k   # 4. multiply by the input

For linear layers (dense, convolution, transposed convolution) the mechanism uses that
``f(u; W)`` is linear in ``W``: a parameter modifier is a linear combination of primitives
(``identity``, ``positive``, ``negative``, ...), ``W = W+ + W-`` lets two of the three give
the third, the ordinary output ``y`` provides ``f(x; W)`` for free, and input terms that are
exactly zero (the negative part of a non-negative input, e.g. after a ReLU) are skipped.
Other modules (BatchNorm, average pooling, ``Sum``, user layers) take a generic path that
evaluates every term with ``torch.func.functional_call`` and pulls it back with
``torch.func.vjp``, or with a closed-form input VJP for layers that are affine in their input
(:mod:`funcattr._affine`; those also work when the attribution runs under ``torch.func``).
"""

from __future__ import annotations

import contextlib
import math
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from functools import cached_property, partial
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch._C import _functorch

from funcattr._affine import InputVJP, affine_input_vjp

__all__ = [
    "Group",
    "LinearRule",
    "ParamMod",
    "Rule",
    "Stabilizer",
    "Term",
    "concrete_value",
    "expand",
    "is_differentiated",
    "is_transformed",
    "lrp_backward",
    "rules_at_this_level",
    "stabilize",
]


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

    def __call__(self, input: Tensor) -> Tensor:
        return stabilize(input, self.epsilon, self.clip, self.norm_scale, self.dim)

    @classmethod
    def ensure(cls, value: Any, *, owner: str = "Stabilizer.ensure", name: str = "value"):
        """Return ``value`` as a stabilizer: numbers become ``Stabilizer(epsilon=value)``.

        A callable ``z -> stabilised z`` is returned as it is.
        """
        if isinstance(value, bool):
            raise TypeError(f"{owner}({name}={value!r}): expected a float or a callable, got bool.")
        if isinstance(value, int | float):
            if not math.isfinite(value):
                raise ValueError(
                    f"{owner}({name}={value!r}): expected a finite number, got {value!r}."
                )
            return cls(epsilon=float(value))
        if callable(value):
            return value
        raise TypeError(
            f"{owner}({name}={value!r}): expected a float or a callable z -> stabilised z, "
            f"got {type(value).__name__}. Pass e.g. {name}=1e-6 or {name}=Stabilizer(1e-6)."
        )


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
            value = _apply_param_primitive(primitive, param, name)
            value = value if coefficient == 1.0 else coefficient * value
            total = value if total is None else total + value
        return total


def _apply_param_primitive(primitive: ParamPrimitive, param: Tensor, name: str) -> Tensor:
    if isinstance(primitive, str):
        return _PARAM_MODS[primitive](param)
    return primitive(param, name)


def _apply_input_mod(modifier: InputMod, x: Tensor) -> Tensor:
    if isinstance(modifier, str):
        return _INPUT_MODS[modifier](x)
    return modifier(x)


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


# --------------------------------------------------------------------------------------------
# Rules
# --------------------------------------------------------------------------------------------

class Rule(ABC):
    """A rule: how one module call changes its gradient. Rules are frozen dataclasses.

    Subclasses implement :meth:`apply` and may override :meth:`check`, which reports why the
    rule cannot be applied to a module (``None`` when it can). The resolver calls ``check``
    for the whole model and reports every problem at once.
    """

    requires: ClassVar[tuple[str, ...]] = ()

    def check(self, module: nn.Module) -> str | None:
        """Return a description of why this rule cannot handle ``module``, or ``None``."""
        missing = [
            name for name in self.requires if not isinstance(getattr(module, name, None), Tensor)
        ]
        if missing:
            return f"needs the parameter(s) {', '.join(missing)}, which the module lacks"
        return None

    @abstractmethod
    def apply(self, module: nn.Module, forward: Callable[..., Tensor], *args, **kwargs) -> Any:
        """Compute ``forward(*args, **kwargs)`` so that its gradient follows the rule.

        Parameters
        ----------
        module : torch.nn.Module
            The module being called; its parameters are the ones of this call.
        forward : callable
            The module's ordinary forward.
        """


def _normalize_zero_params(zero_params: str | Iterable[str] | None) -> tuple[str, ...]:
    if zero_params is None:
        return ()
    if isinstance(zero_params, str):
        return (zero_params,)
    return tuple(zero_params)


_NOT_LINEAR = "is not linear in its input; LRP rules of this kind need a linear layer"


class LinearRule(Rule):
    """Base of the LRP rules: a rule given by its :class:`Group` s of :class:`Term` s.

    Subclasses define :meth:`groups` and a ``stabilizer`` field; ``zero_params`` (if present)
    names parameters that every term sets to zero.
    """

    stabilizer: Any
    zero_params: Any = None

    @abstractmethod
    def groups(self) -> tuple[Group, ...]:
        """The rule's groups of terms."""

    def stabilizer_fn(self) -> Callable[[Tensor], Tensor]:
        return Stabilizer.ensure(self.stabilizer, owner=type(self).__name__, name="stabilizer")

    def check(self, module: nn.Module) -> str | None:
        from funcattr import types  # local: types imports torchvision, keep core import light

        if isinstance(module, types.Activation | types.MaxPool) or isinstance(
            module, nn.Softmax | nn.LogSoftmax | nn.Dropout
        ):
            return _NOT_LINEAR
        return super().check(module)

    def apply(self, module: nn.Module, forward: Callable[..., Tensor], *args, **kwargs):
        if not args or not isinstance(args[0], Tensor):
            raise TypeError(
                f"{self!r} on {type(module).__name__}: expected a tensor as the first positional "
                f"argument, got {type(args[0]).__name__ if args else 'no arguments'}."
            )
        x = args[0]
        output = forward(*args, **kwargs)
        if not isinstance(output, Tensor):
            raise TypeError(
                f"{self!r} on {type(module).__name__}: the module must return one tensor, got "
                f"{type(output).__name__}."
            )
        plan = self.plan()
        if hasattr(forward, "linear_op"):  # computed once per module by functionalize
            op = None if kwargs else forward.linear_op
        else:
            op = linear_op(module, kwargs)
        if op is not None:
            bias = getattr(module, "bias", None)
            return modified_gradient(x, output, partial(_linear_backward, plan, op),
                                     module.weight, bias, recompute=partial(_linear_recompute, op),
                                     site=forward, keep_output=uses_output(plan, bias is not None))
        if not hasattr(forward, "with_state"):
            raise TypeError(
                f"{self!r} on {type(module).__name__}: rules apply to modules through "
                f"funcattr.functionalize; call the module via the functionalized model."
            )
        state = forward.state()
        names = tuple(name for name in module._parameters if name in state)
        buffers = {name: value for name, value in state.items() if name not in names}
        call = _GenericCall(forward.with_state, names, buffers, args[1:], kwargs,
                            affine_input_vjp(module, args[1:], kwargs))
        return modified_gradient(x, output, partial(generic_backward, plan, call),
                                 *(state[name] for name in names),
                                 recompute=partial(_generic_recompute, call), site=forward,
                                 keep_output=any(group.gate for group in plan.groups))

    def plan(self) -> _Plan:
        """The rule's groups and settings, computed once per distinct rule value (and kept
        on the rule object itself: hashing a rule on every call is measurable on small
        models). An unhashable, hence possibly mutable, user rule gets a new plan per call."""
        cached = self.__dict__.get("_funcattr_plan")
        if cached is not None:
            return cached
        try:
            plan = _PLANS.get(self)
        except TypeError:  # an unhashable user rule
            return self._make_plan()
        if plan is None:
            plan = _PLANS[self] = self._make_plan()
        with contextlib.suppress(AttributeError, TypeError):  # e.g. a rule with __slots__
            object.__setattr__(self, "_funcattr_plan", plan)
        return plan

    def _make_plan(self) -> _Plan:
        return _Plan(self, self.groups(), self.stabilizer_fn(),
                     _normalize_zero_params(self.zero_params))


_PLANS: dict[Any, Any] = {}


def _linear_backward(plan, op, x, y, tensors, grad):
    weight, bias = tensors
    return lrp_backward(plan, op, x, y, weight, bias, grad)


def _linear_recompute(op, x, tensors):
    weight, bias = tensors
    return op.forward(x, weight, bias)


def _generic_recompute(call, x, tensors):
    return call(x, dict(zip(call.names, tensors, strict=True)))


@dataclass(frozen=True, eq=False)  # compared by identity: one plan per rule value
class _Plan:
    rule: LinearRule
    groups: tuple[Group, ...]
    stabilizer: Callable[[Tensor], Tensor]
    zero_params: tuple[str, ...]
    programs: dict = field(default_factory=dict, repr=False)  # (sign, has_bias) -> _Program

    def zeroed(self, term: Term) -> frozenset[str]:
        return frozenset(term.zero) | frozenset(self.zero_params)

    @property
    def splits_sign(self) -> bool:
        """Whether some term takes the positive or negative part of the input."""
        return any(term.input in ("positive", "negative")
                   for group in self.groups for term in group.terms)


# --------------------------------------------------------------------------------------------
# Linear layers as (forward without bias, input VJP) pairs
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _LinearOp:
    """``u -> f(u; W)`` without bias and its input VJP, for one linear module call."""

    kind: str  # 'dense', 'conv', 'conv_transpose'
    ndim: int = 0
    stride: tuple[int, ...] = ()
    padding: Any = ()
    dilation: tuple[int, ...] = ()
    groups: int = 1
    output_padding: tuple[int, ...] = ()
    module: nn.Module | None = field(default=None, compare=False)

    def forward(self, u: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
        if self.kind == "dense":
            return F.linear(u, weight, bias)
        if self.kind == "conv":
            return self.module._conv_forward(u, weight, bias)
        transpose = (F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d)[self.ndim - 1]
        return transpose(u, weight, bias, self.stride, self.padding, self.output_padding,
                         self.groups, self.dilation)

    def input_vjp(self, grad: Tensor, weight: Tensor, input: Tensor) -> Tensor:
        """``(d f(u; weight) / d u)^T grad`` at an input shaped like ``input``; ``grad`` may
        stack several output gradients in an extra first dimension."""
        if self.kind == "dense":
            return grad @ weight
        if grad.ndim > input.ndim:  # (K, B, ...): fold the K gradients into the batch
            count, batch = grad.shape[0], input.shape[0]
            if self._generic_vjp:
                return torch.stack([self.input_vjp(g, weight, input) for g in grad])
            folded = grad.reshape(count * batch, *grad.shape[2:])
            # the convolution's input VJP reads only the input's shape: uninitialised memory
            # that nobody touches costs no time
            shape_only = input.new_empty((count * batch, *input.shape[1:]))
            return self.input_vjp(folded, weight, shape_only).view(count, *input.shape)
        if self._generic_vjp:
            primal = torch.zeros_like(input)
            return torch.func.vjp(lambda u: self.forward(u, weight), primal)[1](grad)[0]
        return _convolution_backward(
            grad, input, weight, None, self.stride, self.padding, self.dilation,
            self.kind == "conv_transpose", self._output_padding, self.groups, _INPUT_ONLY,
        )[0]

    @cached_property
    def _generic_vjp(self) -> bool:
        """Padding modes the convolution's own backward does not cover ('reflect', 'same')."""
        return self.kind == "conv" and (self.module.padding_mode != "zeros"
                                        or isinstance(self.padding, str))

    @cached_property
    def _output_padding(self) -> tuple[int, ...]:
        return self.output_padding or (0,) * self.ndim


_convolution_backward = torch.ops.aten.convolution_backward
_INPUT_ONLY = (True, False, False)


_CONVS = {nn.Conv1d: 1, nn.Conv2d: 2, nn.Conv3d: 3}
_CONV_TRANSPOSES = {nn.ConvTranspose1d: 1, nn.ConvTranspose2d: 2, nn.ConvTranspose3d: 3}


def linear_op(module: nn.Module, kwargs: Mapping[str, Any] | None = None) -> _LinearOp | None:
    """The fast linear description of ``module``'s call, or ``None`` for the generic path."""
    if kwargs:
        return None
    kind = type(module)
    if kind.forward is nn.Linear.forward and isinstance(module, nn.Linear):
        return _LinearOp("dense")
    for base, ndim in _CONVS.items():
        if isinstance(module, base) and kind.forward is base.forward:
            return _LinearOp("conv", ndim, module.stride, module.padding, module.dilation,
                             module.groups, module=module)
    for base, ndim in _CONV_TRANSPOSES.items():
        if isinstance(module, base) and kind.forward is base.forward:
            return _LinearOp("conv_transpose", ndim, module.stride, module.padding,
                             module.dilation, module.groups, module.output_padding,
                             module=module)
    return None


# --------------------------------------------------------------------------------------------
# The generic rule
# --------------------------------------------------------------------------------------------

def concrete_value(tensor: Tensor) -> Tensor | None:
    """The plain tensor under functorch wrappers, or ``None`` if its values cannot be read.

    Values are unreadable under ``vmap`` (batched), while compiling, and for fake tensors.
    """
    if torch.compiler.is_compiling():
        return None
    while _functorch.is_functorch_wrapped_tensor(tensor):
        if _functorch.is_batchedtensor(tensor):
            return None
        tensor = _functorch.get_unwrapped(tensor)
    if type(tensor) is not Tensor and not isinstance(tensor, nn.Parameter):
        return None
    return tensor


def _is_batched(tensor: Tensor) -> bool:
    """Whether a ``vmap`` level batches this tensor (in-place ops would mix batch levels)."""
    while True:
        if _functorch.is_batchedtensor(tensor) or _functorch.is_legacy_batchedtensor(tensor):
            return True
        if not _functorch.is_functorch_wrapped_tensor(tensor):
            return False
        tensor = _functorch.get_unwrapped(tensor)


def is_transformed(value: Any) -> bool:
    """Whether ``value`` is a tensor wrapped by a ``torch.func`` transform (vmap, grad, ...)."""
    return isinstance(value, Tensor) and (
        _functorch.is_functorch_wrapped_tensor(value) or _functorch.is_legacy_batchedtensor(value)
    )


def is_differentiated(values: Iterable[Any]) -> bool:
    """Whether autograd or an outer ``torch.func`` transform may differentiate through any of
    these tensors (then computations on them must be recorded)."""
    for value in values:
        if not isinstance(value, Tensor):
            continue
        while _functorch.is_functorch_wrapped_tensor(value):
            if not _functorch.is_batchedtensor(value):
                return True  # a grad/jvp level wraps it
            value = _functorch.get_unwrapped(value)
        if torch.is_grad_enabled() and value.requires_grad:
            return True
    return False


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


def _input_key(modifier: InputMod, sign: str | None) -> Hashable | None:
    """Canonical input key; ``None`` when the modified input is exactly zero."""
    if modifier == "positive":
        if sign == "nonnegative":
            return "identity"
        if sign == "nonpositive":
            return None
    if modifier == "negative":
        if sign == "nonpositive":
            return "identity"
        if sign == "nonnegative":
            return None
    return modifier


def _add(total: Tensor | None, value: Tensor) -> Tensor:
    return value if total is None else total + value


def _lincomb(items: Iterable[tuple[Tensor, float]], inplace: bool = False) -> Tensor | None:
    """``sum_i c_i t_i`` with one fused pass per term (``torch.add(..., alpha=c)``).

    With ``inplace`` (no graph is being recorded) the sum is accumulated in the first tensor
    it allocates; the inputs are never modified.
    """
    total, owned = None, False
    for tensor, coefficient in items:
        if coefficient == 0.0:
            continue
        if total is None:
            total, owned = (tensor, False) if coefficient == 1.0 else (tensor * coefficient, True)
        elif inplace and owned:
            total.add_(tensor, alpha=coefficient)
        else:
            total, owned = torch.add(total, tensor, alpha=coefficient), True
    return total


def _quotient(plan: _Plan, z: Tensor, grad: Tensor, inplace: bool, nonnegative: bool = False,
              owned: bool = False) -> Tensor:
    """``grad / stabilizer(z)``; the default stabilizer runs in place when no graph is recorded
    (in ``z`` itself if this backward ``owned`` it; ``nonnegative``: ``z >= 0`` for sure)."""
    stabilizer = plan.stabilizer
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


def _gated(plan: _Plan, group: Group, y: Tensor | None, grad: Tensor, z: Tensor | None,
           inplace: bool = False, nonnegative: bool = False, owned: bool = False) -> Tensor:
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


Coefficients = dict[tuple[Hashable, Any], float]


def _coefficients(plan: _Plan, sign: str | None, has_bias: bool):
    """Per group: the coefficients of every (input, parameter primitive) product in ``z``, and
    of every bias primitive; terms whose input is exactly zero are dropped."""
    tables = []
    for group in plan.groups:
        products: Coefficients = {}
        biases: dict[Any, float] = {}
        for term in group.terms:
            key = _input_key(term.input, sign)
            zeroed = plan.zeroed(term)
            for primitive, coefficient in term.param_mod.terms:
                factor = term.sign * coefficient
                if key is not None and "weight" not in zeroed:
                    products[key, primitive] = products.get((key, primitive), 0.0) + factor
                if has_bias and "bias" not in zeroed:
                    biases[primitive] = biases.get(primitive, 0.0) + factor
        tables.append((products, biases))
    return tables


def _rewrite_negative(tables: list) -> None:
    """Where an input meets both ``W+`` and ``W-``, use ``W- = W - W+`` (and ``b- = b - b+``):
    ``f(x; W)`` is the layer output itself, so this saves one product and one VJP."""
    keys = {key for products, _ in tables for key, _ in products}
    for key in keys:
        used = {primitive for products, _ in tables for k, primitive in products if k == key}
        if {"positive", "negative"} <= used:
            for products, biases in tables:
                negative = products.pop((key, "negative"), 0.0)
                bias_negative = biases.pop("negative", 0.0)
                for primitive, sign in (("identity", 1.0), ("positive", -1.0)):
                    products[key, primitive] = products.get((key, primitive), 0.0) + sign * negative
                    biases[primitive] = biases.get(primitive, 0.0) + sign * bias_negative


def _cancel_identity_bias(tables: list) -> None:
    """``f(x; W)`` is read off the output as ``y - b``: move that ``-b`` into the bias table."""
    for products, biases in tables:
        coefficient = products.get(("identity", "identity"), 0.0)
        if coefficient:
            biases["identity"] = biases.get("identity", 0.0) - coefficient


def _foldable_biases(tables: list) -> dict[tuple[Hashable, Any], Any]:
    """Products that can carry a bias primitive inside the convolution (saving a pass): the
    primitive's bias coefficient equals the product's coefficient in every group."""
    folded = {}
    pairs = {pair for products, _ in tables for pair in products}
    for key, primitive in pairs:
        if (key, primitive) == ("identity", "identity"):
            continue
        if sum(1 for k, p in pairs if p == primitive) != 1:
            continue
        if all(biases.get(primitive, 0.0) == products.get((key, primitive), 0.0)
               for products, biases in tables):
            folded[key, primitive] = primitive
    return folded


@dataclass(frozen=True)
class _Program:
    """A rule's backward for one input sign pattern, reduced to coefficient tables."""

    groups: tuple  # per group: ((key, primitive, c), ...), ((bias primitive, c), ...)
    folded: Mapping  # (key, primitive) -> bias primitive computed inside that product
    vjps: tuple  # per input key: (key, ((primitive, ((group index, c), ...)), ...))
    private: frozenset  # products that only one group uses: free for that group to overwrite
    uses_output: bool  # whether the layer's output y is read (f(x; W) = y - b, or a gate)
    nonnegative: tuple  # per group: z >= 0 for sure (a sum of non-negative products)


def _compile(plan: _Plan, sign: str | None, has_bias: bool) -> _Program:
    tables = _coefficients(plan, sign, has_bias)
    _rewrite_negative(tables)
    if has_bias:  # without a bias, y is f(x; W) itself
        _cancel_identity_bias(tables)
    folded = _foldable_biases(tables) if has_bias else {}
    groups = tuple(
        (tuple((key, primitive, c) for (key, primitive), c in products.items() if c != 0.0),
         tuple((primitive, c) for primitive, c in biases.items()
               if c != 0.0 and primitive not in folded.values()))
        for products, biases in tables
    )
    vjps = []
    for key in dict.fromkeys(key for products, _ in tables for key, _ in products):
        primitives = []
        for primitive in dict.fromkeys(p for products, _ in tables for k, p in products
                                       if k == key):
            uses = tuple(
                (index, group.weight * products[key, primitive])
                for index, (group, (products, _)) in enumerate(zip(plan.groups, tables))
                if group.weight * products.get((key, primitive), 0.0) != 0.0
            )
            if uses:
                primitives.append((primitive, uses))
        vjps.append((key, tuple(primitives)))
    counts = Counter((key, primitive) for items, _ in groups for key, primitive, _ in items)
    private = frozenset(pair for pair, count in counts.items() if count == 1)
    uses_output = ("identity", "identity") in counts or any(
        group.gate is not None for group in plan.groups)
    nonnegative = tuple(
        all(_sign_of(key, _KEY_SIGNS, sign) * _sign_of(primitive, _PRIMITIVE_SIGNS) * c > 0
            for key, primitive, c in items)
        and all(_sign_of(primitive, _PRIMITIVE_SIGNS) * c > 0 for primitive, c in bias_items)
        for items, bias_items in groups
    )
    return _Program(groups, folded, tuple(vjps), private, uses_output, nonnegative)


_KEY_SIGNS = {"positive": 1, "negative": -1, "ones": 1}
_PRIMITIVE_SIGNS = {"positive": 1, "negative": -1, "ones": 1, "square": 1}


def _sign_of(name: Any, signs: Mapping[str, int], input_sign: str | None = None) -> int:
    """+1 / -1 where a modified input or parameter provably has that sign (zeros allowed),
    else 0; the identity input has the input's sign."""
    if name == "identity" and input_sign is not None:
        return 1 if input_sign == "nonnegative" else -1
    return signs.get(name, 0) if isinstance(name, str) else 0


_SIGNS = (None, "nonnegative", "nonpositive")


def _program(plan: _Plan, sign: str | None, has_bias: bool) -> _Program:
    program = plan.programs.get((sign, has_bias))
    if program is None:
        program = plan.programs[sign, has_bias] = _compile(plan, sign, has_bias)
    return program


def uses_output(plan: _Plan, has_bias: bool) -> bool:
    """Whether the rule's backward may read the layer's output (for any input sign)."""
    signs = _SIGNS if plan.splits_sign else (None,)
    return any(_program(plan, sign, has_bias).uses_output for sign in signs)


def _stacked_grads(grad: Tensor, tensors: Iterable[Tensor | None]) -> tuple[Tensor, int] | None:
    """``(K stacked plain gradients, vmap level)`` when ``grad`` is the only batched tensor:
    one ``vmap`` level (several output gradients pulled back at once, e.g. multi-target)
    over plain tensors, nothing recorded."""
    if (not _functorch.is_batchedtensor(grad) or torch.is_grad_enabled()
            or torch.compiler.is_compiling()
            or any(t is not None and is_transformed(t) for t in tensors)):
        return None
    inner = _functorch.get_unwrapped(grad)
    if is_transformed(inner) or type(inner) is not Tensor:
        return None
    return inner.movedim(_functorch.maybe_get_bdim(grad), 0), _functorch.maybe_get_level(grad)


def lrp_backward(
    plan: _Plan, op: _LinearOp, x: Tensor, y: Tensor | None, weight: Tensor,
    bias: Tensor | None, grad: Tensor,
) -> Tensor:
    """The generic LRP rule for a linear layer ``y = f(x; W) + b``; returns the relevance.

    Every term's output is a linear combination of products ``f(in(x); prim(W))`` and bias
    primitives; ``f(x; W)`` is ``y - b``, so its bias cancels symbolically. Under a ``vmap``
    over output gradients only (the layer's tensors unbatched), the products are computed
    once and all gradients go through one folded convolution, not op-by-op batching rules.
    """
    stacked = _stacked_grads(grad, (x, y, weight, bias))
    if stacked is not None:
        grads, level = stacked
        relevance = _lrp_backward(plan, op, x, y, weight, bias, grads)
        return _functorch._add_batch_dim(relevance, 0, level)
    return _lrp_backward(plan, op, x, y, weight, bias, grad)


def _lrp_backward(
    plan: _Plan, op: _LinearOp, x: Tensor, y: Tensor | None, weight: Tensor,
    bias: Tensor | None, grad: Tensor,
) -> Tensor:
    """:func:`lrp_backward`; ``grad`` is shaped like ``y`` or stacks K of them ``(K, *y.shape)``."""
    # nothing records this backward and no transform batches it: reuse buffers in place
    inplace = (not torch.is_grad_enabled() and not torch.compiler.is_compiling()
               and not any(_is_batched(t) for t in (x, y, grad) if t is not None))
    program = _program(plan, _input_sign(x) if plan.splits_sign else None, bias is not None)
    weights: dict[Any, Tensor] = {}

    def weight_of(primitive: Any) -> Tensor:
        if primitive not in weights:
            weights[primitive] = _apply_param_primitive(primitive, weight, "weight")
        return weights[primitive]

    inputs: dict[Hashable, Tensor] = {}

    def input_of(key: Hashable) -> Tensor:
        if key not in inputs:
            inputs[key] = _apply_input_mod(key, x)
        return inputs[key]

    # 1. z of every group from the shared products
    products: dict[tuple[Hashable, Any], Tensor] = {}
    quotients = []
    for index, (group, (items, bias_items)) in enumerate(
            zip(plan.groups, program.groups, strict=True)):
        terms = []
        for key, primitive, coefficient in items:
            if key == "identity" and primitive == "identity":  # f(x; W) = y - b
                terms.append((y, coefficient))
                continue
            if (key, primitive) not in products:
                folded = program.folded.get((key, primitive))
                if (key, primitive) == ("ones", "ones") and folded is None and inplace:
                    products[key, primitive] = _ones_product(op, x, weight)
                else:
                    products[key, primitive] = op.forward(
                        input_of(key), weight_of(primitive),
                        None if folded is None else _apply_param_primitive(folded, bias, "bias"),
                    )
            terms.append((products[key, primitive], coefficient))
        z = _lincomb(terms, inplace)
        owned = z is not None and _overwritable(z, terms, items, program)
        if bias_items:
            bias_total = _bias_view(_lincomb(
                (_apply_param_primitive(primitive, bias, "bias"), c)
                for primitive, c in bias_items
            ), op)
            if z is None:
                z, owned = bias_total.expand_as(grad), False
            elif inplace and owned:
                z.add_(bias_total)
            else:
                z, owned = z + bias_total, True
        # 2. divide the incoming relevance by the stabilised denominator
        quotients.append(_gated(plan, group, y, grad, z, inplace,
                                nonnegative=program.nonnegative[index], owned=owned))

    # 3. one VJP per (input, primitive), with output gradients sum_G weight_G c_G s_G
    relevance = None
    for key, primitives in program.vjps:
        vjp = None
        for primitive, uses in primitives:
            output_grad = _lincomb(((quotients[index], c) for index, c in uses), inplace)
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


def _overwritable(z: Tensor, terms: list, items: tuple, program: _Program) -> bool:
    """Whether ``z`` is a sum this backward made, or a product no other group reads (and not
    a remembered constant)."""
    for (tensor, _), (key, primitive, _) in zip(terms, items, strict=True):
        if tensor is z:
            return (key, primitive) not in (("identity", "identity"), ("ones", "ones")) and (
                (key, primitive) in program.private)
    return True


def _ones_product(op: _LinearOp, x: Tensor, weight: Tensor) -> Tensor:
    """``f(1; 1)`` (Flat's denominator, the receptive field sizes): it depends only on shapes,
    so the layer remembers the last one. Callers must not modify it."""
    key = (x.shape, x.dtype, x.device, weight.shape)
    cached = op.__dict__.get("_funcattr_ones")
    if cached is None or cached[0] != key:
        value = op.forward(torch.ones_like(x), torch.ones_like(weight))
        cached = (key, value)
        object.__setattr__(op, "_funcattr_ones", cached)
    return cached[1]


def _bias_view(bias: Tensor, op: _LinearOp) -> Tensor:
    """Reshape a bias so it broadcasts against the output (channels at dim 1 for convs)."""
    if op.kind == "dense":
        return bias
    return bias.reshape(bias.shape[0], *(1,) * op.ndim)


@dataclass(frozen=True)
class _GenericCall:
    """Evaluate a module with replaced own parameters and a replaced first input."""

    with_state: Callable[..., Tensor] = field(compare=False)
    names: tuple[str, ...]
    buffers: Mapping[str, Tensor] = field(compare=False)
    args: tuple = field(compare=False)
    kwargs: Mapping[str, Any] = field(compare=False)
    input_vjp: InputVJP | None = field(default=None, compare=False)  # closed form, if affine

    def __call__(self, u: Tensor, params: Mapping[str, Tensor]) -> Tensor:
        return self.with_state({**self.buffers, **params}, u, *self.args, **self.kwargs)

    def vjp(self, u: Tensor, params: Mapping[str, Tensor]
            ) -> tuple[Tensor, Callable[[Tensor], Tensor]]:
        """``(value at u, pullback)`` of ``u -> self(u, params)``."""
        if self.input_vjp is None:
            value, pullback = torch.func.vjp(lambda u_: self(u_, params), u)
            return value, lambda grad: pullback(grad)[0]
        return self(u, params), partial(self.input_vjp, params=params, buffers=self.buffers,
                                        u=u)


def generic_backward(plan: _Plan, call: _GenericCall, x: Tensor, y: Tensor | None,
                     params: Sequence[Tensor], grad: Tensor) -> Tensor:
    """The generic LRP rule for any module: one forward and one VJP per term.

    Under a ``vmap`` over output gradients only (see :func:`lrp_backward`), the K gradients
    go through the plain rule one after another (``torch.func.vjp`` inside a Function's
    backward does not batch in torch 2.14).
    """
    stacked = _stacked_grads(grad, (x, y, *params))
    if stacked is not None:
        grads, level = stacked
        relevance = torch.stack([_generic_backward(plan, call, x, y, params, g) for g in grads])
        return _functorch._add_batch_dim(relevance, 0, level)
    return _generic_backward(plan, call, x, y, params, grad)


def _generic_backward(plan: _Plan, call: _GenericCall, x: Tensor, y: Tensor | None,
                      params: Sequence[Tensor], grad: Tensor) -> Tensor:
    named = dict(zip(call.names, params, strict=True))
    evaluated = []
    z_by_group: list[Tensor | None] = [None] * len(plan.groups)
    for index, group in enumerate(plan.groups):
        for term in group.terms:
            zeroed = plan.zeroed(term)
            modified = {
                name: torch.zeros_like(value) if name in zeroed else term.param_mod(value, name)
                for name, value in named.items()
            }
            u = _apply_input_mod(term.input, x)
            value, pullback = call.vjp(u, modified)
            evaluated.append((index, term, u, pullback))
            signed = value if term.sign == 1.0 else term.sign * value
            z_by_group[index] = _add(z_by_group[index], signed)
    grads = [
        group.weight * _gated(plan, group, y, grad, z)
        for group, z in zip(plan.groups, z_by_group, strict=True)
    ]
    relevance = None
    for index, term, u, pullback in evaluated:
        vjp = pullback(grads[index])
        contribution = vjp if term.input == "ones" else u * vjp
        relevance = _add(relevance, contribution if term.sign == 1.0 else term.sign * contribution)
    return relevance


# --------------------------------------------------------------------------------------------
# Which differentiation level the rules act on
# --------------------------------------------------------------------------------------------

_EVERY_LEVEL = object()
_RULE_LEVEL: ContextVar[Any] = ContextVar("funcattr_rule_level", default=_EVERY_LEVEL)


@contextmanager
def rules_at_this_level() -> Iterator[None]:
    """Within this block, rules modify only the gradient of the current ``torch.func`` level.

    An attribution is one pullback through the rule-applied model. When it is itself
    differentiated (``torch.func.grad`` of an explanation loss, ``create_graph``), the outer
    derivative of the forward pass must be the model's true derivative, as with Zennit's
    ``inactive()``. Outside such a block (a user differentiating ``fn`` directly) every
    level's gradient is the rule's.
    """
    token = _RULE_LEVEL.set(_functorch.maybe_current_level())
    try:
        yield
    finally:
        _RULE_LEVEL.reset(token)


def _record_level(ctx: Any) -> None:
    level = _RULE_LEVEL.get()
    ctx.rule_applies = level is _EVERY_LEVEL or level == _functorch.maybe_current_level()


# --------------------------------------------------------------------------------------------
# One autograd.Function for every rule: value y, input gradient backward(x, y, tensors, grad)
# --------------------------------------------------------------------------------------------

def _rule_backward(ctx: Any, grad: Tensor) -> tuple:
    unused = (None,) * (3 + ctx.count)
    if not ctx.rule_applies:  # the true derivative, through the ordinary output y
        return (None, grad, *unused)
    x, y, *tensors = ctx.saved_tensors
    output = getattr(ctx, "kept_output", None)
    if output is not None:  # the output was kept as an alias (see _EagerModifiedGradient)
        policy = ctx.policy
        if output._version != ctx.output_version:  # changed in place downstream: anew
            policy.site.output_changed = True
            y = policy.recompute(x, tensors)
        elif torch.is_grad_enabled():  # create_graph: y must carry its dependence on x, W
            y = policy.recompute(x, tensors)
        else:
            y = output
    return (ctx.backward(x, y, tensors, grad), None, *unused)


class _ModifiedGradient(torch.autograd.Function):
    """New-style Function (``setup_context``, vmap rule) for use under ``torch.func``.

    The output is a copy of ``y``: the saved ``y`` must survive in-place operations downstream.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(x, y, backward, policy, *tensors):
        return y.clone()

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, y, backward, _policy, *tensors = inputs
        ctx.save_for_backward(x, y, *tensors)
        ctx.backward, ctx.count = backward, len(tensors)
        _record_level(ctx)

    backward = staticmethod(_rule_backward)


class _EagerModifiedGradient(torch.autograd.Function):
    """The same Function in the classic style, for plain tensors, mostly without the copy.

    The output is an alias of ``y`` (``y``'s version counter follows it). A backward that
    never reads ``y`` keeps nothing. Otherwise, if something downstream changes the output in
    place (a functional ``out += identity``), the backward computes ``y`` anew and the call
    site copies ``y`` from then on.
    """

    @staticmethod
    def forward(ctx, x, y, backward, policy, *tensors):
        ctx.backward, ctx.count = backward, len(tensors)
        _record_level(ctx)
        if policy is None or policy.site.output_changed:
            ctx.save_for_backward(x, y, *tensors)
            return y.clone()
        ctx.save_for_backward(x, None, *tensors)
        if policy.keep_output:
            ctx.kept_output, ctx.output_version, ctx.policy = y.detach(), y._version, policy
        return y.detach()

    backward = staticmethod(_rule_backward)


class _CallSite:
    """What a call site has learnt: whether its output was changed in place downstream."""

    output_changed = False


@dataclass(frozen=True)
class _OutputPolicy:
    keep_output: bool
    recompute: Callable[[Tensor, Sequence[Tensor]], Tensor]
    site: _CallSite


def modified_gradient(x: Tensor, y: Tensor, backward: Callable, *tensors: Tensor | None,
                      recompute: Callable | None = None, site: Any = None,
                      keep_output: bool = True) -> Tensor:
    """Return ``y`` whose gradient with respect to ``x`` is ``backward(x, y, tensors, grad)``.

    Everything else (``y``'s own graph) gets no gradient. ``recompute(x, tensors)`` computes
    ``y`` again; given it, plain tensors skip copying ``y`` (see ``_EagerModifiedGradient``);
    ``keep_output=False`` says ``backward`` ignores ``y`` (it gets ``None``). ``site`` (an
    object that takes attributes, one per call site) remembers whether the output was
    changed in place before.
    """
    transformed = torch.compiler.is_compiling() or _functorch.is_legacy_batchedtensor(x) or (
        _functorch.maybe_current_level() is not None  # some torch.func transform is active
        and any(is_transformed(t) for t in (x, y, *tensors))
    )
    if transformed:
        return _ModifiedGradient.apply(x, y, backward, None, *tensors)
    policy = None
    if recompute is not None:
        call_site = getattr(site, "_funcattr_call_site", None)
        if call_site is None:
            call_site = _CallSite()
            with contextlib.suppress(AttributeError, TypeError):  # e.g. a bound method
                site._funcattr_call_site = call_site
        policy = _OutputPolicy(keep_output, recompute, call_site)
    return _EagerModifiedGradient.apply(x, y, backward, policy, *tensors)


def _elementwise_backward(ctx: Any, grad: Tensor) -> tuple:
    (x,) = ctx.saved_tensors
    if not ctx.rule_applies:  # the true derivative, recomputed (only for higher orders)
        return torch.func.vjp(ctx.forward, x)[1](grad)[0], None, None, None, None
    return ctx.backward_fn(x, grad), None, None, None, None


def _out_of_place(forward: Callable[[Tensor], Tensor], in_place: bool
                  ) -> Callable[[Tensor], Tensor]:
    """``forward`` that leaves its input intact: an in-place one (``ReLU(inplace=True)``)
    gets a copy."""
    return (lambda u: forward(u.clone())) if in_place else forward


def _fresh(y: Tensor, x: Tensor) -> Tensor:
    return y.clone() if y is x or y._base is x or x._base is y else y


class _ElementwiseRule(torch.autograd.Function):
    """Value ``forward(x)``, input gradient ``backward_fn(x, grad)``; for ``torch.func``."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x, forward, backward_fn, reads_input, in_place):
        return _fresh(_out_of_place(forward, in_place)(x), x)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, forward, backward_fn, _reads_input, in_place = inputs
        ctx.save_for_backward(x)
        ctx.forward, ctx.backward_fn = _out_of_place(forward, in_place), backward_fn
        _record_level(ctx)

    backward = staticmethod(_elementwise_backward)


class _EagerElementwiseRule(torch.autograd.Function):
    """The same Function in the classic style, for plain tensors.

    A rule that never reads ``x`` lets an in-place ``forward`` (``ReLU(inplace=True)``)
    overwrite ``x`` as in the original model, with no copy.
    """

    @staticmethod
    def forward(ctx, x, forward, backward_fn, reads_input, in_place):
        ctx.forward, ctx.backward_fn = _out_of_place(forward, in_place), backward_fn
        _record_level(ctx)
        if in_place and not reads_input and ctx.rule_applies and _may_overwrite(x):
            y = forward(x)
            if y is x:
                ctx.save_for_backward(None)
                ctx.mark_dirty(x)
                return x
        else:
            y = ctx.forward(x)
        ctx.save_for_backward(x)
        return _fresh(y, x)

    backward = staticmethod(_elementwise_backward)


def _may_overwrite(x: Tensor) -> bool:
    """Whether autograd lets a custom Function overwrite ``x`` (not a leaf that needs a
    gradient, not a view)."""
    return not (x.requires_grad and x.is_leaf) and x._base is None


def elementwise_rule(x: Tensor, forward: Callable[[Tensor], Tensor],
                     backward_fn: Callable[[Tensor | None, Tensor], Tensor],
                     reads_input: bool = True, in_place: bool = False) -> Tensor:
    """Return ``forward(x)`` with the input gradient ``backward_fn(x, grad_output)``.

    The output is computed inside the Function, so it is a fresh tensor that later in-place
    operations may modify. ``in_place`` says ``forward`` overwrites its input: it then gets
    a copy, unless the rule never reads ``x`` (``reads_input=False``; ``backward_fn`` gets
    ``None``) and autograd allows the overwrite, as in the original model.
    """
    transformed = torch.compiler.is_compiling() or is_transformed(x)
    function = _ElementwiseRule if transformed else _EagerElementwiseRule
    return function.apply(x, forward, backward_fn, reads_input, in_place)
