"""The ruled tree: a model view with rules in place of module forwards, as ``fn(params, input)``.

:class:`FunctionalModel` takes a (canonized) model view, the rule of each ruled module
(:class:`RuleMap`, what :func:`funcattr.composites.assign_rules` returns) and the view's
parameter transform. It builds a private shallow copy of the module tree in which each ruled
module's ``forward`` is replaced by its rule, and runs it with
``torch.func.functional_call``; each thread gets its own copy, so threads explaining one
model at once do not interfere. Everything the rules derive for a call site (compiled
plans, what the fast path learnt about the call) lives in that copy's :class:`LayerCall`
objects: the :class:`FunctionalModel` owns it and drops it with itself, and two of them never
share it. It knows nothing of composites: ``functionalize`` and Zennit's
``composite.context(model)`` both build one.
"""

from __future__ import annotations

import difflib
import operator
import threading
import types as pytypes
from collections.abc import Callable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from funcattr.canonizers.base import ParamTransform, identity_transform
from funcattr.core import ElementwiseRule, ModuleCall, Rule
from funcattr.module_tree import clone_tree, shallow_copy

__all__ = ["FunctionalModel", "LayerCall", "LiveModel", "ParamKeys", "RuleMap", "model_params"]


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


def model_params(model: nn.Module) -> dict[str, Tensor]:
    """The model's parameters and buffers as a flat dict of detached tensors (shared storage)."""
    params = {name: value.detach() for name, value in model.named_parameters()}
    params.update({name: value.detach() for name, value in model.named_buffers()})
    return params


_PARAMS_FIX = ("Pass the dict from functionalize, with changed entries as new tensors, e.g. "
               "dict(params, **{name: tensor})")


def _listed(items: list[str], limit: int = 8) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


@dataclass(frozen=True, eq=False)
class ParamKeys:
    """The keys a model's params dict has: ``model.named_parameters()`` then
    ``named_buffers()``, each tensor once; a tensor the model holds under several names (tied
    weights, ``b.weight = a.weight``) is keyed by its first name, and its other names are
    ``aliases`` of that key (accepted in its place, as ``torch.func.functional_call`` does).
    """

    parameters: tuple[str, ...]
    buffers: tuple[str, ...]
    aliases: Mapping[str, str] = field(default_factory=dict)
    names: frozenset[str] = field(init=False, repr=False)  # every key of the params dict

    def __post_init__(self) -> None:
        object.__setattr__(self, "names", frozenset((*self.parameters, *self.buffers)))

    @classmethod
    def of(cls, model: nn.Module) -> ParamKeys:
        """The keys of ``model``'s params dict (:func:`model_params`)."""
        parameters = tuple(name for name, _ in model.named_parameters())
        buffers = tuple(name for name, _ in model.named_buffers())
        first: dict[int, str] = {}
        aliases: dict[str, str] = {}
        for name, value in [*model.named_parameters(remove_duplicate=False),
                            *model.named_buffers(remove_duplicate=False)]:
            key = first.setdefault(id(value), name)
            if key != name:
                aliases[name] = key
        return cls(parameters, buffers, aliases)

    def check(self, params: Mapping[str, Tensor], owner: str = "fn") -> Mapping[str, Tensor]:
        """``params`` checked against these keys, aliases renamed to their keys.

        Raises
        ------
        TypeError
            If a value is not a tensor.
        ValueError
            Listing the unknown keys (with the closest known names) and the missing ones.
        """
        if params.keys() != self.names:
            params = self._renamed(params, owner)
        for name, value in params.items():
            if not isinstance(value, Tensor):
                raise TypeError(
                    f"{owner}(params={{{name!r}: {type(value).__name__}}}): expected a tensor for "
                    f"every key, got {type(value).__name__}. {_PARAMS_FIX}."
                )
        return params

    def _renamed(self, params: Mapping[str, Tensor], owner: str) -> dict[str, Tensor]:
        renamed: dict[str, Tensor] = {}
        unknown = []
        for name, value in params.items():
            key = self.aliases.get(name, name)
            if key not in self.names:
                unknown.append(name)
            elif key in renamed and renamed[key] is not value:
                raise ValueError(
                    f"{owner}(params=...): expected one tensor for the tied weight {key!r}, got "
                    f"different tensors under its names {key!r} and {name!r}. Give it under "
                    f"one name ({key!r}): it reaches every module that shares it."
                )
            else:
                renamed[key] = value
        missing = [name for name in (*self.parameters, *self.buffers) if name not in renamed]
        if unknown or missing:
            problems = []
            if unknown:
                hints = []
                for name in unknown:
                    close = difflib.get_close_matches(name, sorted(self.names), n=1)
                    hints.append(f"{name!r} (did you mean {close[0]!r}?)" if close
                                 else repr(name))
                problems.append(f"unknown key(s) {_listed(hints)}")
            if missing:
                problems.append(f"no value for {_listed([repr(name) for name in missing])}")
            raise ValueError(
                f"{owner}(params=...): expected the keys of model.named_parameters() and "
                f"named_buffers() ({len(self.names)} keys), got {' and '.join(problems)}. "
                f"{_PARAMS_FIX}."
            )
        return renamed

    def split(self, params: Mapping[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """``(parameters, buffers)``: ``params`` cut into the model's parameters (what
        ``torch.func.grad`` differentiates) and its buffers (batch-norm statistics, integer
        counters); ``{**parameters, **buffers}`` is ``params`` again."""
        if not isinstance(params, Mapping):
            raise TypeError(
                f"split_params(params={type(params).__name__}): expected the dict of tensors "
                f"returned by functionalize, got {type(params).__name__}. Pass fn, params = "
                f"funcattr.functionalize(model, composite) and split params."
            )
        params = self.check(params, "split_params")
        return ({name: params[name] for name in self.parameters},
                {name: params[name] for name in self.buffers})


def _original_forward(module: nn.Module) -> Callable[..., Any]:
    forward = module.__dict__.get("forward")
    if forward is not None:
        return forward
    return pytypes.MethodType(type(module).forward, module)


class LayerCall(ModuleCall):
    """A ruled module's call site: its original forward, plus a way to call it with replaced
    own tensors (see :class:`funcattr.core.ModuleCall`).

    ``layer(*args)`` is the ordinary forward; ``layer.with_state(state, *args)`` calls it with
    the module's own parameters/buffers replaced by ``state`` (used by the reference rule).
    """

    def __init__(self, module: nn.Module, path: str) -> None:
        self.module = module
        self.path = path
        self.memo = {}
        self.own_forward = module.__dict__.get("forward") is not None
        self.forward = _original_forward(module)
        inner = shallow_copy(module)  # same children; own registries, so swapping is private
        inner.__dict__.pop("forward", None)
        if self.own_forward:
            inner.__dict__["forward"] = pytypes.MethodType(self.forward.__func__, inner)
        self._inner = inner

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    def state(self) -> dict[str, Tensor]:
        """The module's own parameters and buffers as used in this call."""
        names = [*self.module._parameters, *self.module._buffers]
        return {name: getattr(self.module, name) for name in names
                if getattr(self.module, name) is not None}

    def with_state(self, state: Mapping[str, Tensor], *args, **kwargs):
        return torch.func.functional_call(self._inner, dict(state), args, kwargs, strict=False)


class _RuledForward:
    """The ``forward`` of a ruled module in the private tree: the rule applied to the call."""

    def __init__(self, rule: Rule, module: nn.Module, path: str) -> None:
        self.rule = rule
        self.module = module
        self.layer = LayerCall(module, path)

    def __call__(self, *args, **kwargs):
        return self.rule.apply(self.module, self.layer, *args, **kwargs)


def _install(tree: nn.Module, tensors: Mapping[str, Tensor]) -> None:
    """Put ``tensors`` (keyed by full name) into the private tree's registries.

    A tensor the tree holds under several names (tied weights) is replaced under all of them,
    so the tree keeps it tied: ``torch.func.functional_call`` then gives a substituted tensor
    to every module that shares it.
    """
    slots: dict[int, list[tuple[dict, str, str]]] = {}
    for prefix, module in tree.named_modules(remove_duplicate=False):
        for registry in (module._parameters, module._buffers):
            for name, value in registry.items():
                if value is not None:
                    full = f"{prefix}.{name}" if prefix else name
                    slots.setdefault(id(value), []).append((registry, name, full))
    for shared in slots.values():
        new = next((tensors[full] for _, _, full in shared if full in tensors), None)
        if new is not None:
            for registry, name, _ in shared:
                registry[name] = new


def _build_tree(view: nn.Module, rules: RuleMap) -> nn.Module:
    memo: dict[int, nn.Module] = {}
    tree = clone_tree(view, memo)
    for name, rule in rules.items():
        clone = memo[id(rules.modules[name])]
        reads_input = not isinstance(rule, ElementwiseRule) or rule.reads_input
        if getattr(clone, "inplace", None) is True and reads_input:
            clone.__dict__["inplace"] = False  # the rule keeps its input: compute anew
        clone.__dict__["forward"] = _RuledForward(rule, clone, name)
    return tree


class FunctionalModel:
    """``fn(params, input, *args, **kwargs)``: the rule-applied model as a pure function.

    Attributes
    ----------
    rules : RuleMap
        The rule of every ruled module, by name in the canonized view.
    plain : FunctionalModel
        The same canonized model without rules (the ordinary gradient).
    form : str
        How relevance is read off the rules' backward (:func:`funcattr.relevance`):
        ``'relevance'`` (Zennit's composites) or ``'gradient_x_input'`` (AttnLRP, CP-LRP,
        and no rules: relevance is input x gradient).
    """

    def __init__(self, view: nn.Module, rules: RuleMap, transform: ParamTransform,
                 params: dict[str, Tensor] | None = None, keys: ParamKeys | None = None, *,
                 form: str = "gradient_x_input") -> None:
        self.view = view
        self.rules = rules
        self.transform = transform
        self.keys = keys
        self.form = form
        self._local = threading.local()
        self._plain: FunctionalModel | None = None
        self._training = any(module.training for module in view.modules())
        # the params dict of functionalize, built into the tree: passing it needs no swapping
        self._resident = (params if params is not None and transform is identity_transform
                          and not self._training else None)

    @property
    def plain(self) -> FunctionalModel:
        """The same (canonized) model without rules."""
        if not self.rules:
            return self
        if self._plain is None:
            self._plain = FunctionalModel(self.view, RuleMap({}, {}), self.transform,
                                          self._resident, self.keys)  # no rules: input x gradient
        return self._plain

    def module_tree(self) -> nn.Module:
        """A new private copy of the rule-applied module tree (the model's tensors, shared).

        Hooks registered on it never reach the user's model; :func:`funcattr.metrics.conservation`
        uses it to probe each layer.
        """
        return _build_tree(self.view, self.rules)

    def _tree(self) -> nn.Module:
        active = _TAPS.get()
        if active is not None and active[0] is self:
            return self._tappable_tree()
        tree = getattr(self._local, "tree", None)
        if tree is None:
            tree = self._local.tree = _build_tree(self.view, self.rules)
            if self._resident is not None:
                _install(tree, self._resident)
        return tree

    def _is_resident(self, params: Mapping[str, Tensor]) -> bool:
        resident = self._resident
        if resident is None or len(params) != len(resident):
            return False
        if all(map(operator.is_, params.values(), resident.values())) and all(
                map(operator.eq, params, resident)):  # the same items in the same order
            return True
        return all(params.get(name) is tensor for name, tensor in resident.items())

    def __call__(self, params: Mapping[str, Tensor], input: Any, *args, **kwargs) -> Any:
        if not isinstance(params, Mapping):
            raise TypeError(
                f"fn(params={type(params).__name__}): expected the dict of tensors returned by "
                f"functionalize (keyed like model.named_parameters() and named_buffers())."
            )
        if self._is_resident(params):
            return self._tree()(input, *args, **kwargs)
        if self.keys is not None:
            params = self.keys.check(params)
        view_params = self.transform(params)
        if self._training:  # batch-norm statistics update in place: never the caller's tensors
            view_params = {
                k: v.clone() if k.endswith(("running_mean", "running_var", "num_batches_tracked"))
                else v
                for k, v in view_params.items()
            }
        return torch.func.functional_call(self._tree(), view_params, (input, *args), kwargs)

    def split_params(self, params: Mapping[str, Tensor]
                     ) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """``(parameters, buffers)``: ``params`` cut into the model's parameters and its
        buffers, e.g. to differentiate with respect to the parameters only (``torch.func.grad``
        refuses the integer ``num_batches_tracked`` of a batch norm)::

            weights, buffers = fn.split_params(params)
            grads = torch.func.grad(lambda w: loss(fn, {**w, **buffers}, x))(weights)
        """
        if self.keys is None:
            raise TypeError(
                "split_params(params=...): expected the fn of functionalize, which knows the "
                "model's parameter names, got one built without them. Use "
                "funcattr.functionalize(model, composite)."
            )
        return self.keys.split(params)

    def __repr__(self) -> str:
        return f"FunctionalModel(rules=\n{self.rules!r})"

    def tapped(self, params: Mapping[str, Tensor], input: Any,
               taps: Mapping[str, Callable[[Any], Any]], *args, **kwargs) -> Any:
        """``fn(params, input, *args, **kwargs)`` with the output of each module named in
        ``taps`` replaced by ``taps[name](output)``, on every call of that module.

        Names are those of ``self.view.named_modules()`` (the model's own names, and the
        modules canonizers add). The taps hold for this call only; a tap sees the module's
        output as the model computes it (after the module's rule), and what it returns goes on
        in its place: e.g. ``lambda y: y`` observes, ``lambda y: y.detach() + delta`` cuts the
        graph there. A tap may itself call ``fn``, which then runs without taps.
        """
        modules = dict(self.view.named_modules())
        for name in taps:
            if name not in modules:
                close = difflib.get_close_matches(str(name), [n for n in modules if n], n=3)
                hint = f" (did you mean {', '.join(map(repr, close))}?)" if close else ""
                raise ValueError(
                    f"FunctionalModel.tapped(taps={{{name!r}: ...}}): expected names of modules "
                    f"of the model, got {name!r}. Use a name from "
                    f"model.named_modules(){hint}."
                )
        token = _TAPS.set((self, dict(taps)))
        try:
            return self(params, input, *args, **kwargs)
        finally:
            _TAPS.reset(token)

    def _tappable_tree(self) -> nn.Module:
        """This thread's ruled tree in which every module's forward passes its output through
        the active tap of its name (built on first use; without taps it computes as ``_tree``)."""
        tree = getattr(self._local, "tappable", None)
        if tree is None:
            tree = self._local.tappable = _build_tree(self.view, self.rules)
            for name, module in tree.named_modules():
                module.__dict__["forward"] = _TappedForward(self, name,
                                                            _original_forward(module))
            if self._resident is not None:
                _install(tree, self._resident)
        return tree


#: ``(functional model, {module name: tap})`` of the :meth:`FunctionalModel.tapped` call in
#: progress (in this thread or task), or ``None``.
_TAPS: ContextVar[tuple[FunctionalModel, dict[str, Callable[[Any], Any]]] | None] = ContextVar(
    "funcattr_taps", default=None)


class _TappedForward:
    """A module's forward in a tappable tree: its output passes through the active tap of its
    name, when the tapped call in progress is its own model's."""

    def __init__(self, owner: FunctionalModel, name: str, forward: Callable[..., Any]) -> None:
        self.owner = id(owner)  # not the object: no reference cycle through the thread's tree
        self.name = name
        self.forward = forward

    def __call__(self, *args, **kwargs):
        output = self.forward(*args, **kwargs)
        active = _TAPS.get()
        if active is None or id(active[0]) != self.owner or self.name not in active[1]:
            return output
        token = _TAPS.set(None)  # a tap that calls the model runs it without taps
        try:
            return active[1][self.name](output)
        finally:
            _TAPS.reset(token)


class LiveModel(nn.Module):
    """``model`` computed by ``fn`` with the model's current (live) parameters and buffers.

    It can stand in for the model in Zennit-style code; ``model`` is not registered as a
    child, so its parameters stay the model's own. A ruled module's output passes no gradient
    to that module's own parameters (its rule replaces the backward); a relevance taken with
    ``create_graph=True`` can be differentiated with respect to them.
    """

    def __init__(self, model: nn.Module, fn: FunctionalModel) -> None:
        super().__init__()
        self.__dict__["model"] = model  # not registered: its parameters stay the model's own
        self.__dict__["fn"] = fn

    def forward(self, input: Any, *args, **kwargs) -> Any:
        model = self.__dict__["model"]
        params = dict(model.named_parameters())
        params.update(dict(model.named_buffers()))
        return self.__dict__["fn"](params, input, *args, **kwargs)
