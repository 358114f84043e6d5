"""The canonizer registry: names, the arguments each canonizer needs, which one fits a model.

One table, :data:`CANONIZERS` (name -> :class:`CanonizerSpec`), read by :func:`get_canonizer`
(by name), :func:`canonizers_for` (by architecture) and the command line. A spec loads its
class on first use, so that ``import funcattr`` does not import torchvision's models; which
models a class fits is declared on the class (:meth:`Canonizer.fits`).

Examples
--------
>>> get_canonizer("resnet")
ResNetCanonizer()
>>> get_canonizer("ResNetCanonizer") == get_canonizer("resnet")  # class names work too
True
>>> canonizers_for(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4)))
[SequentialMergeBatchNorm()]
"""

from __future__ import annotations

import difflib
import inspect
import re
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType

from torch import nn

from funcattr.canonizers.base import Canonizer
from funcattr.canonizers.batchnorm import (
    NamedMergeBatchNorm,
    SequentialMergeBatchNorm,
    TracedMergeBatchNorm,
)

__all__ = [
    "CANONIZERS",
    "CanonizerSpec",
    "canonizers_for",
    "find_canonizer",
    "get_canonizer",
    "register_canonizer",
]


@dataclass(frozen=True)
class CanonizerSpec:
    """One registered canonizer: its name, how to load its class, whether it is chosen
    automatically.

    Parameters
    ----------
    name : str
        The registry key (snake_case; :func:`get_canonizer` also accepts the class name).
    load : callable
        ``load() -> type[Canonizer]``; imports the class on first use where that is costly.
    auto : bool
        Whether :func:`canonizers_for` considers it (its class's ``fits`` decides).
    fallback : bool
        Tried by :func:`canonizers_for` only after every other automatic spec (generic ones).
    library : str, optional
        The top-level package of the models it is for (``"torchvision"``): considered
        automatically only for models with a module from that package.
    """

    name: str
    load: Callable[[], type[Canonizer]]
    auto: bool = False
    fallback: bool = False
    library: str | None = None

    def arguments(self) -> tuple[str, ...]:
        """The constructor arguments without a default (e.g. ``('name_map',)``)."""
        parameters = inspect.signature(self.load()).parameters.values()
        return tuple(p.name for p in parameters if p.default is p.empty
                     and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY))

    def summary(self) -> str:
        """The first sentence of the class's docstring."""
        return (inspect.getdoc(self.load()) or "").split("\n\n")[0].replace("\n", " ")


def _key(name: str) -> str:
    """Names that differ in case, punctuation or a ``Canonizer`` suffix are the same name."""
    return re.sub(r"[^a-z0-9]", "", name.lower()).removesuffix("canonizer")


CANONIZERS: dict[str, CanonizerSpec] = {}


def register_canonizer(name: str, *, auto: bool = False, fallback: bool = False,
                       library: str | None = None) -> Callable[[type], type]:
    """Class decorator: register a canonizer class as ``CANONIZERS[name]``.

    Examples
    --------
    >>> @register_canonizer("my_block", auto=True)               # doctest: +SKIP
    ... class MyBlockCanonizer(AttributeCanonizer): ...
    """

    def register(cls: type) -> type:
        _register(CanonizerSpec(name, lambda: cls, auto, fallback, library), cls)
        return cls

    return register


def _register(spec: CanonizerSpec, cls: type | None = None) -> None:
    if not isinstance(spec.name, str) or not _key(spec.name):
        raise TypeError(f"register_canonizer(name={spec.name!r}): expected a non-empty name "
                        f"(str), got {type(spec.name).__name__}. Pass e.g. 'my_block'.")
    if cls is not None and not (isinstance(cls, type) and issubclass(cls, Canonizer)):
        raise TypeError(f"register_canonizer(name={spec.name!r}): expected a Canonizer "
                        f"subclass, got {cls!r}. Decorate a subclass of "
                        f"funcattr.canonizers.Canonizer.")
    clash = next((other for other in CANONIZERS.values()
                  if _key(other.name) == _key(spec.name) and other.name != spec.name), None)
    if clash is not None:
        raise ValueError(f"register_canonizer(name={spec.name!r}): expected a new name, got "
                         f"one that reads as the registered {clash.name!r}. Choose another "
                         f"name.")
    CANONIZERS[spec.name] = spec


def _torchvision() -> ModuleType:
    from funcattr import torchvision  # imports torchvision's models: only on first use

    return torchvision


# The built-in canonizers. canonizers_for tries the automatic ones in this order (the
# architectures first, the generic batch-norm merges last).
for _spec in (
    CanonizerSpec("vgg", lambda: _torchvision().VGGCanonizer, auto=True, library="torchvision"),
    CanonizerSpec("resnet", lambda: _torchvision().ResNetCanonizer, auto=True,
                  library="torchvision"),
    CanonizerSpec("densenet", lambda: _torchvision().DenseNetCanonizer, auto=True,
                  library="torchvision"),
    CanonizerSpec("mobilenet_v2", lambda: _torchvision().MobileNetV2Canonizer, auto=True,
                  library="torchvision"),
    CanonizerSpec("mobilenet_v3", lambda: _torchvision().MobileNetV3Canonizer, auto=True,
                  library="torchvision"),
    CanonizerSpec("resnet_bottleneck", lambda: _torchvision().ResNetBottleneckCanonizer),
    CanonizerSpec("resnet_basic_block", lambda: _torchvision().ResNetBasicBlockCanonizer),
    CanonizerSpec("densenet_merge_batch_norm", lambda: _torchvision().DenseNetMergeBatchNorm),
    CanonizerSpec("squeeze_excitation", lambda: _torchvision().SqueezeExcitationCanonizer),
    CanonizerSpec("sequential_merge_batch_norm", lambda: SequentialMergeBatchNorm, auto=True,
                  fallback=True),
    CanonizerSpec("traced_merge_batch_norm", lambda: TracedMergeBatchNorm, auto=True,
                  fallback=True),
    CanonizerSpec("named_merge_batch_norm", lambda: NamedMergeBatchNorm),
):
    _register(_spec)


def find_canonizer(name: str) -> CanonizerSpec:
    """The spec registered as ``name`` (or under a name that reads the same: ``'ResNet'``,
    ``'ResNetCanonizer'`` and ``'resnet'`` are one name).

    Raises
    ------
    TypeError
        If ``name`` is not a string.
    ValueError
        If no canonizer has that name; the message suggests the closest names.
    """
    if not isinstance(name, str):
        raise TypeError(f"get_canonizer(name={name!r}): expected a canonizer name (str), got "
                        f"{type(name).__name__}. Pass e.g. 'resnet'.")
    by_key = {_key(spec.name): spec for spec in CANONIZERS.values()}
    spec = by_key.get(_key(name))
    if spec is None:
        close = difflib.get_close_matches(name, list(CANONIZERS), n=3)
        hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else "."
        raise ValueError(
            f"get_canonizer(name={name!r}): expected a registered canonizer name, got an "
            f"unknown one. Use one of {', '.join(CANONIZERS)}{hint}"
        )
    return spec


def get_canonizer(name: str, **kwargs) -> Canonizer:
    """Instantiate a registered canonizer by name, e.g. ``get_canonizer('resnet')``."""
    spec = find_canonizer(name)
    missing = [argument for argument in spec.arguments() if argument not in kwargs]
    if missing:
        arguments = ", ".join(f"{argument}=..." for argument in missing)
        raise TypeError(
            f"get_canonizer(name={name!r}): expected the argument(s) {', '.join(missing)}, got "
            f"none. Pass them, e.g. get_canonizer({name!r}, {arguments})."
        )
    return spec.load()(**kwargs)


def canonizers_for(model: nn.Module) -> list[Canonizer]:
    """The canonizers that fit ``model``'s architecture, ready for ``functionalize``.

    The automatic specs of :data:`CANONIZERS` are tried in order, architectures before the
    generic batch-norm merges (``fallback``); the first whose class ``fits`` the model is
    chosen. A torchvision ResNet (also inside a wrapper) gives ``[ResNetCanonizer()]``, a VGG
    ``[VGGCanonizer()]``, a DenseNet or MobileNet its canonizer; another model with batch
    norms after linear layers ``[SequentialMergeBatchNorm()]`` (or
    ``[TracedMergeBatchNorm()]`` where registration order is not the data flow); a model
    with nothing to canonize ``[]``.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"canonizers_for(model={type(model).__name__}): expected a "
                        f"torch.nn.Module, got {type(model).__name__}. Pass the model itself.")
    libraries = {type(module).__module__.partition(".")[0] for module in model.modules()}
    specs = [spec for spec in CANONIZERS.values() if spec.auto
             and (spec.library is None or spec.library in libraries)]
    for spec in sorted(specs, key=lambda spec: spec.fallback):  # stable: table order kept
        cls = spec.load()
        if cls.fits(model):
            return [cls()]
    return []
