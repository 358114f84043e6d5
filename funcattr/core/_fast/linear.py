"""Linear layers (dense, convolution, transposed convolution) as ``(forward, input VJP)``.

The fast LRP backward computes ``f(u; W)`` for several inputs and weights of one linear
layer and pulls several output gradients back through it; K stacked output gradients (a
``vmap`` over output gradients only) go through one convolution with the K folded into the
batch.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from funcattr.core.call import ModuleCall
from funcattr.layer import InputVJP

__all__ = ["LinearOp", "linear_op"]


@dataclass(frozen=True)
class LinearOp:
    """``u -> f(u; W) + b`` of one linear module call and its input VJP."""

    kind: str  # 'dense', 'conv', 'conv_transpose'
    module: nn.Module = field(compare=False)
    vjp: InputVJP = field(compare=False)  # the layer's registered closed form

    @property
    def ndim(self) -> int:
        """Spatial dimensions (0 for dense layers)."""
        return 0 if self.kind == "dense" else self.module.weight.ndim - 2

    def forward(self, u: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
        module = self.module
        if self.kind == "dense":
            return F.linear(u, weight, bias)
        if self.kind == "conv":
            return module._conv_forward(u, weight, bias)
        transpose = (F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d)[self.ndim - 1]
        return transpose(u, weight, bias, module.stride, module.padding, module.output_padding,
                         module.groups, module.dilation)

    def input_vjp(self, grad: Tensor, weight: Tensor, input: Tensor) -> Tensor:
        """``(d f(u; weight) / d u)^T grad`` at an input shaped like ``input``; ``grad`` may
        stack K output gradients in an extra first dimension."""
        if self.kind != "dense" and grad.ndim > input.ndim:  # (K, B, ...): fold K into B
            count, batch = grad.shape[0], input.shape[0]
            folded = grad.reshape(count * batch, *grad.shape[2:])
            # the convolution's input VJP reads only the input's shape: uninitialised memory
            # that nobody touches costs no time
            shape_only = input.new_empty((count * batch, *input.shape[1:]))
            return self.input_vjp(folded, weight, shape_only).view(count, *input.shape)
        return self.vjp(self.module, _weight_state(weight), grad, input)

    def bias_view(self, bias: Tensor) -> Tensor:
        """``bias`` shaped to broadcast against the output (channels at dim 1 for convs)."""
        return bias if self.kind == "dense" else bias.reshape(bias.shape[0], *(1,) * self.ndim)


def _weight_state(weight: Tensor) -> Mapping[str, Tensor]:
    return {"weight": weight}


_KINDS = {
    nn.Linear: "dense",
    nn.Conv1d: "conv", nn.Conv2d: "conv", nn.Conv3d: "conv",
    nn.ConvTranspose1d: "conv_transpose", nn.ConvTranspose2d: "conv_transpose",
    nn.ConvTranspose3d: "conv_transpose",
}


def linear_op(call: ModuleCall, args: tuple, kwargs: Mapping[str, Any]) -> LinearOp | None:
    """The fast linear description of the call, or ``None`` (then the reference rule runs):
    torch's own forward of a dense or convolution layer, with the input alone."""
    if args or kwargs or call.own_forward:
        return None
    module = call.module
    for base, kind in _KINDS.items():
        if isinstance(module, base) and type(module).forward is base.forward:
            vjp = call.input_vjp((), {})
            return None if vjp is None else LinearOp(kind, module, vjp)
    return None
