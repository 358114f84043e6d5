"""The composite classes (Zennit's names and arguments) and the resolver :func:`assign_rules`.

A composite is a frozen value: it stores its maps as tuples of ``(types or names, rule)`` and
compares and hashes by them (two equal composites give every module the same rule); its
``repr`` shows the constructor arguments and :meth:`Composite.table` the maps.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from funcattr import types
from funcattr.canonizers import Canonizer, CompositeCanonizer, as_canonizers
from funcattr.checks import find_problems, report_problems
from funcattr.core import Rule
from funcattr.ruled import FunctionalModel, LiveModel, RuleMap

__all__ = [
    "Composite",
    "LayerMap",
    "LayerMapComposite",
    "MixedComposite",
    "ModuleMap",
    "NameLayerMapComposite",
    "NameMap",
    "NameMapComposite",
    "RuleMap",
    "SpecialFirstLayerMapComposite",
    "assign_rules",
    "record_arguments",
]

ModuleMap = Callable[[dict, str, nn.Module], "Rule | None"]
LayerMap = Sequence[tuple[Any, Rule]]
NameMap = Sequence[tuple[Sequence[str], Rule]]


# --------------------------------------------------------------------------------------------
# Checking constructor arguments
# --------------------------------------------------------------------------------------------

def _pairs(value: Iterable | None, owner: str, argument: str) -> tuple:
    """``value`` as a tuple of 2-tuples (``None`` is empty); a non-pair is a TypeError."""
    if value is None:
        return ()
    example = ("layer_map=[(torch.nn.Linear, Epsilon())]" if argument != "name_map"
               else "name_map=[(['features.0'], Epsilon())]")
    if not isinstance(value, Iterable) or isinstance(value, str):
        raise TypeError(f"{owner}({argument}={value!r}): expected a sequence of (key, rule) "
                        f"pairs, got {type(value).__name__}. Write e.g. {example}.")
    pairs = []
    for entry in value:
        if not isinstance(entry, Sequence) or isinstance(entry, str) or len(entry) != 2:
            raise TypeError(f"{owner}({argument}=...): expected (key, rule) pairs, got "
                            f"{entry!r}. Write e.g. {example}.")
        pairs.append(tuple(entry))
    return tuple(pairs)


def _layer_map(value: LayerMap | None, owner: str, argument: str) -> tuple:
    """Entries ``(type or tuple of types, rule)``; a list of types becomes a tuple."""
    entries = []
    for kinds, rule in _pairs(value, owner, argument):
        kinds = tuple(kinds) if isinstance(kinds, list | tuple) else kinds
        members = kinds if isinstance(kinds, tuple) else (kinds,)
        if not members or not all(isinstance(kind, type) for kind in members):
            raise TypeError(f"{owner}({argument}=...): expected module types (a class or a "
                            f"tuple of classes) as keys, got {kinds!r}. Write e.g. "
                            f"{argument}=[(torch.nn.Linear, Epsilon())].")
        entries.append((kinds, rule))
    return tuple(entries)


def _name_map(value: NameMap | None, owner: str) -> tuple:
    """Entries ``(tuple of module names, rule)``; a single name becomes a 1-tuple."""
    entries = []
    for names, rule in _pairs(value, owner, "name_map"):
        names = (names,) if isinstance(names, str) else tuple(names)
        if not all(isinstance(name, str) for name in names):
            raise TypeError(f"{owner}(name_map=...): expected module names (str) as keys, got "
                            f"{names!r}. Write e.g. name_map=[(['features.0'], Epsilon())].")
        entries.append((names, rule))
    return tuple(entries)


def _key_name(kinds: Any) -> str:
    """``torch.nn.Linear``, ``funcattr.types.Convolution``, ``(a, b)`` for a table row."""
    if isinstance(kinds, tuple):
        return f"({', '.join(_key_name(kind) for kind in kinds)})"
    if isinstance(kinds, types.LayerGroup):
        return repr(kinds)
    if isinstance(kinds, type):
        if getattr(torch.nn, kinds.__name__, None) is kinds:
            return f"torch.nn.{kinds.__name__}"
        return f"{kinds.__module__}.{kinds.__qualname__}"
    return repr(kinds)


# --------------------------------------------------------------------------------------------
# The composite classes (Zennit's names and constructor arguments)
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True, init=False, repr=False)
class Composite:
    """A mapping from modules to rules, plus the canonizers to apply first.

    A frozen value: equal composites give every module the same rule (equality and hashing
    compare the maps and canonizers), ``repr`` shows the constructor arguments and
    :meth:`table` the maps in the order they are tried.

    Parameters
    ----------
    module_map : callable, optional
        ``module_map(ctx, name, module) -> Rule | None``; ``ctx`` is a dict that lives for one
        resolution. The default maps nothing.
    canonizers : Canonizer or sequence of Canonizer, optional
        Applied, in order, before rules are assigned.
    """

    mapping: ModuleMap | None
    canonizers: tuple[Canonizer, ...]
    arguments: tuple[tuple[str, Any], ...] = field(compare=False)

    #: How the rules' backward is read (``functionalize`` passes it on as ``fn.form``):
    #: ``'relevance'`` (Zennit's: the backward carries relevance, seeded with
    #: ``output * attr_output_fn(output)``) or ``'gradient_x_input'`` (AttnLRP's: it carries
    #: relevance divided by the activation; relevance = input x gradient).
    form: ClassVar[str] = "relevance"

    def __init__(self, module_map: ModuleMap | None = None, canonizers=None) -> None:
        owner = type(self).__name__
        if module_map is not None and not callable(module_map):
            raise TypeError(f"{owner}(module_map={module_map!r}): expected a callable "
                            f"(ctx, name, module) -> Rule | None, got "
                            f"{type(module_map).__name__}. Pass a function, or use "
                            f"LayerMapComposite / NameMapComposite for tables.")
        self._store(mapping=module_map, canonizers=as_canonizers(canonizers, owner))
        self._record(module_map=module_map, canonizers=canonizers)

    def _store(self, **fields: Any) -> None:
        """Set fields of this frozen value (constructors only)."""
        for name, value in fields.items():
            object.__setattr__(self, name, value)

    def _record(self, **arguments: Any) -> None:
        """The constructor arguments ``repr`` shows (``None`` ones are left out)."""
        self._store(arguments=tuple((k, v) for k, v in arguments.items() if v is not None))

    def module_map(self, ctx: dict, name: str, module: nn.Module) -> Rule | None:
        """The rule for ``module`` (called ``name``), or ``None`` to keep its gradient."""
        if self.mapping is None:
            return None
        return self.mapping(ctx, name, module)

    def names(self) -> tuple[str, ...]:
        """Module names this composite refers to (checked against the model)."""
        return ()

    def rows(self) -> list[tuple[str, str, Any]]:
        """``(map, key, rule)`` for each entry, in the order the entries are tried."""
        return [] if self.mapping is None else [("module_map", repr(self.mapping), "")]

    def table(self) -> str:
        """The maps as an aligned table ``map  key  rule``, in the order entries are tried."""
        rows = [(where, key, repr(rule)) for where, key, rule in self.rows()]
        rows += [("canonizers", repr(canonizer), "") for canonizer in self.canonizers]
        if not rows:
            return f"{type(self).__name__}: no entries"
        widths = [max(len(row[i]) for row in rows) for i in range(2)]
        return "\n".join(f"{a:<{widths[0]}}  {b:<{widths[1]}}  {c}".rstrip()
                         for a, b, c in rows)

    @contextmanager
    def context(self, model: nn.Module) -> Iterator[nn.Module]:
        """Zennit's idiom: yield a rule-applied view of ``model``; ``model`` is not changed.

        The view computes with the model's current parameters; it is built from the
        composite's canonizers, :func:`assign_rules` and :class:`~funcattr.ruled.FunctionalModel`
        (what ``functionalize`` returns), so it equals ``functionalize(model, self)``.

        Examples
        --------
        >>> with composite.context(model) as modified:           # doctest: +SKIP
        ...     output = modified(input)
        ...     relevance, = torch.autograd.grad(output, input, target)
        """
        view, transform = CompositeCanonizer(self.canonizers).apply(model)
        rules = assign_rules(view, self)
        report_problems(find_problems(model, view, rules, self.form, bool(self.canonizers)),
                        f"{type(self).__name__}.context(model={type(model).__name__})", "warn",
                        stacklevel=4)
        yield LiveModel(model, FunctionalModel(view, rules, transform, form=self.form))

    def __repr__(self) -> str:
        arguments = ", ".join(f"{k}={_shown(v)!r}" for k, v in self.arguments)
        return f"{type(self).__name__}({arguments})"


def _shown(value: Any) -> Any:
    """Sequences of map entries and canonizers print as lists, as they were passed."""
    return list(value) if isinstance(value, tuple) else value


@dataclass(frozen=True, init=False, repr=False)
class LayerMapComposite(Composite):
    """Rules by module type: ``layer_map = [(types, rule), ...]``, first match wins."""

    layer_map: tuple[tuple[Any, Rule], ...]

    def __init__(self, layer_map: LayerMap | None = None, canonizers=None) -> None:
        super().__init__(canonizers=canonizers)
        self._store(layer_map=_layer_map(layer_map, type(self).__name__, "layer_map"))
        self._record(layer_map=self.layer_map or None, canonizers=canonizers)

    def module_map(self, ctx, name, module):
        return _first_type_match(self.layer_map, module)

    def rows(self):
        return [("layer_map", _key_name(kinds), rule) for kinds, rule in self.layer_map]


def _first_type_match(layer_map: LayerMap, module: nn.Module) -> Rule | None:
    for kinds, rule in layer_map:
        if isinstance(module, kinds):
            return rule
    return None


@dataclass(frozen=True, init=False, repr=False)
class SpecialFirstLayerMapComposite(LayerMapComposite):
    """Like :class:`LayerMapComposite`, but ``first_map`` rules the first module it matches."""

    first_map: tuple[tuple[Any, Rule], ...]

    def __init__(
        self, layer_map: LayerMap | None = None, first_map: LayerMap | None = None,
        canonizers=None,
    ) -> None:
        super().__init__(layer_map, canonizers)
        self._store(first_map=_layer_map(first_map, type(self).__name__, "first_map"))
        self._record(layer_map=self.layer_map or None, first_map=self.first_map or None,
                     canonizers=canonizers)

    def module_map(self, ctx, name, module):
        if not ctx.get("first_layer_visited"):
            rule = _first_type_match(self.first_map, module)
            if rule is not None:
                ctx["first_layer_visited"] = True
                return rule
        return super().module_map(ctx, name, module)

    def rows(self):
        first = [("first_map", _key_name(kinds), rule) for kinds, rule in self.first_map]
        return first + super().rows()


@dataclass(frozen=True, init=False, repr=False)
class NameMapComposite(Composite):
    """Rules by module name: ``name_map = [(names, rule), ...]``, first match wins."""

    name_map: tuple[tuple[tuple[str, ...], Rule], ...]

    def __init__(self, name_map: NameMap | None = None, canonizers=None) -> None:
        super().__init__(canonizers=canonizers)
        self._store(name_map=_name_map(name_map, type(self).__name__))
        self._record(name_map=self.name_map or None, canonizers=canonizers)

    def module_map(self, ctx, name, module):
        for names, rule in self.name_map:
            if name in names:
                return rule
        return None

    def names(self):
        return tuple(name for names, _ in self.name_map for name in names)

    def rows(self):
        return [("name_map", ", ".join(names), rule) for names, rule in self.name_map]


@dataclass(frozen=True, init=False, repr=False)
class MixedComposite(Composite):
    """Several composites; for each module every one is asked and the first rule wins.

    The canonizers are the user's, then each composite's in order.
    """

    composites: tuple[Composite, ...]

    def __init__(self, composites: Sequence[Composite], canonizers=None) -> None:
        owner = type(self).__name__
        composites = tuple(composites) if isinstance(composites, Iterable) else (composites,)
        for composite in composites:
            if not isinstance(composite, Composite):
                raise TypeError(f"{owner}(composites=...): expected Composite instances, got "
                                f"{type(composite).__name__}. Pass e.g. "
                                f"MixedComposite([NameMapComposite(...), EpsilonPlus()]).")
        merged = as_canonizers(canonizers, owner) + tuple(
            c for composite in composites for c in composite.canonizers
        )
        super().__init__(canonizers=merged)
        forms = {composite.form for composite in composites}
        # a Gradient x Input member (AttnLRP) sets the form of the whole
        self._store(composites=composites, form="gradient_x_input"
                    if "gradient_x_input" in forms else "relevance")
        self._record(composites=composites, canonizers=canonizers)

    def module_map(self, ctx, name, module):
        contexts = ctx.setdefault("mixed", [{} for _ in self.composites])
        rules = [c.module_map(contexts[i], name, module) for i, c in enumerate(self.composites)]
        return next((rule for rule in rules if rule is not None), None)

    def names(self):
        return tuple(name for composite in self.composites for name in composite.names())

    def rows(self):
        return [(f"composites[{i}].{where}", key, rule)
                for i, composite in enumerate(self.composites)
                for where, key, rule in composite.rows()]


class NameLayerMapComposite(MixedComposite):
    """Names first, then types: ``MixedComposite([NameMap(name_map), LayerMap(layer_map)])``."""

    def __init__(self, name_map: NameMap | None = None, layer_map: LayerMap | None = None,
                 canonizers=None) -> None:
        super().__init__(
            [NameMapComposite(name_map), LayerMapComposite(layer_map)], canonizers=canonizers
        )
        names, layers = self.composites
        self._record(name_map=names.name_map or None, layer_map=layers.layer_map or None,
                     canonizers=canonizers)


# --------------------------------------------------------------------------------------------
# Resolution
# --------------------------------------------------------------------------------------------

_BAD_RULES = """\
assign_rules(composite={composite}): {count} module(s) cannot take their rule:
{table}
Give these modules another rule (e.g. with a layer_map or name_map entry before the preset's)."""


def assign_rules(model: nn.Module, composite: Composite | None) -> RuleMap:
    """Resolve ``composite`` for ``model``: ``{module name: rule}`` in ``named_modules`` order.

    Raises
    ------
    TypeError
        If ``composite`` is not a funcattr composite or its map gives something that is not a
        funcattr rule.
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
                f"{rule!r} for module {name!r}; expected a funcattr Rule (e.g. Epsilon()). "
                f"Map modules to rules from funcattr.rules (Zennit's rule objects do not work "
                f"here)."
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


def record_arguments(composite: Composite, arguments: dict[str, Any], **optional: Any) -> None:
    """For a preset's constructor: the arguments its ``repr`` shows, ``arguments`` always and
    ``optional`` ones (``layer_map``, ``canonizers``, ...) when given."""
    shown = [*arguments.items(), *((k, v) for k, v in optional.items() if v)]
    composite._store(arguments=tuple(shown))
