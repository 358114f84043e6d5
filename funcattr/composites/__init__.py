"""Composites: data that maps module names and types to rules, the presets and their registry.

A composite is a frozen value (:mod:`funcattr.composites.maps`): it stores its maps as tuples
of ``(types or names, rule)``, compares and hashes by them, shows its constructor arguments as
``repr`` and its maps with :meth:`Composite.table`. :func:`assign_rules` resolves a composite
for a model. The order is Zennit's: modules are visited in ``model.named_modules()`` order
(the root first, a module registered under two names once); for each, the composite's
``module_map`` gives a rule or ``None``. In the map composites the first matching entry wins,
user entries come before the built-in ones, names come before types in
:class:`NameLayerMapComposite`, and ``first_map`` applies only to the first module it
matches. A module without a rule keeps its ordinary gradient. The nine presets and the
registry ``COMPOSITES`` are in :mod:`funcattr.composites.presets`.
"""

from funcattr.composites.maps import (
    Composite,
    LayerMapComposite,
    MixedComposite,
    NameLayerMapComposite,
    NameMapComposite,
    RuleMap,
    SpecialFirstLayerMapComposite,
    assign_rules,
)
from funcattr.composites.presets import (
    COMPOSITES,
    BetaSmooth,
    DeconvNet,
    EpsilonAlpha2Beta1,
    EpsilonAlpha2Beta1Flat,
    EpsilonGammaBox,
    EpsilonPlus,
    EpsilonPlusFlat,
    ExcitationBackprop,
    GuidedBackprop,
    get_composite,
    layer_map_base,
    register_composite,
    required_arguments,
    suggest_composites,
)

__all__ = [
    "COMPOSITES",
    "BetaSmooth",
    "Composite",
    "DeconvNet",
    "EpsilonAlpha2Beta1",
    "EpsilonAlpha2Beta1Flat",
    "EpsilonGammaBox",
    "EpsilonPlus",
    "EpsilonPlusFlat",
    "ExcitationBackprop",
    "GuidedBackprop",
    "LayerMapComposite",
    "MixedComposite",
    "NameLayerMapComposite",
    "NameMapComposite",
    "RuleMap",
    "SpecialFirstLayerMapComposite",
    "assign_rules",
    "get_composite",
    "layer_map_base",
    "register_composite",
    "required_arguments",
    "suggest_composites",
]
