"""funcattr: functional attribution for PyTorch models, built on ``torch.func``.

>>> composite = funcattr.composites.EpsilonPlusFlat()
>>> fn, params = funcattr.functionalize(model, composite)  # doctest: +SKIP
>>> output, relevance = funcattr.gradient(fn, params, x, funcattr.one_hot(target))  # doctest: +SKIP

The public surface, by layer (``docs/architecture.md`` has the whole map):

- modules: ``types``, ``layer``, ``core`` (rule vocabulary), ``rules``, ``canonizers``,
  ``composites``, ``attribution``, ``concepts`` (CRP, attribution graphs), ``metrics``,
  ``datasets``, ``image``, ``cmap``, and ``torchvision`` (canonizers for torchvision models,
  imported by its full name); every name here loads on first use, so ``import funcattr``
  imports nothing else (not even torch);
- registries: ``COMPOSITES`` / ``get_composite`` / ``register_composite`` /
  ``assign_rules``, ``CANONIZERS`` / ``get_canonizer`` / ``canonizers_for``,
  ``ATTRIBUTORS`` / ``get_attributor`` / ``register_attributor``, and (on first use)
  ``METRICS`` / ``get_metric`` / ``register_metric``;
- ``functionalize(model, composite, canonizers) -> (fn, params)``;
- ``relevance(fn, params, input, attr_output_fn)``: LRP relevance whatever the composite's
  form; ``transformers``: AttnLRP and CP-LRP (``attn_lrp``, ``cp_lrp``) and helpers for
  ``transformers`` models; ``ModelCheckWarning``: what ``functionalize`` reports;
- attributors: ``gradient``, ``pullback``, ``multi_target``, ``smooth_grad``,
  ``integrated_gradients``, ``occlusion`` and Zennit's classes ``Attributor``, ``Gradient``,
  ``SmoothGrad``, ``IntegratedGradients``, ``Occlusion``; targets: ``one_hot``,
  ``top_k_targets``;
- heatmaps: ``imgify``, ``imsave``;
- process tuning: ``warm_allocator`` (an explicit opt-in; nothing else changes process state).
"""

import importlib
from typing import Any

#: Everything loads on first access (so that ``import funcattr`` does not import torch, and
#: the ``funcattr`` command's ``--help`` is quick): name -> (module, attribute or None for the
#: module itself).
_ON_FIRST_USE = {
    **{module: (f"funcattr.{module}", None) for module in (
        "allocator", "attribution", "canonizers", "checks", "cmap", "composites", "concepts",
        "core", "datasets", "image", "layer", "metrics", "rules", "transformers", "types")},
    **{name: ("funcattr.attribution", name) for name in (
        "ATTRIBUTORS", "Attributor", "Gradient", "IntegratedGradients", "Occlusion",
        "SmoothGrad", "get_attributor", "gradient", "integrated_gradients", "multi_target",
        "occlusion", "one_hot", "pullback", "register_attributor", "relevance",
        "select_output", "smooth_grad", "top_k_targets")},
    **{name: ("funcattr.canonizers", name) for name in (
        "CANONIZERS", "canonizers_for", "get_canonizer")},
    **{name: ("funcattr.composites", name) for name in (
        "COMPOSITES", "assign_rules", "get_composite", "register_composite")},
    "ModelCheckWarning": ("funcattr.checks", "ModelCheckWarning"),
    "functionalize": ("funcattr.functional", "functionalize"),
    "warm_allocator": ("funcattr.allocator", "warm_allocator"),
    "imgify": ("funcattr.image", "imgify"),
    "imsave": ("funcattr.image", "imsave"),
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
    "ModelCheckWarning",
    "Occlusion",
    "SmoothGrad",
    "allocator",
    "assign_rules",
    "attribution",
    "canonizers",
    "canonizers_for",
    "checks",
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
    "relevance",
    "rules",
    "smooth_grad",
    "top_k_targets",
    "transformers",
    "types",
    "warm_allocator",
]


def __getattr__(name: str) -> Any:
    """Load the modules and names of :data:`__all__` on first use."""
    if name not in _ON_FIRST_USE:
        raise AttributeError(f"module 'funcattr' has no attribute {name!r}")
    module, attribute = _ON_FIRST_USE[name]
    value = importlib.import_module(module)
    value = value if attribute is None else getattr(value, attribute)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_ON_FIRST_USE})
