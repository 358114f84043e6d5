"""Layers and their closed-form input VJPs.

The modules that canonizers insert so that composites can give them rules (:class:`Sum`,
:class:`GatedSum`) live here, and so does the registry of *input VJPs*: for a layer type,
``vjp(module, state, grad, input, *args, **kwargs) = (d module(input, *args; state) /
d input)^T grad``, where ``state`` holds the module's own parameters and buffers as a rule
modified them (e.g. the positive weights). The reference LRP rule pulls every term back
through it (:mod:`funcattr.core.reference`), and falls back to ``torch.func.vjp`` for a layer
without one; a closed form is faster, and, unlike ``torch.func.vjp`` inside a Function's
backward in torch 2.14, it works when the attribution itself runs under ``vmap`` or is
differentiated by ``torch.func.grad``.

A user layer registers its own::

    @register_input_vjp(MyScale)
    def _my_scale_vjp(module, state, grad, input):
        return grad * state["scale"]

A registered VJP applies to subclasses that keep the registered class's ``forward``, and,
given ``when(module, args, kwargs)``, only to the calls it accepts.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

__all__ = ["GatedSum", "InputVJP", "Sum", "find_input_vjp", "register_input_vjp"]

#: ``vjp(module, state, grad, input, *args, **kwargs) -> input gradient``.
InputVJP = Callable[..., Tensor]
#: ``when(module, args, kwargs) -> bool``: whether a registered VJP covers this call.
Applies = Callable[[nn.Module, tuple, Mapping[str, Any]], bool]


@dataclass(frozen=True)
class _Entry:
    vjp: InputVJP
    when: Applies | None


_INPUT_VJPS: dict[type, _Entry] = {}


def register_input_vjp(*kinds: type[nn.Module], when: Applies | None = None
                       ) -> Callable[[InputVJP], InputVJP]:
    """Register ``vjp`` as the closed-form input VJP of the layer types ``kinds`` (a decorator).

    Parameters
    ----------
    *kinds : type of torch.nn.Module
        The layer classes; subclasses that keep their ``forward`` are covered too.
    when : callable, optional
        ``when(module, args, kwargs)``: whether the VJP covers this call (``args``: the
        positional arguments after the input). By default every call is covered.

    Examples
    --------
    >>> @register_input_vjp(Sum)                                    # doctest: +SKIP
    ... def _sum_vjp(module, state, grad, input):
    ...     return grad.unsqueeze(module.dim % input.ndim).expand(input.shape)
    """
    for kind in kinds:
        if not (isinstance(kind, type) and issubclass(kind, nn.Module)):
            raise TypeError(
                f"register_input_vjp(kinds={kind!r}): expected torch.nn.Module subclasses, got "
                f"{type(kind).__name__}. Pass the layer class, e.g. register_input_vjp(MyLayer)."
            )

    def register(vjp: InputVJP) -> InputVJP:
        for kind in kinds:
            _INPUT_VJPS[kind] = _Entry(vjp, when)
        return vjp

    return register


def find_input_vjp(module: nn.Module, args: tuple = (),
                   kwargs: Mapping[str, Any] | None = None) -> InputVJP | None:
    """The registered input VJP of ``module``'s call ``module(input, *args, **kwargs)``, or
    ``None`` (unregistered, a subclass with its own ``forward``, or a call ``when`` refuses)."""
    for base in type(module).__mro__:
        entry = _INPUT_VJPS.get(base)
        if entry is not None:
            break
    else:
        return None
    if type(module).forward is not base.forward:
        return None
    if entry.when is not None and not entry.when(module, args, kwargs or {}):
        return None
    return entry.vjp


def _input_alone(module: nn.Module, args: tuple, kwargs: Mapping[str, Any]) -> bool:
    return not args and not kwargs


# --------------------------------------------------------------------------------------------
# Layers canonizers insert
# --------------------------------------------------------------------------------------------

class Sum(nn.Module):
    """Sum over one dimension; a residual ``a + b`` becomes ``Sum()(torch.stack([a, b], -1))``.

    Parameters
    ----------
    dim : int
        The dimension to sum over (default: the last).
    """

    def __init__(self, dim: int = -1) -> None:
        super().__init__()
        self.dim = dim

    def forward(self, input: Tensor) -> Tensor:
        return torch.sum(input, dim=self.dim)

    def extra_repr(self) -> str:
        return f"dim={self.dim}"


@register_input_vjp(Sum, when=_input_alone)
def _sum_vjp(module: Sum, state: Mapping[str, Tensor], grad: Tensor, input: Tensor) -> Tensor:
    return grad.unsqueeze(module.dim % input.ndim).expand(input.shape)


class GatedSum(Sum):
    """A sum of gated inputs, ``sum(input * gate, dim)``: the gate gets no relevance.

    A :class:`Sum`, so the LRP presets give it ``Norm``, which passes all relevance to
    ``input`` (``R_input = input * gate / sum(input * gate) * R``); the gate is an extra
    argument and, like a weight, receives none. The ordinary gradient reaches both.
    Squeeze-excitation's ``scale * input`` is ``GatedSum()(input[..., None], scale[..., None])``.
    """

    def forward(self, input: Tensor, gate: Tensor) -> Tensor:
        return torch.sum(input * gate, dim=self.dim)


def _gate_only(module: nn.Module, args: tuple, kwargs: Mapping[str, Any]) -> bool:
    return len(args) == 1 and not kwargs


@register_input_vjp(GatedSum, when=_gate_only)
def _gated_sum_vjp(module: GatedSum, state: Mapping[str, Tensor], grad: Tensor, input: Tensor,
                   gate: Tensor) -> Tensor:
    shape = torch.broadcast_shapes(input.shape, gate.shape)
    vjp = grad.unsqueeze(module.dim % len(shape)) * gate
    return vjp if vjp.shape == input.shape else vjp.sum_to_size(input.shape)


# --------------------------------------------------------------------------------------------
# torch's linear layers: dense, convolution, transposed convolution
# --------------------------------------------------------------------------------------------

@register_input_vjp(nn.Linear, when=_input_alone)
def _linear_vjp(module: nn.Module, state: Mapping[str, Tensor], grad: Tensor, input: Tensor
                ) -> Tensor:
    return grad @ state["weight"]


_INPUT_ONLY = (True, False, False)


def _conv_input_grad(grad: Tensor, input: Tensor, weight: Tensor, module: nn.Module,
                     padding: tuple[int, ...], transposed: bool = False,
                     output_padding: tuple[int, ...] | None = None) -> Tensor:
    """The convolution's own input backward (it reads only the shape of ``input``)."""
    ndim = weight.ndim - 2
    unbatched = input.ndim == ndim + 1
    if unbatched:
        grad, input = grad.unsqueeze(0), input.unsqueeze(0)
    result = torch.ops.aten.convolution_backward(
        grad, input, weight, None, module.stride, padding, module.dilation, transposed,
        output_padding or (0,) * ndim, module.groups, _INPUT_ONLY,
    )[0]
    return result.squeeze(0) if unbatched else result


def _explicit_padding(module: nn.Module, weight: Tensor) -> list[tuple[int, int]]:
    """(before, after) padding per spatial dimension, as the convolution applies it."""
    kernel = weight.shape[2:]
    if module.padding == "valid":
        return [(0, 0)] * len(kernel)
    if module.padding == "same":  # torch puts the odd element of the padding after
        totals = [d * (k - 1) for d, k in zip(module.dilation, kernel, strict=True)]
        return [(total // 2, total - total // 2) for total in totals]
    return [(p, p) for p in module.padding]


def _source_index(size: int, before: int, after: int, mode: str, device: Any) -> Tensor:
    """For every position of a padded dimension, the input position it copies."""
    positions = torch.arange(-before, size + after, device=device)
    if mode == "reflect":
        positions = positions.abs()
        return torch.where(positions >= size, 2 * (size - 1) - positions, positions)
    if mode == "replicate":
        return positions.clamp(0, size - 1)
    return positions.remainder(size)  # circular


def _unpad(grad: Tensor, pads: list[tuple[int, int]], mode: str, shape: torch.Size) -> Tensor:
    """The VJP of padding ``shape`` by ``pads`` (zeros: a slice; reflect, replicate, circular:
    every padded position adds its gradient to the position it copies)."""
    for index, (before, after) in enumerate(pads):
        dim = index - len(pads)
        size = shape[dim]
        if mode == "zeros":
            grad = grad.narrow(dim, before, size)
            continue
        source = _source_index(size, before, after, mode, grad.device)
        target = list(grad.shape)
        target[dim] = size
        grad = grad.new_zeros(target).index_add(dim, source, grad)
    return grad


@register_input_vjp(nn.Conv1d, nn.Conv2d, nn.Conv3d, when=_input_alone)
def _conv_vjp(module: nn.Module, state: Mapping[str, Tensor], grad: Tensor, input: Tensor
              ) -> Tensor:
    weight = state["weight"]
    pads = _explicit_padding(module, weight)
    if module.padding_mode == "zeros" and all(before == after for before, after in pads):
        return _conv_input_grad(grad, input, weight, module, tuple(p for p, _ in pads))
    flat = [amount for pair in reversed(pads) for amount in pair]  # F.pad's order
    padded = F.pad(input, flat)  # only its shape is read
    full = _conv_input_grad(grad, padded, weight, module, (0,) * len(pads))
    return _unpad(full, pads, module.padding_mode, input.shape)


def _input_and_output_size(module: nn.Module, args: tuple, kwargs: Mapping[str, Any]) -> bool:
    return len(args) + len(kwargs) <= 1 and set(kwargs) <= {"output_size"}


@register_input_vjp(nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d,
                    when=_input_and_output_size)
def _conv_transpose_vjp(module: nn.Module, state: Mapping[str, Tensor], grad: Tensor,
                        input: Tensor, output_size: Any = None) -> Tensor:
    weight = state["weight"]
    kernel = weight.shape[2:]
    ndim = len(kernel)
    # the output padding that gives this output shape (from output_size or the module)
    output_padding = tuple(
        out - ((size - 1) * s - 2 * p + d * (k - 1) + 1)
        for out, size, s, p, d, k in zip(grad.shape[-ndim:], input.shape[-ndim:], module.stride,
                                         module.padding, module.dilation, kernel, strict=True)
    )
    return _conv_input_grad(grad, input, weight, module, module.padding, True, output_padding)


# --------------------------------------------------------------------------------------------
# batch normalisation with running statistics: y = (u - mean) * weight / sqrt(var + eps) + bias
# --------------------------------------------------------------------------------------------

def _uses_running_stats(module: nn.Module, args: tuple, kwargs: Mapping[str, Any]) -> bool:
    return not args and not kwargs and not module.training and module.running_var is not None


@register_input_vjp(_BatchNorm, when=_uses_running_stats)
def _batch_norm_vjp(module: nn.Module, state: Mapping[str, Tensor], grad: Tensor,
                    input: Tensor) -> Tensor:
    scale = torch.rsqrt(state["running_var"] + module.eps)
    weight = state.get("weight")
    if weight is not None:
        scale = scale * weight
    return grad * scale.reshape(-1, *(1,) * (grad.ndim - 2))


# --------------------------------------------------------------------------------------------
# average pooling: the pooling's own backward (a fixed linear map)
# --------------------------------------------------------------------------------------------

def _tuple(value: Any, ndim: int) -> tuple[int, ...]:
    return tuple(value) if isinstance(value, tuple | list) else (value,) * ndim


_AVG_POOLS = {nn.AvgPool1d: 1, nn.AvgPool2d: 2, nn.AvgPool3d: 3}


@register_input_vjp(*_AVG_POOLS, when=_input_alone)
def _avg_pool_vjp(module: nn.Module, state: Mapping[str, Tensor], grad: Tensor, input: Tensor
                  ) -> Tensor:
    ndim = next(n for kind, n in _AVG_POOLS.items() if isinstance(module, kind))
    kernel = _tuple(module.kernel_size, ndim)
    stride = _tuple(module.stride if module.stride else module.kernel_size, ndim)
    padding = _tuple(module.padding, ndim)
    divisor = getattr(module, "divisor_override", None)
    ceil_mode, count_include_pad = module.ceil_mode, module.count_include_pad
    if ndim == 1:  # as a 2-D pooling over (1, L)
        return torch.ops.aten.avg_pool2d_backward(
            grad.unsqueeze(-2), input.unsqueeze(-2), (1, *kernel), (1, *stride),
            (0, *padding), ceil_mode, count_include_pad, None,
        ).squeeze(-2)
    backward = (torch.ops.aten.avg_pool2d_backward if ndim == 2
                else torch.ops.aten.avg_pool3d_backward)
    return backward(grad, input, kernel, stride, padding, ceil_mode, count_include_pad, divisor)


@register_input_vjp(nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d,
                    when=_input_alone)
def _adaptive_avg_pool_vjp(module: nn.Module, state: Mapping[str, Tensor], grad: Tensor,
                           input: Tensor) -> Tensor:
    if isinstance(module, nn.AdaptiveAvgPool1d):
        return torch.ops.aten._adaptive_avg_pool2d_backward(
            grad.unsqueeze(-2), input.unsqueeze(-2)).squeeze(-2)
    if isinstance(module, nn.AdaptiveAvgPool2d):
        return torch.ops.aten._adaptive_avg_pool2d_backward(grad, input)
    return torch.ops.aten._adaptive_avg_pool3d_backward(grad, input)
