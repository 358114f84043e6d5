"""Options shared by the commands: the model, the images, and the attributors' options.

The attributor options are built from :data:`funcattr.attribution.ATTRIBUTORS`: one click
option per option name that some attributor declares, typed by its kind
(:data:`funcattr.attribution.registry.OPTION_KINDS`), with the attributors that use it in its
help. :func:`check_option_use` refuses an option no chosen attributor uses.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource

from funcattr.attribution.registry import ATTRIBUTORS, AttributorOption
from funcattr.cli.attributors import resolve_attributor
from funcattr.cli.models import LoadedModel, load_model

__all__ = [
    "AttributorChoice",
    "FiniteFloatRange",
    "PairType",
    "attributor_option_names",
    "attributor_options",
    "attributor_settings",
    "attributor_values",
    "check_cmap",
    "check_composite_use",
    "check_option_use",
    "explicit",
    "image_arguments",
    "input_options",
    "model_from_options",
    "model_options",
    "option_users",
]

#: Defaults of the command line where they depend on the image (the library's are fixed).
IMAGE_DEFAULTS = {
    "window": "input size / 4, e.g. 56 at 224",
    "stride": "window / 2",
}


class PairType(click.ParamType):
    """A positive int ``N`` or a pair ``H,W`` (also ``HxW``)."""

    name = "N|H,W"

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):
            return value
        parts = re.split(r"[,x]", str(value).strip().lower())
        try:
            numbers = tuple(int(p) for p in parts)
        except ValueError:
            numbers = ()
        if len(numbers) not in (1, 2) or min(numbers) < 1:
            self.fail(f"{value!r}: expected a positive integer or two as H,W, e.g. 8 or 8,8.",
                      param, ctx)
        return numbers * 2 if len(numbers) == 1 else numbers


class FiniteFloatRange(click.FloatRange):
    """A float range that refuses ``inf`` and ``nan`` (which pass click's range checks)."""

    def convert(self, value, param, ctx):
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number. Pass e.g. 1.0.", param, ctx)
        return number


class AttributorChoice(click.Choice):
    """A registered attributor name (read from the registry when used); an old name works,
    with a deprecation note."""

    def __init__(self) -> None:
        super().__init__(list(ATTRIBUTORS))

    @property
    def choices(self) -> list[str]:
        return list(ATTRIBUTORS)

    @choices.setter
    def choices(self, value: Any) -> None:
        pass  # always the registry's names

    def convert(self, value, param, ctx):
        aliases = {alias for spec in ATTRIBUTORS.values() for alias in spec.aliases}
        if isinstance(value, str) and value in aliases:
            value = resolve_attributor(value).name
        return super().convert(value, param, ctx)


def _click_type(option: AttributorOption) -> click.ParamType:
    return {
        "count": click.IntRange(min=1),
        "level": FiniteFloatRange(min=0, min_open=True),
        "size": PairType(),
    }[option.kind]


def _registered_options() -> dict[str, AttributorOption]:
    options: dict[str, AttributorOption] = {}
    for spec in ATTRIBUTORS.values():
        for option in spec.options:
            options.setdefault(option.name, option)
    return options


def option_users(name: str, attributors: Iterable[str] | None = None) -> list[str]:
    """The attributors (among ``attributors``, default all) that use the option ``name``:
    their declared options, ``seed`` (noise) and ``chunk_size``."""
    names = list(ATTRIBUTORS) if attributors is None else list(attributors)
    users = []
    for attributor in names:
        spec = ATTRIBUTORS[attributor]
        uses = spec.option(name) is not None or (name == "seed" and spec.random) or (
            name == "chunk_size" and spec.chunked)
        if uses:
            users.append(attributor)
    return users


def attributor_options(function: Callable) -> Callable:
    """The options of the registered attributors (shared by subcommands)."""
    decorators = []
    for name, option in _registered_options().items():
        users = " and ".join(option_users(name))
        if name in IMAGE_DEFAULTS:
            extra = {"default": None, "help": f"{users}: {option.help} [default: "
                                              f"{IMAGE_DEFAULTS[name]}]"}
        else:
            extra = {"default": option.default, "show_default": True,
                     "help": f"{users}: {option.help}"}
        decorators.append(click.option("--" + name.replace("_", "-"), name,
                                       type=_click_type(option), **extra))
    for decorator in reversed(decorators):
        function = decorator(function)
    return function


def explicit(ctx: click.Context, name: str) -> bool:
    """Whether the option ``name`` was given (command line or environment)."""
    return ctx.get_parameter_source(name) in (ParameterSource.COMMANDLINE,
                                              ParameterSource.ENVIRONMENT)


def check_option_use(ctx: click.Context, attributors: Iterable[str], names: Iterable[str],
                     what: str) -> None:
    """Refuse an attributor option (of ``names``) given on the command line when none of the
    chosen ``attributors`` uses it; ``what`` ends the message (e.g. ``not gradient``)."""
    chosen = list(dict.fromkeys(attributors))
    for name in names:
        if name not in ctx.params or not explicit(ctx, name) or option_users(name, chosen):
            continue
        flag = "--" + name.replace("_", "-")
        raise click.UsageError(
            f"{flag} applies to --attributor {' or '.join(option_users(name))}, {what}."
        )


def check_composite_use(ctx: click.Context, attributors: Iterable[str]) -> None:
    """Refuse an explicit ``--composite`` (a composite's name, not auto or none) when none of
    the chosen ``attributors`` is changed by a composite's rules (occlusion only runs the
    model forward)."""
    chosen = list(dict.fromkeys(attributors))
    value = ctx.params.get("composite")
    if (not explicit(ctx, "composite") or value in ("auto", "none")
            or any(ATTRIBUTORS[name].takes_composite for name in chosen)):
        return
    users = [name for name, spec in ATTRIBUTORS.items() if spec.takes_composite]
    raise click.UsageError(
        f"--composite applies to --attributor {' or '.join(users)}, not "
        f"{' or '.join(chosen)}: a composite's rules change gradients, and "
        f"{' or '.join(chosen)} uses none. Leave --composite out."
    )


def attributor_option_names() -> list[str]:
    """The names of the options :func:`attributor_options` adds."""
    return list(_registered_options())


def attributor_values(options: dict[str, Any], **resolved: Any) -> dict[str, Any]:
    """The values of the attributor options among a command's ``options``, with ``resolved``
    ones (say the window computed from the image size) in place of the given ones."""
    return {**{name: options[name] for name in attributor_option_names()}, **resolved}


def attributor_settings(attributors: Iterable[str], values: dict[str, Any]) -> dict[str, Any]:
    """The option values the ``attributors`` use, as recorded in a command's settings
    (sizes as ``HxW``)."""
    settings: dict[str, Any] = {}
    for attributor in dict.fromkeys(attributors):
        for option in ATTRIBUTORS[attributor].options:
            value = values[option.name]
            settings[option.name] = "x".join(map(str, value)) if option.kind == "size" else value
    return settings


def check_cmap(ctx: click.Context, param: click.Parameter, value: str) -> str:
    """``--cmap``: a colour map name or spec (the click callback of the commands)."""
    from funcattr.image import CMAPS, get_cmap  # the image layer loads PIL: on first use

    try:
        get_cmap(value)
    except (RuntimeError, TypeError, ValueError) as error:
        close = difflib.get_close_matches(value, list(CMAPS), n=2)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise click.BadParameter(
            f"{value!r} is neither a colour map name ({', '.join(CMAPS)}) nor a colour-map "
            f"spec such as '00f,80:fff,f00'.{hint}"
        ) from error
    return value


def model_options(function: Callable) -> Callable:
    """The options choosing and loading the model (shared by subcommands)."""
    options = [
        click.option("--model", "-m", default="demo", show_default=True,
                     help="demo, a torchvision architecture (e.g. resnet18, vgg16_bn; needs "
                          "--weights), MODULE:FACTORY / FILE.py:FACTORY returning a module "
                          "(imported from the working folder), or FILE.pt holding a whole "
                          "model (with --allow-pickle)."),
        click.option("--weights", "-w", metavar="FILE|random", default=None,
                     help="state_dict file for the model (never downloaded); 'random' for "
                          "untrained weights."),
        click.option("--allow-pickle", is_flag=True,
                     help="Accept --model FILE.pt saved whole with torch.save(model): loading "
                          "it runs code stored in the file (torch.load(weights_only=False)); "
                          "only for files you trust."),
        click.option("--input-size", type=click.IntRange(min=8), default=None,
                     help="Side of the square model input [demo: 64, others: 224]."),
        click.option("--normalization", type=click.Choice(["auto", "imagenet", "none"]),
                     default="auto", show_default=True,
                     help="Per-channel input normalisation in front of the model; auto is "
                          "imagenet for torchvision architectures, none otherwise."),
        click.option("--class-names", type=click.Path(dir_okay=False, path_type=Path),
                     default=None, help="Text file with one class name per line."),
        click.option("--device", default="auto", show_default=True,
                     help="auto, cpu, cuda, cuda:N or mps."),
    ]
    for option in reversed(options):
        function = option(function)
    return function


def model_from_options(options: dict[str, Any]) -> LoadedModel:
    """:func:`funcattr.cli.models.load_model` with the values of :func:`model_options`."""
    return load_model(
        options["model"], options["weights"], device=options["device"],
        input_size=options["input_size"], normalization=options["normalization"],
        class_names=options["class_names"], allow_pickle=options["allow_pickle"],
    )


def image_arguments(function: Callable) -> Callable:
    """The image arguments and ``--recursive`` (shared by subcommands)."""
    options = [
        click.argument("images", nargs=-1, type=click.Path(path_type=Path)),
        click.option("--recursive", "-r", is_flag=True,
                     help="Search folders recursively (default: only the folder itself)."),
        click.option("--allow-large-images", is_flag=True,
                     help="Read images above Pillow's decompression-bomb limit (about 89 "
                          "megapixels), e.g. large scans you trust."),
    ]
    for option in reversed(options):
        function = option(function)
    return function


def input_options(function: Callable) -> Callable:
    """The image arguments and ``--batch-size`` (shared by subcommands)."""
    function = click.option("--batch-size", "-b", type=click.IntRange(min=1), default=None,
                            help="Images per step [default: about 2^16 input pixels, i.e. 16 "
                                 "at 64x64, 1 at 224x224; with --dataset 32 per batch and per "
                                 "store chunk].")(function)
    return image_arguments(function)
