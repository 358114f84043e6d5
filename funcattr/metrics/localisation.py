"""Localisation: does the relevance lie on the ground-truth object mask?

* :func:`relevance_mass_accuracy` and :func:`relevance_rank_accuracy` [arras2022];
* :func:`pointing_game` [zhang2018].

Attributions are summed over channels to one value per location; masks are boolean
``(batch, *spatial)`` (or ``(batch, 1, *spatial)``) and must not be empty.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from funcattr.attribution.options import check_int
from funcattr.metrics.inputs import check_finite, check_samples

__all__ = ["pointing_game", "relevance_mass_accuracy", "relevance_rank_accuracy"]


def _check_masks(masks: Any, attribution: Any, owner: str) -> tuple[Tensor, Tensor, tuple]:
    """Flat pooled attribution ``(batch, locations)``, flat boolean masks, spatial shape."""
    if not isinstance(masks, Tensor):
        raise TypeError(
            f"{owner}(masks={type(masks).__name__}): expected a tensor, got "
            f"{type(masks).__name__}. Pass torch.as_tensor(masks)."
        )
    if not isinstance(attribution, Tensor) or attribution.ndim < 2:
        got = tuple(attribution.shape) if isinstance(attribution, Tensor) else type(
            attribution).__name__
        raise ValueError(
            f"{owner}(attribution={got}): expected a batch of attributions "
            f"(batch, [channels,] *spatial), got {got}. Add the batch dimension."
        )
    check_finite(attribution, owner)
    batch = attribution.shape[0]
    check_samples(batch, owner, f"attribution=tensor of shape {tuple(attribution.shape)}")
    if (masks.ndim >= 3 and masks.shape[1] == 1 and attribution.ndim == masks.ndim
            and attribution.shape[2:] == masks.shape[2:]):
        masks = masks[:, 0]  # (batch, 1, *spatial)
    spatial = tuple(masks.shape[1:])
    if masks.ndim < 2 or masks.shape[0] != batch or (
        tuple(attribution.shape[1:]) != spatial and tuple(attribution.shape[2:]) != spatial
    ):
        raise ValueError(
            f"{owner}(masks=tensor of shape {tuple(masks.shape)}): expected one mask per sample "
            f"matching the attribution's locations, i.e. (batch, *spatial) for an attribution "
            f"of shape {tuple(attribution.shape)}, got {tuple(masks.shape)}. Resize the masks to "
            f"the input size."
        )
    pooled = attribution.detach()
    if tuple(pooled.shape[1:]) != spatial:
        pooled = pooled.sum(dim=1)
    if not pooled.is_floating_point():
        pooled = pooled.to(torch.get_default_dtype())
    if masks.dtype != torch.bool:
        values = masks.unique()
        if not bool(((values == 0) | (values == 1)).all()):
            raise ValueError(
                f"{owner}(masks=tensor of dtype {masks.dtype}): expected boolean masks (or 0/1 "
                f"values), got values {values[:5].tolist()}. Threshold them, e.g. masks > 0.5."
            )
        masks = masks.bool()
    masks = masks.reshape(batch, -1)
    empty = (~masks.any(dim=1)).nonzero().flatten()
    if empty.numel():
        raise ValueError(
            f"{owner}(masks=...): expected a non-empty mask for every sample, got empty masks "
            f"for samples {empty.tolist()[:10]}. Drop those samples; localisation is undefined "
            f"without an object."
        )
    return pooled.reshape(batch, -1), masks.to(pooled.device), spatial


def relevance_mass_accuracy(attribution: Tensor, masks: Tensor, *,
                            positive: bool = True) -> Tensor:
    """Relevance mass accuracy [arras2022]: share of the relevance that lies inside the mask.

    ``R_within / R_total`` with ``R`` the channel-summed relevance; Arras et al. count only
    positive relevance (``positive=True``: negative values are set to 0 first). 1 is best.
    A sample with no (positive) relevance at all scores 0.

    Parameters
    ----------
    attribution : Tensor
        ``(batch, [channels,] *spatial)``.
    masks : Tensor
        Boolean ``(batch, *spatial)`` ground truth, non-empty.
    positive : bool
        Keep only positive relevance (Arras et al.); ``False`` uses signed relevance.

    Returns
    -------
    Tensor
        ``(batch,)``.
    """
    pooled, masks, _ = _check_masks(masks, attribution, "relevance_mass_accuracy")
    if positive:
        pooled = pooled.clamp_min(0)
    total = pooled.sum(dim=1)
    within = (pooled * masks).sum(dim=1)
    return torch.where(total != 0, within / torch.where(total != 0, total, 1), 0.0)


def relevance_rank_accuracy(attribution: Tensor, masks: Tensor) -> Tensor:
    """Relevance rank accuracy [arras2022]: share of the top-K locations inside the mask.

    ``K`` is the mask's size; the ``K`` locations with the highest channel-summed relevance
    are taken (ties broken by position) and the fraction of them inside the mask returned. 1
    is best.

    Returns
    -------
    Tensor
        ``(batch,)``.
    """
    pooled, masks, _ = _check_masks(masks, attribution, "relevance_rank_accuracy")
    size = masks.sum(dim=1)
    order = pooled.sort(dim=1, descending=True, stable=True).indices
    hits = masks.gather(1, order)
    top = torch.arange(pooled.shape[1], device=pooled.device)[None] < size[:, None]
    return (hits & top).sum(dim=1).to(pooled.dtype) / size.to(pooled.dtype)


def pointing_game(attribution: Tensor, masks: Tensor, *, tolerance: int = 0) -> Tensor:
    """Pointing game [zhang2018]: is the most relevant location on the object?

    A hit (1.0) when a location of maximal channel-summed relevance lies within ``tolerance``
    locations (Euclidean) of the mask, else a miss (0.0). Zhang et al. use a 15-pixel
    tolerance on ~224-pixel images; ``tolerance=0`` tests the mask itself (as Quantus does).
    Ties: any maximal location on the (dilated) mask counts as a hit.

    Returns
    -------
    Tensor
        ``(batch,)`` of 0.0 / 1.0.
    """
    owner = "pointing_game"
    check_int(tolerance, "tolerance", owner, minimum=0, example="15")
    pooled, flat_masks, spatial = _check_masks(masks, attribution, owner)
    if tolerance:
        flat_masks = _dilate(flat_masks, spatial, tolerance)
    top = pooled == pooled.amax(dim=1, keepdim=True)
    return (top & flat_masks).any(dim=1).to(pooled.dtype)


def _dilate(flat: Tensor, spatial: tuple, radius: int) -> Tensor:
    """Grow flat masks by a Euclidean disc of ``radius`` (2-D; 1-D uses an interval)."""
    grid = flat.view(flat.shape[0], 1, *spatial).to(torch.float64)
    if len(spatial) == 1:
        kernel = torch.ones(1, 1, 2 * radius + 1, dtype=torch.float64)
        out = torch.nn.functional.conv1d(grid, kernel, padding=radius)
    elif len(spatial) == 2:
        axis = torch.arange(-radius, radius + 1, dtype=torch.float64)
        kernel = ((axis[:, None] ** 2 + axis[None] ** 2) <= radius**2).to(torch.float64)
        out = torch.nn.functional.conv2d(grid, kernel[None, None], padding=radius)
    else:
        raise ValueError(
            f"pointing_game(tolerance={radius}): a tolerance needs 1-D or 2-D masks; expected "
            f"those, got spatial shape {spatial}. Use tolerance=0."
        )
    return (out > 0.5).reshape(flat.shape[0], -1)
