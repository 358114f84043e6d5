"""Evaluation of explanations, batched and seeded: faithfulness, localisation, robustness,
randomisation and per-layer conservation.

Every metric takes plain tensors and a model (``nn.Module`` or pure ``fn(params, input)``) or
an ``explain(input, target) -> attribution`` callable (:func:`explainer` builds one from
funcattr's attributors). Perturbed inputs are stacked into batches of ``chunk_size`` model
inputs; randomness comes from ``generator`` (an int seed repeats its draws on every call;
``None`` draws from torch's global generator). :data:`METRICS` lists the registered metrics
(:mod:`funcattr.metrics.registry`: one spec per metric, which :func:`evaluate` reads).

Modules: ``faithfulness``, ``localisation``, ``robustness``, ``randomisation``, ``axiomatic``
(the metrics), ``explainer``, ``similarity``, ``inputs``, ``regions``, ``scores`` (their
shared pieces), ``registry`` and ``evaluate``.

References
----------
[bach2015] Bach et al., On pixel-wise explanations for non-linear classifier decisions by
layer-wise relevance propagation, PLoS ONE 10(7), 2015.
[samek2017] Samek et al., Evaluating the visualization of what a deep neural network has
learned, IEEE TNNLS 28(11), 2017.
[ancona2018] Ancona et al., Towards better understanding of gradient-based attribution methods
for deep neural networks, ICLR 2018.
[yeh2019] Yeh et al., On the (in)fidelity and sensitivity of explanations, NeurIPS 2019.
[arras2022] Arras, Osman, Samek, CLEVR-XAI: a benchmark dataset for the ground truth evaluation
of neural network explanations, Information Fusion 81, 2022.
[zhang2018] Zhang et al., Top-down neural attention by excitation backprop, IJCV 126, 2018.
[adebayo2018] Adebayo et al., Sanity checks for saliency maps, NeurIPS 2018.
[sixt2020] Sixt, Granz, Landgraf, When explanations lie: why many modified BP attributions
fail, ICML 2020.
[schulz2020] Schulz et al., Restricting the flow: information bottlenecks for attribution,
ICLR 2020.
[bluecher2024] Blücher, Vielhaben, Strodthoff, Decoupling pixel flipping and occlusion strategy
for consistent XAI benchmarks, TMLR 2024.
[sundararajan2017] Sundararajan, Taly, Yan, Axiomatic attribution for deep networks, ICML 2017.
[montavon2019] Montavon et al., Layer-wise relevance propagation: an overview, in Explainable
AI, LNCS 11700, 2019.
[wang2004] Wang et al., Image quality assessment: from error visibility to structural
similarity, IEEE TIP 13(4), 2004.
"""

from funcattr.metrics.axiomatic import (
    ConservationReport,
    LayerConservation,
    completeness,
    conservation,
)
from funcattr.metrics.evaluate import EvaluationTable, evaluate, plot_pixel_flipping, write_table
from funcattr.metrics.explainer import Explainer, explainer
from funcattr.metrics.faithfulness import (
    PerturbationCurves,
    infidelity,
    pixel_flipping,
    region_perturbation,
    sensitivity_n,
)
from funcattr.metrics.localisation import (
    pointing_game,
    relevance_mass_accuracy,
    relevance_rank_accuracy,
)
from funcattr.metrics.randomisation import (
    RandomisationResult,
    model_parameter_randomisation,
    parameter_layers,
    random_logit,
    randomise_params,
)
from funcattr.metrics.registry import (
    DEFAULT_METRICS,
    METRICS,
    MetricCase,
    MetricSpec,
    register_metric,
)
from funcattr.metrics.robustness import avg_sensitivity, max_sensitivity, sensitivities

__all__ = [
    "DEFAULT_METRICS",
    "METRICS",
    "ConservationReport",
    "EvaluationTable",
    "Explainer",
    "LayerConservation",
    "MetricCase",
    "MetricSpec",
    "PerturbationCurves",
    "RandomisationResult",
    "avg_sensitivity",
    "completeness",
    "conservation",
    "evaluate",
    "explainer",
    "infidelity",
    "max_sensitivity",
    "model_parameter_randomisation",
    "parameter_layers",
    "pixel_flipping",
    "plot_pixel_flipping",
    "pointing_game",
    "random_logit",
    "randomise_params",
    "region_perturbation",
    "register_metric",
    "relevance_mass_accuracy",
    "relevance_rank_accuracy",
    "sensitivities",
    "sensitivity_n",
    "write_table",
]
