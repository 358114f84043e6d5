"""The ``funcattr`` command: explain image classifiers from the shell.

``funcattr explain [IMAGES or FOLDERS ...]`` writes heatmaps, raw relevance, a JSON summary and
a self-contained HTML report for a model's predictions; with no images it explains the built-in
demo model on its shipped sample images. ``funcattr list`` shows what can be chosen by name.
See ``docs/cli.md`` for examples.

The building blocks (:func:`load_model`, :func:`collect_samples`, :func:`build_composite`,
:func:`resolve_canonizers`, :func:`attribute`, :func:`normalize_relevance`) are plain
functions, so further subcommands (``funcattr evaluate``) reuse them with the shared
option decorators :func:`model_options` and :func:`input_options`. Model loading lives in
:mod:`funcattr.cli_models` and image input in :mod:`funcattr.cli_samples`; both are
re-exported here.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import importlib
import importlib.util
import inspect
import io
import json
import os
import re
import shutil
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import click
import numpy as np
import torch
from click.core import ParameterSource
from PIL import Image
from torch import Tensor

from funcattr.cli_models import (
    _AUTO_CANONIZERS,
    InputNormalization,
    LoadedModel,
    _torchvision_names,
    load_model,
)
from funcattr.cli_samples import (
    IMAGE_SUFFIXES,
    Sample,
    collect_samples,
    demo_samples,
    load_sample,
)
from funcattr.image import imgify
from funcattr.report import HeatmapEntry, ReportEntry, render_report

__all__ = [
    "ATTRIBUTORS",
    "IMAGE_SUFFIXES",
    "InputNormalization",
    "LoadedModel",
    "Sample",
    "attribute",
    "attributor_options",
    "build_composite",
    "collect_samples",
    "demo_samples",
    "dilate_mask",
    "image_arguments",
    "input_options",
    "load_model",
    "main",
    "model_from_options",
    "model_options",
    "normalize_relevance",
    "positive_fraction_in_mask",
    "resolve_canonizers",
]

#: Attributors of ``funcattr explain --attributor``: name -> one-line description.
ATTRIBUTORS: dict[str, str] = {
    "gradient": "the (rule-modified) gradient; with an LRP composite this is LRP",
    "smoothgrad": "SmoothGrad: mean gradient over --n-iter noisy copies (--noise-level)",
    "integrads": "Integrated Gradients from a black baseline with --n-iter path points",
    "occlusion": "Occlusion: class score with only a --window kept, moved by --stride",
    "inputxgrad": "input times gradient (Integrated Gradients with one point)",
}
#: The pure functions in :mod:`funcattr.attribution` behind the attributors.
_ATTRIBUTOR_FUNCTIONS = {
    "gradient": "gradient",
    "smoothgrad": "smooth_grad",
    "integrads": "integrated_gradients",
    "occlusion": "occlusion",
    "inputxgrad": "gradient",
}
#: Options that only some attributors use: option name -> attributors.
_ATTRIBUTOR_OPTIONS = {
    "n_iter": ("smoothgrad", "integrads"),
    "noise_level": ("smoothgrad",),
    "window": ("occlusion",),
    "stride": ("occlusion",),
    "seed": ("smoothgrad",),
    "chunk_size": ("smoothgrad", "integrads", "occlusion"),
}
#: The composite chosen by ``--composite auto`` for the gradient attributor.
DEFAULT_LRP_COMPOSITE = "epsilon_plus_flat"
#: Set this environment variable to see the traceback of an error inside an attributor.
TRACEBACK_VARIABLE = "FUNCATTR_TRACEBACK"
#: ``fraction_near_mask`` counts relevance within this many pixels of the object mask.
NEAR_MASK_PIXELS = 2
_SUMMARY_FILE = "summary.json"
_TOOL_TAG = "funcattr explain"


# --------------------------------------------------------------------------------------------
# Composites, canonizers, attributors
# --------------------------------------------------------------------------------------------

def available_canonizers() -> dict[str, type]:
    """Canonizer classes needing no arguments, from funcattr.canonizers and funcattr.torchvision."""
    from funcattr.canonizers import Canonizer, CompositeCanonizer

    found: dict[str, type] = {}
    for module_name in ("funcattr.canonizers", "funcattr.torchvision"):
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        for attr in getattr(module, "__all__", dir(module)):
            obj = getattr(module, attr, None)
            if (
                isinstance(obj, type) and issubclass(obj, Canonizer)
                and obj is not CompositeCanonizer and not inspect.isabstract(obj)
                and not attr.startswith("_")
            ):
                try:
                    inspect.signature(obj).bind()
                except (TypeError, ValueError):
                    continue
                found[attr] = obj
    return found


def _canonizer_key(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower()).removesuffix("canonizer")


def resolve_canonizers(spec: str, loaded: LoadedModel) -> tuple[list, str]:
    """Canonizer instances for ``--canonizer`` (``auto``, ``none`` or comma-separated names).

    Returns
    -------
    canonizers : list of Canonizer
    description : str
    """
    available = available_canonizers()
    if spec == "none":
        return [], "none"
    if spec == "auto":
        for candidate in _AUTO_CANONIZERS.get(loaded.family or "", ()):
            if candidate in available:
                return [available[candidate]()], f"{candidate} (auto)"
        return [], "none (auto: none known for this model)"
    by_key = {_canonizer_key(name): cls for name, cls in available.items()}
    chosen = []
    for part in (p.strip() for p in spec.split(",")):
        cls = by_key.get(_canonizer_key(part))
        if cls is None:
            close = difflib.get_close_matches(part, list(available), n=2)
            hint = f" Did you mean {', '.join(close)}?" if close else ""
            known = ", ".join(sorted(available)) or "none available"
            raise click.BadParameter(
                f"{part!r} is not a canonizer; expected auto, none or one of: {known}.{hint}",
                param_hint="--canonizer",
            )
        chosen.append(cls())
    return chosen, ", ".join(type(c).__name__ for c in chosen)


def composite_name(spec: str, attributor: str) -> str:
    """The composite ``--composite auto`` stands for: LRP for gradients, none otherwise."""
    if spec == "auto":
        return DEFAULT_LRP_COMPOSITE if attributor == "gradient" else "none"
    return spec


def build_composite(spec: str, loaded: LoadedModel, attributor: str = "gradient"):
    """The composite for ``--composite``; ``low``/``high`` come from the model's input range.

    Returns
    -------
    composite : Composite or None
    description : str
    """
    from funcattr.composites import COMPOSITES, LayerMapComposite, MixedComposite
    from funcattr.rules import Pass

    name = composite_name(spec, attributor)
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


def _attributor_function(kind: str) -> Callable:
    from funcattr import attribution

    function = getattr(attribution, _ATTRIBUTOR_FUNCTIONS[kind], None)
    if function is None:
        raise click.ClickException(
            f"--attributor {kind}: funcattr.attribution.{_ATTRIBUTOR_FUNCTIONS[kind]} is not "
            f"available in this version of funcattr."
        )
    return function


def _call_with(function: Callable, *args, **options) -> tuple[Tensor, Tensor]:
    """Call ``function`` with the ``options`` it accepts (None values are left out)."""
    parameters = inspect.signature(function).parameters
    accepted = {
        key: value for key, value in options.items()
        if value is not None and key in parameters
    }
    return function(*args, **accepted)


#: ``--chunk-size`` by default bounds one step to about this many input values per channel.
#: Steps of this size keep a CNN's early activations below glibc's 32 MiB mmap threshold (see
#: funcattr._allocator): on the 2-core test machine, SmoothGrad of the 12 demo images took
#: 0.41 s in steps of 60 images and 0.59 s with all 240 at once, ``funcattr evaluate`` 10.3 s
#: with 64-image calls and 15.7 s (10 s of it in the kernel) with 256.
CHUNK_PIXELS = 1 << 18


def auto_chunk_size(input: Tensor) -> int:
    """Copies of a batch per step so that a step sees about :data:`CHUNK_PIXELS` pixels."""
    pixels = input.shape[0] * input[0, 0].numel()
    return max(1, CHUNK_PIXELS // max(1, pixels))


def attribute(
    kind: str, fn: Callable, params: dict, input: Tensor, attr_output_fn: Callable, *,
    n_iter: int = 20, noise_level: float = 0.1, window: tuple[int, int] = (8, 8),
    stride: tuple[int, int] = (4, 4), chunk_size: int | None = None, seed: int = 0,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """Run one attributor of :data:`ATTRIBUTORS` on a batch: ``(output, attribution)``.

    SmoothGrad draws its noise from ``generator`` (created from ``seed`` if None).
    """
    function = _attributor_function(kind)
    if kind == "gradient":
        return function(fn, params, input, attr_output_fn)
    if kind == "inputxgrad":
        output, grad = function(fn, params, input, attr_output_fn)
        return output, grad * input
    if kind == "smoothgrad":
        if generator is None:
            generator = torch.Generator(device=input.device).manual_seed(seed)
        return _call_with(function, fn, params, input, attr_output_fn, n_iter=n_iter,
                          noise_level=noise_level, generator=generator, chunk_size=chunk_size)
    if kind == "integrads":
        return _call_with(function, fn, params, input, attr_output_fn, n_iter=n_iter,
                          chunk_size=chunk_size)
    if kind == "occlusion":
        return _call_with(function, fn, params, input, attr_output_fn, window=window,
                          stride=stride, chunk_size=chunk_size)
    raise ValueError(f"attribute(kind={kind!r}): expected one of {', '.join(ATTRIBUTORS)}.")


# --------------------------------------------------------------------------------------------
# Heatmaps
# --------------------------------------------------------------------------------------------

RELEVANCE_NORMS = ("symmetric", "absolute", "unaligned")


def normalize_relevance(relevance: np.ndarray, mode: str = "symmetric") -> np.ndarray:
    """Map one heatmap (channels already summed) to ``[0, 1]``, as Zennit's example script does.

    ``symmetric``: ``(r + amax) / 2 / amax`` with ``amax = max |r|`` (0 maps to 0.5);
    ``absolute``: ``|r| / amax``; ``unaligned``: ``(r - min) / (max - min)``. A constant map
    becomes 0.5 (symmetric) or 0.
    """
    r = np.asarray(relevance, dtype=np.float64)
    if mode == "symmetric":
        amax = np.abs(r).max()
        return np.full_like(r, 0.5) if amax == 0 else (r + amax) / 2 / amax
    if mode == "absolute":
        amax = np.abs(r).max()
        return np.zeros_like(r) if amax == 0 else np.abs(r) / amax
    if mode == "unaligned":
        low, high = r.min(), r.max()
        return np.zeros_like(r) if high == low else (r - low) / (high - low)
    raise ValueError(
        f"normalize_relevance(mode={mode!r}): expected one of {', '.join(RELEVANCE_NORMS)}."
    )


def dilate_mask(mask: np.ndarray, pixels: int) -> np.ndarray:
    """Grow a boolean ``(H, W)`` mask by ``pixels`` in every direction (3x3 steps)."""
    grown = np.asarray(mask, bool)
    for _ in range(pixels):
        padded = np.pad(grown, 1)
        height, width = grown.shape
        grown = np.zeros_like(grown)
        for dy in range(3):
            for dx in range(3):
                grown |= padded[dy:dy + height, dx:dx + width]
    return grown


def positive_fraction_in_mask(relevance: np.ndarray, mask: np.ndarray, dilate: int = 0) -> float:
    """Fraction of the positive relevance (channels summed) that lies inside ``mask``.

    With ``dilate``, inside the mask grown by that many pixels (relevance of edge detectors
    straddles the object's boundary). NaN if there is no positive relevance.
    """
    positive = np.clip(np.asarray(relevance, dtype=np.float64), 0, None)
    total = positive.sum()
    region = dilate_mask(mask, dilate) if dilate else np.asarray(mask, bool)
    return float("nan") if total == 0 else float(positive[region].sum() / total)


_COLORBAR_LABELS = {
    "symmetric": ("negative", "0", "positive"),
    "absolute": ("0", "max/2", "max |relevance|"),
    "unaligned": ("min", "(min + max) / 2", "max"),
}


def _colorbar_png(cmap: str, level: float) -> bytes:
    ramp = np.repeat(np.linspace(0.0, 1.0, 256)[None], 12, axis=0)
    return _png_bytes(imgify(ramp, vmin=0.0, vmax=1.0, cmap=cmap, level=level))


def _png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=False)
    return buffer.getvalue()


# --------------------------------------------------------------------------------------------
# Output folder: stage everything, move into place only on success
# --------------------------------------------------------------------------------------------

class _Staging:
    """Write outputs into a temporary folder next to ``final`` and move them there on success.

    Files in an existing output folder are replaced only if it is a funcattr output folder
    (it holds our ``summary.json``); nothing else there is ever deleted. On failure the
    temporary folder is removed and ``final`` is untouched.
    """

    def __init__(self, final: Path) -> None:
        self.final = final
        if final.exists() and not final.is_dir():
            raise click.BadParameter(f"{final} exists and is not a folder.", param_hint="--output")
        parent = final.parent
        try:
            parent.mkdir(parents=True, exist_ok=True)
            self.root = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".partial",
                                              dir=parent))
        except OSError as error:
            raise click.BadParameter(
                f"{final}: cannot create a folder here ({error.strerror}).", param_hint="--output"
            ) from error

    def check_replaceable(self, relative: Sequence[str]) -> None:
        """Refuse to overwrite files in a folder that is not a funcattr output folder."""
        if not self.final.is_dir():
            return
        clashes = [name for name in relative if (self.final / name).exists()]
        if clashes and not _is_our_folder(self.final):
            raise click.BadParameter(
                f"{self.final} already holds {clashes[0]} (not written by funcattr explain); "
                f"choose another output folder.",
                param_hint="--output",
            )

    def path(self, relative: str) -> Path:
        target = self.root / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        return target

    def commit(self) -> None:
        if not self.final.exists():
            try:
                os.rename(self.root, self.final)
                return
            except OSError:
                pass  # someone created it meanwhile: merge file by file
        for directory, _, names in os.walk(self.root):
            for name in names:
                source = Path(directory) / name
                target = self.final / source.relative_to(self.root)
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(source, target)
        shutil.rmtree(self.root, ignore_errors=True)

    def discard(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


def _is_our_folder(folder: Path) -> bool:
    try:
        data = json.loads((folder / _SUMMARY_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and data.get("tool") == _TOOL_TAG


# --------------------------------------------------------------------------------------------
# Option parsing helpers
# --------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class TargetSpec:
    """``--target``: ``pred``, an index, a class name, or ``topK``."""

    kind: str  # 'pred', 'index', 'name' or 'top'
    value: int | str = 1

    def count(self) -> int:
        """Number of heatmaps per image."""
        return int(self.value) if self.kind == "top" else 1


class _TargetType(click.ParamType):
    name = "TARGET"

    def convert(self, value, param, ctx):
        if isinstance(value, TargetSpec):
            return value
        text = str(value).strip()
        if text.lower() in ("pred", "predicted"):
            return TargetSpec("pred")
        match = re.fullmatch(r"top(\d+)", text.lower())
        if match:
            k = int(match.group(1))
            if k < 1:
                self.fail(f"{text!r}: top-k needs k >= 1, e.g. top3.", param, ctx)
            return TargetSpec("top", k)
        if re.fullmatch(r"-?\d+", text):
            if int(text) < 0:
                self.fail(f"{text!r}: expected a class index >= 0.", param, ctx)
            return TargetSpec("index", int(text))
        if text:
            return TargetSpec("name", text)
        self.fail("expected pred, a class index, a class name or topK.", param, ctx)


class _PairType(click.ParamType):
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


def _check_cmap(ctx, param, value):
    from funcattr.image import get_cmap

    try:
        get_cmap(value)
    except (RuntimeError, TypeError, ValueError) as error:
        from funcattr.image import CMAPS

        close = difflib.get_close_matches(value, list(CMAPS), n=2)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise click.BadParameter(
            f"{value!r} is neither a colour map name ({', '.join(CMAPS)}) nor a colour-map "
            f"spec such as '00f,80:fff,f00'.{hint}"
        ) from error
    return value


def _explicit(ctx: click.Context, name: str) -> bool:
    return ctx.get_parameter_source(name) in (ParameterSource.COMMANDLINE,
                                              ParameterSource.ENVIRONMENT)


def model_options(function: Callable) -> Callable:
    """The options choosing and loading the model (shared by subcommands)."""
    options = [
        click.option("--model", "-m", default="demo", show_default=True,
                     help="demo, a torchvision architecture (e.g. resnet18, vgg16_bn; needs "
                          "--weights) or MODULE:FACTORY / FILE.py:FACTORY returning a module."),
        click.option("--weights", "-w", metavar="FILE|random", default=None,
                     help="state_dict file for the model (never downloaded); 'random' for "
                          "untrained weights."),
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
    """:func:`load_model` with the values of :func:`model_options`."""
    return load_model(
        options["model"], options["weights"], device=options["device"],
        input_size=options["input_size"], normalization=options["normalization"],
        class_names=options["class_names"],
    )


def image_arguments(function: Callable) -> Callable:
    """The image arguments and ``--recursive`` (shared by subcommands)."""
    options = [
        click.argument("images", nargs=-1, type=click.Path(path_type=Path)),
        click.option("--recursive", "-r", is_flag=True,
                     help="Search folders recursively (default: only the folder itself)."),
    ]
    for option in reversed(options):
        function = option(function)
    return function


def attributor_options(function: Callable) -> Callable:
    """The parameters of smoothgrad, integrads and occlusion (shared by subcommands)."""
    options = [
        click.option("--n-iter", type=click.IntRange(min=1), default=20, show_default=True,
                     help="Samples of smoothgrad, path points of integrads."),
        click.option("--noise-level", type=click.FloatRange(min=0, min_open=True), default=0.1,
                     show_default=True,
                     help="smoothgrad noise std relative to each image's range."),
        click.option("--window", type=_PairType(), default=None,
                     help="occlusion window N or H,W [default: input size / 4, e.g. 56 at 224]."),
        click.option("--stride", type=_PairType(), default=None,
                     help="occlusion stride N or H,W [default: window / 2]."),
    ]
    for option in reversed(options):
        function = option(function)
    return function


def input_options(function: Callable) -> Callable:
    """The image arguments and options (shared by subcommands)."""
    function = click.option("--batch-size", "-b", type=click.IntRange(min=1), default=16,
                            show_default=True, help="Images per step.")(function)
    return image_arguments(function)


# --------------------------------------------------------------------------------------------
# The command
# --------------------------------------------------------------------------------------------

@click.group(name="funcattr", context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="funcattr", prog_name="funcattr")
def main() -> None:
    """Explain image classifiers with LRP, gradients, SmoothGrad, Integrated Gradients and
    Occlusion (funcattr).

    Start with `funcattr explain`, which explains the built-in demo model on its sample
    images and writes heatmaps and an HTML report to ./funcattr-output.
    """


@main.command()
@input_options
@model_options
@click.option("--composite", "-c", default="auto", show_default=True,
              help=f"LRP/modified-gradient rules: a name from `funcattr list composites`, none, "
                   f"or auto ({DEFAULT_LRP_COMPOSITE} for --attributor gradient, none otherwise).")
@click.option("--attributor", "-a", type=click.Choice(list(ATTRIBUTORS)), default="gradient",
              show_default=True, help="How to attribute.")
@click.option("--canonizer", default="auto", show_default=True,
              help="auto (by architecture), none, or canonizer names (comma-separated).")
@click.option("--target", "-t", type=_TargetType(), default="pred", show_default=True,
              help="Class to explain: pred (the prediction), an index, a class name, or topK "
                   "for the K best classes (K heatmaps per image).")
@click.option("--times-output", is_flag=True,
              help="Seed with score * one-hot instead of one-hot (Zennit's example script; "
                   "LRP relevance then sums to the score). Occlusion always uses the score.")
@attributor_options
@click.option("--chunk-size", type=click.IntRange(min=1), default=None,
              help="Noisy copies / path points / windows evaluated per step, each with the "
                   "whole batch [default: about 2^18 input pixels per step].")
@click.option("--seed", type=int, default=0, show_default=True, help="smoothgrad noise seed.")
@click.option("--cmap", default="bwr", show_default=True, callback=_check_cmap,
              help="Colour map: a name from `funcattr list cmaps` or a spec like 00f,80:fff,f00.")
@click.option("--level", type=click.FloatRange(min=0, min_open=True), default=1.0,
              show_default=True, help="Colour-map contrast around the centre.")
@click.option("--relevance-norm", type=click.Choice(RELEVANCE_NORMS), default="symmetric",
              show_default=True, help="How heatmaps are scaled to the colour map.")
@click.option("--relevance-format", type=click.Choice(["npz", "npy", "none"]), default="npz",
              show_default=True, help="Raw relevance: one relevance.npz, relevance/NAME.npy "
                                      "per image, or none.")
@click.option("--output", "-o", type=click.Path(path_type=Path),
              default=Path("funcattr-output"), show_default=True, help="Output folder.")
@click.option("--quiet", "-q", is_flag=True, help="Print nothing but errors.")
@click.pass_context
def explain(ctx: click.Context, **options: Any) -> None:
    """Explain a classifier's predictions on IMAGES (PNG/JPEG files or folders).

    Without IMAGES, the demo's shipped sample images are explained. The output folder receives
    heatmaps/NAME.png, inputs/NAME.png, the raw relevance, summary.json and report.html.
    """
    run_explain(ctx, **options)


def _option_checks(ctx: click.Context, options: dict) -> None:
    attributor = options["attributor"]
    for name, users in _ATTRIBUTOR_OPTIONS.items():
        if _explicit(ctx, name) and attributor not in users:
            flag = "--" + name.replace("_", "-")
            raise click.UsageError(
                f"{flag} applies to --attributor {' or '.join(users)}, not {attributor}."
            )


def run_explain(ctx: click.Context, **options: Any) -> dict:
    """The body of ``funcattr explain``; returns the summary it writes."""
    _option_checks(ctx, options)
    quiet = options["quiet"]
    started = time.perf_counter()
    output_dir: Path = options["output"]
    loaded = model_from_options(options)
    if options["images"]:
        samples = collect_samples(options["images"], recursive=options["recursive"],
                                  exclude=output_dir)
    else:
        samples = demo_samples(with_labels=loaded.name == "demo")
    target: TargetSpec = options["target"]
    target = _resolve_target(target, loaded)
    attributor = options["attributor"]
    composite, composite_text = build_composite(options["composite"], loaded, attributor)
    canonizers, canonizer_text = resolve_canonizers(options["canonizer"], loaded)
    size = loaded.input_size
    window = options["window"] or (max(1, size // 4),) * 2
    stride = options["stride"] or tuple(max(1, w // 2) for w in window)
    if max(window) > size:
        raise click.BadParameter(f"{window} is larger than the {size}x{size} input.",
                                 param_hint="--window")

    from funcattr.functional import functionalize

    try:
        fn, params = functionalize(loaded.model, composite, canonizers)
    except (ValueError, TypeError) as error:
        raise click.ClickException(
            f"--composite {composite_text} / --canonizer {canonizer_text} do not fit --model "
            f"{loaded.name}: {error}"
        ) from error

    count = target.count()
    names = [s.name for s in samples]
    planned = ["report.html", _SUMMARY_FILE]
    planned += [f"heatmaps/{_heatmap_name(n, r, count)}" for n in names for r in range(count)]
    planned += [f"inputs/{n}.png" for n in names]
    if options["relevance_format"] == "npz":
        planned.append("relevance.npz")
    elif options["relevance_format"] == "npy":
        planned += [f"relevance/{n}.npy" for n in names]

    settings = {
        "model": loaded.name,
        "weights": loaded.weights,
        "input": f"{size}x{size}, resize {loaded.resize} + centre crop, "
                 + ("ImageNet normalisation" if loaded.normalization else "values in [0, 1]"),
        "composite": composite_text,
        "canonizer": canonizer_text,
        "attributor": attributor,
        "target": _describe_target(target, loaded),
        "output gradient": "score * one-hot" if options["times_output"] or attributor == "occlusion"
                else "one-hot",
        "cmap": options["cmap"],
        "level": options["level"],
        "relevance norm": options["relevance_norm"],
        "device": str(loaded.device),
    }
    if attributor in ("smoothgrad", "integrads"):
        settings["n_iter"] = options["n_iter"]
    if attributor == "smoothgrad":
        settings["noise_level"] = options["noise_level"]
        settings["noise seed"] = options["seed"]
    if attributor == "occlusion":
        settings["window"] = "x".join(map(str, window))
        settings["stride"] = "x".join(map(str, stride))

    staging = _Staging(output_dir)
    try:
        staging.check_replaceable(planned)
        records, relevance_all, report_entries = _explain_all(
            samples, loaded, fn, params, target, staging, options,
            window=window, stride=stride, quiet=quiet,
        )
        if options["relevance_format"] == "npz":
            np.savez(
                staging.path("relevance.npz"),
                relevance=np.stack(relevance_all),
                names=np.array(names),
                targets=np.array([[t["index"] for t in r["targets"]] for r in records]),
            )
        summary = {
            "tool": _TOOL_TAG,
            "settings": settings,
            "class_names": list(loaded.class_names) if loaded.class_names else None,
            "images": records,
            "seconds": round(time.perf_counter() - started, 3),
        }
        fractions = [r["targets"][0]["fraction_in_mask"] for r in records
                     if r["targets"][0]["fraction_in_mask"] is not None]
        if fractions:
            summary["mean_fraction_in_mask"] = float(np.mean(fractions))
            summary["mean_fraction_near_mask"] = float(np.mean(
                [r["targets"][0]["fraction_near_mask"] for r in records
                 if r["targets"][0]["fraction_near_mask"] is not None]
            ))
            summary["mean_mask_area"] = float(np.mean(
                [r["mask_area"] for r in records if r.get("mask_area") is not None]
            ))
        staging.path(_SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n",
                                               encoding="utf-8")
        staging.path("report.html").write_text(
            render_report(
                report_entries, settings, title=f"funcattr explain: {loaded.name}",
                colorbar_png=_colorbar_png(options["cmap"], options["level"]),
                colorbar_labels=_COLORBAR_LABELS[options["relevance_norm"]],
            ),
            encoding="utf-8",
        )
        staging.commit()
    except BaseException:
        staging.discard()
        raise
    if not quiet:
        _print_summary(summary, output_dir, options["relevance_format"])
    return summary


def _heatmap_name(name: str, rank: int, count: int) -> str:
    return f"{name}.png" if count == 1 else f"{name}_top{rank + 1}.png"


def _resolve_target(target: TargetSpec, loaded: LoadedModel) -> TargetSpec:
    if target.kind == "index" and int(target.value) >= loaded.num_classes:
        raise click.BadParameter(
            f"class {target.value} does not exist; the model has {loaded.num_classes} classes "
            f"(0 to {loaded.num_classes - 1}).", param_hint="--target",
        )
    if target.kind == "top" and int(target.value) > loaded.num_classes:
        raise click.BadParameter(
            f"top{target.value}: the model has only {loaded.num_classes} classes.",
            param_hint="--target",
        )
    if target.kind == "name":
        names = loaded.class_names or ()
        lookup = {n.lower(): i for i, n in enumerate(names)}
        index = lookup.get(str(target.value).lower())
        if index is None:
            close = difflib.get_close_matches(str(target.value), list(names), n=2)
            hint = f" Did you mean {', '.join(close)}?" if close else ""
            raise click.BadParameter(
                f"{target.value!r} is not pred, a class index, topK or a class name of the "
                f"model.{hint}", param_hint="--target",
            )
        return TargetSpec("index", index)
    return target


def _describe_target(target: TargetSpec, loaded: LoadedModel) -> str:
    if target.kind == "pred":
        return "predicted class"
    if target.kind == "top":
        return f"top {target.value} classes"
    return f"class {target.value} ({loaded.class_name(int(target.value))})"


@contextlib.contextmanager
def _progress(length: int, quiet: bool, label: str) -> Iterator[Callable[[int], None]]:
    if quiet or length == 0 or not sys.stderr.isatty():
        yield lambda n: None
        return
    with click.progressbar(length=length, label=label, file=sys.stderr) as bar:
        yield bar.update


def _batches(items: Sequence, size: int) -> Iterator[Sequence]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def _explain_all(samples, loaded, fn, params, target, staging, options, *, window, stride,
                 quiet):
    from funcattr.attribution import one_hot

    count = target.count()
    attributor = options["attributor"]
    times_output = options["times_output"] or attributor == "occlusion"
    records, relevance_all, entries = [], [], []
    # one noise stream for the whole run: batches get fresh noise, runs repeat exactly
    generator = torch.Generator(device=loaded.device).manual_seed(options["seed"])
    with _progress(len(samples) * count, quiet, f"{attributor} on {len(samples)} images") as tick:
        for batch in _batches(samples, options["batch_size"]):
            loaded_batch = [load_sample(s, loaded.input_size, loaded.resize) for s in batch]
            x = torch.stack([image for image, _ in loaded_batch]).to(loaded.device)
            with torch.no_grad():
                logits = loaded.model(x)
            probabilities = torch.softmax(logits.double(), dim=1)
            if target.kind == "top":
                chosen = logits.topk(int(target.value), dim=1).indices
            elif target.kind == "index":
                chosen = torch.full((len(batch), 1), int(target.value), device=loaded.device)
            else:
                chosen = logits.argmax(dim=1, keepdim=True)
            relevance = []
            for rank in range(count):
                seed_fn = one_hot(chosen[:, rank].clone(), times_output=times_output)
                try:
                    _, attribution = attribute(
                        attributor, fn, params, x, seed_fn, n_iter=options["n_iter"],
                        noise_level=options["noise_level"], window=window, stride=stride,
                        chunk_size=options["chunk_size"] or auto_chunk_size(x),
                        seed=options["seed"], generator=generator,
                    )
                except torch.OutOfMemoryError as error:
                    raise click.ClickException(
                        "out of memory; lower --batch-size or --chunk-size."
                    ) from error
                except (ValueError, TypeError) as error:
                    raise click.ClickException(f"--attributor {attributor}: {error}") from error
                except RuntimeError as error:
                    if os.environ.get(TRACEBACK_VARIABLE):
                        raise
                    first = (str(error).strip().splitlines() or [type(error).__name__])[0]
                    raise click.ClickException(
                        f"--attributor {attributor} with --composite {options['composite']} and "
                        f"--canonizer {options['canonizer']} failed on --model {loaded.name}: "
                        f"{first[:300]} Try --canonizer auto or another --composite; set "
                        f"{TRACEBACK_VARIABLE}=1 for the traceback."
                    ) from error
                relevance.append(attribution.detach().float().cpu())
                tick(len(batch))
            relevance_batch = torch.stack(relevance, dim=1).numpy()  # (B, K, C, H, W)
            for row, sample in enumerate(batch):
                image, mask = loaded_batch[row]
                records.append(_record_one(
                    sample, image, mask, relevance_batch[row], chosen[row].tolist(),
                    logits[row], probabilities[row], loaded, staging, options, count, entries,
                ))
                if options["relevance_format"] == "npz":
                    relevance_all.append(relevance_batch[row])
                elif options["relevance_format"] == "npy":
                    np.save(staging.path(f"relevance/{sample.name}.npy"), relevance_batch[row])
    return records, relevance_all, entries


def _record_one(sample, image, mask, relevance, chosen, logits, probabilities, loaded, staging,
                options, count, entries) -> dict:
    input_png = _png_bytes(Image.fromarray(
        (image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8), "RGB"
    ))
    staging.path(f"inputs/{sample.name}.png").write_bytes(input_png)
    predicted = int(logits.argmax())
    mask_np = mask.numpy() if mask is not None else None
    record: dict[str, Any] = {
        "name": sample.name,
        "source": sample.source,
        "true_class": loaded.class_name(sample.label) if sample.label is not None else None,
        "predicted": {"index": predicted, "class": loaded.class_name(predicted),
                      "probability": float(probabilities[predicted]),
                      "logit": float(logits[predicted])},
        "mask_area": float(mask_np.mean()) if mask_np is not None else None,
        "targets": [],
    }
    heatmaps = []
    for rank, index in enumerate(chosen):
        summed = relevance[rank].sum(axis=0)
        normed = normalize_relevance(summed, options["relevance_norm"])
        png = _png_bytes(imgify(normed, vmin=0.0, vmax=1.0, cmap=options["cmap"],
                                level=options["level"]))
        file = f"heatmaps/{_heatmap_name(sample.name, rank, count)}"
        staging.path(file).write_bytes(png)
        fraction = near = None
        if mask_np is not None:
            fraction = positive_fraction_in_mask(summed, mask_np)
            near = positive_fraction_in_mask(summed, mask_np, dilate=NEAR_MASK_PIXELS)
            fraction, near = (None, None) if np.isnan(fraction) else (fraction, near)
        record["targets"].append({
            "index": int(index), "class": loaded.class_name(int(index)),
            "probability": float(probabilities[index]), "logit": float(logits[index]),
            "relevance_sum": float(summed.sum()), "fraction_in_mask": fraction,
            "fraction_near_mask": near, "heatmap": file,
        })
        heatmaps.append(HeatmapEntry(
            label=f"{loaded.class_name(int(index))}", score=float(probabilities[index]),
            png=png, fraction_in_mask=fraction,
        ))
    entries.append(ReportEntry(
        name=sample.name, source=sample.source, input_png=input_png,
        true_class=record["true_class"], predicted=record["predicted"]["class"],
        probability=record["predicted"]["probability"], mask_area=record["mask_area"],
        heatmaps=heatmaps,
    ))
    return record


def _print_summary(summary: dict, output_dir: Path, relevance_format: str) -> None:
    settings = summary["settings"]
    records = summary["images"]
    click.echo(
        f"funcattr explain: {len(records)} images, model {settings['model']}, attributor "
        f"{settings['attributor']}, composite {settings['composite']}, canonizer "
        f"{settings['canonizer']}"
    )
    has_masks = any(r["mask_area"] is not None for r in records)
    has_truth = any(r["true_class"] is not None for r in records)
    width = max(12, *(len(r["name"]) for r in records))
    header = f"  {'image':<{width}}"
    if has_truth:
        header += f"  {'true class':<12}"
    header += f"  {'predicted':<16} {'score':>6}"
    if has_masks:
        header += "  relevance+ in mask (mask area)"
    click.echo(header)
    for record in records:
        line = f"  {record['name']:<{width}}"
        if has_truth:
            line += f"  {record['true_class'] or '-':<12}"
        predicted = record["predicted"]
        line += f"  {predicted['class'][:16]:<16} {predicted['probability']:6.3f}"
        if has_masks:
            fraction = record["targets"][0]["fraction_in_mask"]
            if record["mask_area"] is None:
                line += "  -"
            else:
                text = "n/a" if fraction is None else f"{fraction:.2f}"
                line += f"  {text} ({record['mask_area']:.2f})"
        click.echo(line)
    if "mean_fraction_in_mask" in summary:
        click.echo(
            f"  mean positive relevance in mask: {summary['mean_fraction_in_mask']:.3f}, within "
            f"{NEAR_MASK_PIXELS} px of it: {summary['mean_fraction_near_mask']:.3f} (mean mask "
            f"area {summary['mean_mask_area']:.3f})"
        )
    raw = {"npz": "relevance.npz", "npy": "relevance/*.npy", "none": None}[relevance_format]
    wrote = ["heatmaps/", "inputs/", *([raw] if raw else []), _SUMMARY_FILE]
    click.echo(f"wrote {', '.join(wrote)} and report.html to {output_dir}/")
    click.echo(f"open {output_dir / 'report.html'} in a browser")


# --------------------------------------------------------------------------------------------
# funcattr list
# --------------------------------------------------------------------------------------------

_LIST_WHAT = ("composites", "attributors", "canonizers", "cmaps", "models")


@main.command(name="list")
@click.argument("what", required=False, type=click.Choice(_LIST_WHAT))
def list_command(what: str | None) -> None:
    """Show the registered composites, attributors, canonizers, colour maps and models."""
    from funcattr.composites import COMPOSITES
    from funcattr.image import CMAPS

    def first_line(obj: object) -> str:
        lines = (obj.__doc__ or "").strip().splitlines()
        text = lines[0] if lines else ""
        return re.sub(r":\w+:`~?([^`]+)`", r"\1", text).replace("``", "")

    def wrapped(text: str) -> None:
        click.echo(textwrap.fill(text, width=100, initial_indent="  ",
                                 subsequent_indent="    "))

    sections = [what] if what else list(_LIST_WHAT)
    for section in sections:
        if len(sections) > 1:
            click.echo(f"{section}:")
        if section == "composites":
            for name, cls in COMPOSITES.items():
                click.echo(f"  {name:<28} {first_line(cls)}")
        elif section == "attributors":
            for name, text in ATTRIBUTORS.items():
                click.echo(f"  {name:<28} {text}")
        elif section == "canonizers":
            found = available_canonizers()
            if not found:
                click.echo("  (none available)")
            for name, cls in found.items():
                click.echo(f"  {name:<28} {first_line(cls)}")
            automatic = ", ".join(f"{family}*: {' or '.join(options)}"
                                  for family, options in _AUTO_CANONIZERS.items())
            wrapped(f"(--canonizer auto picks by architecture, if available: {automatic})")
        elif section == "cmaps":
            for name in CMAPS:
                click.echo(f"  {name:<28} {CMAPS[name].source}")
            click.echo("  (or a colour-map spec such as '00f,80:fff,f00')")
        elif section == "models":
            click.echo(f"  {'demo':<28} the built-in shape classifier (default)")
            wrapped("torchvision (with --weights FILE): " + ", ".join(_torchvision_names()))
            click.echo("  or MODULE:FACTORY / FILE.py:FACTORY returning a torch.nn.Module")
        if len(sections) > 1 and section != sections[-1]:
            click.echo()


import funcattr.cli_evaluate  # noqa: E402, F401  (registers `funcattr evaluate` on main)

if __name__ == "__main__":  # pragma: no cover
    main()
