"""funcattr: functional attribution for PyTorch models, built on ``torch.func``.

>>> composite = funcattr.composites.EpsilonPlusFlat()
>>> fn, params = funcattr.functionalize(model, composite)  # doctest: +SKIP
>>> output, relevance = funcattr.gradient(fn, params, x, funcattr.one_hot(target))  # doctest: +SKIP

The public surface, by layer (``docs/architecture.md`` has the whole map):

- modules: ``types``, ``layer``, ``core`` (rule vocabulary), ``rules``, ``canonizers``,
  ``composites``, ``attribution``; ``concepts`` (CRP, attribution graphs), ``metrics``,
  ``image``, ``cmap`` and ``torchvision`` (canonizers for torchvision models) load on first
  use;
- registries: ``COMPOSITES`` / ``get_composite`` / ``register_composite`` /
  ``assign_rules``, ``CANONIZERS`` / ``get_canonizer`` / ``canonizers_for``,
  ``ATTRIBUTORS`` / ``get_attributor`` / ``register_attributor``, and (on first use)
  ``METRICS`` / ``get_metric`` / ``register_metric``;
- ``functionalize(model, composite, canonizers) -> (fn, params)``;
- attributors: ``gradient``, ``pullback``, ``multi_target``, ``smooth_grad``,
  ``integrated_gradients``, ``occlusion`` and Zennit's classes ``Attributor``, ``Gradient``,
  ``SmoothGrad``, ``IntegratedGradients``, ``Occlusion``; targets: ``one_hot``,
  ``top_k_targets``;
- heatmaps: ``imgify``, ``imsave``;
- process tuning: ``warm_allocator`` (an explicit opt-in; nothing else changes process state).
"""

import importlib
from typing import Any

from funcattr import allocator, attribution, canonizers, composites, core, layer, rules, types
from funcattr.allocator import warm_allocator
from funcattr.attribution import (
    ATTRIBUTORS,
    Attributor,
    Gradient,
    IntegratedGradients,
    Occlusion,
    SmoothGrad,
    get_attributor,
    gradient,
    integrated_gradients,
    multi_target,
    occlusion,
    one_hot,
    pullback,
    register_attributor,
    smooth_grad,
    top_k_targets,
)
from funcattr.canonizers import CANONIZERS, canonizers_for, get_canonizer
from funcattr.composites import COMPOSITES, assign_rules, get_composite, register_composite
from funcattr.functional import functionalize

#: Loaded on first access: name -> (module, attribute or None for the module itself).
_ON_FIRST_USE = {
    "cmap": ("funcattr.cmap", None),
    "concepts": ("funcattr.concepts", None),
    "datasets": ("funcattr.datasets", None),
    "image": ("funcattr.image", None),
    "imgify": ("funcattr.image", "imgify"),
    "imsave": ("funcattr.image", "imsave"),
    "metrics": ("funcattr.metrics", None),
    "METRICS": ("funcattr.metrics.registry", "METRICS"),
    "get_metric": ("funcattr.metrics.registry", "get_metric"),
    "register_metric": ("funcattr.metrics.registry", "register_metric"),
}

__all__ = [
    "ATTRIBUTORS",
    "CANONIZERS",
    "COMPOSITES",
    "METRICS",
    "Attributor",
    "Gradient",
    "IntegratedGradients",
    "Occlusion",
    "SmoothGrad",
    "allocator",
    "assign_rules",
    "attribution",
    "canonizers",
    "canonizers_for",
    "cmap",
    "composites",
    "concepts",
    "core",
    "datasets",
    "functionalize",
    "get_attributor",
    "get_canonizer",
    "get_composite",
    "get_metric",
    "gradient",
    "image",
    "imgify",
    "imsave",
    "integrated_gradients",
    "layer",
    "metrics",
    "multi_target",
    "occlusion",
    "one_hot",
    "pullback",
    "register_attributor",
    "register_composite",
    "register_metric",
    "rules",
    "smooth_grad",
    "top_k_targets",
    "types",
    "warm_allocator",
]


def __getattr__(name: str) -> Any:
    """Load ``concepts``, ``metrics``, ``datasets``, ``image``, ``cmap`` and the heatmap helpers
    on first use."""
    if name not in _ON_FIRST_USE:
        raise AttributeError(f"module 'funcattr' has no attribute {name!r}")
    module, attribute = _ON_FIRST_USE[name]
    value = importlib.import_module(module)
    return value if attribute is None else getattr(value, attribute)


def __dir__() -> list[str]:
    return sorted({*globals(), *_ON_FIRST_USE})
