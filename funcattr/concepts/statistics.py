"""Relevance maximisation, the per-batch part: concept statistics and a top-N reduction.

Relevance maximisation finds, for each channel of chosen layers, the samples of a data set in
which the channel is most relevant (and, as activation maximisation, most active), with the
position in the layer's feature map where it is (CRP's ``FeatureVisualization``). It splits into
two pure pieces that a data set driver streams batches through:

- :func:`concept_statistics`: for one batch, per layer, each sample's score per channel (the
  relevance or activation summed over positions, or its maximum; optionally as a share of the
  sample's total absolute score) and the position of the largest value in the channel's map;
  one forward pass and one backward pass down to the deepest layer;
- :class:`TopSamples` with :func:`top_samples` (a batch's statistics as a top-N table) and
  :func:`merge_top_samples`: the N best samples per channel, merged by an associative,
  commutative and idempotent reduction (ties broken by the smaller sample index; a sample met
  twice counts once), so shards and resumed runs merge in any order to the same table.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor

from funcattr.attribution.options import check_int
from funcattr.attribution.pullback import Params
from funcattr.attribution.targets import one_hot
from funcattr.concepts.conditional import check_bool, check_record, run_conditions
from funcattr.concepts.conditions import Condition
from funcattr.concepts.ranking import NORM_EPSILON
from funcattr.ruled import FunctionalModel

__all__ = [
    "MAX_TARGETS",
    "ConceptStatistics",
    "TopSamples",
    "concept_statistics",
    "merge_top_samples",
    "top_samples",
]

#: How a channel's map becomes one score: its sum, or its largest value (CRP's ``max_target``).
MAX_TARGETS = ("sum", "max")


class ConceptStatistics(NamedTuple):
    """One layer's statistics for one batch (all ``(batch, C)``).

    Attributes
    ----------
    relevance : Tensor
        Each sample's relevance score per channel.
    relevance_position : Tensor
        The flat index (over the channel map's positions, row-major) of the largest relevance.
    activation : Tensor
        Each sample's activation score per channel.
    activation_position : Tensor
        The flat index of the largest activation.
    """

    relevance: Tensor
    relevance_position: Tensor
    activation: Tensor
    activation_position: Tensor


def _scores(maps: Tensor, max_target: str, abs_norm: bool) -> tuple[Tensor, Tensor]:
    """CRP's ``reference_sampling`` per sample: ``(score, argmax position)``, each
    ``(batch, C)``."""
    flat = maps.reshape(*maps.shape[:2], -1)
    position = flat.argmax(-1)
    score = flat.sum(-1) if max_target == "sum" else flat.gather(-1, position[..., None])[..., 0]
    if abs_norm:
        score = score / (score.abs().sum(-1, keepdim=True) + NORM_EPSILON)
    return score, position


def concept_statistics(fn: FunctionalModel, params: Params, input: Tensor,
                       layers: str | Sequence[str], target: Any = None, *,
                       max_target: str = "sum", abs_norm: bool = True,
                       times_output: bool = True) -> dict[str, ConceptStatistics]:
    """Per layer, each sample's relevance and activation score per channel and where its map
    peaks: the per-batch part of relevance (and activation) maximisation.

    Parameters
    ----------
    fn, params
        From :func:`funcattr.functionalize`.
    input : Tensor
        A batch of samples.
    layers : str or sequence of str
        The layers whose channels are analysed.
    target : int, sequence of int, tensor or None
        The class whose relevance is followed, as in :func:`funcattr.attribution.one_hot`:
        ``None`` for each sample's prediction, a class, or one class per sample (e.g. the
        labels of a data set).
    max_target : {"sum", "max"}
        A channel's score: the sum over its map, or its largest value (CRP's ``max_target``).
    abs_norm : bool
        Divide each sample's scores by their total absolute value over the channels (CRP's
        ``FeatureVisualization`` default).
    times_output : bool
        Start the relevance from the score times one-hot (CRP's).

    Returns
    -------
    dict of str to ConceptStatistics

    Examples
    --------
    >>> stats = concept_statistics(fn, params, images, ["features.28"], labels)  # doctest: +SKIP
    >>> table = top_samples(stats["features.28"].relevance,                      # doctest: +SKIP
    ...                     stats["features.28"].relevance_position, indices, n=40)
    """
    owner = "concept_statistics"
    layers = check_record(layers, owner)
    if not layers:
        raise ValueError(
            f"{owner}(layers=()): expected at least one layer, got none. Pass e.g. "
            f"layers=['features.28']."
        )
    if max_target not in MAX_TARGETS:
        raise ValueError(
            f"{owner}(max_target={max_target!r}): expected one of {', '.join(MAX_TARGETS)}, got "
            f"{max_target!r}. Pass max_target='sum' or max_target='max'."
        )
    check_bool(abs_norm, "abs_norm", owner)
    result = run_conditions(fn, params, input, [Condition()], layers, times_output=times_output,
                            exclude_parallel=True,
                            attr_output_fn=one_hot(target, times_output=times_output),
                            chunk_size=None, to_input=False, owner=owner)
    statistics = {}
    for name in layers:
        relevance, relevance_position = _scores(result.relevances[name][0], max_target,
                                                abs_norm)
        activation, activation_position = _scores(result.activations[name], max_target,
                                                  abs_norm)
        statistics[name] = ConceptStatistics(relevance, relevance_position, activation,
                                             activation_position)
    return statistics


class TopSamples(NamedTuple):
    """The ``n`` best samples per channel (all ``(C, n)``), best first.

    Attributes
    ----------
    values : Tensor
        Their scores; empty slots hold ``-inf``.
    samples : Tensor
        Their sample indices (int64, e.g. positions in the data set); empty slots hold -1.
    positions : Tensor
        Where each sample's channel map peaks (flat index); empty slots hold -1.
    """

    values: Tensor
    samples: Tensor
    positions: Tensor


def _check_table(table: Any, name: str, owner: str) -> TopSamples:
    if not isinstance(table, TopSamples):
        raise TypeError(
            f"{owner}({name}={type(table).__name__}): expected a TopSamples, got "
            f"{type(table).__name__}. Build one with top_samples(...)."
        )
    return table


def _best(values: Tensor, samples: Tensor, positions: Tensor, n: int) -> TopSamples:
    """The reduction: per row, one entry per sample (its largest value, then its smallest
    position), then the ``n`` best by value (descending), ties by sample (ascending)."""
    values = values.clone()
    order = torch.argsort(positions, dim=1, stable=True)
    order = order.gather(1, torch.argsort(-values.gather(1, order), dim=1, stable=True))
    order = order.gather(1, torch.argsort(samples.gather(1, order), dim=1, stable=True))
    values, samples, positions = (t.gather(1, order) for t in (values, samples, positions))
    repeated = torch.zeros_like(samples, dtype=torch.bool)
    repeated[:, 1:] = samples[:, 1:] == samples[:, :-1]
    repeated |= samples < 0
    values = values.masked_fill(repeated, float("-inf"))
    samples = samples.masked_fill(repeated, -1)
    positions = positions.masked_fill(repeated, -1)
    order = torch.argsort(torch.where(samples < 0, samples.new_tensor(2**62), samples), dim=1,
                          stable=True)
    order = order.gather(1, torch.argsort(-values.gather(1, order), dim=1, stable=True))
    order = order[:, :n]
    values, samples, positions = (t.gather(1, order) for t in (values, samples, positions))
    width = values.shape[1]
    if width < n:  # pad with empty slots
        pad = n - width
        values = torch.cat([values, values.new_full((values.shape[0], pad), float("-inf"))], 1)
        samples = torch.cat([samples, samples.new_full((samples.shape[0], pad), -1)], 1)
        positions = torch.cat([positions, positions.new_full((positions.shape[0], pad), -1)], 1)
    return TopSamples(values, samples, positions)


def top_samples(values: Tensor, positions: Tensor, samples: Tensor | Sequence[int], n: int
                ) -> TopSamples:
    """One batch's statistics as a top-``n`` table per channel.

    Parameters
    ----------
    values, positions : Tensor
        ``(batch, C)``: a score and position per sample and channel (from
        :func:`concept_statistics`).
    samples : Tensor or sequence of int
        ``(batch,)``: each sample's index (e.g. in the data set), >= 0.
    n : int
        How many samples to keep per channel.

    Returns
    -------
    TopSamples
        ``(C, n)`` tables; merge tables with :func:`merge_top_samples`.
    """
    owner = "top_samples"
    check_int(n, "n", owner, minimum=1, example="40")
    samples = torch.as_tensor(samples, dtype=torch.long, device=values.device)
    if values.ndim != 2 or positions.shape != values.shape or samples.shape != values.shape[:1]:
        raise ValueError(
            f"{owner}(values=tensor of shape {tuple(values.shape)}, positions=tensor of shape "
            f"{tuple(positions.shape)}, samples=tensor of shape {tuple(samples.shape)}): "
            f"expected values and positions of shape (batch, C) and samples of shape (batch,), "
            f"got these. Pass one statistic of concept_statistics and the batch's indices."
        )
    if bool((samples < 0).any()):
        raise ValueError(
            f"{owner}(samples={samples.tolist()[:8]}): expected sample indices >= 0, got "
            f"negative ones. Pass the samples' positions in the data set."
        )
    return _best(values.detach().T, samples[None].expand(values.shape[1], -1),
                 positions.T.long(), n)


def merge_top_samples(first: TopSamples, second: TopSamples) -> TopSamples:
    """The best samples of two tables (associative, commutative, idempotent).

    Both tables must have the same channels and ``n``; the result keeps ``n``.
    """
    owner = "merge_top_samples"
    first = _check_table(first, "first", owner)
    second = _check_table(second, "second", owner)
    if first.values.shape != second.values.shape:
        raise ValueError(
            f"{owner}(first=TopSamples{tuple(first.values.shape)}, "
            f"second=TopSamples{tuple(second.values.shape)}): expected tables of the same "
            f"(channels, n), got these. Merge tables of one layer built with the same n."
        )
    n = first.values.shape[1]
    return _best(*(torch.cat([a, b], dim=1) for a, b in zip(first, second)), n)
