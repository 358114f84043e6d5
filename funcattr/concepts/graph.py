"""Attribution graphs: a concept decomposed into the lower-layer concepts that carry its
relevance, down to the input (CRP's ``AttributionGraph``).

Starting from one channel of one layer (the *root*) and a prediction, each level follows the
relevance of a concept into the layers that feed its layer (the nearest *concept layers*
upstream, found on the structure of the model's graph) and keeps the ``width`` most relevant
channels of each; the relevance of a node below the root is conditioned on the root and on the
node itself (CRP's). The last level's concepts, and concepts in a layer with no concept layer
below it, pass their relevance to the input. The result is data (:class:`AttributionGraph`:
nodes, edges with relevance, each node's conditional heatmap) and a picture in the HTML report
(:mod:`funcattr.concept_report`).
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor, nn

from funcattr import types
from funcattr.attribution.options import check_batched, check_chunk_size, check_input, check_int
from funcattr.attribution.pullback import Params
from funcattr.attribution.targets import one_hot
from funcattr.concepts.conditional import check_bool, check_functional, run_conditions
from funcattr.concepts.conditions import Condition, check_layer_names, check_selection
from funcattr.concepts.ranking import NORM_EPSILON, channel_relevance
from funcattr.concepts.split import INPUT, split_pullback
from funcattr.ruled import FunctionalModel

__all__ = ["INPUT_NODE", "AttributionGraph", "ConceptEdge", "ConceptNode", "attribution_graph",
           "concept_layers", "input_layers"]


@dataclass(frozen=True, order=True)
class ConceptNode:
    """A concept: one channel of one layer (the input: ``INPUT_NODE``)."""

    layer: str
    channel: int | None

    def __str__(self) -> str:
        return "input" if self == INPUT_NODE else f"{self.layer}:{self.channel}"


#: The node standing for the input (relevance that reaches the pixels).
INPUT_NODE = ConceptNode(INPUT, None)


@dataclass(frozen=True)
class ConceptEdge:
    """Relevance of ``source`` (the upper concept) that passes through ``target`` (a lower
    concept, or the input), as a share of all relevance arriving at ``target``'s layer when
    ``abs_norm`` (CRP's convention), else as a sum."""

    source: ConceptNode
    target: ConceptNode
    relevance: float


@dataclass(frozen=True)
class AttributionGraph:
    """A concept decomposed into lower concepts: nodes, edges, heatmaps.

    Attributes
    ----------
    root : ConceptNode
        The decomposed concept.
    target : int
        The explained class.
    root_relevance : float
        The root's relevance at its layer for the target (its share with ``abs_norm``).
    nodes : tuple of ConceptNode
        The root first, then level by level; ``INPUT_NODE`` last when relevance reaches it.
    edges : tuple of ConceptEdge
        Upper concept -> lower concept, most relevant first per upper concept.
    heatmaps : dict of ConceptNode to Tensor
        Each node's conditional heatmap (shaped like one input sample), when computed.
    """

    root: ConceptNode
    target: int
    root_relevance: float
    nodes: tuple[ConceptNode, ...]
    edges: tuple[ConceptEdge, ...]
    heatmaps: Mapping[ConceptNode, Tensor] = field(default_factory=dict)

    def children(self, node: ConceptNode) -> list[ConceptEdge]:
        """The edges from ``node`` to the concepts below it."""
        return [edge for edge in self.edges if edge.source == node]

    def depth(self) -> dict[ConceptNode, int]:
        """Each node's level: 0 for the root, the input one below the deepest concept."""
        depth = {self.root: 0}
        for node in self.nodes:  # nodes come level by level
            for edge in self.children(node):
                if edge.target != INPUT_NODE:
                    depth.setdefault(edge.target, depth[node] + 1)
        if INPUT_NODE in self.nodes:
            depth[INPUT_NODE] = max(depth.values()) + 1
        return depth

    def to_dict(self) -> dict[str, Any]:
        """The graph as plain data (JSON): nodes as ``{"layer", "channel"}``, edges as
        ``{"source", "target", "relevance"}`` with node indices; heatmaps left out."""
        index = {node: i for i, node in enumerate(self.nodes)}
        return {
            "root": index[self.root],
            "target": self.target,
            "root_relevance": self.root_relevance,
            "nodes": [{"layer": "input" if node == INPUT_NODE else node.layer,
                       "channel": node.channel} for node in self.nodes],
            "edges": [{"source": index[e.source], "target": index[e.target],
                       "relevance": e.relevance} for e in self.edges],
        }


def concept_layers(fn: FunctionalModel) -> list[str]:
    """The default concept layers: every dense layer and convolution of the model."""
    return [name for name, module in fn.view.named_modules()
            if name and isinstance(module, types.Linear | nn.Linear)]


def input_layers(fn: FunctionalModel, params: Params, input: Tensor, layers: Sequence[str]
                 ) -> dict[str, list[str]]:
    """For each of ``layers``, the nearest of ``layers`` that feed it (on every path from its
    output back to the input, the first of ``layers`` met), in the order the model calls them;
    ``INPUT`` among them when a path reaches the input without meeting one. Read from the
    structure of one forward pass on ``input``."""
    owner = "input_layers"
    split = split_pullback(fn, params, input.detach(), {name: "layers" for name in layers},
                           owner)
    order = list(reversed(split.order))  # earliest call first
    return {name: [n for n in [*order, INPUT] if n in (split.reach(name) or ())]
            for name in layers}


def _check_width(width: Any, owner: str) -> tuple[int, ...]:
    if isinstance(width, numbers.Integral) and not isinstance(width, bool):
        width = (width,)
    if not isinstance(width, Sequence) or isinstance(width, str | bytes) or not all(
            isinstance(w, numbers.Integral) and not isinstance(w, bool) for w in width):
        raise TypeError(
            f"{owner}(width={width!r}): expected an int or a sequence of ints (concepts kept "
            f"per layer, one per level), got {type(width).__name__}. Pass e.g. width=(4, 2)."
        )
    for w in width:
        check_int(w, "width", owner, minimum=1, example="(4, 2)")
    return tuple(int(w) for w in width)


def attribution_graph(fn: FunctionalModel, params: Params, input: Tensor, layer: str,
                      channel: int, target: Any = None, *, width: int | Sequence[int] = (4, 2),
                      layers: Sequence[str] | None = None, abs_norm: bool = True,
                      times_output: bool = True, exclude_parallel: bool = True,
                      heatmaps: bool = True, chunk_size: int | None = None) -> AttributionGraph:
    """Decompose channel ``channel`` of ``layer`` into the lower concepts that carry its
    relevance for ``target``, level by level down to the input.

    Parameters
    ----------
    fn, params
        From :func:`funcattr.functionalize`.
    input : Tensor
        One sample, with the batch dimension (``(1, ...)``).
    layer, channel
        The root concept.
    target : int or None
        The explained class (``None``: the prediction).
    width : int or sequence of int
        How many concepts to keep per concept layer at each level (CRP's ``width``); the
        number of levels is its length.
    layers : sequence of str, optional
        The concept layers (``layer`` among them); default: every convolution and dense layer
        (:func:`concept_layers`).
    abs_norm : bool
        Edge relevance as a share of the absolute relevance at the lower layer (CRP's).
    times_output, exclude_parallel, chunk_size
        As in :func:`funcattr.concepts.conditional_attribution`.
    heatmaps : bool
        Keep every node's conditional heatmap (the input relevance of its condition).

    Returns
    -------
    AttributionGraph

    Examples
    --------
    >>> graph = attribution_graph(fn, params, x, "features.28", 7, target=46)  # doctest: +SKIP
    >>> [(str(e.source), str(e.target), round(e.relevance, 3)) for e in graph.edges]  # +SKIP
    """
    owner = "attribution_graph"
    check_functional(fn, owner)
    check_input(input, owner)
    check_batched(input, owner)
    if input.shape[0] != 1:
        raise ValueError(
            f"{owner}(input=tensor of shape {tuple(input.shape)}): expected one sample (batch "
            f"1), got a batch of {input.shape[0]}. Decompose one sample at a time, e.g. "
            f"input[:1]."
        )
    widths = _check_width(width, owner)
    for name, value in (("abs_norm", abs_norm), ("heatmaps", heatmaps)):
        check_bool(value, name, owner)
    check_chunk_size(chunk_size, owner)
    check_layer_names(fn, [layer], "layer", owner)
    check_int(channel, "channel", owner, minimum=0, example="7")
    concept_names = list(dict.fromkeys(concept_layers(fn) if layers is None else layers))
    check_layer_names(fn, concept_names, "layers", owner)
    if layer not in concept_names:
        concept_names.append(layer)
    feeds = input_layers(fn, params, input, concept_names)
    root = ConceptNode(layer, channel)

    attr_output_fn = one_hot(target, times_output=times_output)
    nodes: list[ConceptNode] = [root]
    edges: list[ConceptEdge] = []
    maps: dict[ConceptNode, Tensor] = {}

    def run(group: Sequence[ConceptNode], record: Sequence[str], to_input: bool):
        conditions = [Condition(channels={layer: (channel,), node.layer: (node.channel,)})
                      for node in group]
        return run_conditions(fn, params, input, conditions, record, times_output=times_output,
                              exclude_parallel=exclude_parallel, attr_output_fn=attr_output_fn,
                              chunk_size=chunk_size, to_input=to_input, owner=owner)

    # the root's relevance at its layer among all channels (and the checks of channel/target)
    first = run_conditions(fn, params, input, [Condition()], [layer],
                           times_output=times_output, exclude_parallel=exclude_parallel,
                           attr_output_fn=attr_output_fn, chunk_size=None, to_input=False,
                           owner=owner)
    check_selection((channel,), layer, tuple(first.relevances[layer].shape[2:]), owner)
    resolved = int(first.output.argmax(1)[0]) if target is None else target
    root_share = channel_relevance(first.relevances[layer][0], dim=1, abs_norm=abs_norm)
    root_relevance = float(root_share[0, channel])
    frontier = [root]
    for level in range(len(widths) + 1):
        expand = level < len(widths)
        upcoming: list[ConceptNode] = []
        by_layer: dict[str, list[ConceptNode]] = {}
        for node in frontier:
            by_layer.setdefault(node.layer, []).append(node)
        for name, group in by_layer.items():
            below = [n for n in feeds[name] if n != INPUT] if expand else []
            reaches_input = INPUT in feeds[name] or not below
            result = run(group, below, to_input=heatmaps or reaches_input)
            for k, node in enumerate(group):
                if heatmaps:
                    maps[node] = result.attribution[k, 0].detach()
                for lower in below:
                    share = channel_relevance(result.relevances[lower][k], dim=1,
                                              abs_norm=abs_norm)[0]
                    values, chosen = share.sort(descending=True, stable=True)  # ties: lower
                    values, chosen = values[:widths[level]], chosen[:widths[level]]
                    for value, index in zip(values.tolist(), chosen.tolist()):
                        child = ConceptNode(lower, int(index))
                        edges.append(ConceptEdge(node, child, float(value)))
                        if child not in nodes and child not in upcoming:
                            upcoming.append(child)
                if reaches_input:
                    heat = result.attribution[k]
                    total = heat.sum()
                    if abs_norm:
                        total = total / (heat.abs().sum() + NORM_EPSILON)
                    edges.append(ConceptEdge(node, INPUT_NODE, float(total)))
        nodes.extend(upcoming)
        frontier = upcoming
        if not frontier:
            break
    if any(edge.target == INPUT_NODE for edge in edges):
        nodes.append(INPUT_NODE)
    return AttributionGraph(root, int(resolved), root_relevance, tuple(nodes), tuple(edges),
                            maps)
