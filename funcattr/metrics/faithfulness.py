"""Faithfulness: does removing what the explanation calls relevant change the prediction?

* :func:`pixel_flipping` / :func:`region_perturbation` — perturbation curves in MoRF, LeRF
  (and random) order, their areas, AOPC and the LeRF - MoRF difference [bach2015, samek2017].
* :func:`sensitivity_n` — correlation of attribution sums and output changes over random
  subsets of N features [ancona2018].
* :func:`infidelity` — expected squared error between attribution-predicted and true output
  changes under random perturbations [yeh2019].

Every perturbed input of every step and sample is built lazily per chunk and the chunks are
stacked into batches through the model, ``chunk_size`` inputs at a time.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from funcattr.attribution.layout import fast_layout
from funcattr.attribution.options import (
    check_chunk_size,
    check_int,
    check_positive_number,
    make_generator,
)
from funcattr.attribution.targets import check_target
from funcattr.metrics.inputs import (
    check_finite,
    check_input,
    image_view,
    pool_attribution,
    to_input_shape,
)
from funcattr.metrics.regions import (
    Fill,
    check_patch_size,
    fill_tensor,
    region_index,
    region_relevance,
    select_fill,
)
from funcattr.metrics.scores import Params, as_model, chunked_scores, class_scores
from funcattr.metrics.similarity import pearson

__all__ = [
    "DEFAULT_STEPS",
    "ORDERS",
    "PerturbationCurves",
    "infidelity",
    "pixel_flipping",
    "region_perturbation",
    "sensitivity_n",
]

ORDERS = ("morf", "lerf", "random")
#: The number of steps of a perturbation curve when ``regions_per_step`` is not given.
DEFAULT_STEPS = 32


def _trapezoid(curve: Tensor, fractions: Tensor) -> Tensor:
    width = fractions[1:] - fractions[:-1]
    return ((curve[..., 1:] + curve[..., :-1]) / 2 * width).sum(-1)


@dataclass(frozen=True)
class PerturbationCurves:
    """Perturbation curves of one batch: class score after removing the first regions.

    Attributes
    ----------
    curves : dict of str to Tensor
        For each order (``"morf"``, ``"lerf"``, ``"random"``), the scores ``(batch, steps + 1)``;
        column 0 is the unperturbed input, column ``k`` has ``counts[k]`` regions removed.
    counts : Tensor
        Number of regions removed at each step, ``(steps + 1,)``.
    regions : int
        Number of regions of the input.
    patch_size : int
        Side of a region in features (1 = pixel flipping).
    """

    curves: dict[str, Tensor]
    counts: Tensor
    regions: int
    patch_size: int
    orders: tuple[str, ...] = field(default=())

    @property
    def fractions(self) -> Tensor:
        """Fraction of regions removed at each step, from 0 to (at most) 1."""
        return self.counts.to(next(iter(self.curves.values())).dtype) / self.regions

    def auc(self, order: str = "morf") -> Tensor:
        """Area under the curve over the removed fraction (trapezoid rule), per sample.

        Lower is better for MoRF (the score collapses early), higher for LeRF.
        """
        return _trapezoid(self._curve(order), self.fractions)

    def aopc(self, order: str = "morf") -> Tensor:
        """Area over the perturbation curve [samek2017]: ``mean_k (f(x_0) - f(x_k))``.

        Higher is better for MoRF.
        """
        curve = self._curve(order)
        return (curve[:, :1] - curve).mean(dim=1)

    @property
    def difference(self) -> Tensor:
        """``auc("lerf") - auc("morf")`` per sample: higher is better [bluecher2024].

        The area between the LeRF and MoRF curves (ABPC, [schulz2020]); it does not reward an
        explanation for a removal artefact that lowers both curves alike.
        """
        return self.auc("lerf") - self.auc("morf")

    def _curve(self, order: str) -> Tensor:
        if order not in self.curves:
            raise ValueError(
                f"PerturbationCurves.auc(order={order!r}): expected one of "
                f"{tuple(self.curves)}, the orders computed, got {order!r}. Pass "
                f"orders=(..., {order!r}) to the metric."
            )
        return self.curves[order]

    def mean(self) -> dict[str, float]:
        """Summary over the batch: AUC per order, AOPC (MoRF) and the difference."""
        out = {f"{order}_auc": float(self.auc(order).mean()) for order in self.curves}
        if "morf" in self.curves:
            out["morf_aopc"] = float(self.aopc("morf").mean())
        if "morf" in self.curves and "lerf" in self.curves:
            out["difference"] = float(self.difference.mean())
        return out


def _step_counts(regions: int, regions_per_step: int, n_steps: int | None) -> Tensor:
    counts = torch.arange(0, regions + regions_per_step, regions_per_step).clamp(max=regions)
    counts = torch.unique_consecutive(counts)
    if n_steps is not None:
        counts = counts[: n_steps + 1]
    return counts


def _orders(pooled_regions: Tensor, orders: Sequence[str], generator: torch.Generator,
            owner: str) -> dict[str, Tensor]:
    """For each order, the rank of every region ``(batch, regions)``: 0 is removed first."""
    ranks = {}
    batch, regions = pooled_regions.shape
    for order in orders:
        if order == "morf":
            perm = pooled_regions.sort(dim=1, descending=True, stable=True).indices
        elif order == "lerf":
            perm = pooled_regions.sort(dim=1, stable=True).indices
        elif order == "random":
            perm = torch.rand(batch, regions, generator=generator).argsort(dim=1).to(
                pooled_regions.device)
        else:
            raise ValueError(
                f"{owner}(orders=...): expected orders from {ORDERS}, got {order!r}. Pass e.g. "
                f"orders=('morf', 'lerf')."
            )
        rank = torch.empty_like(perm)
        rank.scatter_(1, perm, torch.arange(regions, device=perm.device).expand(batch, -1))
        ranks[order] = rank
    return ranks


def pixel_flipping(
    model: Any,
    input: Tensor,
    target: Any,
    attribution: Tensor,
    *,
    params: Params | None = None,
    patch_size: int = 1,
    regions_per_step: int | None = None,
    n_steps: int | None = None,
    fill: Fill = 0.0,
    orders: Sequence[str] = ("morf", "lerf"),
    softmax: bool = False,
    generator: torch.Generator | int | None = None,
    chunk_size: int | None = 32,
) -> PerturbationCurves:
    """Pixel flipping and region perturbation curves [bach2015, samek2017].

    The input is cut into ``patch_size`` regions (all channels, on a grid); the regions are
    ranked by the sum of their relevance and removed (set to ``fill``) cumulatively,
    ``regions_per_step`` at a time, most relevant first (MoRF), least relevant first (LeRF),
    or in random order. The curve records the class score ``f_c(x_k)`` after ``k`` steps:
    ``x_0`` is the input, ``x_k`` the input with the first ``counts[k]`` regions of the order
    replaced. A good explanation makes the MoRF curve fall fast and the LeRF curve stay high.

    Bach et al. flip single pixels (``patch_size=1``); Samek et al.'s region perturbation
    removes ``9 x 9`` regions around the most relevant locations with uniform noise; here the
    regions are a non-overlapping grid (as in Quantus) and ``fill="uniform"`` draws the noise
    once per input from ``generator``.

    Parameters
    ----------
    model : nn.Module or fn(params, input)
        The classifier; never changed.
    input : Tensor
        Inputs ``(batch, channels, *spatial)`` or ``(batch, features)``.
    target : int, sequence or Tensor
        The class whose score is followed, one for all or one per sample.
    attribution : Tensor
        Shaped like ``input`` or one value per location; summed over channels and patches.
    params : dict, optional
        The parameters of a pure ``fn``.
    patch_size : int
        Side of a region in features; must divide every spatial size.
    regions_per_step : int, optional
        Regions removed per step (the last step may remove fewer). ``None``: about
        :data:`DEFAULT_STEPS` (32) steps, ``ceil(regions / 32)`` regions each, the default of
        ``evaluate`` and ``funcattr evaluate`` too; ``1`` removes one region per step, as
        Bach et al. do (``regions + 1`` model calls per sample and order).
    n_steps : int, optional
        Stop after this many steps (``None``: until every region is removed).
    fill : float, 'mean', 'uniform' or Tensor
        Value of removed features: a constant, the per-channel image mean, uniform noise in
        the image's value range, or a tensor broadcastable to ``input`` (e.g. a blurred
        ``input``).
    orders : sequence of str
        Any of ``"morf"``, ``"lerf"``, ``"random"``.
    softmax : bool
        Follow the softmax probability instead of the logit.
    generator : torch.Generator, int or None
        Randomness for ``"random"`` order and ``fill="uniform"``: a generator, an int seed
        (the same draws on every call) or ``None`` (torch's global generator).
    chunk_size : int, optional
        Model inputs (perturbed samples) per model call (``None``: all at once).

    Returns
    -------
    PerturbationCurves
        ``.curves[order]`` ``(batch, steps + 1)``, ``.auc(order)``, ``.aopc(order)``,
        ``.difference`` (LeRF AUC - MoRF AUC).

    Examples
    --------
    >>> curves = pixel_flipping(model, x, y, relevance, regions_per_step=64)  # doctest: +SKIP
    >>> curves.difference.mean()                                             # doctest: +SKIP
    """
    return _curves("pixel_flipping", model, input, target, attribution, params=params,
                   patch_size=patch_size, regions_per_step=regions_per_step, n_steps=n_steps,
                   fill=fill, orders=orders, softmax=softmax, generator=generator,
                   chunk_size=chunk_size)


def _curves(owner: str, model: Any, input: Tensor, target: Any, attribution: Tensor, *,
            params: Params | None, patch_size: int, regions_per_step: int | None,
            n_steps: int | None, fill: Fill, orders: Sequence[str], softmax: bool,
            generator: torch.Generator | int | None, chunk_size: int | None
            ) -> PerturbationCurves:
    """:func:`pixel_flipping` with errors named after ``owner`` (its caller)."""
    fn, params = as_model(model, params, owner)
    input = check_input(input, owner)
    target = check_target(target, input.shape[0], owner)
    pooled = pool_attribution(attribution, input, owner)
    view = image_view(input)
    batch, _, *spatial = view.shape
    check_patch_size(patch_size, spatial, owner)
    check_int(regions_per_step, "regions_per_step", owner, minimum=1, example="8",
              optional=True)
    check_int(n_steps, "n_steps", owner, minimum=1, example="32", optional=True)
    check_chunk_size(chunk_size, owner)
    orders = tuple(orders)
    if not orders or len(set(orders)) != len(orders):
        raise ValueError(
            f"{owner}(orders={orders!r}): expected distinct orders from {ORDERS}, got "
            f"{orders!r}. Pass e.g. orders=('morf', 'lerf')."
        )
    generator = make_generator(generator, owner)
    locations, regions = region_index(spatial, patch_size, device=input.device)
    if regions_per_step is None:
        regions_per_step = max(1, math.ceil(regions / DEFAULT_STEPS))
    ranks = _orders(region_relevance(pooled, locations, regions), orders, generator, owner)
    fill_values = fill_tensor(fill, input, generator, owner)
    counts = _step_counts(regions, regions_per_step, n_steps).to(input.device)
    points = counts.numel()

    # Column 0 (nothing removed) is shared by every order, and so is a last step that
    # removes everything; each is computed once.
    reference = class_scores(fn, params, input, target, softmax, owner)
    last_shared = bool(counts[-1] == regions) and points > 1
    steps = counts[1:-1] if last_shared else counts[1:]
    fast = fast_layout(view)
    curves = {}
    shared_last = None
    for order, rank in ranks.items():
        rank_at = rank[:, locations]  # (batch, locations): rank of each location's region
        run = steps if shared_last is not None or not last_shared else counts[1:]

        def make(indices: Tensor, rank_at: Tensor = rank_at, run: Tensor = run):
            step, sample = indices // batch, indices % batch
            removed = rank_at[sample] < run[step][:, None]
            removed = removed.view(-1, 1, *spatial)
            inputs = torch.where(removed, select_fill(fill_values, sample), fast[sample])
            return to_input_shape(inputs, input), target[sample]

        scores = chunked_scores(fn, params, run.numel() * batch, make, chunk_size, softmax,
                                owner)
        scores = scores.view(run.numel(), batch).T
        if last_shared:
            if shared_last is None:
                shared_last = scores[:, -1:]
            else:
                scores = torch.cat([scores, shared_last], dim=1)
        curves[order] = torch.cat([reference[:, None], scores], dim=1).contiguous()
    return PerturbationCurves(curves, counts, regions, patch_size, orders)


def region_perturbation(model: Any, input: Tensor, target: Any, attribution: Tensor, *,
                        patch_size: int = 8, **options: Any) -> PerturbationCurves:
    """Region perturbation [samek2017]: :func:`pixel_flipping` with ``patch_size`` regions.

    Same parameters and result as :func:`pixel_flipping`, with ``patch_size=8`` by default
    (and, as there, about 32 steps unless ``regions_per_step`` says otherwise).
    """
    arguments = inspect.signature(pixel_flipping).bind(
        model, input, target, attribution, patch_size=patch_size, **options)
    arguments.apply_defaults()
    return _curves("region_perturbation", **arguments.arguments)


def _subset_masks(batch: int, n_subsets: int, regions: int, n: int,
                  generator: torch.Generator) -> Tensor:
    """``(batch, n_subsets, regions)`` boolean masks with exactly ``n`` regions each."""
    keys = torch.rand(batch, n_subsets, regions, generator=generator)
    chosen = keys.argsort(dim=-1)[..., :n]
    mask = torch.zeros(batch, n_subsets, regions, dtype=torch.bool)
    return mask.scatter_(-1, chosen, True)


def sensitivity_n(
    model: Any,
    input: Tensor,
    target: Any,
    attribution: Tensor,
    *,
    ns: Sequence[int] | None = None,
    params: Params | None = None,
    n_subsets: int = 100,
    patch_size: int = 1,
    fill: Fill = 0.0,
    softmax: bool = False,
    generator: torch.Generator | int | None = None,
    chunk_size: int | None = 32,
) -> tuple[Tensor, Tensor]:
    """Sensitivity-N [ancona2018]: correlation of attribution sums and output changes.

    For each cardinality ``N`` and sample, ``n_subsets`` random subsets ``S`` of exactly ``N``
    regions (all channels of each) are removed (set to ``fill``). Sensitivity-N is the Pearson
    correlation, over the subsets, between ``sum_{i in S} R_i`` and ``f_c(x) - f_c(x_[S])``. An
    explanation satisfies Sensitivity-N when it is 1; a linear model's ``w * (x - fill)``
    satisfies it for every N.

    Parameters
    ----------
    ns : sequence of int, optional
        The cardinalities; default 10 values spaced logarithmically from 1 to 80 % of the
        regions.
    n_subsets : int
        Random subsets per N and sample (Ancona et al. use 100).
    patch_size, fill, softmax, generator, chunk_size, params
        As in :func:`pixel_flipping`.

    Returns
    -------
    ns : Tensor
        The cardinalities ``(len(ns),)``.
    correlation : Tensor
        ``(batch, len(ns))`` Pearson correlations (0 where either side is constant).
    """
    owner = "sensitivity_n"
    fn, params = as_model(model, params, owner)
    input = check_input(input, owner)
    target = check_target(target, input.shape[0], owner)
    pooled = pool_attribution(attribution, input, owner)
    view = image_view(input)
    batch, _, *spatial = view.shape
    check_patch_size(patch_size, spatial, owner)
    check_int(n_subsets, "n_subsets", owner, minimum=2, example="100")
    check_chunk_size(chunk_size, owner)
    generator = make_generator(generator, owner)
    locations, regions = region_index(spatial, patch_size, device=input.device)
    if ns is None:
        top = max(1, int(0.8 * regions))
        ns = sorted({round(v) for v in torch.logspace(0, torch.log10(torch.tensor(
            float(top))), 10).tolist()})
    ns = [int(n) for n in ns]
    for n in ns:
        if not 1 <= n <= regions:
            raise ValueError(
                f"{owner}(ns={ns!r}): expected cardinalities in [1, {regions}] (the number of "
                f"regions of patch size {patch_size}), got {n}. Pass ns within that range, or "
                f"ns=None for 10 values spread over it."
            )
    relevance = region_relevance(pooled, locations, regions)
    fill_values = fill_tensor(fill, input, generator, owner)
    reference = class_scores(fn, params, input, target, softmax, owner)
    fast = fast_layout(view)
    result = torch.empty(batch, len(ns), dtype=input.dtype, device=input.device)
    for column, n in enumerate(ns):
        masks = _subset_masks(batch, n_subsets, regions, n, generator).to(input.device)

        def make(indices: Tensor, masks: Tensor = masks) -> tuple[Tensor, Tensor]:
            sample, subset = indices // n_subsets, indices % n_subsets
            removed = masks[sample, subset][:, locations].view(-1, 1, *spatial)
            inputs = torch.where(removed, select_fill(fill_values, sample), fast[sample])
            return to_input_shape(inputs, input), target[sample]

        scores = chunked_scores(fn, params, batch * n_subsets, make, chunk_size, softmax, owner)
        delta = reference[:, None] - scores.view(batch, n_subsets)
        sums = (masks.to(relevance.dtype) * relevance[:, None, :]).sum(-1)
        result[:, column] = pearson(sums, delta)
    return torch.tensor(ns), result


def infidelity(
    model: Any,
    input: Tensor,
    target: Any,
    attribution: Tensor,
    *,
    params: Params | None = None,
    perturbation: str | Callable[[Tensor, torch.Generator], Tensor] = "gaussian",
    n_samples: int = 64,
    noise_level: float = 0.1,
    patch_size: int = 4,
    fill: Fill = 0.0,
    normalize: bool = True,
    softmax: bool = False,
    generator: torch.Generator | int | None = None,
    chunk_size: int | None = 32,
) -> Tensor:
    """Infidelity [yeh2019]: ``E_I[(I . Phi(x) - (f(x) - f(x - I)))^2]``, per sample.

    ``I`` is a random perturbation (``x - I`` the perturbed input), ``Phi`` the attribution
    (shaped like ``x``), ``f`` the class score. Lower is better; an explanation that is exact
    for a linear model has infidelity 0 for any perturbation.

    Parameters
    ----------
    perturbation : 'gaussian', 'square' or callable
        ``"gaussian"``: ``I ~ N(0, noise_level^2)`` per element (Yeh et al.'s noisy baseline);
        ``"square"``: a random ``patch_size`` square (all channels) set to ``fill``, i.e.
        ``I = (x - fill) * square``; or ``perturbation(input, generator) -> I`` for one draw of the
        whole batch.
    n_samples : int
        Monte-Carlo draws per sample.
    normalize : bool
        Scale the attribution by the factor ``beta`` that minimises the infidelity, as Yeh et
        al.'s code and Captum's ``normalize=True`` do, so the measure ignores the
        attribution's overall scale.
    noise_level, patch_size, fill, softmax, generator, chunk_size, params
        See above and :func:`pixel_flipping`.

    Returns
    -------
    Tensor
        ``(batch,)`` infidelity.
    """
    owner = "infidelity"
    fn, params = as_model(model, params, owner)
    input = check_input(input, owner)
    target = check_target(target, input.shape[0], owner)
    if not isinstance(attribution, Tensor) or attribution.shape != input.shape:
        got = tuple(attribution.shape) if isinstance(attribution, Tensor) else type(
            attribution).__name__
        raise ValueError(
            f"{owner}(attribution={got}): expected an attribution of the input's shape "
            f"{tuple(input.shape)}, got {got}; infidelity pairs every input element with its "
            f"attribution. Pass the attribution before pooling over channels."
        )
    check_finite(attribution, owner)
    check_int(n_samples, "n_samples", owner, minimum=1, example="64")
    check_chunk_size(chunk_size, owner)
    generator = make_generator(generator, owner)
    attribution = attribution.detach().to(input.dtype)
    batch = input.shape[0]
    draws = _draw_perturbations(input, perturbation, n_samples, noise_level, patch_size, fill,
                                generator, owner)  # (n_samples, *input.shape)
    reference = class_scores(fn, params, input, target, softmax, owner)

    def make(indices: Tensor) -> tuple[Tensor, Tensor]:
        draw, sample = indices // batch, indices % batch
        return input[sample] - draws[draw, sample], target[sample]

    scores = chunked_scores(fn, params, n_samples * batch, make, chunk_size, softmax, owner)
    delta = reference[None] - scores.view(n_samples, batch)  # (n_samples, batch)
    predicted = (draws * attribution[None]).flatten(2).sum(-1)  # (n_samples, batch)
    if normalize:
        denominator = predicted.square().mean(0)
        beta = (predicted * delta).mean(0) / denominator.clamp_min(torch.finfo(input.dtype).tiny)
        beta = torch.where(denominator > 0, beta, torch.ones_like(beta))
        predicted = predicted * beta
    return (predicted - delta).square().mean(0)


def _draw_perturbations(input: Tensor, perturbation: Any, n_samples: int, noise_level: float,
                        patch_size: int, fill: Fill, generator: torch.Generator,
                        owner: str) -> Tensor:
    if callable(perturbation):
        draws = [perturbation(input, generator) for _ in range(n_samples)]
        for draw in draws:
            if not isinstance(draw, Tensor) or draw.shape != input.shape:
                got = tuple(draw.shape) if isinstance(draw, Tensor) else type(draw).__name__
                raise ValueError(
                    f"{owner}(perturbation=...): expected perturbation(input, generator) to "
                    f"return a tensor of the input's shape {tuple(input.shape)}, got {got}. "
                    f"Return one perturbation I per element of the input."
                )
        return torch.stack(draws).to(input.dtype)
    if perturbation == "gaussian":
        check_positive_number(noise_level, "noise_level", owner, example="0.1", what="std")
        noise = torch.randn((n_samples, *input.shape), generator=generator, dtype=input.dtype)
        return noise.to(input.device) * noise_level
    if perturbation == "square":
        view = image_view(input)
        batch, _, *spatial = view.shape
        check_int(patch_size, "patch_size", owner, minimum=1, example="4")
        if patch_size > min(spatial):
            raise ValueError(
                f"{owner}(patch_size={patch_size!r}): expected an int in [1, {min(spatial)}] "
                f"(the smallest spatial size), got {patch_size}. Pass a smaller patch_size."
            )
        fill_values = fill_tensor(fill, input, generator, owner)
        corner = [torch.randint(0, size - patch_size + 1, (n_samples, batch),
                                generator=generator) for size in spatial]
        inside = torch.ones((n_samples, batch) + (1,) * len(spatial), dtype=torch.bool)
        for axis, (size, start) in enumerate(zip(spatial, corner)):
            shape = [1] * len(spatial)
            shape[axis] = size
            position = torch.arange(size).view(1, 1, *shape)
            begin = start.view(n_samples, batch, *([1] * len(spatial)))
            inside = inside & (position >= begin) & (position < begin + patch_size)
        inside = inside[:, :, None].to(input.device)  # all channels
        draws = torch.where(inside, view[None] - fill_values, torch.zeros_like(view[None]))
        return draws[:, :, 0] if input.ndim == 2 else draws
    raise ValueError(
        f"{owner}(perturbation={perturbation!r}): expected 'gaussian', 'square' or a callable "
        f"perturbation(input, generator) -> I, got {perturbation!r}. Pass e.g. "
        f"perturbation='gaussian'."
    )
