"""Concepts: conditional relevance (CRP), concept ranking, attribution graphs and the per-batch
part of relevance maximisation.

- :mod:`~funcattr.concepts.conditions`: conditions as data (:class:`Condition`, CRP's dicts);
- :mod:`~funcattr.concepts.split`: a pullback split at named layers (one forward pass, pieces
  pulled back one after another, stacked gradients batched);
- :mod:`~funcattr.concepts.conditional`: :func:`conditional_attribution`, K conditions at once;
- :mod:`~funcattr.concepts.ranking`: :func:`concept_relevance`, :func:`top_concepts`,
  :func:`local_concept_relevance`, :func:`concept_heatmaps`, :func:`channel_relevance`;
- :mod:`~funcattr.concepts.graph`: :func:`attribution_graph`;
- :mod:`~funcattr.concepts.statistics`: :func:`concept_statistics`, :func:`top_samples`,
  :func:`merge_top_samples` (relevance maximisation, per batch).

See ``docs/concepts.md``.
"""

from funcattr.concepts.conditional import ConditionalAttribution, conditional_attribution
from funcattr.concepts.conditions import OUTPUT, Condition
from funcattr.concepts.graph import (
    INPUT_NODE,
    AttributionGraph,
    ConceptEdge,
    ConceptNode,
    attribution_graph,
    concept_layers,
    input_layers,
)
from funcattr.concepts.ranking import (
    TopConcepts,
    channel_relevance,
    concept_heatmaps,
    concept_relevance,
    local_concept_relevance,
    top_concepts,
)
from funcattr.concepts.statistics import (
    MAX_TARGETS,
    ConceptStatistics,
    TopSamples,
    concept_statistics,
    merge_top_samples,
    top_samples,
)

__all__ = [
    "INPUT_NODE",
    "MAX_TARGETS",
    "OUTPUT",
    "AttributionGraph",
    "ConceptEdge",
    "ConceptNode",
    "ConceptStatistics",
    "Condition",
    "ConditionalAttribution",
    "TopConcepts",
    "TopSamples",
    "attribution_graph",
    "channel_relevance",
    "concept_heatmaps",
    "concept_layers",
    "concept_relevance",
    "concept_statistics",
    "conditional_attribution",
    "input_layers",
    "local_concept_relevance",
    "merge_top_samples",
    "top_concepts",
    "top_samples",
]
