"""The canonizer protocol: ``apply(model) -> (model view, parameter transform)``."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn

__all__ = [
    "Canonizer",
    "CompositeCanonizer",
    "ParamTransform",
    "as_canonizers",
    "identity_transform",
]

ParamTransform = Callable[[Mapping[str, Tensor]], dict[str, Tensor]]


def identity_transform(params: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The parameter transform of a canonizer that changes no parameters."""
    return dict(params)


class Canonizer(ABC):
    """Base of all canonizers: ``apply(model) -> (model view, parameter transform)``.

    ``canonizer(model, params)`` returns ``(view, view_params)``; the inputs are unchanged, and
    ``torch.func.functional_call(view, view_params, input)`` equals ``model(input)`` (for a
    model in eval mode). :meth:`fits` says whether the canonizer is meant for a model; the
    registry (:func:`funcattr.canonizers.canonizers_for`) reads it.
    """

    @abstractmethod
    def apply(self, model: nn.Module) -> tuple[nn.Module, ParamTransform]:
        """Return a new model view and the transform of its parameters; ``model`` is unchanged."""

    def __call__(
        self, model: nn.Module, params: Mapping[str, Tensor]
    ) -> tuple[nn.Module, dict[str, Tensor]]:
        """Canonize ``(model, params)`` into ``(model view, view params)``; inputs unchanged."""
        view, transform = self.apply(model)
        return view, transform(params)

    @classmethod
    def fits(cls, model: nn.Module) -> bool:
        """Whether this canonizer is meant for ``model`` (its architecture); ``False`` here."""
        return False


@dataclass(frozen=True, init=False, repr=False)
class CompositeCanonizer(Canonizer):
    """Apply several canonizers in order; their parameter transforms compose.

    Examples
    --------
    >>> CompositeCanonizer([SequentialMergeBatchNorm()])
    CompositeCanonizer([SequentialMergeBatchNorm()])
    """

    canonizers: tuple[Canonizer, ...]

    def __init__(self, canonizers: Sequence[Canonizer]) -> None:
        object.__setattr__(self, "canonizers", as_canonizers(canonizers, "CompositeCanonizer"))

    def apply(self, model):
        if not self.canonizers:
            return model, identity_transform
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


def as_canonizers(value: Any, owner: str) -> tuple[Canonizer, ...]:
    """A ``canonizers=`` argument (``None``, a canonizer or a sequence) as a tuple.

    Raises
    ------
    TypeError
        Naming ``owner`` (e.g. ``'EpsilonPlus'``) if ``value`` or an item is not a canonizer.
    """
    if value is None:
        return ()
    items = (value,) if isinstance(value, Canonizer) else value
    if not isinstance(items, Iterable) or isinstance(items, str | bytes):
        raise TypeError(f"{owner}(canonizers={value!r}): expected a Canonizer or a list of "
                        f"Canonizers, got {type(value).__name__}. Pass e.g. "
                        f"canonizers=[SequentialMergeBatchNorm()].")
    items = tuple(items)
    for item in items:
        if not isinstance(item, Canonizer):
            raise TypeError(f"{owner}(canonizers=...): expected Canonizer instances, got "
                            f"{type(item).__name__}. Pass e.g. "
                            f"canonizers=[SequentialMergeBatchNorm()].")
    return items
