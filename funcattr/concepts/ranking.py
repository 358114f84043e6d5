"""Which concepts matter: relevance per channel, the top concepts, local analysis, heatmaps.

- :func:`channel_relevance`: a layer's relevance summed over positions, per channel (CRP's
  ``ChannelConcept.attribute``), optionally as a share of the total absolute relevance;
- :func:`concept_relevance` / :func:`top_concepts`: how much relevance of a prediction passes
  each channel of a layer, and the most relevant channels (one forward pass, one backward pass
  down to the layer);
- :func:`local_concept_relevance`: how much each channel contributes to the relevance inside an
  input region (the sum of its conditional heatmap over the region), for every channel of the
  layer at once;
- :func:`concept_heatmaps`: the conditional heatmaps of chosen channels, optionally restricted
  to a region (local concept heatmaps).

A ``target`` here is what :func:`funcattr.attribution.one_hot` takes: ``None`` for each
sample's predicted class, a class for all samples, or one class per sample.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor

from funcattr.attribution.options import check_batched, check_input, check_int, shown
from funcattr.attribution.pullback import Params
from funcattr.attribution.targets import one_hot, output_gradient
from funcattr.concepts.conditional import (
    check_bool,
    check_functional,
    run_conditions,
)
from funcattr.concepts.conditions import Condition, Selection, check_layer_names
from funcattr.concepts.split import OUTPUT_PIECE, split_pullback
from funcattr.ruled import FunctionalModel

__all__ = [
    "TopConcepts",
    "channel_relevance",
    "check_region",
    "concept_heatmaps",
    "concept_relevance",
    "local_concept_relevance",
    "top_concepts",
]

#: CRP's guard against dividing by zero in the normalised (``abs_norm``) relevance.
NORM_EPSILON = 1e-10


def channel_relevance(relevance: Tensor, *, dim: int = 1, abs_norm: bool = False) -> Tensor:
    """A layer's relevance summed over positions (all dimensions after ``dim``) per channel.

    Parameters
    ----------
    relevance : Tensor
        E.g. ``(batch, C, H, W)``, or ``(K, batch, C, H, W)`` with ``dim=2``.
    dim : int
        The channel dimension.
    abs_norm : bool
        Divide by the sum of the absolute values over the channels (plus ``1e-10``), as CRP's
        ``ChannelConcept.attribute(..., abs_norm=True)``: each channel's share.

    Returns
    -------
    Tensor
        ``relevance.shape[:dim + 1]``.
    """
    owner = "channel_relevance"
    if not isinstance(relevance, Tensor):
        raise TypeError(
            f"channel_relevance(relevance={type(relevance).__name__}): expected a tensor, got "
            f"{type(relevance).__name__}. Pass a layer relevance such as "
            f"result.relevances['features.28']."
        )
    check_bool(abs_norm, "abs_norm", owner)
    if isinstance(dim, bool) or not isinstance(dim, int) or not 0 <= dim < relevance.ndim:
        raise ValueError(
            f"{owner}(dim={dim!r}): expected the channel dimension, an int in [0, "
            f"{relevance.ndim - 1}] for relevance of shape {tuple(relevance.shape)}, got "
            f"{dim!r}. Pass dim=1 for (batch, C, ...), dim=2 for (K, batch, C, ...)."
        )
    summed = relevance.reshape(*relevance.shape[:dim + 1], -1).sum(-1)
    if abs_norm:
        summed = summed / (summed.abs().sum(-1, keepdim=True) + NORM_EPSILON)
    return summed


def _context(condition: Any, owner: str) -> dict[str, Selection]:
    """``condition``: channels at other layers that the relevance must pass as well."""
    if condition is None:
        return {}
    if not isinstance(condition, Mapping):
        raise TypeError(
            f"{owner}(condition={type(condition).__name__}): expected None or a dict of layer "
            f"names to channels, got {type(condition).__name__}. Pass e.g. "
            f"condition={{'features.28': [7]}}."
        )
    return dict(Condition(channels=condition).channels)


def concept_relevance(fn: FunctionalModel, params: Params, input: Tensor, layer: str,
                      target: Any = None, *, abs_norm: bool = True, times_output: bool = True,
                      condition: Mapping[str, Any] | None = None,
                      exclude_parallel: bool = True) -> Tensor:
    """The relevance of each channel of ``layer`` for ``target``: CRP's concept relevance.

    One forward pass and one backward pass from the output down to ``layer`` (no further).

    Parameters
    ----------
    fn, params, input
        As in :func:`funcattr.concepts.conditional_attribution`.
    layer : str
        The layer, by its name in ``model.named_modules()``.
    target : int, sequence of int, tensor or None
        As in :func:`funcattr.attribution.one_hot`: ``None`` explains each sample's prediction.
    abs_norm : bool
        Each channel's share of the total absolute relevance at the layer (CRP's default).
    times_output : bool
        Start from the score times one-hot (CRP's initial relevance).
    condition : dict, optional
        Channels at other layers the relevance must also pass (``{"features.28": [7]}``):
        the relevance of ``layer``'s channels within that concept.
    exclude_parallel : bool
        As in :func:`funcattr.concepts.conditional_attribution`.

    Returns
    -------
    Tensor
        ``(batch, C)``.

    Examples
    --------
    >>> relevance = concept_relevance(fn, params, x, "features.28", target=46)  # doctest: +SKIP
    >>> relevance.topk(5).indices  # the five most relevant channels             # doctest: +SKIP
    """
    owner = "concept_relevance"
    check_bool(abs_norm, "abs_norm", owner)
    _check_layer(fn, layer, owner)
    result = run_conditions(fn, params, input, [Condition(channels=_context(condition, owner))],
                            (layer,), times_output=times_output,
                            exclude_parallel=exclude_parallel,
                            attr_output_fn=one_hot(target, times_output=times_output),
                            chunk_size=None, to_input=False, owner=owner)
    return channel_relevance(result.relevances[layer][0], dim=1, abs_norm=abs_norm)


class TopConcepts(NamedTuple):
    """The most relevant channels of a layer per sample, highest first.

    Attributes
    ----------
    channels : Tensor
        ``(batch, k)`` channel indices.
    relevance : Tensor
        ``(batch, k)`` their relevance (as :func:`concept_relevance` returns it).
    """

    channels: Tensor
    relevance: Tensor


def top_concepts(fn: FunctionalModel, params: Params, input: Tensor, layer: str,
                 target: Any = None, *, k: int = 5, abs_norm: bool = True,
                 times_output: bool = True, condition: Mapping[str, Any] | None = None,
                 exclude_parallel: bool = True) -> TopConcepts:
    """The ``k`` most relevant channels of ``layer`` for ``target`` (see
    :func:`concept_relevance`, whose arguments it takes).

    Examples
    --------
    >>> top = top_concepts(fn, params, x, "features.28", target=46, k=5)  # doctest: +SKIP
    >>> top.channels, top.relevance                                         # doctest: +SKIP
    """
    owner = "top_concepts"
    check_int(k, "k", owner, minimum=1, example="5")
    relevance = concept_relevance(fn, params, input, layer, target, abs_norm=abs_norm,
                                  times_output=times_output, condition=condition,
                                  exclude_parallel=exclude_parallel)
    if k > relevance.shape[1]:
        raise ValueError(
            f"{owner}(k={k}): expected at most the layer's {relevance.shape[1]} channels, got "
            f"{k}. Pass k <= {relevance.shape[1]}."
        )
    values, channels = relevance.topk(k, dim=1)
    return TopConcepts(channels, values)


def check_region(region: Any, input: Tensor, owner: str) -> Tensor:
    """A region: a tensor (weights, e.g. a 0/1 mask) that broadcasts to the input's shape,
    such as ``(H, W)`` for images, in the input's dtype."""
    if not isinstance(region, Tensor):
        raise TypeError(
            f"{owner}(region={type(region).__name__}): expected a tensor that broadcasts to the "
            f"input's shape {tuple(input.shape)}, got {type(region).__name__}. Pass e.g. a "
            f"(H, W) mask with ones inside the region."
        )
    try:
        fits = torch.broadcast_shapes(region.shape, input.shape) == input.shape
    except RuntimeError:
        fits = False
    if not fits:
        raise ValueError(
            f"{owner}(region={shown(region)}): expected a tensor that broadcasts to the "
            f"input's shape {tuple(input.shape)}, got {tuple(region.shape)}. Pass e.g. a mask of "
            f"shape {tuple(input.shape[-2:])}."
        )
    return region.to(dtype=input.dtype, device=input.device)


def _check_layer(fn: Any, layer: Any, owner: str) -> None:
    check_functional(fn, owner)
    check_layer_names(fn, [layer], "layer", owner)


def local_concept_relevance(fn: FunctionalModel, params: Params, input: Tensor, layer: str,
                            region: Tensor, target: Any = None, *, abs_norm: bool = False,
                            times_output: bool = True) -> Tensor:
    """How much relevance each channel of ``layer`` puts inside ``region`` of the input.

    Channel ``c``'s value is the sum over the region of its conditional heatmap (the input
    relevance of the condition ``{"y": target, layer: [c]}``, CRP's local analysis), for every
    channel at once: the input relevance is linear in the relevance at the layer, so the sums
    are ``<B^T region, R_layer>`` per channel, where ``B`` pulls relevance from the layer to
    the input; ``B^T region`` costs one double backward instead of one backward per channel.

    Parameters
    ----------
    fn, params, input, layer, target, times_output
        As in :func:`concept_relevance`.
    region : Tensor
        Weights over the input, broadcasting to its shape: a 0/1 mask of the region, e.g.
        ``(H, W)``.
    abs_norm : bool
        Divide by the sum of the absolute values over the channels.

    Returns
    -------
    Tensor
        ``(batch, C)``: equals ``(conditional_attribution(...).attribution * region).sum()``
        over each sample, per channel (with ``exclude_parallel=True``).

    Examples
    --------
    >>> region = torch.zeros(224, 224); region[:, 150:] = 1                    # doctest: +SKIP
    >>> local = local_concept_relevance(fn, params, x, "features.28", region)  # doctest: +SKIP
    """
    owner = "local_concept_relevance"
    _check_layer(fn, layer, owner)
    check_input(input, owner)
    check_batched(input, owner)
    check_bool(abs_norm, "abs_norm", owner)
    check_bool(times_output, "times_output", owner)
    attr_output_fn = one_hot(target, times_output=times_output)
    region = check_region(region, input, owner)
    split = split_pullback(fn, params, input, {layer: "layer"}, owner)
    output = split.output if split.differentiated else split.output.detach()
    seed = output_gradient(output, attr_output_fn, owner)
    arrived = split.pull(OUTPUT_PIECE, seed[None], [layer], last=False).get(layer)
    if arrived is None:
        return input.new_zeros(split.outputs[layer].shape[:2])
    weights = split.transposed(layer, region.expand(input.shape))
    return channel_relevance(arrived[0] * weights, dim=1, abs_norm=abs_norm)


def concept_heatmaps(fn: FunctionalModel, params: Params, input: Tensor, layer: str,
                     channels: Sequence[int], target: Any = None, *,
                     region: Tensor | None = None, times_output: bool = True,
                     condition: Mapping[str, Any] | None = None, exclude_parallel: bool = True,
                     chunk_size: int | None = None) -> Tensor:
    """The conditional heatmaps of ``channels`` of ``layer`` (one condition per channel),
    restricted to ``region`` when given: local concept heatmaps.

    Parameters
    ----------
    fn, params, input, layer, target, times_output, condition, exclude_parallel
        As in :func:`concept_relevance`.
    channels : sequence of int
        The channels (concepts), e.g. ``top_concepts(...).channels[0]``.
    region : Tensor, optional
        Weights over the input (broadcasting to its shape); the heatmaps are multiplied by it.
    chunk_size : int, optional
        As in :func:`funcattr.concepts.conditional_attribution`.

    Returns
    -------
    Tensor
        ``(len(channels), *input.shape)``.
    """
    owner = "concept_heatmaps"
    _check_layer(fn, layer, owner)
    check_input(input, owner)
    if isinstance(channels, Tensor):
        channels = [int(c) for c in channels.reshape(-1).tolist()]
    if not isinstance(channels, Sequence) or isinstance(channels, str | bytes) or not channels:
        raise TypeError(
            f"{owner}(channels={channels!r}): expected a non-empty sequence of channel "
            f"indices, got {type(channels).__name__}. Pass e.g. channels=[7, 9]."
        )
    context = _context(condition, owner)
    conditions = [Condition(channels={**context, layer: (c,) if isinstance(c, int) else c})
                  for c in channels]
    region = None if region is None else check_region(region, input, owner)
    result = run_conditions(fn, params, input, conditions, (), times_output=times_output,
                            exclude_parallel=exclude_parallel,
                            attr_output_fn=one_hot(target, times_output=times_output),
                            chunk_size=chunk_size, to_input=True, owner=owner)
    return result.attribution if region is None else result.attribution * region
