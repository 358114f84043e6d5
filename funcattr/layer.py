"""Extra modules that canonizers insert so that composites can give them rules."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["Sum"]


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

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return torch.sum(input, dim=self.dim)

    def extra_repr(self) -> str:
        return f"dim={self.dim}"
