"""The attributor registry: one :class:`AttributorSpec` per attributor.

A spec names the pure function, the Zennit-style class, the options and whether a composite
changes the result. The command line reads it for the names of ``--attributor``, its options
and the dispatch, so adding an attributor is one :func:`register_attributor` call (its options
must be of a kind the command line knows: see :data:`OPTION_KINDS`).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

from funcattr.attribution.batched import integrated_gradients, smooth_grad
from funcattr.attribution.classes import (
    Attributor,
    Gradient,
    IntegratedGradients,
    Occlusion,
    SmoothGrad,
)
from funcattr.attribution.occlusion import occlusion
from funcattr.attribution.pullback import Params, gradient
from funcattr.attribution.targets import AttrOutput

__all__ = [
    "ATTRIBUTORS",
    "OPTION_KINDS",
    "AttributorOption",
    "AttributorSpec",
    "get_attributor",
    "input_times_gradient",
    "register_attributor",
]

#: The kinds of option values: kind -> what a value is.
OPTION_KINDS: dict[str, str] = {
    "count": "an int >= 1",
    "level": "a number > 0",
    "size": "an int or a tuple of ints >= 1 (one per last dimension)",
}


@dataclass(frozen=True)
class AttributorOption:
    """One keyword option of an attributor's pure function.

    Attributes
    ----------
    name : str
        The keyword, e.g. ``"n_iter"``.
    kind : str
        A key of :data:`OPTION_KINDS`.
    default : Any
        The pure function's default.
    help : str
        One line for ``--help``.
    """

    name: str
    kind: str
    default: Any
    help: str

    def __post_init__(self) -> None:
        if self.kind not in OPTION_KINDS:
            raise ValueError(
                f"AttributorOption(kind={self.kind!r}): expected one of {list(OPTION_KINDS)}, "
                f"got {self.kind!r}. Pick the kind whose values the option takes."
            )


@dataclass(frozen=True)
class AttributorSpec:
    """Everything about one attributor that the library and the command line need.

    Attributes
    ----------
    name : str
        The name (the pure function's name where there is one).
    function : callable
        ``function(fn, params, input, attr_output_fn, **options) -> (output, attribution)``.
    summary : str
        One line for ``funcattr list attributors``.
    options : tuple of AttributorOption
        Its options beyond ``generator`` and ``chunk_size``.
    cls : type, optional
        The Zennit-style class, if there is one.
    takes_composite : bool
        Whether a composite's rules change the result (gradients: yes; occlusion: no).
    scores : bool
        Whether it scores the output itself (occlusion): seeded with ``output * one_hot``.
    random : bool
        Whether it takes ``generator``.
    chunked : bool
        Whether it takes ``chunk_size``.
    aliases : tuple of str
        Old command-line names that still work, with a deprecation note.
    """

    name: str
    function: Callable[..., tuple[Tensor, Tensor]]
    summary: str
    options: tuple[AttributorOption, ...] = ()
    cls: type[Attributor] | None = None
    takes_composite: bool = True
    scores: bool = False
    random: bool = False
    chunked: bool = False
    aliases: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        keywords = inspect.signature(self.function).parameters
        wanted = [o.name for o in self.options]
        wanted += ["generator"] * self.random + ["chunk_size"] * self.chunked
        missing = [name for name in wanted if name not in keywords]
        if missing:
            raise ValueError(
                f"AttributorSpec(name={self.name!r}): expected its function to take the "
                f"keywords {wanted}, got a function without {missing}. Declare only the "
                f"function's own options."
            )

    def option(self, name: str) -> AttributorOption | None:
        """The option called ``name``, if this attributor has it."""
        return next((o for o in self.options if o.name == name), None)


#: Name -> spec, in registration order.
ATTRIBUTORS: dict[str, AttributorSpec] = {}


def register_attributor(spec: AttributorSpec) -> AttributorSpec:
    """Add ``spec`` to :data:`ATTRIBUTORS` (its name and aliases must be new)."""
    if not isinstance(spec, AttributorSpec):
        raise TypeError(
            f"register_attributor(spec={type(spec).__name__}): expected an AttributorSpec, got "
            f"{type(spec).__name__}. Pass AttributorSpec(name=..., function=..., summary=...)."
        )
    taken = {name for other in ATTRIBUTORS.values() for name in (other.name, *other.aliases)}
    clashes = [name for name in (spec.name, *spec.aliases) if name in taken]
    if clashes:
        raise ValueError(
            f"register_attributor(spec=AttributorSpec(name={spec.name!r})): expected new "
            f"names, got {clashes}, already registered. Choose another name."
        )
    ATTRIBUTORS[spec.name] = spec
    return spec


def get_attributor(name: str) -> tuple[AttributorSpec, bool]:
    """``(spec, deprecated)`` for a name or an alias (``deprecated``: an alias was used)."""
    if name in ATTRIBUTORS:
        return ATTRIBUTORS[name], False
    for spec in ATTRIBUTORS.values():
        if name in spec.aliases:
            return spec, True
    raise ValueError(
        f"get_attributor(name={name!r}): expected one of {list(ATTRIBUTORS)}, got an unknown "
        f"name. Pass a registered name."
    )


def input_times_gradient(fn: Callable, params: Params, input: Tensor,
                         attr_output_fn: AttrOutput = None) -> tuple[Tensor, Tensor]:
    """Input times the (rule-modified) gradient: Integrated Gradients with one path point."""
    output, grad = gradient(fn, params, input, attr_output_fn)
    return output, grad * input


_N_ITER = AttributorOption("n_iter", "count", 20, "noisy samples or path points.")

register_attributor(AttributorSpec(
    name="gradient", function=gradient, cls=Gradient,
    summary="the (rule-modified) gradient; with an LRP composite this is LRP",
))
register_attributor(AttributorSpec(
    name="smooth_grad", function=smooth_grad, cls=SmoothGrad, random=True, chunked=True,
    summary="SmoothGrad: mean gradient over --n-iter noisy copies (--noise-level)",
    options=(_N_ITER, AttributorOption("noise_level", "level", 0.1,
                                       "noise std relative to each image's value range.")),
    aliases=("smoothgrad",),
))
register_attributor(AttributorSpec(
    name="integrated_gradients", function=integrated_gradients, cls=IntegratedGradients,
    chunked=True, summary="Integrated Gradients from a black baseline with --n-iter path points",
    options=(_N_ITER,), aliases=("integrads",),
))
register_attributor(AttributorSpec(
    name="occlusion", function=occlusion, cls=Occlusion, chunked=True, takes_composite=False,
    scores=True, summary="Occlusion: class score with only a --window kept, moved by --stride",
    options=(AttributorOption("window", "size", 8, "window N or H,W."),
             AttributorOption("stride", "size", 8, "stride N or H,W.")),
))
register_attributor(AttributorSpec(
    name="inputxgrad", function=input_times_gradient,
    summary="input times gradient (Integrated Gradients with one point)",
))

