"""Attributors: pure functions on ``(fn, params, input, attr_output_fn)`` and Zennit-style classes.

The pure layer is built on :func:`pullback`, which runs the model once and returns its output
and a function from output gradients to input attributions (``torch.func.vjp``). The classes
(:class:`Attributor`, :class:`Gradient`, ...) keep Zennit's signatures and delegate to it.

``attr_output_fn`` (Zennit's ``attr_output``) says which output gradient to pull back:
``None`` uses the output itself, a tensor is used as it is, and a callable is called on the
output, e.g. ``one_hot(target)``. The model must return one tensor; for a model that returns a
tuple or a dict, :func:`select_output` picks the output to explain.

Modules: :mod:`~funcattr.attribution.options` (the option checks, shared with the metrics),
:mod:`~funcattr.attribution.targets` (output gradients and targets),
:mod:`~funcattr.attribution.pullback` (``pullback``, ``gradient``),
:mod:`~funcattr.attribution.relevance` (``relevance``: LRP relevance in Zennit's form or the
Gradient x Input form of AttnLRP, whichever the composite uses),
:mod:`~funcattr.attribution.stacking` and :mod:`~funcattr.attribution.batched` (SmoothGrad,
Integrated Gradients, several targets), :mod:`~funcattr.attribution.occlusion`,
:mod:`~funcattr.attribution.layout`, :mod:`~funcattr.attribution.classes` (Zennit-style) and
:mod:`~funcattr.attribution.registry` (one spec per attributor, read by the command line).
"""

from typing import TypeVar

from funcattr.attribution.batched import integrated_gradients, multi_target, smooth_grad
from funcattr.attribution.classes import (
    Attributor,
    Gradient,
    IntegratedGradients,
    Occlusion,
    SmoothGrad,
)
from funcattr.attribution.layout import fast_layout, in_fast_layout
from funcattr.attribution.occlusion import occlude_independent, occlusion
from funcattr.attribution.pullback import (
    Params,
    SelectedOutput,
    gradient,
    pullback,
    select_output,
)
from funcattr.attribution.registry import (
    ATTRIBUTORS,
    AttributorOption,
    AttributorSpec,
    get_attributor,
    register_attributor,
)
from funcattr.attribution.relevance import relevance
from funcattr.attribution.targets import AttrOutput, constant, identity, one_hot, top_k_targets

T = TypeVar("T")

__all__ = [
    "ATTRIBUTORS",
    "AttrOutput",
    "Attributor",
    "AttributorOption",
    "AttributorSpec",
    "Gradient",
    "IntegratedGradients",
    "Occlusion",
    "Params",
    "SelectedOutput",
    "SmoothGrad",
    "constant",
    "fast_layout",
    "get_attributor",
    "gradient",
    "identity",
    "in_fast_layout",
    "integrated_gradients",
    "multi_target",
    "occlude_independent",
    "occlusion",
    "one_hot",
    "pullback",
    "register_attributor",
    "relevance",
    "select_output",
    "smooth_grad",
    "top_k_targets",
]
