"""Composites: data that maps module names and types to rules, the presets and their registry.

A composite only stores its maps; :func:`assign_rules` resolves them for a model. The order
is Zennit's: modules are visited in ``model.named_modules()`` order (the root first, a module
registered under two names once); for each, the composite's ``module_map`` gives a rule or
``None``. In the map composites the first matching entry wins, user entries come before the
built-in ones, names come before types in :class:`NameLayerMapComposite`, and ``first_map``
applies only to the first module it matches. A module without a rule keeps its ordinary
gradient.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from torch import nn

from funcattr import types
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

ModuleMap = Callable[[dict, str, nn.Module], Rule | None]
LayerMap = Sequence[tuple[Any, Rule]]
NameMap = Sequence[tuple[Sequence[str], Rule]]


def _as_tuple(value: Iterable | None) -> tuple:
    return () if value is None else tuple(value)


class Composite:
    """A mapping from modules to rules, plus the canonizers to apply first.

    Parameters
    ----------
    module_map : callable, optional
        ``module_map(ctx, name, module) -> Rule | None``; ``ctx`` is a dict that lives for one
        resolution. The default maps nothing.
    canonizers : sequence of Canonizer, optional
        Applied, in order, before rules are assigned.
    """

    def __init__(self, module_map: ModuleMap | None = None, canonizers=None) -> None:
        self._module_map = module_map
        self.canonizers = _as_tuple(canonizers)

    def module_map(self, ctx: dict, name: str, module: nn.Module) -> Rule | None:
        """The rule for ``module`` (called ``name``), or ``None`` to keep its gradient."""
        if self._module_map is None:
            return None
        return self._module_map(ctx, name, module)

    def names(self) -> tuple[str, ...]:
        """Module names this composite refers to (checked against the model)."""
        return ()

    @contextmanager
    def context(self, model: nn.Module) -> Iterator[nn.Module]:
        """Zennit's idiom: yield a rule-applied view of ``model``; ``model`` is not changed.

        Examples
        --------
        >>> with composite.context(model) as modified:           # doctest: +SKIP
        ...     output = modified(input)
        ...     relevance, = torch.autograd.grad(output, input, target)
        """
        from funcattr.functional import RuledModule

        yield RuledModule(model, self)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class LayerMapComposite(Composite):
    """Rules by module type: ``layer_map = [(types, rule), ...]``, first match wins."""

    def __init__(self, layer_map: LayerMap | None = None, canonizers=None) -> None:
        super().__init__(canonizers=canonizers)
        self.layer_map = _as_tuple(layer_map)

    def module_map(self, ctx, name, module):
        return _first_type_match(self.layer_map, module)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(layer_map={list(self.layer_map)!r})"


def _first_type_match(layer_map: LayerMap, module: nn.Module) -> Rule | None:
    for kinds, rule in layer_map:
        if isinstance(module, kinds):
            return rule
    return None


class SpecialFirstLayerMapComposite(LayerMapComposite):
    """Like :class:`LayerMapComposite`, but ``first_map`` rules the first module it matches."""

    def __init__(
        self, layer_map: LayerMap | None = None, first_map: LayerMap | None = None,
        canonizers=None,
    ) -> None:
        super().__init__(layer_map, canonizers)
        self.first_map = _as_tuple(first_map)

    def module_map(self, ctx, name, module):
        if not ctx.get("first_layer_visited"):
            rule = _first_type_match(self.first_map, module)
            if rule is not None:
                ctx["first_layer_visited"] = True
                return rule
        return super().module_map(ctx, name, module)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(layer_map={list(self.layer_map)!r}, "
                f"first_map={list(self.first_map)!r})")


class NameMapComposite(Composite):
    """Rules by module name: ``name_map = [(names, rule), ...]``, first match wins."""

    def __init__(self, name_map: NameMap | None = None, canonizers=None) -> None:
        super().__init__(canonizers=canonizers)
        self.name_map = tuple(
            ((names,) if isinstance(names, str) else tuple(names), rule)
            for names, rule in _as_tuple(name_map)
        )

    def module_map(self, ctx, name, module):
        for names, rule in self.name_map:
            if name in names:
                return rule
        return None

    def names(self):
        return tuple(name for names, _ in self.name_map for name in names)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name_map={list(self.name_map)!r})"


class MixedComposite(Composite):
    """Several composites; for each module every one is asked and the first rule wins.

    The canonizers are the user's, then each composite's in order.
    """

    def __init__(self, composites: Sequence[Composite], canonizers=None) -> None:
        composites = tuple(composites)
        merged = _as_tuple(canonizers) + tuple(
            c for composite in composites for c in composite.canonizers
        )
        super().__init__(canonizers=merged)
        self.composites = composites

    def module_map(self, ctx, name, module):
        contexts = ctx.setdefault("mixed", {id(c): {} for c in self.composites})
        rules = [c.module_map(contexts[id(c)], name, module) for c in self.composites]
        return next((rule for rule in rules if rule is not None), None)

    def names(self):
        return tuple(name for composite in self.composites for name in composite.names())

    def __repr__(self) -> str:
        return f"{type(self).__name__}({list(self.composites)!r})"


class NameLayerMapComposite(MixedComposite):
    """Names first, then types: ``MixedComposite([NameMap(name_map), LayerMap(layer_map)])``."""

    def __init__(self, name_map: NameMap | None = None, layer_map: LayerMap | None = None,
                 canonizers=None) -> None:
        super().__init__(
            [NameMapComposite(name_map), LayerMapComposite(layer_map)], canonizers=canonizers
        )


# --------------------------------------------------------------------------------------------
# Resolution
# --------------------------------------------------------------------------------------------

class RuleMap(dict):
    """``{module name: rule}`` with a printed table ``name  module  rule``."""

    def __init__(self, rules: dict[str, Rule], modules: dict[str, nn.Module]) -> None:
        super().__init__(rules)
        self.modules = {name: modules[name] for name in rules}

    def __repr__(self) -> str:
        if not self:
            return "RuleMap(no rules)"
        rows = [(name or "<root>", type(self.modules[name]).__name__, repr(rule))
                for name, rule in self.items()]
        widths = [max(len(row[i]) for row in rows) for i in range(2)]
        return "\n".join(f"{a:<{widths[0]}}  {b:<{widths[1]}}  {c}" for a, b, c in rows)


_BAD_RULES = """\
assign_rules(composite={composite}): {count} module(s) cannot take their rule:
{table}
Give these modules another rule (e.g. with a layer_map or name_map entry before the preset's)."""


def assign_rules(model: nn.Module, composite: Composite | None) -> RuleMap:
    """Resolve ``composite`` for ``model``: ``{module name: rule}`` in ``named_modules`` order.

    Raises
    ------
    ValueError
        If a name in a name map matches no module (the closest names are suggested), or if any
        module cannot take its rule (all such modules are listed at once).
    """
    modules = dict(model.named_modules())
    if composite is None:
        return RuleMap({}, modules)
    if not isinstance(composite, Composite):
        raise TypeError(
            f"assign_rules(composite={composite!r}): expected a funcattr Composite, got "
            f"{type(composite).__name__}."
        )
    missing = [name for name in composite.names() if name not in modules]
    if missing:
        hints = []
        for name in missing:
            close = difflib.get_close_matches(name, list(modules), n=3)
            hint = f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""
            hints.append(f"{name!r}{hint}")
        raise ValueError(
            f"assign_rules(composite={type(composite).__name__}): name_map names module(s) "
            f"that the model does not have: {'; '.join(hints)}. Use names from "
            f"model.named_modules()."
        )
    ctx: dict = {}
    rules = {}
    problems = []
    for name, module in modules.items():
        rule = composite.module_map(ctx, name, module)
        if rule is None:
            continue
        if not isinstance(rule, Rule):
            raise TypeError(
                f"assign_rules(composite={type(composite).__name__}): the map gave "
                f"{rule!r} for module {name!r}; expected a funcattr Rule (e.g. Epsilon())."
            )
        problem = rule.check(module)
        if problem is not None:
            problems.append((name or "<root>", type(module).__name__, repr(rule), problem))
        rules[name] = rule
    if problems:
        table = "\n".join(f"  {n}  {m}  {r}: {p}" for n, m, r, p in problems)
        raise ValueError(_BAD_RULES.format(
            composite=type(composite).__name__, count=len(problems), table=table
        ))
    return RuleMap(rules, modules)


# --------------------------------------------------------------------------------------------
# Presets and registry
# --------------------------------------------------------------------------------------------

COMPOSITES: dict[str, type[Composite]] = {}


def register_composite(name: str) -> Callable[[type], type]:
    """Class decorator: ``COMPOSITES[name] = cls``."""

    def register(cls: type) -> type:
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
    if name not in COMPOSITES:
        raise ValueError(
            f"get_composite(name={name!r}): unknown composite; registered names are "
            f"{', '.join(sorted(COMPOSITES))}.{suggest_composites(name)}"
        )
    missing = [argument for argument in required_arguments(name) if argument not in kwargs]
    if missing:
        arguments = ", ".join(f"{argument}=..." for argument in missing)
        raise TypeError(
            f"get_composite(name={name!r}): this composite needs {', '.join(missing)}; pass "
            f"them, e.g. get_composite({name!r}, {arguments})."
        )
    return COMPOSITES[name](**kwargs)


def layer_map_base(stabilizer: Any = 1e-6) -> list[tuple[Any, Rule]]:
    """The shared part of the LRP presets: Pass activations/BatchNorm, Norm sums/avg-pools."""
    return [
        (types.Activation, Pass()),
        (Sum, Norm(stabilizer)),
        (types.AvgPool, Norm(stabilizer)),
        (types.BatchNorm, Pass()),
    ]


class _Preset:
    """Mixin: remember constructor arguments for ``repr`` and equality."""

    _arguments: dict

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self._arguments.items())
        return f"{type(self).__name__}({args})"

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and repr(other) == repr(self)

    def __hash__(self) -> int:
        return hash(repr(self))


@register_composite("epsilon_gamma_box")
class EpsilonGammaBox(_Preset, SpecialFirstLayerMapComposite):
    """ZBox on the first convolution, Gamma on convolutions, Epsilon on dense layers.

    Rule table (after the user's ``layer_map``/``first_map`` entries):

    ============================  =======================
    first convolution             ``ZBox(low, high)``
    Activation                    ``Pass()``
    Sum, AvgPool                  ``Norm()``
    BatchNorm                     ``Pass()``
    Convolution                   ``Gamma(gamma)``
    torch.nn.Linear               ``Epsilon(epsilon)``
    ============================  =======================
    """

    def __init__(self, low, high, epsilon=1e-6, gamma=0.25, stabilizer=1e-6, layer_map=None,
                 first_map=None, zero_params=None, canonizers=None):
        self._arguments = dict(low=low, high=high, epsilon=epsilon, gamma=gamma,
                               stabilizer=stabilizer, zero_params=zero_params)
        kw = dict(zero_params=zero_params)
        super().__init__(
            layer_map=_as_tuple(layer_map) + tuple(layer_map_base(stabilizer)) + (
                (types.Convolution, Gamma(gamma=gamma, stabilizer=stabilizer, **kw)),
                (nn.Linear, Epsilon(epsilon=epsilon, **kw)),
            ),
            first_map=_as_tuple(first_map) + (
                (types.Convolution, ZBox(low=low, high=high, stabilizer=stabilizer, **kw)),
            ),
            canonizers=canonizers,
        )


def _epsilon_layer_map(rule, epsilon, stabilizer, layer_map, zero_params):
    return _as_tuple(layer_map) + tuple(layer_map_base(stabilizer)) + (
        (types.Convolution, rule),
        (nn.Linear, Epsilon(epsilon=epsilon, zero_params=zero_params)),
    )


@register_composite("epsilon_plus")
class EpsilonPlus(_Preset, LayerMapComposite):
    """ZPlus on convolutions, Epsilon on dense layers; Pass/Norm as in :func:`layer_map_base`."""

    def __init__(self, epsilon=1e-6, stabilizer=1e-6, layer_map=None, zero_params=None,
                 canonizers=None):
        self._arguments = dict(epsilon=epsilon, stabilizer=stabilizer, zero_params=zero_params)
        rule = ZPlus(stabilizer=stabilizer, zero_params=zero_params)
        super().__init__(_epsilon_layer_map(rule, epsilon, stabilizer, layer_map, zero_params),
                         canonizers=canonizers)


@register_composite("epsilon_alpha2_beta1")
class EpsilonAlpha2Beta1(_Preset, LayerMapComposite):
    """AlphaBeta(2, 1) on convolutions, Epsilon on dense layers."""

    def __init__(self, epsilon=1e-6, stabilizer=1e-6, layer_map=None, zero_params=None,
                 canonizers=None):
        self._arguments = dict(epsilon=epsilon, stabilizer=stabilizer, zero_params=zero_params)
        rule = AlphaBeta(alpha=2.0, beta=1.0, stabilizer=stabilizer, zero_params=zero_params)
        super().__init__(_epsilon_layer_map(rule, epsilon, stabilizer, layer_map, zero_params),
                         canonizers=canonizers)


@register_composite("epsilon_plus_flat")
class EpsilonPlusFlat(_Preset, SpecialFirstLayerMapComposite):
    """Flat on the first linear layer (dense or convolution), then as :class:`EpsilonPlus`."""

    def __init__(self, epsilon=1e-6, stabilizer=1e-6, layer_map=None, first_map=None,
                 zero_params=None, canonizers=None):
        self._arguments = dict(epsilon=epsilon, stabilizer=stabilizer, zero_params=zero_params)
        rule = ZPlus(stabilizer=stabilizer, zero_params=zero_params)
        super().__init__(
            _epsilon_layer_map(rule, epsilon, stabilizer, layer_map, zero_params),
            _as_tuple(first_map) + (
                (types.Linear, Flat(stabilizer=stabilizer, zero_params=zero_params)),
            ),
            canonizers=canonizers,
        )


@register_composite("epsilon_alpha2_beta1_flat")
class EpsilonAlpha2Beta1Flat(_Preset, SpecialFirstLayerMapComposite):
    """Flat on the first linear layer, then as :class:`EpsilonAlpha2Beta1`."""

    def __init__(self, epsilon=1e-6, stabilizer=1e-6, layer_map=None, first_map=None,
                 zero_params=None, canonizers=None):
        self._arguments = dict(epsilon=epsilon, stabilizer=stabilizer, zero_params=zero_params)
        rule = AlphaBeta(alpha=2.0, beta=1.0, stabilizer=stabilizer, zero_params=zero_params)
        super().__init__(
            _epsilon_layer_map(rule, epsilon, stabilizer, layer_map, zero_params),
            _as_tuple(first_map) + (
                (types.Linear, Flat(stabilizer=stabilizer, zero_params=zero_params)),
            ),
            canonizers=canonizers,
        )


@register_composite("deconvnet")
class DeconvNet(_Preset, LayerMapComposite):
    """DeconvNet: ``ReLUDeconvNet`` on every ``torch.nn.ReLU``."""

    def __init__(self, layer_map=None, canonizers=None):
        self._arguments = {}
        super().__init__(_as_tuple(layer_map) + ((nn.ReLU, ReLUDeconvNet()),), canonizers)


@register_composite("guided_backprop")
class GuidedBackprop(_Preset, LayerMapComposite):
    """Guided backprop: ``ReLUGuidedBackprop`` on every ``torch.nn.ReLU``."""

    def __init__(self, layer_map=None, canonizers=None):
        self._arguments = {}
        super().__init__(_as_tuple(layer_map) + ((nn.ReLU, ReLUGuidedBackprop()),), canonizers)


@register_composite("excitation_backprop")
class ExcitationBackprop(_Preset, LayerMapComposite):
    """Excitation backprop: ZPlus on every linear layer, Norm on sums and average pooling."""

    def __init__(self, stabilizer=1e-6, layer_map=None, zero_params=None, canonizers=None):
        self._arguments = dict(stabilizer=stabilizer, zero_params=zero_params)
        super().__init__(
            _as_tuple(layer_map) + (
                (Sum, Norm(stabilizer)),
                (types.AvgPool, Norm(stabilizer)),
                (types.Linear, ZPlus(stabilizer=stabilizer, zero_params=zero_params)),
            ),
            canonizers,
        )


@register_composite("beta_smooth")
class BetaSmooth(_Preset, LayerMapComposite):
    """Softplus surrogate gradients: ``ReLUBetaSmooth(beta_smooth)`` on every ReLU."""

    def __init__(self, beta_smooth=10.0, layer_map=None, zero_params=None, canonizers=None):
        self._arguments = dict(beta_smooth=beta_smooth)
        super().__init__(
            _as_tuple(layer_map) + ((nn.ReLU, ReLUBetaSmooth(beta_smooth=beta_smooth)),),
            canonizers,
        )
