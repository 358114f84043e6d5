"""Similarity of two batches of pooled attributions (for the randomisation metrics)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

__all__ = ["SIMILARITIES", "check_similarity", "cosine", "pearson", "similarity", "spearman",
           "ssim"]

SIMILARITIES = ("spearman", "spearman_abs", "pearson", "cosine", "ssim")


def _ranks(values: Tensor) -> Tensor:
    """Average ranks along the last axis (ties share their mean rank), as in Spearman's rho."""
    order = values.argsort(dim=-1, stable=True)
    sorted_values = values.gather(-1, order)
    n = values.shape[-1]
    position = torch.arange(n, dtype=values.dtype, device=values.device).expand_as(values)
    # tie groups: mean of first and last position of each run of equal values
    new_group = torch.ones_like(sorted_values, dtype=torch.bool)
    new_group[..., 1:] = sorted_values[..., 1:] != sorted_values[..., :-1]
    group = new_group.long().cumsum(-1) - 1
    first = torch.zeros_like(sorted_values).scatter_reduce(-1, group, position, "amin",
                                                           include_self=False)
    last = torch.zeros_like(sorted_values).scatter_reduce(-1, group, position, "amax",
                                                          include_self=False)
    mean_rank = ((first + last) / 2).gather(-1, group)
    return torch.empty_like(mean_rank).scatter_(-1, order, mean_rank)


def pearson(a: Tensor, b: Tensor) -> Tensor:
    """Pearson correlation along the last axis (0 where either side is constant)."""
    a = a - a.mean(dim=-1, keepdim=True)
    b = b - b.mean(dim=-1, keepdim=True)
    denominator = (a.square().sum(-1) * b.square().sum(-1)).sqrt()
    value = (a * b).sum(-1) / denominator.clamp_min(torch.finfo(a.dtype).tiny)
    return torch.where(denominator > 0, value, torch.zeros_like(value))


def spearman(a: Tensor, b: Tensor) -> Tensor:
    """Spearman rank correlation along the last axis (Pearson of average ranks)."""
    return pearson(_ranks(a), _ranks(b))


def cosine(a: Tensor, b: Tensor) -> Tensor:
    """Cosine similarity along the last axis (0 where either side is zero)."""
    denominator = a.norm(dim=-1) * b.norm(dim=-1)
    value = (a * b).sum(-1) / denominator.clamp_min(torch.finfo(a.dtype).tiny)
    return torch.where(denominator > 0, value, torch.zeros_like(value))


def ssim(a: Tensor, b: Tensor, *, window: int = 7) -> Tensor:
    """Structural similarity of 2-D maps ``(batch, H, W)`` [wang2004]; skimage's defaults.

    Uniform ``window`` x ``window`` filter, ``K1=0.01``, ``K2=0.03``, sample covariance, the
    data range of both maps together, and the mean over the valid (unpadded) window positions.
    """
    if a.ndim != 3:
        raise ValueError(
            f"ssim(a=tensor of shape {tuple(a.shape)}): expected (batch, H, W) maps, got "
            f"{a.ndim} dimensions; SSIM is defined for images. Pass (batch, H, W) maps, or "
            f"compare other inputs with spearman."
        )
    if min(a.shape[-2:]) < window:
        raise ValueError(
            f"ssim(window={window}): expected maps of at least {window}x{window}, got "
            f"{tuple(a.shape[-2:])}. Pass a smaller window, or compare with spearman."
        )
    both = torch.stack([a, b])
    data_range = both.amax(dim=(0, 2, 3)) - both.amin(dim=(0, 2, 3))
    data_range = torch.where(data_range > 0, data_range, torch.ones_like(data_range))
    c1 = (0.01 * data_range) ** 2
    c2 = (0.03 * data_range) ** 2
    n = window * window
    pool = torch.nn.functional.avg_pool2d
    x, y = a[:, None], b[:, None]
    mx, my = pool(x, window, 1), pool(y, window, 1)
    cov = n / (n - 1)
    vx = cov * (pool(x * x, window, 1) - mx * mx)
    vy = cov * (pool(y * y, window, 1) - my * my)
    vxy = cov * (pool(x * y, window, 1) - mx * my)
    c1, c2 = c1[:, None, None, None], c2[:, None, None, None]
    s = ((2 * mx * my + c1) * (2 * vxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return s.mean(dim=(1, 2, 3))


def check_similarity(name: Any, owner: str) -> str:
    """``name`` (a metric's ``similarity_measure``) if it is one of :data:`SIMILARITIES`."""
    if name not in SIMILARITIES:
        raise ValueError(
            f"{owner}(similarity_measure={name!r}): expected one of {SIMILARITIES}, got "
            f"{name!r}. Pass e.g. similarity_measure='spearman'."
        )
    return name


def similarity(name: str, a: Tensor, b: Tensor, owner: str) -> Tensor:
    """Similarity ``name`` of pooled attributions ``(batch, *spatial)``, per sample."""
    check_similarity(name, owner)
    if name == "ssim":
        if a.ndim != 3:
            raise ValueError(
                f"{owner}(similarity_measure='ssim'): SSIM needs 2-D maps; expected pooled "
                f"attributions (batch, H, W), got shape {tuple(a.shape)}. Use "
                f"similarity_measure='spearman'."
            )
        return ssim(a, b)
    a, b = a.reshape(a.shape[0], -1), b.reshape(b.shape[0], -1)
    if name == "spearman_abs":
        return spearman(a.abs(), b.abs())
    return {"spearman": spearman, "pearson": pearson, "cosine": cosine}[name](a, b)
