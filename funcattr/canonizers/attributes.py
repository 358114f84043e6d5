"""Attribute canonizers: new attributes (a ``forward``, child modules) on copies in the view."""

from __future__ import annotations

import types as pytypes
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from torch import nn

from funcattr.canonizers.base import Canonizer, ParamTransform
from funcattr.canonizers.view import ViewBuilder

__all__ = ["AttributeCanonizer", "AttributeMap"]

AttributeMap = Callable[[str, nn.Module], "dict[str, Any] | None"]


@dataclass(frozen=True)
class AttributeCanonizer(Canonizer):
    """Give modules new attributes in the view: a new ``forward``, new child modules, ...

    Parameters
    ----------
    attribute_map : callable
        ``attribute_map(name, module) -> dict | None`` is called for every module of the
        model (``named_modules()`` order); a dict's items are set on the view's copy of that
        module as ``setattr`` would (a module value becomes a child, appended after the
        existing ones). A method bound to ``module`` is re-bound to the copy, so Zennit's
        idiom ``{"forward": forward.__get__(module), "canonizer_sum": Sum()}`` works. Returns a
        new model view and params; the inputs are unchanged.

    Examples
    --------
    >>> def attribute_map(name, module):
    ...     return {"inplace": False} if isinstance(module, torch.nn.ReLU) else None
    >>> view, transform = AttributeCanonizer(attribute_map).apply(torch.nn.ReLU(inplace=True))
    >>> view.inplace
    False
    """

    attribute_map: AttributeMap = None  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if not callable(self.attribute_map):
            raise TypeError(
                f"{type(self).__name__}(attribute_map={self.attribute_map!r}): expected a "
                f"callable (name, module) -> dict | None, got "
                f"{type(self.attribute_map).__name__}. Pass e.g. "
                f"AttributeCanonizer(lambda name, module: {{'inplace': False}} "
                f"if isinstance(module, torch.nn.ReLU) else None)."
            )

    def apply(self, model: nn.Module) -> tuple[nn.Module, ParamTransform]:
        builder = ViewBuilder(model)
        for name, module in model.named_modules():
            attributes = self.attribute_map(name, module)
            if attributes is None:
                continue
            if not isinstance(attributes, Mapping):
                raise TypeError(
                    f"{type(self).__name__}(attribute_map=...): expected a dict or None from "
                    f"attribute_map({name!r}, {type(module).__name__}), got "
                    f"{type(attributes).__name__}. Return the attributes to set on the view's "
                    f"copy of the module as a dict, or None to leave it alone."
                )
            target = builder.edit(module)
            for key, value in attributes.items():
                if isinstance(value, pytypes.MethodType) and value.__self__ is module:
                    value = pytypes.MethodType(value.__func__, target)
                if isinstance(value, nn.Module) and key in target._modules:
                    target._modules[key] = value  # keep the position of a replaced child
                else:
                    nn.Module.__setattr__(target, key, value)
        return builder.build()
