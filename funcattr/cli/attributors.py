"""Explanation methods for the commands: attributors from the registry, composites by name,
and the chunk size.

The names, options and dispatch of ``--attributor`` come from
:data:`funcattr.attribution.ATTRIBUTORS` (one spec per attributor); nothing here lists them.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable
from typing import Any

import click
import torch
from torch import Tensor

from funcattr.attribution.registry import ATTRIBUTORS, AttributorSpec, get_attributor
from funcattr.attribution.relevance import relevance
from funcattr.checks import is_attention
from funcattr.cli.models import InputNormalization, LoadedModel
from funcattr.composites import COMPOSITES, LayerMapComposite, MixedComposite
from funcattr.rules import Pass

__all__ = [
    "ATTRIBUTORS",
    "CHUNK_PIXELS",
    "DEFAULT_LRP_COMPOSITE",
    "attribute",
    "auto_chunk_size",
    "build_composite",
    "composite_name",
    "image_window",
    "resolve_attributor",
]

#: The composite chosen by ``--composite auto`` for the gradient attributor.
DEFAULT_LRP_COMPOSITE = "epsilon_plus_flat"
#: ... and for a model with attention (a ViT): relevance is input x its gradient.
TRANSFORMER_LRP_COMPOSITE = "attn_lrp"

#: ``--chunk-size`` by default bounds one step to about this many input values per channel.
#: Steps of this size keep a CNN's early activations below glibc's 32 MiB mmap threshold (see
#: funcattr._allocator): on the 2-core test machine, SmoothGrad of the 12 demo images took
#: 0.41 s in steps of 60 images and 0.59 s with all 240 at once, ``funcattr evaluate`` 10.3 s
#: with 64-image calls and 15.7 s (10 s of it in the kernel) with 256.
CHUNK_PIXELS = 1 << 18


def auto_chunk_size(input: Tensor) -> int:
    """Model inputs per step (``chunk_size``) so that a step sees about :data:`CHUNK_PIXELS`
    pixels: ``CHUNK_PIXELS // pixels per image`` (at least 1)."""
    return max(1, CHUNK_PIXELS // max(1, input[0, 0].numel()))


def resolve_attributor(name: str, option: str = "--attributor") -> AttributorSpec:
    """The spec of an attributor name; an old name works, with a note on stderr."""
    try:
        spec, deprecated = get_attributor(name)
    except ValueError:
        close = difflib.get_close_matches(name, list(ATTRIBUTORS), n=2)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise click.BadParameter(
            f"{name!r} is not an attributor; expected one of: {', '.join(ATTRIBUTORS)}.{hint}",
            param_hint=option,
        ) from None
    if deprecated:
        click.echo(f"note: {option} {name} is deprecated; use {spec.name} (the name of "
                   f"funcattr.attribution.{spec.function.__name__}).", err=True)
    return spec


def image_window(options: dict[str, Any], size: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """``--window`` and ``--stride`` for ``size`` x ``size`` images: by default a quarter of
    the image and half the window."""
    window = options.get("window") or (max(1, size // 4),) * 2
    stride = options.get("stride") or tuple(max(1, w // 2) for w in window)
    if max(window) > size:
        raise click.BadParameter(f"{window} is larger than the {size}x{size} input. Pass a "
                                 f"smaller --window.", param_hint="--window")
    return window, stride


def attribute(name: str, fn: Callable, params: dict, input: Tensor,
              attr_output_fn: Callable, *, chunk_size: int | None = None,
              generator: int | torch.Generator | None = None,
              **options: Any) -> tuple[Tensor, Tensor]:
    """Run the attributor ``name`` on a batch: ``(output, attribution)``.

    ``options`` are the command's option values; the attributor gets the ones its spec
    declares (None values are left out, so its own defaults apply), ``generator`` if it draws
    noise and ``chunk_size`` (model inputs per step) if it takes one.
    """
    spec = resolve_attributor(name) if name not in ATTRIBUTORS else ATTRIBUTORS[name]
    if spec.name == "gradient" and getattr(fn, "form", None) == "gradient_x_input" and (
            getattr(fn, "rules", None)):  # AttnLRP, CP-LRP: relevance is input x gradient
        return relevance(fn, params, input, attr_output_fn)
    kwargs = {option.name: options[option.name] for option in spec.options
              if options.get(option.name) is not None}
    if spec.random:
        kwargs["generator"] = generator
    if spec.chunked:
        kwargs["chunk_size"] = chunk_size
    return spec.function(fn, params, input, attr_output_fn, **kwargs)


def composite_name(spec: str, attributor: str, model: torch.nn.Module | None = None) -> str:
    """The composite ``--composite auto`` stands for: LRP for gradients (AttnLRP for a model
    with attention), none otherwise."""
    if spec == "auto":
        if attributor != "gradient":
            return "none"
        attention = model is not None and any(is_attention(m) for m in model.modules())
        return TRANSFORMER_LRP_COMPOSITE if attention else DEFAULT_LRP_COMPOSITE
    return spec


def build_composite(spec: str, loaded: LoadedModel, attributor: str = "gradient"):
    """The composite for ``--composite``; ``low``/``high`` come from the model's input range.

    Returns
    -------
    composite : Composite or None
    description : str
    """
    name = composite_name(spec, attributor, loaded.model)
    if name == "none":
        return None, "none"
    if name not in COMPOSITES:
        close = difflib.get_close_matches(name, list(COMPOSITES), n=2)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise click.BadParameter(
            f"{name!r} is not a composite; expected auto, none or one of: "
            f"{', '.join(COMPOSITES)}.{hint}",
            param_hint="--composite",
        )
    cls = COMPOSITES[name]
    parameters = inspect.signature(cls).parameters
    kwargs = {}
    if "low" in parameters and "high" in parameters:
        kwargs = {"low": loaded.low, "high": loaded.high}
    composite = cls(**kwargs)
    description = name
    if kwargs:
        bounds = "per channel" if isinstance(loaded.low, Tensor) else f"{loaded.low}..{loaded.high}"
        description = f"{name} (input bounds {bounds})"
    if loaded.normalization is not None:
        composite = MixedComposite(
            [LayerMapComposite([(InputNormalization, Pass())]), composite]
        )
    return composite, description
