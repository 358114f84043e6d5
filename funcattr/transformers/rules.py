"""AttnLRP's and CP-LRP's rules, in the Gradient x Input form, as pure rules.

The backward of a Gradient x Input (G x I) rule carries *relevance divided by the activation*:
the relevance at any tensor ``a`` is ``a * grad_a``, and the plain gradient already is LRP-0
for every linear operation, residual addition, embedding sum, mean pooling, mask addition,
scaling and the softmax (AttnLRP, Prop. 3.1). The rules below change the gradient only where
AttnLRP and CP-LRP differ from it [achtibat2024]_ [ali2022]_:

- :class:`IdentityRule`: element-wise non-linearities, ``grad * f(x) / (x + eps)``;
- :class:`NormRule`: LayerNorm and RMSNorm with the standard deviation (the rms) held constant;
- :class:`ScaleOutput` / :class:`ScaleInput`: a gradient times a factor (the uniform rule on
  attention's q, k, v and on gated MLPs; 0 stops it, CP-LRP's constant attention);
- :class:`AttentionInputs`: the same factors on the query, key and value of
  ``torch.nn.MultiheadAttention``;
- :class:`AsGradient`: a relevance-form LRP rule (e.g. ``Gamma``) run inside the G x I form.

Every rule is a frozen value and changes the gradient only at the level the rules act on
(:func:`funcattr.core.rules_at_this_level`), so derivatives of an explanation stay exact.

.. [achtibat2024] R. Achtibat et al., "AttnLRP: Attention-Aware Layer-Wise Relevance
   Propagation for Transformers", ICML 2024.
.. [ali2022] A. Ali et al., "XAI for Transformers: Better Explanations through Conservative
   Propagation", ICML 2022.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from torch._C import _functorch

from funcattr.core import (
    ElementwiseRule,
    LinearRule,
    Rule,
    elementwise_rule,
    fast_path_available,
    is_transformed,
    no_transform_active,
    only_rule_level,
    replace_gradient,
    scale_gradient,
    stabilize,
    uses_reference,
)

__all__ = [
    "NORM_KINDS",
    "AsGradient",
    "AttentionInputs",
    "IdentityRule",
    "NormRule",
    "ScaleInput",
    "ScaleOutput",
    "norm_kind",
]

Factor = float | tuple[float, ...]


def _check_epsilon(owner: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not (
            math.isfinite(value) and value >= 0):
        raise ValueError(f"{owner}(epsilon={value!r}): expected a finite number >= 0, got "
                         f"{value!r}. Pass e.g. epsilon=1e-10.")


def _check_factor(owner: str, name: str, value: Any) -> None:
    items = value if isinstance(value, tuple) else (value,)
    if not items or any(isinstance(v, bool) or not isinstance(v, int | float)
                        or not math.isfinite(v) for v in items):
        raise TypeError(f"{owner}({name}={value!r}): expected a finite number or a tuple of "
                        f"them (one per equal slice of the last dimension), got {value!r}. "
                        f"Pass e.g. {name}=0.5 or {name}=(0.25, 0.25, 0.5).")


def _module_output(rule: Rule, module: nn.Module, forward: Callable[..., Any], args: tuple,
                   kwargs: dict) -> Tensor:
    output = forward(*args, **kwargs)
    if not isinstance(output, Tensor):
        raise TypeError(
            f"{rule!r} on {type(module).__name__}: expected a module that returns one tensor, "
            f"got {type(output).__name__}. Give this module no rule, or a rule written for its "
            f"outputs (see docs/rules.md).")
    return output


def _first(rule: Rule, module: nn.Module, args: tuple) -> Tensor:
    if not args or not isinstance(args[0], Tensor):
        got = type(args[0]).__name__ if args else "no positional arguments"
        raise TypeError(f"{rule!r} on {type(module).__name__}: expected the input tensor as the "
                        f"first positional argument, got {got}. Call the module with its input "
                        f"first, or give it another rule.")
    return args[0]


@dataclass(frozen=True)
class IdentityRule(ElementwiseRule):
    """AttnLRP's identity rule for element-wise non-linearities, ``R_in = R_out`` (Eq. 9).

    In the G x I form: ``grad_in = grad_out * f(x) / (x + epsilon)`` with an unsigned
    ``epsilon``, as the reference implementation (LXT) computes it.

    Parameters
    ----------
    epsilon : float
        Added to the input before dividing (``1e-10``: LXT's value).

    Examples
    --------
    >>> IdentityRule()
    IdentityRule(epsilon=1e-10)
    """

    epsilon: float = 1e-10
    reads_output: ClassVar[bool] = True

    def __post_init__(self) -> None:
        _check_epsilon("IdentityRule", self.epsilon)

    def backward(self, input: Tensor | None, grad_output: Tensor, *output: Tensor) -> Tensor:
        ratio = input + self.epsilon
        if torch.is_grad_enabled() or _functorch.maybe_current_level() is not None:
            return grad_output * (output[0] / ratio)  # recorded, or under a transform
        torch.div(output[0], ratio, out=ratio)  # nothing records: one buffer for all
        return ratio.mul_(grad_output)


def norm_kind(module: nn.Module) -> str | None:
    """How :class:`NormRule` reads ``module``: ``'layer_norm'`` (``torch.nn.LayerNorm`` and
    its subclasses that keep its forward), ``'rms_norm'`` (``torch.nn.RMSNorm``),
    ``'rms_weight'`` / ``'rms_one_plus_weight'`` (an RMSNorm of another library, e.g.
    ``transformers``' ``LlamaRMSNorm`` or Gemma's ``1 + weight``: ``weight * x / rms(x)``
    over the last dimension, told apart by evaluating the module once on a probe), or ``None``
    (a normalisation this rule does not know)."""
    if isinstance(module, nn.LayerNorm) and type(module).forward is nn.LayerNorm.forward:
        return "layer_norm"
    if isinstance(module, nn.RMSNorm) and type(module).forward is nn.RMSNorm.forward:
        return "rms_norm"
    weight = getattr(module, "weight", None)
    eps = _epsilon_of(module)
    if not isinstance(weight, Tensor) or weight.ndim != 1 or eps is None:
        return None
    generator = torch.Generator().manual_seed(0)
    probe = torch.randn(2, weight.shape[0], generator=generator, dtype=torch.float64)
    try:
        with torch.no_grad():
            got = module(probe.to(weight.dtype)).double()
    except Exception:  # a module we cannot probe is one we do not know
        return None
    unit = probe * torch.rsqrt(probe.square().mean(-1, keepdim=True) + eps)
    for kind, scale in (("rms_weight", weight), ("rms_one_plus_weight", 1 + weight)):
        expected = unit * scale.detach().double()
        if got.shape == expected.shape and torch.allclose(got, expected, rtol=1e-4, atol=1e-5):
            return kind
    return None


def _epsilon_of(module: nn.Module) -> float | None:
    for name in ("variance_epsilon", "eps", "epsilon"):
        value = getattr(module, name, None)
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    return None


def _layer_norm_backward(module: nn.Module, x: Tensor, y: Tensor | None, tensors: tuple,
                         grad: Tensor) -> Tensor:
    """``(g w - mean(g w)) / sigma``; ``tensors`` is ``(weight?, rstd?)`` (``rstd`` from the
    forward where it was computed there, else anew from ``x``)."""
    dims = tuple(range(-len(module.normalized_shape), 0))
    weight = tensors[0] if module.weight is not None else None
    if len(tensors) > (weight is not None):
        rstd = tensors[-1]
    else:
        rstd = torch.rsqrt(x.var(dims, unbiased=False, keepdim=True) + module.eps)
    fused = not (torch.is_grad_enabled() or any(map(is_transformed, (x, grad, rstd, weight))))
    return _sigma_constant_grad(grad, weight, rstd, tuple(module.normalized_shape), fused)


def _sigma_constant_grad(grad: Tensor, weight: Tensor | None, rstd: Tensor,
                         shape: tuple[int, ...], fused: bool) -> Tensor:
    """LayerNorm's input gradient with sigma constant, ``rstd * (g w - mean(g w))``.

    ``fused``: torch's LayerNorm backward kernel, ``rstd * (g w - mean(g w) - x_hat mean(g w
    x_hat))``, with every normalised value ``x_hat = 0`` (input and mean 0): this in one pass
    over ``g`` instead of four, where nothing records (the kernel's own derivative would be
    the wrong one).
    """
    if fused:
        return torch.ops.aten.native_layer_norm_backward(
            grad, torch.zeros_like(grad), shape, torch.zeros_like(rstd), rstd, weight, None,
            (True, False, False))[0]
    dims = tuple(range(-len(shape), 0))
    scaled = grad * weight if weight is not None else grad
    return (scaled - scaled.mean(dims, keepdim=True)) * rstd


class _LayerNormRule(torch.autograd.Function):
    """``torch.nn.LayerNorm`` with sigma held constant, as one Function where autograd is the
    only differentiation (no transform active): torch's LayerNorm kernel forward, and backward
    as :func:`_sigma_constant_grad`. Without the general machinery around each call, 2% of an
    AttnLRP explanation of MiniLM (13 LayerNorms) on a CPU."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor | None, bias: Tensor | None,
                shape: tuple[int, ...], eps: float) -> Tensor:
        y, _, rstd = torch.native_layer_norm(x, shape, weight, bias, eps)
        ctx.shape = shape
        ctx.save_for_backward(weight, rstd)
        return y

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple:
        weight, rstd = ctx.saved_tensors
        fused = not torch.is_grad_enabled()  # create_graph: the differentiable operations
        return (_sigma_constant_grad(grad, weight, rstd, ctx.shape, fused),
                None, None, None, None)


def _native_layer_norm(module: nn.Module, x: Tensor) -> tuple[Tensor, Tensor]:
    """``(y, rstd)`` of ``torch.nn.LayerNorm``'s own kernel (the value its forward returns),
    without recording the forward where only the rule's level differentiates ``x``."""
    recorded = not only_rule_level(x)
    with torch.enable_grad() if recorded else torch.no_grad():
        y, _, rstd = torch.native_layer_norm(x, module.normalized_shape, module.weight,
                                             module.bias, module.eps)
    return y, rstd.detach()


def _rms_norm_backward(dims: tuple[int, ...], eps: float, x: Tensor, y: Tensor | None,
                       tensors: tuple, grad: Tensor) -> Tensor:
    rstd = torch.rsqrt(x.square().mean(dims, keepdim=True) + eps)
    scaled = grad * tensors[0] if tensors else grad
    return scaled * rstd


NORM_KINDS = ("layer_norm", "rms_norm", "rms_weight", "rms_one_plus_weight")


@dataclass(frozen=True)
class NormRule(Rule):
    """AttnLRP's rule for LayerNorm and RMSNorm: the identity on ``1 / sigma`` (Prop. 3.4).

    The value is the module's own output; the gradient is the normalisation's with the
    standard deviation (LayerNorm) or the root mean square (RMSNorm) held constant, which
    in the G x I form is LRP-0 of the remaining linear map.

    Parameters
    ----------
    kind : str
        What the module computes, as :func:`norm_kind` tells it: ``'layer_norm'``,
        ``'rms_norm'`` (torch's), ``'rms_weight'`` or ``'rms_one_plus_weight'``.

    Examples
    --------
    >>> NormRule()
    NormRule(kind='layer_norm')
    """

    kind: str = "layer_norm"

    def __post_init__(self) -> None:
        if self.kind not in NORM_KINDS:
            raise ValueError(f"NormRule(kind={self.kind!r}): expected one of {NORM_KINDS}, got "
                             f"{self.kind!r}. Let funcattr.transformers.norm_kind(module) tell "
                             f"it.")

    def check(self, module: nn.Module) -> str | None:
        kind = norm_kind(module)
        if kind != self.kind:
            return (f"expected a module that computes {self.kind!r}, got one that computes "
                    f"{kind!r} (see funcattr.transformers.norm_kind)")
        return None

    def apply(self, module: nn.Module, forward: Callable[..., Any], *args, **kwargs) -> Tensor:
        x = _first(self, module, args)
        weight = getattr(module, "weight", None)
        plain_layer_norm = (self.kind == "layer_norm" and len(args) == 1 and not kwargs
                            and type(module).forward is nn.LayerNorm.forward)
        if plain_layer_norm and no_transform_active() and fast_path_available() and (
                not uses_reference()):
            return _LayerNormRule.apply(x, weight, module.bias,
                                        tuple(module.normalized_shape), module.eps)
        if plain_layer_norm and not is_transformed(x):
            # the forward's own 1 / sigma, kept for the backward (no second pass over x)
            y, rstd = _native_layer_norm(module, x)
            backward = _partial_backward(_layer_norm_backward, module)
            tensors = (rstd,) if weight is None else (weight, rstd)
            return replace_gradient(x, y, backward, *tensors)
        y = _module_output(self, module, forward, args, kwargs)
        if self.kind == "layer_norm":
            backward = _partial_backward(_layer_norm_backward, module)
        elif self.kind == "rms_norm":
            dims = tuple(range(-len(module.normalized_shape), 0))
            eps = module.eps if module.eps is not None else torch.finfo(x.dtype).eps
            backward = _partial_backward(_rms_norm_backward, dims, eps)
        else:
            backward = _partial_backward(_rms_norm_backward, (-1,), _epsilon_of(module))
            if self.kind == "rms_one_plus_weight":
                weight = 1 + weight
        if weight is None:
            return replace_gradient(x, y, backward)
        return replace_gradient(x, y, backward, weight)


def _partial_backward(function: Callable[..., Tensor], *bound: Any) -> Callable[..., Tensor]:
    def backward(x: Tensor, y: Tensor | None, tensors: tuple, grad: Tensor) -> Tensor:
        return function(*bound, x, y, tensors, grad)

    return backward


def _factor_tensor(rule: Rule, module: nn.Module, factor: tuple[float, ...], y: Tensor) -> Tensor:
    """One factor per equal slice of ``y``'s last dimension, as a vector."""
    size = y.shape[-1]
    if size % len(factor):
        raise ValueError(
            f"{rule!r} on {type(module).__name__}: expected a last dimension that splits into "
            f"{len(factor)} equal slices, got {size}. Give one factor per slice of the packed "
            f"projection.")
    return torch.tensor(factor, dtype=y.dtype, device=y.device).repeat_interleave(
        size // len(factor))


@dataclass(frozen=True)
class ScaleOutput(Rule):
    """The module's output gradient times ``factor``: AttnLRP's uniform rule on attention.

    On the q, k and v projections of a ``transformers`` attention, ``0.25``, ``0.25`` and
    ``0.5`` give the uniform rule on ``q k^T`` and ``A V`` (each operand half); ``0`` on q and
    k is CP-LRP (the attention weights constant). A tuple scales equal slices of the last
    dimension (a packed ``qkv`` projection such as GPT-2's ``c_attn``).

    Parameters
    ----------
    factor : float or tuple of float
        The factor, or one factor per equal slice of the output's last dimension.

    Examples
    --------
    >>> ScaleOutput(0.25)
    ScaleOutput(factor=0.25)
    """

    factor: Factor = 1.0

    def __post_init__(self) -> None:
        _check_factor("ScaleOutput", "factor", self.factor)

    def apply(self, module: nn.Module, forward: Callable[..., Any], *args, **kwargs) -> Tensor:
        y = _module_output(self, module, forward, args, kwargs)
        fresh = True  # not one of the inputs (a loop: called 18 times per MiniLM explanation)
        for value in args:
            fresh = fresh and value is not y
        for value in kwargs.values():
            fresh = fresh and value is not y
        factor = self.factor
        if isinstance(factor, tuple):
            factor = _factor_tensor(self, module, factor, y)
        return scale_gradient(y, factor, fresh=fresh)


@dataclass(frozen=True)
class ScaleInput(Rule):
    """The module's input gradient times ``factor`` (its other arguments untouched).

    On the down projection of a gated MLP, ``0.5`` is AttnLRP's uniform rule on the product
    ``act(gate) * up`` (each operand half).

    Examples
    --------
    >>> ScaleInput(0.5)
    ScaleInput(factor=0.5)
    """

    factor: float = 1.0

    def __post_init__(self) -> None:
        _check_factor("ScaleInput", "factor", self.factor)

    def apply(self, module: nn.Module, forward: Callable[..., Any], *args, **kwargs) -> Any:
        x = _first(self, module, args)
        return forward(scale_gradient(x, float(self.factor)), *args[1:], **kwargs)


@dataclass(frozen=True)
class AttentionInputs(Rule):
    """Gradient factors on the query, key and value of ``torch.nn.MultiheadAttention``.

    The in-projection is linear, so scaling the inputs' gradients equals scaling the
    projections' (AttnLRP: ``0.25, 0.25, 0.5``; CP-LRP: ``0, 0, 1``). Self-attention
    (``mha(x, x, x)``) gets one node per factor. The module's output (a tuple) is unchanged.

    Examples
    --------
    >>> AttentionInputs()
    AttentionInputs(query=0.25, key=0.25, value=0.5)
    """

    query: float = 0.25
    key: float = 0.25
    value: float = 0.5

    def __post_init__(self) -> None:
        for name in ("query", "key", "value"):
            _check_factor("AttentionInputs", name, getattr(self, name))

    def check(self, module: nn.Module) -> str | None:
        if not isinstance(module, nn.MultiheadAttention):
            return "expected torch.nn.MultiheadAttention (query, key, value as arguments)"
        return None

    def apply(self, module: nn.Module, forward: Callable[..., Any], *args, **kwargs) -> Any:
        names = ("query", "key", "value")
        inputs = list(args[:3]) + [kwargs.pop(name) for name in names[len(args):]
                                   if name in kwargs]
        if len(inputs) != 3 or not all(isinstance(t, Tensor) for t in inputs):
            raise TypeError(f"{self!r} on {type(module).__name__}: expected query, key and value "
                            f"tensors, got {len(inputs)} of them. Call the attention as "
                            f"mha(query, key, value).")
        scaled: dict[tuple[int, float], Tensor] = {}  # the same tensor and factor: one node
        outputs = []
        for tensor, factor in zip(inputs, (self.query, self.key, self.value), strict=True):
            key = (id(tensor), float(factor))
            if key not in scaled:
                scaled[key] = scale_gradient(tensor, float(factor))
            outputs.append(scaled[key])
        return forward(*outputs, *args[3:], **kwargs)


@dataclass(frozen=True)
class AsGradient(Rule):
    """A relevance-form LRP rule (Zennit's convention) run inside the G x I form.

    The incoming gradient ``g`` becomes the relevance ``R_out = y * g``, ``rule`` propagates it
    to ``R_in``, and the gradient passed on is ``R_in / stabilize(x, epsilon)`` (LXT's recipe
    for ``Gamma`` on a ViT's linear layers). ``x * grad`` then is ``rule``'s relevance.

    Parameters
    ----------
    rule : LinearRule
        The LRP rule, e.g. ``Gamma(0.25)``.
    epsilon : float
        Stabilises the division by the input (sign-aware, ``+epsilon`` at 0).

    Examples
    --------
    >>> from funcattr.rules import Gamma
    >>> AsGradient(Gamma(0.25))
    AsGradient(rule=Gamma(gamma=0.25, stabilizer=1e-06, zero_params=None), epsilon=1e-10)
    """

    rule: LinearRule
    epsilon: float = 1e-10

    def __post_init__(self) -> None:
        if not isinstance(self.rule, LinearRule):
            raise TypeError(f"AsGradient(rule={self.rule!r}): expected an LRP rule (a "
                            f"LinearRule such as Gamma(0.25)), got {type(self.rule).__name__}. "
                            f"Pass e.g. AsGradient(Gamma(0.25)).")
        _check_epsilon("AsGradient", self.epsilon)

    def check(self, module: nn.Module) -> str | None:
        return self.rule.check(module)

    def apply(self, module: nn.Module, forward: Callable[..., Any], *args, **kwargs) -> Tensor:
        x = _first(self, module, args)
        epsilon = self.epsilon
        divided = elementwise_rule(x, torch.clone,
                                   lambda u, grad: grad / stabilize(u, epsilon))
        y = self.rule.apply(module, forward, divided, *args[1:], **kwargs)
        return elementwise_rule(y, torch.clone, lambda u, grad: grad * u)
