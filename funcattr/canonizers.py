"""Canonizers: pure transforms of (module tree, params) that make models LRP-friendly.

A canonizer never touches the model it is given. :meth:`Canonizer.apply` returns a *new
model view* (a shallow copy of the module tree with some modules replaced) and a *parameter
transform*, a pure function from the model's params dict to the view's params dict, applied
on every call of the functionalized model so that gradients flow to the original params.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence

from torch import Tensor, nn

__all__ = ["Canonizer", "CompositeCanonizer", "ParamTransform", "identity_transform"]

ParamTransform = Callable[[Mapping[str, Tensor]], dict[str, Tensor]]


def identity_transform(params: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The parameter transform of a canonizer that changes no parameters."""
    return dict(params)


class Canonizer(ABC):
    """Base of all canonizers: ``apply(model) -> (model view, parameter transform)``."""

    @abstractmethod
    def apply(self, model: nn.Module) -> tuple[nn.Module, ParamTransform]:
        """Return a new model view and the transform of its parameters; ``model`` is unchanged."""

    def __call__(
        self, model: nn.Module, params: Mapping[str, Tensor]
    ) -> tuple[nn.Module, dict[str, Tensor]]:
        """Canonize ``(model, params)`` into ``(model view, view params)``; inputs unchanged."""
        view, transform = self.apply(model)
        return view, transform(params)


class CompositeCanonizer(Canonizer):
    """Apply several canonizers in order; their parameter transforms compose."""

    def __init__(self, canonizers: Sequence[Canonizer]) -> None:
        self.canonizers = tuple(canonizers)
        for canonizer in self.canonizers:
            if not isinstance(canonizer, Canonizer):
                raise TypeError(
                    f"CompositeCanonizer(canonizers=...): expected Canonizer instances, got "
                    f"{type(canonizer).__name__}."
                )

    def apply(self, model):
        transforms = []
        for canonizer in self.canonizers:
            model, transform = canonizer.apply(model)
            transforms.append(transform)

        def transform(params):
            for step in transforms:
                params = step(params)
            return dict(params)

        return model, transform

    def __repr__(self) -> str:
        return f"{type(self).__name__}({list(self.canonizers)!r})"
