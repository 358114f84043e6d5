"""The presets (Zennit's nine, names and signatures kept) and the registry ``COMPOSITES``.

Each preset's docstring shows its rule table as a doctest (``print(Preset().table())``), so
the table stays what the code builds.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
from collections.abc import Callable, Iterable, Iterator, MutableMapping
from typing import Any

from torch import nn

from funcattr import types
from funcattr.composites.maps import (
    Composite,
    LayerMapComposite,
    SpecialFirstLayerMapComposite,
    record_arguments,
)
from funcattr.core import Rule
from funcattr.layer import Sum
from funcattr.rules import (
    AlphaBeta,
    Epsilon,
    Flat,
    Gamma,
    Norm,
    Pass,
    ReLUBetaSmooth,
    ReLUDeconvNet,
    ReLUGuidedBackprop,
    ZBox,
    ZPlus,
)

__all__ = [
    "COMPOSITES",
    "PROVIDERS",
    "BetaSmooth",
    "CompositeRegistry",
    "DeconvNet",
    "EpsilonAlpha2Beta1",
    "EpsilonAlpha2Beta1Flat",
    "EpsilonGammaBox",
    "EpsilonPlus",
    "EpsilonPlusFlat",
    "ExcitationBackprop",
    "GuidedBackprop",
    "get_composite",
    "layer_map_base",
    "register_composite",
    "required_arguments",
    "suggest_composites",
]


# --------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------

#: Composites that modules of higher layers register, by name -> the module that registers
#: them (imported on the registry's first read, so that ``functionalize(model, 'attn_lrp')``
#: and ``funcattr explain --composite attn_lrp`` work in a fresh process).
PROVIDERS: dict[str, str] = {
    "attn_lrp": "funcattr.transformers.composites",
    "cp_lrp": "funcattr.transformers.composites",
}


class CompositeRegistry(MutableMapping):
    """``name -> Composite subclass``; the first read imports the modules of
    :data:`PROVIDERS`, whose ``@register_composite`` adds their entries."""

    def __init__(self) -> None:
        self._classes: dict[str, type[Composite]] = {}
        self._loaded = False

    def _load(self) -> None:
        if not self._loaded:
            self._loaded = True  # first: a provider's own registration reads nothing back
            for module in dict.fromkeys(PROVIDERS.values()):
                importlib.import_module(module)

    def __getitem__(self, name: str) -> type[Composite]:
        self._load()
        return self._classes[name]

    def __setitem__(self, name: str, cls: type[Composite]) -> None:
        self._classes[name] = cls

    def __delitem__(self, name: str) -> None:
        self._load()
        del self._classes[name]

    def __iter__(self) -> Iterator[str]:
        self._load()
        return iter(self._classes)

    def __len__(self) -> int:
        self._load()
        return len(self._classes)

    def __repr__(self) -> str:
        self._load()
        return f"COMPOSITES({', '.join(self._classes)})"


COMPOSITES = CompositeRegistry()


def register_composite(name: str) -> Callable[[type], type]:
    """Class decorator: ``COMPOSITES[name] = cls``."""
    if not isinstance(name, str) or not name:
        raise TypeError(f"register_composite(name={name!r}): expected a non-empty name (str), "
                        f"got {type(name).__name__}. Write e.g. "
                        f"@register_composite('my_composite').")

    def register(cls: type) -> type:
        if not (isinstance(cls, type) and issubclass(cls, Composite)):
            raise TypeError(f"register_composite(name={name!r}): expected a Composite "
                            f"subclass, got {cls!r}. Decorate a subclass of "
                            f"funcattr.composites.Composite (e.g. of LayerMapComposite).")
        COMPOSITES[name] = cls
        cls.registry_name = name
        return cls

    return register


def suggest_composites(name: str) -> str:
    """`` Did you mean 'a', 'b'?`` for an unknown composite name (empty without a close one)."""
    close = difflib.get_close_matches(name, list(COMPOSITES), n=3)
    return f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""


def required_arguments(name: str) -> list[str]:
    """The constructor arguments of a registered composite that have no default (e.g.
    ``['low', 'high']`` for ``'epsilon_gamma_box'``)."""
    return [
        argument for argument, parameter in inspect.signature(COMPOSITES[name]).parameters.items()
        if parameter.default is inspect.Parameter.empty
        and parameter.kind in (parameter.POSITIONAL_OR_KEYWORD, parameter.KEYWORD_ONLY)
    ]


def get_composite(name: str, **kwargs) -> Composite:
    """Instantiate a registered composite by name, e.g. ``get_composite('epsilon_plus')``."""
    if not isinstance(name, str):
        raise TypeError(f"get_composite(name={name!r}): expected a registered composite name "
                        f"(str), got {type(name).__name__}. Pass e.g. 'epsilon_plus'.")
    if name not in COMPOSITES:
        raise ValueError(
            f"get_composite(name={name!r}): unknown composite; expected a registered name, got "
            f"{name!r}. Use one of {', '.join(sorted(COMPOSITES))}.{suggest_composites(name)}"
        )
    missing = [argument for argument in required_arguments(name) if argument not in kwargs]
    if missing:
        arguments = ", ".join(f"{argument}=..." for argument in missing)
        raise TypeError(
            f"get_composite(name={name!r}): this composite needs {', '.join(missing)}; pass "
            f"them, e.g. get_composite({name!r}, {arguments})."
        )
    return COMPOSITES[name](**kwargs)


# --------------------------------------------------------------------------------------------
# Presets (Zennit's names and signatures; each docstring's table is checked by a doctest)
# --------------------------------------------------------------------------------------------

def layer_map_base(stabilizer: Any = 1e-6) -> list[tuple[Any, Rule]]:
    """The shared part of the LRP presets: Pass activations/BatchNorm, Norm sums/avg-pools."""
    return [
        (types.Activation, Pass()),
        (Sum, Norm(stabilizer)),
        (types.AvgPool, Norm(stabilizer)),
        (types.BatchNorm, Pass()),
    ]


def _user(entries: Any) -> tuple:
    """A user's map entries as a tuple, to put before a preset's (the base class checks them)."""
    if entries is None:
        return ()
    return tuple(entries) if isinstance(entries, Iterable) and not isinstance(
        entries, str) else (entries,)


def _epsilon_layer_map(rule: Rule, epsilon, stabilizer, layer_map, zero_params) -> tuple:
    """The user's layer_map, :func:`layer_map_base`, ``rule`` on convolutions, Epsilon dense."""
    return _user(layer_map) + tuple(layer_map_base(stabilizer)) + (
        (types.Convolution, rule),
        (nn.Linear, Epsilon(epsilon=epsilon, zero_params=zero_params)),
    )


@register_composite("epsilon_gamma_box")
class EpsilonGammaBox(SpecialFirstLayerMapComposite):
    """ZBox on the first convolution, Gamma on convolutions, Epsilon on dense layers.

    The rules after the user's ``layer_map`` / ``first_map`` entries:

    >>> print(EpsilonGammaBox(low=-3.0, high=3.0).table())
    first_map  funcattr.types.Convolution  ZBox(low=-3.0, high=3.0, stabilizer=1e-06, zero_params=None)
    layer_map  funcattr.types.Activation   Pass()
    layer_map  funcattr.layer.Sum          Norm(stabilizer=1e-06)
    layer_map  funcattr.types.AvgPool      Norm(stabilizer=1e-06)
    layer_map  funcattr.types.BatchNorm    Pass()
    layer_map  funcattr.types.Convolution  Gamma(gamma=0.25, stabilizer=1e-06, zero_params=None)
    layer_map  torch.nn.Linear             Epsilon(epsilon=1e-06, zero_params=None)
    """  # noqa: E501  (the doctest's lines are the table's)

    def __init__(self, low, high, epsilon=1e-6, gamma=0.25, stabilizer=1e-6, layer_map=None,
                 first_map=None, zero_params=None, canonizers=None):
        gamma_rule = Gamma(gamma=gamma, stabilizer=stabilizer, zero_params=zero_params)
        box = ZBox(low=low, high=high, stabilizer=stabilizer, zero_params=zero_params)
        super().__init__(_epsilon_layer_map(gamma_rule, epsilon, stabilizer, layer_map,
                                            zero_params),
                         _user(first_map) + ((types.Convolution, box),), canonizers)
        record_arguments(self, dict(low=low, high=high, epsilon=epsilon, gamma=gamma,
                                    stabilizer=stabilizer, zero_params=zero_params),
                         layer_map=layer_map, first_map=first_map, canonizers=canonizers)


@register_composite("epsilon_plus")
class EpsilonPlus(LayerMapComposite):
    """ZPlus on convolutions, Epsilon on dense layers; Pass/Norm as in :func:`layer_map_base`.

    >>> print(EpsilonPlus().table())
    layer_map  funcattr.types.Activation   Pass()
    layer_map  funcattr.layer.Sum          Norm(stabilizer=1e-06)
    layer_map  funcattr.types.AvgPool      Norm(stabilizer=1e-06)
    layer_map  funcattr.types.BatchNorm    Pass()
    layer_map  funcattr.types.Convolution  ZPlus(stabilizer=1e-06, zero_params=None)
    layer_map  torch.nn.Linear             Epsilon(epsilon=1e-06, zero_params=None)
    """

    def __init__(self, epsilon=1e-6, stabilizer=1e-6, layer_map=None, zero_params=None,
                 canonizers=None):
        rule = ZPlus(stabilizer=stabilizer, zero_params=zero_params)
        super().__init__(_epsilon_layer_map(rule, epsilon, stabilizer, layer_map, zero_params),
                         canonizers)
        record_arguments(self, dict(epsilon=epsilon, stabilizer=stabilizer,
                                    zero_params=zero_params), layer_map=layer_map,
                         canonizers=canonizers)


@register_composite("epsilon_alpha2_beta1")
class EpsilonAlpha2Beta1(LayerMapComposite):
    """AlphaBeta(2, 1) on convolutions, Epsilon on dense layers.

    >>> print(EpsilonAlpha2Beta1().table())
    layer_map  funcattr.types.Activation   Pass()
    layer_map  funcattr.layer.Sum          Norm(stabilizer=1e-06)
    layer_map  funcattr.types.AvgPool      Norm(stabilizer=1e-06)
    layer_map  funcattr.types.BatchNorm    Pass()
    layer_map  funcattr.types.Convolution  AlphaBeta(alpha=2.0, beta=1.0, stabilizer=1e-06, zero_params=None)
    layer_map  torch.nn.Linear             Epsilon(epsilon=1e-06, zero_params=None)
    """  # noqa: E501  (the doctest's lines are the table's)

    def __init__(self, epsilon=1e-6, stabilizer=1e-6, layer_map=None, zero_params=None,
                 canonizers=None):
        rule = AlphaBeta(alpha=2.0, beta=1.0, stabilizer=stabilizer, zero_params=zero_params)
        super().__init__(_epsilon_layer_map(rule, epsilon, stabilizer, layer_map, zero_params),
                         canonizers)
        record_arguments(self, dict(epsilon=epsilon, stabilizer=stabilizer,
                                    zero_params=zero_params), layer_map=layer_map,
                         canonizers=canonizers)


@register_composite("epsilon_plus_flat")
class EpsilonPlusFlat(SpecialFirstLayerMapComposite):
    """Flat on the first linear layer (dense or convolution), then as :class:`EpsilonPlus`.

    >>> print(EpsilonPlusFlat().table())
    first_map  funcattr.types.Linear       Flat(stabilizer=1e-06, zero_params=None)
    layer_map  funcattr.types.Activation   Pass()
    layer_map  funcattr.layer.Sum          Norm(stabilizer=1e-06)
    layer_map  funcattr.types.AvgPool      Norm(stabilizer=1e-06)
    layer_map  funcattr.types.BatchNorm    Pass()
    layer_map  funcattr.types.Convolution  ZPlus(stabilizer=1e-06, zero_params=None)
    layer_map  torch.nn.Linear             Epsilon(epsilon=1e-06, zero_params=None)
    """

    def __init__(self, epsilon=1e-6, stabilizer=1e-6, layer_map=None, first_map=None,
                 zero_params=None, canonizers=None):
        rule = ZPlus(stabilizer=stabilizer, zero_params=zero_params)
        flat = Flat(stabilizer=stabilizer, zero_params=zero_params)
        super().__init__(_epsilon_layer_map(rule, epsilon, stabilizer, layer_map, zero_params),
                         _user(first_map) + ((types.Linear, flat),), canonizers)
        record_arguments(self, dict(epsilon=epsilon, stabilizer=stabilizer,
                                    zero_params=zero_params), layer_map=layer_map,
                         first_map=first_map, canonizers=canonizers)


@register_composite("epsilon_alpha2_beta1_flat")
class EpsilonAlpha2Beta1Flat(SpecialFirstLayerMapComposite):
    """Flat on the first linear layer, then as :class:`EpsilonAlpha2Beta1`.

    >>> print(EpsilonAlpha2Beta1Flat().table())
    first_map  funcattr.types.Linear       Flat(stabilizer=1e-06, zero_params=None)
    layer_map  funcattr.types.Activation   Pass()
    layer_map  funcattr.layer.Sum          Norm(stabilizer=1e-06)
    layer_map  funcattr.types.AvgPool      Norm(stabilizer=1e-06)
    layer_map  funcattr.types.BatchNorm    Pass()
    layer_map  funcattr.types.Convolution  AlphaBeta(alpha=2.0, beta=1.0, stabilizer=1e-06, zero_params=None)
    layer_map  torch.nn.Linear             Epsilon(epsilon=1e-06, zero_params=None)
    """  # noqa: E501  (the doctest's lines are the table's)

    def __init__(self, epsilon=1e-6, stabilizer=1e-6, layer_map=None, first_map=None,
                 zero_params=None, canonizers=None):
        rule = AlphaBeta(alpha=2.0, beta=1.0, stabilizer=stabilizer, zero_params=zero_params)
        flat = Flat(stabilizer=stabilizer, zero_params=zero_params)
        super().__init__(_epsilon_layer_map(rule, epsilon, stabilizer, layer_map, zero_params),
                         _user(first_map) + ((types.Linear, flat),), canonizers)
        record_arguments(self, dict(epsilon=epsilon, stabilizer=stabilizer,
                                    zero_params=zero_params), layer_map=layer_map,
                         first_map=first_map, canonizers=canonizers)


@register_composite("deconvnet")
class DeconvNet(LayerMapComposite):
    """DeconvNet: ``ReLUDeconvNet`` on every ``torch.nn.ReLU``.

    >>> print(DeconvNet().table())
    layer_map  torch.nn.ReLU  ReLUDeconvNet()
    """

    def __init__(self, layer_map=None, canonizers=None):
        super().__init__(_user(layer_map) + ((nn.ReLU, ReLUDeconvNet()),), canonizers)
        record_arguments(self, {}, layer_map=layer_map, canonizers=canonizers)


@register_composite("guided_backprop")
class GuidedBackprop(LayerMapComposite):
    """Guided backprop: ``ReLUGuidedBackprop`` on every ``torch.nn.ReLU``.

    >>> print(GuidedBackprop().table())
    layer_map  torch.nn.ReLU  ReLUGuidedBackprop()
    """

    def __init__(self, layer_map=None, canonizers=None):
        super().__init__(_user(layer_map) + ((nn.ReLU, ReLUGuidedBackprop()),), canonizers)
        record_arguments(self, {}, layer_map=layer_map, canonizers=canonizers)


@register_composite("excitation_backprop")
class ExcitationBackprop(LayerMapComposite):
    """Excitation backprop: ZPlus on every linear layer, Norm on sums and average pooling.

    >>> print(ExcitationBackprop().table())
    layer_map  funcattr.layer.Sum      Norm(stabilizer=1e-06)
    layer_map  funcattr.types.AvgPool  Norm(stabilizer=1e-06)
    layer_map  funcattr.types.Linear   ZPlus(stabilizer=1e-06, zero_params=None)
    """

    def __init__(self, stabilizer=1e-6, layer_map=None, zero_params=None, canonizers=None):
        super().__init__(_user(layer_map) + (
            (Sum, Norm(stabilizer)),
            (types.AvgPool, Norm(stabilizer)),
            (types.Linear, ZPlus(stabilizer=stabilizer, zero_params=zero_params)),
        ), canonizers)
        record_arguments(self, dict(stabilizer=stabilizer, zero_params=zero_params),
                         layer_map=layer_map, canonizers=canonizers)


@register_composite("beta_smooth")
class BetaSmooth(LayerMapComposite):
    """Softplus surrogate gradients: ``ReLUBetaSmooth(beta_smooth)`` on every ReLU.

    ``zero_params`` is accepted for Zennit's signature and has no effect (no parameters).

    >>> print(BetaSmooth().table())
    layer_map  torch.nn.ReLU  ReLUBetaSmooth(beta_smooth=10.0)
    """

    def __init__(self, beta_smooth=10.0, layer_map=None, zero_params=None, canonizers=None):
        rule = ReLUBetaSmooth(beta_smooth=beta_smooth)
        super().__init__(_user(layer_map) + ((nn.ReLU, rule),), canonizers)
        record_arguments(self, dict(beta_smooth=beta_smooth), layer_map=layer_map,
                         canonizers=canonizers)
