"""Evaluation metrics per batch of a dataset run, from the batch's fresh attribution.

The metrics here need only the model, the inputs, the targets, the attribution and (for
localisation) the masks, so they run inside the explanation job, on the float32 attribution
before it is stored; their column names are those of :data:`funcattr.metrics.METRICS`.
Randomness (a ``"random"`` order, ``fill="uniform"``) is drawn per batch from a generator
seeded with ``(seed, first item of the batch)``: the same whatever the number of processes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from funcattr.metrics import (
    METRICS,
    completeness,
    pixel_flipping,
    pointing_game,
    region_perturbation,
    relevance_mass_accuracy,
    relevance_rank_accuracy,
)

__all__ = ["DATASET_METRICS", "DEFAULT_DATASET_METRICS", "LOCALISATION", "check_metrics",
           "evaluate_batch"]

#: Metrics a dataset run can compute (per item, from the model and the attribution).
DATASET_METRICS: tuple[str, ...] = (
    "pixel_flipping", "region_perturbation", "relevance_mass_accuracy",
    "relevance_rank_accuracy", "pointing_game", "completeness",
)
#: The metrics of :func:`funcattr.datasets.evaluate_dataset` when none are named.
DEFAULT_DATASET_METRICS: tuple[str, ...] = DATASET_METRICS[:5]
#: The metrics that need object masks.
LOCALISATION: tuple[str, ...] = ("relevance_mass_accuracy", "relevance_rank_accuracy",
                                 "pointing_game")
_CURVES = ("pixel_flipping", "region_perturbation")


def check_metrics(metrics: Sequence[str], options: Mapping[str, Mapping[str, Any]] | None,
                  owner: str) -> dict[str, dict[str, Any]]:
    """``metric -> its keyword options``, checked."""
    if isinstance(metrics, str):
        metrics = (metrics,)
    metrics = tuple(metrics)
    unknown = [m for m in metrics if m not in DATASET_METRICS]
    if unknown or len(set(metrics)) != len(metrics):
        raise ValueError(
            f"{owner}(metrics={list(metrics)!r}): expected distinct names from "
            f"{list(DATASET_METRICS)}, got {unknown or 'repeated names'}. The other metrics of "
            f"funcattr.metrics re-explain perturbed inputs; run them with funcattr.metrics."
        )
    options = dict(options or {})
    for key, value in options.items():
        if key not in metrics or not isinstance(value, Mapping):
            raise ValueError(
                f"{owner}(metric_options={{{key!r}: ...}}): expected a dict of keyword options "
                f"per requested metric {list(metrics)}."
            )
    return {metric: dict(options.get(metric, {})) for metric in metrics}


def _divisor_near(spatial: Sequence[int], want: int) -> int:
    return max(d for d in range(1, want + 1) if all(s % d == 0 for s in spatial))


def defaults(metric: str, spatial: Sequence[int]) -> dict[str, Any]:
    """Default options: pixel flipping in 32 steps, region perturbation with 8-pixel patches
    (or the nearest divisor of the image size) in 32 steps."""
    if metric == "pixel_flipping":
        return {"regions_per_step": max(1, math.ceil(math.prod(spatial) / 32))}
    if metric == "region_perturbation":
        patch = _divisor_near(spatial, 8)
        regions = math.prod(s // patch for s in spatial)
        return {"patch_size": patch, "regions_per_step": max(1, math.ceil(regions / 32))}
    return {}


def _localisation(run: Callable, attribution: Tensor, masks: Tensor | None, has_mask: Tensor,
                  options: Mapping[str, Any]) -> Tensor:
    """The metric where an item has a non-empty mask, NaN elsewhere."""
    result = torch.full((attribution.shape[0],), math.nan, dtype=torch.float64)
    if masks is None:
        return result
    rows = (has_mask.to(masks.device) & masks.flatten(1).any(dim=1)).nonzero().flatten()
    if rows.numel():
        values = run(attribution[rows], masks[rows], **options)
        result[rows.cpu()] = values.detach().to("cpu", torch.float64)
    return result


def evaluate_batch(metrics: Mapping[str, Mapping[str, Any]], fn: Callable,
                   params: Mapping[str, Tensor], x: Tensor, target: Tensor, attribution: Tensor,
                   masks: Tensor | None, has_mask: Tensor, seed: int) -> dict[str, Tensor]:
    """Every requested metric for one batch: ``"metrics/<column>" -> (batch, ...)`` values.

    Curves are stored as ``"metrics/<metric>_<order>_curve"`` ``(batch, steps + 1)``.
    """
    spatial = x.shape[2:] if x.ndim > 2 else x.shape[1:]
    out: dict[str, Tensor] = {}
    for metric, given in metrics.items():
        options = {**defaults(metric, spatial), **given}
        if metric in _CURVES:
            generator = torch.Generator().manual_seed(seed)
            run = pixel_flipping if metric == "pixel_flipping" else region_perturbation
            curves = run(fn, x, target, attribution, params=params, generator=generator,
                         **options)
            for order, curve in curves.curves.items():
                out[f"metrics/{metric}_{order}_auc"] = curves.auc(order)
                out[f"metrics/{metric}_{order}_curve"] = curve
            if "morf" in curves.curves and "lerf" in curves.curves:
                out[f"metrics/{metric}_difference"] = curves.difference
        elif metric in LOCALISATION:
            run = {"relevance_mass_accuracy": relevance_mass_accuracy,
                   "relevance_rank_accuracy": relevance_rank_accuracy,
                   "pointing_game": pointing_game}[metric]
            out[f"metrics/{metric}"] = _localisation(run, attribution, masks, has_mask, options)
        elif metric == "completeness":
            residual = completeness(fn, x, target, attribution, params=params, **options)
            out["metrics/completeness_abs_residual"] = residual.abs()
    return {name: value.detach().to("cpu", torch.float64) if value.is_floating_point()
            else value.detach().cpu() for name, value in out.items()}


def higher_is_better(column: str) -> bool | None:
    """Direction of a metric column (``metrics/...`` name or bare), None for curves."""
    bare = column.removeprefix("metrics/")
    for columns in METRICS.values():
        if bare in columns:
            return columns[bare]
    return None
