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
  :func:`merge_top_samples` (relevance maximisation, per batch);
- :mod:`~funcattr.concepts.references`: :func:`neuron_heatmaps`, :func:`reference_box`,
  :func:`gaussian_blur` (the reference patches of relevance maximisation).

Relevance maximisation over a whole dataset (streamed, resumable, ``torchrun``-sharded) is
:func:`funcattr.datasets.relevance_maximization`, in the datasets layer above this one.

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
from funcattr.concepts.references import (
    ReferenceBox,
    gaussian_blur,
    neuron_heatmaps,
    reference_box,
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
    "ReferenceBox",
    "TopConcepts",
    "TopSamples",
    "attribution_graph",
    "channel_relevance",
    "concept_heatmaps",
    "concept_layers",
    "concept_relevance",
    "concept_statistics",
    "conditional_attribution",
    "gaussian_blur",
    "input_layers",
    "local_concept_relevance",
    "merge_top_samples",
    "neuron_heatmaps",
    "reference_box",
    "top_concepts",
    "top_samples",
]
