"""Copy-on-write construction of a model view and its parameter transform.

A canonizer describes its rewrite with a :class:`ViewBuilder`; the builder shares every module
it is not asked to change with the model, gives the changed ones private shallow copies, and
records how new tensors (merged weights) are computed from the model's tensors, so that the
parameter transform recomputes them from the params on every call.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from funcattr.canonizers.base import ParamTransform, identity_transform
from funcattr.module_tree import shallow_copy

__all__ = ["ViewBuilder"]

Slot = tuple[int, str]  # (id of a module of the input model, attribute name)


def _keyed(module: nn.Module) -> dict[str, Tensor]:
    """Parameters and buffers keyed like ``named_parameters()`` / ``named_buffers()``."""
    tensors = dict(module.named_parameters())
    tensors.update(module.named_buffers())
    return tensors


@dataclass(frozen=True)
class _Step:
    fn: Callable[..., tuple[Tensor, ...]]
    inputs: tuple[Slot, ...]
    outputs: tuple[Slot, ...]


class ViewBuilder:
    """Copy-on-write construction of a model view and its parameter transform.

    Canonizers describe their rewrite with :meth:`edit` (a private shallow copy of a module to
    change), :meth:`replace` (another module in a module's place) and :meth:`derive` (new
    tensors of an edited module, computed from tensors of the model by a pure function);
    :meth:`build` returns the view and the transform. Unchanged modules are shared with the
    model; no module of the model is ever written to.

    Parameters
    ----------
    model : torch.nn.Module
        The model (or an earlier canonizer's view) to rewrite.
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self._copies: dict[int, nn.Module] = {}
        self._replaced: dict[int, nn.Module] = {}
        self._steps: list[_Step] = []
        self._values: dict[Slot, Tensor | None] = {}  # the current value of each derived slot
        self._derived: dict[Slot, Tensor] = {}  # slot -> the tensor placed in the view

    def edit(self, module: nn.Module) -> nn.Module:
        """The view's own shallow copy of ``module`` (the same copy on every call)."""
        if id(module) in self._replaced:
            raise ValueError(
                f"ViewBuilder.edit(module={type(module).__name__}): the module was replaced "
                f"already; expected a module that replace() has not taken, got one it has. "
                f"Edit a module before replacing it."
            )
        if id(module) not in self._copies:
            new = shallow_copy(module)
            self._copies[id(module)] = new
        return self._copies[id(module)]

    def replace(self, module: nn.Module, new: nn.Module) -> None:
        """Put ``new`` wherever ``module`` occurs in the view."""
        self._replaced[id(module)] = new

    def read(self, module: nn.Module, name: str) -> Tensor | None:
        """The current value of ``module.<name>`` in the view being built (detached)."""
        slot = (id(module), name)
        if slot in self._values:
            return self._values[slot]
        value = getattr(module, name, None)
        return value.detach() if isinstance(value, Tensor) else None

    def derive(self, fn: Callable[..., tuple[Tensor, ...]],
               inputs: Sequence[tuple[nn.Module, str]],
               outputs: Sequence[tuple[nn.Module, str]]) -> None:
        """Give the edited ``outputs`` (module, attribute) the values ``fn(*inputs)``.

        ``fn`` must be a pure, differentiable function of tensors (``None`` for an input the
        module lacks). It runs now on the model's tensors (for the view's own values) and on
        every call of the transform, on the params passed to it.
        """
        with torch.no_grad():
            values = fn(*(self.read(module, name) for module, name in inputs))
        for (module, name), value in zip(outputs, values, strict=True):
            target = self.edit(module)
            original = getattr(module, name, None)
            if name in module._buffers:
                target._buffers[name] = value
            else:
                requires_grad = original.requires_grad if isinstance(original, Tensor) else True
                value = nn.Parameter(value, requires_grad=requires_grad)
                target._parameters[name] = value
            self._values[(id(module), name)] = value.detach()
            self._derived[(id(module), name)] = value
        self._steps.append(_Step(
            fn,
            tuple((id(module), name) for module, name in inputs),
            tuple((id(module), name) for module, name in outputs),
        ))

    def _rebuild(self, module: nn.Module, memo: dict[int, nn.Module]) -> nn.Module:
        if id(module) in memo:
            return memo[id(module)]
        if id(module) in self._replaced:
            memo[id(module)] = self._replaced[id(module)]
            return memo[id(module)]
        own = self._copies.get(id(module), module)
        memo[id(module)] = own  # a module containing itself stays itself
        children = {
            name: None if child is None else self._rebuild(child, memo)
            for name, child in own._modules.items()
        }
        if own is module and all(children[k] is v for k, v in module._modules.items()):
            return module
        own = self.edit(module)
        own.__dict__["_modules"] = children
        memo[id(module)] = own
        return own

    def build(self) -> tuple[nn.Module, ParamTransform]:
        """The view and its parameter transform."""
        if not self._copies and not self._replaced:
            return self.model, identity_transform
        view = self._rebuild(self.model, {})
        model_keys = {id(tensor): key for key, tensor in _keyed(self.model).items()}
        model_tensors = {}
        for module in self.model.modules():
            for name in (*module._parameters, *module._buffers):
                value = getattr(module, name)
                model_tensors[(id(module), name)] = value
        derived = {id(tensor): slot for slot, tensor in self._derived.items()}
        sources: list[tuple[str, str, Any]] = []
        for key, tensor in _keyed(view).items():
            if id(tensor) in derived:
                sources.append((key, "slot", derived[id(tensor)]))
            elif id(tensor) in model_keys:
                sources.append((key, "model", model_keys[id(tensor)]))
            else:
                sources.append((key, "const", tensor.detach()))
        inputs = {}  # slot -> (model key or None, fallback tensor)
        for step in self._steps:
            for slot in step.inputs:
                value = model_tensors.get(slot)
                key = model_keys.get(id(value)) if value is not None else None
                inputs[slot] = (key, None if value is None else value.detach())
        steps = tuple(self._steps)
        return view, _ViewTransform(steps, tuple(sources), inputs)


class _ViewTransform:
    """The params transform of a view: shared keys renamed, derived tensors recomputed."""

    def __init__(self, steps: tuple[_Step, ...], sources: tuple[tuple[str, str, Any], ...],
                 inputs: dict[Slot, tuple[str | None, Tensor | None]]) -> None:
        self.steps = steps
        self.sources = sources
        self.inputs = inputs

    def __call__(self, params: Mapping[str, Tensor]) -> dict[str, Tensor]:
        values: dict[Slot, Tensor | None] = {}

        def read(slot: Slot) -> Tensor | None:
            if slot in values:
                return values[slot]
            key, fallback = self.inputs[slot]
            return params[key] if key is not None and key in params else fallback

        for step in self.steps:
            results = step.fn(*(read(slot) for slot in step.inputs))
            values.update(zip(step.outputs, results, strict=True))
        out: dict[str, Tensor] = {}
        for key, kind, ref in self.sources:
            if kind == "slot":
                out[key] = values[ref]
            elif kind == "model":
                if ref in params:
                    out[key] = params[ref]
            else:
                out[key] = ref
        return out

