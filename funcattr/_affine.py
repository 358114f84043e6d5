"""Closed-form input VJPs of the affine layers that take the generic rule path.

The generic LRP rule pulls each term back through ``u -> module(u; modified params)``. For
an arbitrary module that is a ``torch.func.vjp``, which torch 2.14 cannot run inside a
Function's backward under ``torch.func.grad`` or ``vmap``. The layers that reach the generic
path in practice are affine in their input (batch normalisation with running statistics,
average pooling, :class:`funcattr.layer.Sum`), so their input VJP is a fixed linear map that
plain, transformable operations compute directly, and it does not depend on the point ``u``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from funcattr.layer import Sum

__all__ = ["InputVJP", "affine_input_vjp"]

#: ``vjp(grad, *, params, buffers, u) -> (d module(u; params, buffers) / d u)^T grad``.
InputVJP = Callable[..., Tensor]


def affine_input_vjp(module: nn.Module, args: tuple, kwargs: Mapping[str, Any]) -> InputVJP | None:
    """The closed-form input VJP of ``module``'s call, or ``None`` (then ``torch.func.vjp``).

    Only for torch's own forward (pooling layers of exactly torch's types, batch norms whose
    class keeps ``_BatchNorm.forward``) and a call with the input alone.
    """
    if args or kwargs:
        return None
    kind = type(module)
    if isinstance(module, _BatchNorm) and kind.forward is _BatchNorm.forward:
        uses_running_stats = not module.training and module.running_var is not None
        return _batch_norm_vjp(module.eps) if uses_running_stats else None
    if kind in _AVG_POOLS:
        return _avg_pool_vjp(module)
    if kind in _ADAPTIVE_AVG_POOLS:
        return _ADAPTIVE_AVG_POOLS[kind]
    if kind is Sum:
        return _sum_vjp(module.dim)
    return None


# --------------------------------------------------------------------------------------------
# batch normalisation with running statistics: y = (u - mean) * weight / sqrt(var + eps) + bias
# --------------------------------------------------------------------------------------------

def _batch_norm_vjp(eps: float) -> InputVJP:
    def vjp(grad: Tensor, *, params: Mapping[str, Tensor], buffers: Mapping[str, Tensor],
            u: Tensor) -> Tensor:
        scale = torch.rsqrt(buffers["running_var"] + eps)
        weight = params.get("weight")
        if weight is not None:
            scale = scale * weight
        return grad * scale.reshape(-1, *(1,) * (grad.ndim - 2))

    return vjp


# --------------------------------------------------------------------------------------------
# average pooling: the pooling's own backward (a fixed linear map)
# --------------------------------------------------------------------------------------------

def _tuple(value: Any, ndim: int) -> tuple[int, ...]:
    return tuple(value) if isinstance(value, tuple | list) else (value,) * ndim


def _avg_pool_vjp(module: nn.Module) -> InputVJP:
    ndim = _AVG_POOLS[type(module)]
    kernel = _tuple(module.kernel_size, ndim)
    stride = _tuple(module.stride if module.stride else module.kernel_size, ndim)
    padding = _tuple(module.padding, ndim)
    divisor = getattr(module, "divisor_override", None)
    ceil_mode, count_include_pad = module.ceil_mode, module.count_include_pad

    def vjp(grad: Tensor, *, params: Mapping[str, Tensor], buffers: Mapping[str, Tensor],
            u: Tensor) -> Tensor:
        if ndim == 1:  # as a 2-D pooling over (1, L)
            return torch.ops.aten.avg_pool2d_backward(
                grad.unsqueeze(-2), u.unsqueeze(-2), (1, *kernel), (1, *stride),
                (0, *padding), ceil_mode, count_include_pad, None,
            ).squeeze(-2)
        backward = (torch.ops.aten.avg_pool2d_backward if ndim == 2
                    else torch.ops.aten.avg_pool3d_backward)
        return backward(grad, u, kernel, stride, padding, ceil_mode, count_include_pad, divisor)

    return vjp


def _adaptive_vjp(ndim: int) -> InputVJP:
    def vjp(grad: Tensor, *, params: Mapping[str, Tensor], buffers: Mapping[str, Tensor],
            u: Tensor) -> Tensor:
        if ndim == 1:
            return torch.ops.aten._adaptive_avg_pool2d_backward(
                grad.unsqueeze(-2), u.unsqueeze(-2)).squeeze(-2)
        backward = (torch.ops.aten._adaptive_avg_pool2d_backward if ndim == 2
                    else torch.ops.aten._adaptive_avg_pool3d_backward)
        return backward(grad, u)

    return vjp


_AVG_POOLS = {nn.AvgPool1d: 1, nn.AvgPool2d: 2, nn.AvgPool3d: 3}
_ADAPTIVE_AVG_POOLS: dict[type, InputVJP] = {
    nn.AdaptiveAvgPool1d: _adaptive_vjp(1),
    nn.AdaptiveAvgPool2d: _adaptive_vjp(2),
    nn.AdaptiveAvgPool3d: _adaptive_vjp(3),
}


# --------------------------------------------------------------------------------------------
# funcattr.layer.Sum
# --------------------------------------------------------------------------------------------

def _sum_vjp(dim: int) -> InputVJP:
    def vjp(grad: Tensor, *, params: Mapping[str, Tensor], buffers: Mapping[str, Tensor],
            u: Tensor) -> Tensor:
        return grad.unsqueeze(dim % u.ndim).expand(u.shape)

    return vjp
