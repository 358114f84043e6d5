"""funcattr: functional attribution for PyTorch models, built on ``torch.func``.

>>> composite = funcattr.composites.EpsilonPlusFlat()
>>> fn, params = funcattr.functionalize(model, composite)  # doctest: +SKIP
>>> output, relevance = funcattr.gradient(fn, params, x, funcattr.one_hot(target))  # doctest: +SKIP
"""

from funcattr import attribution, canonizers, composites, core, layer, rules, types
from funcattr.attribution import (
    Gradient,
    gradient,
    integrated_gradients,
    multi_target,
    occlusion,
    one_hot,
    pullback,
    smooth_grad,
    top_k_targets,
)
from funcattr.composites import COMPOSITES, assign_rules, register_composite
from funcattr.functional import functionalize

__all__ = [
    "COMPOSITES",
    "Gradient",
    "assign_rules",
    "attribution",
    "canonizers",
    "composites",
    "core",
    "functionalize",
    "gradient",
    "integrated_gradients",
    "layer",
    "multi_target",
    "occlusion",
    "one_hot",
    "pullback",
    "register_composite",
    "rules",
    "smooth_grad",
    "top_k_targets",
    "types",
]
