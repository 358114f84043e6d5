"""``funcattr evaluate``: attributors and composites x metrics, as a table, from the shell.

``funcattr evaluate [IMAGES or FOLDERS ...]`` runs :func:`funcattr.metrics.evaluate` for several
explanation methods on one set of images and prints a table (one row per metric column, one
column per method; the best value of each row in bold), writes it as ``table.md`` and, one row
per method, as ``table.csv``, with the settings and per-image values in ``evaluation.json``;
``--plot`` adds the perturbation curves as PNG files. Without IMAGES, the demo model is
evaluated on its 12 shipped sample images (or ``--samples N`` generated test images), whose
object masks are known. See ``docs/metrics.md`` (section "Command line").

With ``--dataset FOLDER`` or ``--dataset demo:N``, each method evaluates the whole dataset
into a store of its own, ``OUTPUT/METHOD/`` (:func:`funcattr.datasets.evaluate_dataset`:
streamed, resumable, split over the processes of ``torchrun``), and the table is over the
items done (see :mod:`funcattr.cli.dataset`).

The methods come from the attributor registry, the metrics from the metric registry
(:mod:`funcattr.metrics.registry`); nothing here lists them.
"""

from __future__ import annotations

import ast
import difflib
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
import torch
from torch import Tensor

from funcattr.attribution.registry import ATTRIBUTORS, AttributorSpec, get_attributor
from funcattr.cli.attributors import (
    attribute,
    auto_chunk_size,
    build_composite,
    image_window,
    resolve_attributor,
)
from funcattr.cli.canonizers import resolve_canonizers
from funcattr.cli.dataset import (
    DATASET_BATCH_SIZE,
    check_dataset_use,
    dataset_attributor,
    dataset_device,
    dataset_has_masks,
    dataset_options,
    library_errors,
    load_dataset,
    processes,
    store_notes,
)
from funcattr.cli.group import COMMANDS, main
from funcattr.cli.models import DEMO_MODELS, LoadedModel
from funcattr.cli.options import (
    attributor_option_names,
    attributor_options,
    attributor_settings,
    attributor_values,
    check_option_use,
    image_arguments,
    model_from_options,
    model_options,
)
from funcattr.cli.output import Staging, reported_errors
from funcattr.cli.progress import Progress
from funcattr.cli.samples import (
    Sample,
    collect_samples,
    demo_samples,
    load_samples,
    none_readable,
)
from funcattr.composites import COMPOSITES
from funcattr.functional import functionalize
from funcattr.metrics import (
    EvaluationTable,
    evaluate,
    explainer,
    plot_pixel_flipping,
    write_table,
)
from funcattr.metrics.registry import DEFAULT_METRICS, METRIC_SPECS, metric_keywords

if TYPE_CHECKING:
    from funcattr.datasets import DatasetStore

__all__ = [
    "DEFAULT_METHODS",
    "Method",
    "evaluate_command",
    "metric_keywords",
    "parse_methods",
    "parse_metrics",
    "parse_options",
    "render_table",
    "run_evaluate",
]

#: Methods evaluated when neither ``--attributor`` nor ``--composite`` is given.
DEFAULT_METHODS: tuple[str, ...] = (
    "gradient", "inputxgrad", "epsilon_plus_flat", "epsilon_gamma_box", "epsilon_alpha2_beta1",
)
_TABLE_CSV, _TABLE_MD, _JSON_FILE = "table.csv", "table.md", "evaluation.json"
_TOOL_TAG = "funcattr evaluate"
#: Options of the evaluation on images, refused with ``--dataset``.
_IMAGES_ONLY = ("samples", "plot", "recursive", "allow_large_images")


@dataclass(frozen=True)
class Method:
    """One explanation method (a row of the CSV, a column of the printed table).

    Attributes
    ----------
    attributor : str
        A name (or a deprecated alias) from :data:`funcattr.attribution.ATTRIBUTORS`.
    composite : str or None
        A composite name (LRP and other modified gradients) or None.
    """

    attributor: str
    composite: str | None = None

    @property
    def name(self) -> str:
        """The attributor alone, the composite alone for LRP, else ``attributor:composite``."""
        if self.composite is None:
            return self.attributor
        if self.attributor == "gradient":
            return self.composite
        return f"{self.attributor}:{self.composite}"

    @property
    def spec(self) -> AttributorSpec:
        """The attributor's registry entry."""
        return get_attributor(self.attributor)[0]


def _split(values: Sequence[str]) -> list[str]:
    """Repeated options and comma-separated lists, flattened; blanks dropped."""
    return [part.strip() for value in values for part in value.split(",") if part.strip()]


def _unknown(kind: str, name: str, known: Sequence[str], option: str,
             extra: str = "") -> click.BadParameter:
    close = difflib.get_close_matches(name, list(known), n=2)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    return click.BadParameter(
        f"{name!r} is not {kind}; expected {extra}one of: {', '.join(known)}.{hint}",
        param_hint=option,
    )


def parse_methods(attributors: Sequence[str], composites: Sequence[str]) -> list[Method]:
    """The methods of ``--attributor`` and ``--composite``, in order, without repeats.

    An ``--attributor`` entry is ``ATTRIBUTOR``, ``ATTRIBUTOR:COMPOSITE`` (``:none`` for no
    composite) or a composite name alone (its LRP: ``gradient:COMPOSITE``); a ``--composite``
    entry is a composite name (or ``none``, the plain gradient). Neither given:
    :data:`DEFAULT_METHODS`.
    """
    def composite_of(name: str, option: str) -> str | None:
        if name == "none":
            return None
        if name not in COMPOSITES:
            raise _unknown("a composite", name, list(COMPOSITES), option, "none or ")
        return name

    known = [*ATTRIBUTORS, *(alias for spec in ATTRIBUTORS.values() for alias in spec.aliases)]
    entries = _split(attributors)
    composite_entries = _split(composites)
    if not entries and not composite_entries:
        entries = list(DEFAULT_METHODS)
    methods: list[Method] = []
    for entry in entries:
        head, sep, tail = entry.partition(":")
        if sep:
            if head not in known:
                raise _unknown("an attributor", head, list(ATTRIBUTORS), "--attributor")
            resolve_attributor(head)  # a note for an old name
            methods.append(Method(head, composite_of(tail, "--attributor")))
        elif entry in known:
            resolve_attributor(entry)
            methods.append(Method(entry))
        elif entry in COMPOSITES:
            methods.append(Method("gradient", entry))
        else:
            raise _unknown("an attributor or composite", entry,
                           [*ATTRIBUTORS, *COMPOSITES], "--attributor")
    methods += [Method("gradient", composite_of(entry, "--composite"))
                for entry in composite_entries]
    for method in methods:
        if method.composite is not None and not method.spec.takes_composite:
            users = [name for name, spec in ATTRIBUTORS.items() if spec.takes_composite]
            raise click.BadParameter(
                f"{method.name}: a composite applies to {' or '.join(users)}, not "
                f"{method.spec.name}, which uses no gradient. Pass {method.attributor} alone.",
                param_hint="--attributor",
            )
    return list(dict.fromkeys(methods))


def parse_metrics(values: Sequence[str]) -> tuple[tuple[str, ...], bool]:
    """``--metric`` values (``all`` for every metric) -> ``(metrics, explicit)``."""
    names = _split(values)
    if not names:
        return tuple(DEFAULT_METRICS), False
    chosen: list[str] = []
    for name in names:
        if name == "all":
            chosen += list(METRIC_SPECS)
        elif name in METRIC_SPECS:
            chosen.append(name)
        else:
            raise _unknown("a metric", name, list(METRIC_SPECS), "--metric", "all or ")
    return tuple(dict.fromkeys(chosen)), True


def _literal(text: str) -> Any:
    lowered = text.strip().lower()
    if lowered in ("true", "false", "none"):
        return {"true": True, "false": False, "none": None}[lowered]
    try:
        return ast.literal_eval(text.strip())
    except (ValueError, SyntaxError):
        if "," in text:  # plain words, e.g. orders=morf,lerf
            return tuple(_literal(part) for part in text.split(","))
        return text.strip()  # a plain word, e.g. fill=mean


def parse_options(values: Sequence[str], metrics: Sequence[str]) -> dict[str, dict[str, Any]]:
    """``--option METRIC.KEY=VALUE`` values -> ``{metric: {key: value}}`` for ``evaluate``.

    VALUE is a Python literal (``8``, ``0.5``, ``(1, 2)``, ``'mean'``), ``true``/``false``/
    ``none``, else a plain word (``mean``) or comma-separated words (``morf,lerf``, a tuple).
    """
    options: dict[str, dict[str, Any]] = {}
    for value in values:
        name, equals, text = value.partition("=")
        metric, dot, key = name.strip().partition(".")
        if not equals or not dot or not metric or not key:
            raise click.BadParameter(
                f"{value!r}: expected METRIC.KEY=VALUE, e.g. pixel_flipping.fill=mean.",
                param_hint="--option",
            )
        if metric not in metrics:
            raise click.BadParameter(
                f"{value!r}: {metric} is not evaluated; expected one of the metrics "
                f"{', '.join(metrics)}. Add it with --metric {metric}, or drop the option.",
                param_hint="--option",
            )
        known = metric_keywords(metric)
        if key not in known:
            close = difflib.get_close_matches(key, known, n=2)
            hint = f" Did you mean {', '.join(close)}?" if close else ""
            raise click.BadParameter(
                f"{value!r}: {metric} has no option {key!r}; expected one of: "
                f"{', '.join(known)}.{hint}", param_hint="--option",
            )
        options.setdefault(metric, {})[key] = _literal(text)
    return options


# --------------------------------------------------------------------------------------------
# The printed table
# --------------------------------------------------------------------------------------------

def _cell(value: float) -> str:
    return "nan" if math.isnan(value) else f"{value:.4g}"


def render_table(table: Any) -> str:
    """An aligned Markdown table: one row per metric column, one column per method.

    The best finite value of each row (by the column's direction) is in bold; the arrow after a
    metric says whether higher (↑) or lower (↓) is better.
    """
    header = ["metric", *table.attributors]
    rows = []
    for column in table.columns:
        means = [table.mean(name, column) for name in table.attributors]
        finite = [m for m in means if not math.isnan(m)]
        higher = table.higher_is_better[column]
        best = (max(finite) if higher else min(finite)) if finite else None
        cells = [f"**{_cell(m)}**" if best is not None and m == best and len(finite) > 1
                 else _cell(m) for m in means]
        rows.append([f"{column} {'↑' if higher else '↓'}", *cells])
    widths = [max(len(line[i]) for line in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        first = cells[0].ljust(widths[0])
        rest = [cell.rjust(width) for cell, width in zip(cells[1:], widths[1:])]
        return "| " + " | ".join([first, *rest]) + " |"

    rule = "|" + "|".join(["-" * (widths[0] + 2)] + ["-" * (w + 1) + ":" for w in widths[1:]])
    return "\n".join([line(header), rule + "|", *(line(row) for row in rows)]) + "\n"


# --------------------------------------------------------------------------------------------
# The command
# --------------------------------------------------------------------------------------------

def _make_method(name: str, values: dict[str, Any], chunk_size: int, seed: int) -> Callable:
    """``method(fn, params, input, attr_output_fn) -> (output, attribution)`` for attributor
    ``name`` with the command's options; an int seed draws the same noise on every call, so a
    noisy method is a deterministic function of its input."""

    def method(fn: Callable, params: dict, input: Tensor,
               attr_output_fn: Callable) -> tuple[Tensor, Tensor]:
        return attribute(name, fn, params, input, attr_output_fn, chunk_size=chunk_size,
                         generator=seed, **values)

    method.__name__ = name
    return method


def _load_images(samples: list[Sample], loaded: LoadedModel, allow_large: bool
                 ) -> tuple[list[Sample], Tensor, Tensor | None, list[Sample]]:
    """The readable samples, their images and masks, and the skipped samples (files found in
    folders that cannot be read; a file named on the command line is an error)."""
    kept, pairs, skipped = load_samples(samples, loaded.input_size, loaded.resize,
                                        allow_large=allow_large)
    if not kept:
        raise none_readable(len(samples), skipped)
    images = torch.stack([image for image, _ in pairs])
    masks = [mask for _, mask in pairs]
    if any(mask is None for mask in masks):
        return kept, images, None, skipped
    for sample, mask in zip(kept, masks):
        if not bool(mask.any()):
            raise click.ClickException(
                f"{sample.source}: its mask is empty after resizing to "
                f"{loaded.input_size}x{loaded.input_size}. Give every mask object pixels "
                f"(non-zero), or remove the mask files to skip the localisation metrics."
            )
    return kept, images, torch.stack(masks), skipped


def _predict(loaded: LoadedModel, images: Tensor, chunk: int) -> Tensor:
    with reported_errors(f"--model {loaded.name} failed on the {images.shape[0]} images",
                         fix="Fix the model's forward, or check --input-size and "
                             "--normalization;", memory="lower --chunk-size"), torch.no_grad():
        return torch.cat([loaded.model(images[i:i + chunk].to(loaded.device)).argmax(dim=1)
                          for i in range(0, images.shape[0], chunk)]).cpu()


class _Reused:
    """``explain(input, target, params=None)`` that answers a call identical to one of the
    first ``keep`` calls (equal input and target, no params) with that call's attribution.

    ``funcattr evaluate`` runs one metric per step; the first step of a method computes the
    attributions of the images, and the method's other metrics reuse them instead of
    computing them again. The explainers are deterministic functions of their input (the
    noise of SmoothGrad comes from a fixed seed), so the results are those of one call with
    every metric.
    """

    def __init__(self, explain: Callable, keep: int) -> None:
        self.explain, self.keep = explain, keep
        self.calls: list[tuple[Tensor, Tensor, Tensor]] = []

    def __getattr__(self, name: str) -> Any:
        if name == "explain":  # not set yet
            raise AttributeError(name)
        return getattr(self.explain, name)  # e.g. .params, which randomisation metrics read

    def __call__(self, input: Tensor, target: Tensor, params: Any = None) -> Tensor:
        if params is not None:
            return self.explain(input, target, params=params)
        for known, known_target, attribution in self.calls:
            if (known.shape == input.shape and known_target.shape == target.shape
                    and torch.equal(known, input) and torch.equal(known_target, target)):
                return attribution.clone()
        attribution = self.explain(input, target)
        if len(self.calls) < self.keep:
            self.calls.append((input.clone(), target.clone(), attribution.clone()))
        return attribution


def _finite(value: float) -> float | None:
    return None if math.isnan(value) else value


def _merge(parts: list[Any]) -> Any:
    """One table from the tables of the steps (one method and one metric each)."""
    values: dict[str, dict[str, Tensor]] = {}
    higher: dict[str, bool] = {}
    curves: dict[str, dict[str, Any]] = {}
    for part in parts:
        for name, row in part.values.items():
            values.setdefault(name, {}).update(row)
        higher.update(part.higher_is_better)
        for metric, by_name in part.curves.items():
            curves.setdefault(metric, {}).update(by_name)
    return EvaluationTable(
        attributors=tuple(dict.fromkeys(name for part in parts for name in part.attributors)),
        columns=tuple(dict.fromkeys(column for part in parts for column in part.columns)),
        values=values, higher_is_better=higher, curves=curves,
    )


@main.command(name="evaluate", short_help=COMMANDS["evaluate"][1])
@image_arguments
@model_options
@click.option("--attributor", "-a", "attributors", multiple=True, metavar="NAME[:COMPOSITE]",
              help="A method to evaluate (repeatable, or comma-separated): an attributor from "
                   "`funcattr list attributors`, ATTRIBUTOR:COMPOSITE, or a composite alone "
                   "(its LRP). [default: " + ", ".join(DEFAULT_METHODS) + "]")
@click.option("--composite", "-c", "composites", multiple=True, metavar="NAME",
              help="LRP with this composite (repeatable, or comma-separated); none is the plain "
                   "gradient. Adds to --attributor.")
@click.option("--metric", "-M", "metrics", multiple=True, metavar="NAME",
              help="A metric (repeatable, or comma-separated), or all. [default: "
                   + ", ".join(DEFAULT_METRICS) + "; the localisation metrics only with masks]")
@click.option("--option", "-O", "metric_options", multiple=True, metavar="METRIC.KEY=VALUE",
              help="A metric's keyword argument (repeatable), e.g. pixel_flipping.fill=mean or "
                   "max_sensitivity.relative=true; see docs/metrics.md.")
@click.option("--samples", "-n", type=click.IntRange(min=1), default=None,
              help="Without IMAGES: the first N generated images of the demo's test split "
                   "[default: its 12 shipped samples].")
@click.option("--target", "-t", type=click.Choice(["pred", "true"]), default="pred",
              show_default=True, help="Explain the predicted or the true class (true: demo "
                                      "images only).")
@click.option("--times-output", is_flag=True,
              help="Seed with score * one-hot instead of one-hot (LRP relevance sums to the "
                   "score).")
@click.option("--canonizer", default="auto", show_default=True,
              help="For methods with a composite: auto (the registered canonizer that fits "
                   "the architecture), none, or names from `funcattr list canonizers` "
                   "(comma-separated).")
@attributor_options
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seed of the metrics' random draws (the same for every method) and of the "
                   "noise of " + " and ".join(n for n, s in ATTRIBUTORS.items() if s.random)
                   + ".")
@click.option("--chunk-size", type=click.IntRange(min=1), default=None,
              help="Images per model or attributor call [default: about 2^18 pixels].")
@click.option("--plot", is_flag=True,
              help="Also draw the perturbation curves of the curve metrics evaluated: "
                   + ", ".join(f"{n}.png" for n, s in METRIC_SPECS.items() if s.curves) + ".")
@click.option("--output", "-o", type=click.Path(path_type=Path),
              default=Path("funcattr-evaluation"), show_default=True, help="Output folder.")
@dataset_options(batch_size=True)
@click.option("--quiet", "-q", is_flag=True, help="Print nothing but errors.")
@click.pass_context
def evaluate_command(ctx: click.Context, **options: Any) -> None:
    """Evaluate explanation methods with metrics on IMAGES (PNG/JPEG files or folders).

    Prints a table (metrics x methods, best in bold) and writes table.md, table.csv (one row
    per method) and evaluation.json to the output folder. A file NAME_mask.png next to NAME.png
    is the object mask the localisation metrics need. Without IMAGES, the demo's sample images
    are used.

    With --dataset (a folder of images or demo:N), each method evaluates the whole dataset in
    batches into a store of its own, OUTPUT/METHOD/ (resumable, shared by the processes of
    torchrun), and the table (table.md, table.csv) is over all items.
    """
    check_dataset_use(ctx, _IMAGES_ONLY)
    if options["dataset"] is not None:
        run_evaluate_dataset(ctx, **options)
    else:
        run_evaluate(ctx, **options)


def run_evaluate(ctx: click.Context, **options: Any) -> dict:
    """The body of ``funcattr evaluate`` on images; returns the record it writes to
    evaluation.json."""
    started = time.perf_counter()
    quiet = options["quiet"]
    methods = parse_methods(options["attributors"], options["composites"])
    metrics, explicit_metrics = parse_metrics(options["metrics"])
    check_option_use(ctx, [m.spec.name for m in methods], attributor_option_names(),
                     "none of which is evaluated")
    if options["samples"] is not None and options["images"]:
        raise click.UsageError("--samples chooses demo images; it does not apply to IMAGES.")
    output_dir: Path = options["output"]
    curves = [name for name, spec in METRIC_SPECS.items() if spec.curves]
    if options["images"]:
        found = collect_samples(options["images"], recursive=options["recursive"],
                                exclude=output_dir, allow_large=options["allow_large_images"])
    else:
        found = demo_samples(with_labels=options["model"] in DEMO_MODELS,
                             count=options["samples"])
    staging = Staging(output_dir, _JSON_FILE, _TOOL_TAG)
    staging.check([_TABLE_CSV, _TABLE_MD, _JSON_FILE,  # before any work
                   *(f"{m}.png" for m in curves if m in metrics and options["plot"])])
    loaded = model_from_options(options)
    samples, images, masks, skipped = _load_images(
        [s for s in found if s.problem is None], loaded, options["allow_large_images"])
    skipped = [s for s in found if s.problem is not None and s not in skipped] + skipped
    if options["images"]:
        source = f"{len(samples)} images"
    else:
        which = "shipped" if options["samples"] is None else "generated test"
        source = f"{len(samples)} {which} demo images"

    notes = [f"skipped {s.source}: {s.problem}" for s in skipped]
    notes += [f"{s.source}: {s.conversion}" for s in samples if s.conversion]
    localisation = [m for m in metrics if METRIC_SPECS[m].needs_masks]
    if masks is None and localisation:
        missing = sum(s.mask is None for s in samples)
        why = (f"{missing} of {len(samples)} images have no mask file NAME_mask.png next to "
               f"NAME.png")
        if explicit_metrics:
            one = len(localisation) == 1
            raise click.BadParameter(
                f"{', '.join(localisation)} need{'s' if one else ''} object masks, but {why}. "
                f"Add the masks or leave {'it' if one else 'them'} out.", param_hint="--metric",
            )
        metrics = tuple(m for m in metrics if not METRIC_SPECS[m].needs_masks)
        notes.append(f"skipped {', '.join(localisation)}: {why}")
    metric_options = parse_options(options["metric_options"], metrics)
    plots = {m: f"{m}.png" for m in curves if m in metrics} if options["plot"] else {}
    if options["plot"] and not plots:
        raise click.UsageError(
            f"--plot draws the curves of {' or '.join(curves)}; add --metric {curves[0]}."
        )

    chunk = options["chunk_size"] or auto_chunk_size(images)
    predicted = _predict(loaded, images, chunk)
    labels = [s.label for s in samples]
    known = None if any(label is None for label in labels) else torch.tensor(labels)
    if options["target"] == "true":
        if known is None:
            raise click.BadParameter(
                "true classes are known only for the demo images (with --model demo); use "
                "--target pred.", param_hint="--target",
            )
        target = known
    else:
        target = predicted

    size = loaded.input_size
    window, stride = image_window(options, size)
    values = attributor_values(options, window=window, stride=stride)
    canonizers, canonizer_text = resolve_canonizers(options["canonizer"], loaded)

    explainers = {}
    for method in methods:
        composite, _ = build_composite(method.composite or "none", loaded, method.attributor)
        with reported_errors(f"--attributor {method.name}"):
            explainers[method.name] = explainer(
                loaded.model, composite, canonizers=canonizers if composite else None,
                # occlusion measures the score itself, as in funcattr explain
                times_output=options["times_output"] or method.spec.scores,
                method=_make_method(method.spec.name, values, chunk, options["seed"]),
            )

    planned = [_TABLE_CSV, _TABLE_MD, _JSON_FILE, *plots.values()]

    device = loaded.device
    x = images.to(device)
    y = target.to(device)
    m = masks.to(device) if masks is not None else None
    parts, seconds = [], {}
    keep = len(range(0, x.shape[0], chunk))  # the calls of a method's attributions
    progress = Progress(len(explainers) * len(metrics), "funcattr evaluate", "steps",
                        quiet=quiet, bar=False)
    with progress:
        for name, explain in explainers.items():
            tick = time.perf_counter()
            reused = _Reused(explain, keep)
            for metric in metrics:  # one step per metric: progress also inside long methods
                progress.step(f"{name}: {metric}")
                with reported_errors(f"evaluating {name} on --model {loaded.name}"):
                    parts.append(evaluate(
                        loaded.model, x, y, m, {name: reused}, [metric], seed=options["seed"],
                        chunk_size=chunk, num_classes=loaded.num_classes,
                        options={k: v for k, v in metric_options.items() if k == metric},
                    ))
                progress.advance()
            seconds[name] = round(time.perf_counter() - tick, 3)
    table = _merge(parts)

    scoring = list(dict.fromkeys(m.spec.name for m in methods if m.spec.scores))
    settings = {
        "model": loaded.name,
        "weights": loaded.weights,
        "images": source,
        "input": f"{size}x{size}",
        "target": "true class" if options["target"] == "true" else "predicted class",
        "output gradient": "score * one-hot" if options["times_output"] else
                           f"one-hot; score * one-hot for {' and '.join(scoring)}" if scoring
                           else "one-hot",
        "canonizer": canonizer_text,
        "methods": {m.name: {"attributor": m.attributor, "composite": m.composite}
                    for m in methods},
        "metrics": list(metrics),
        "metric options": metric_options,
        "seed": options["seed"],
        "chunk_size": chunk,
        "device": str(device),
    }
    settings.update(attributor_settings([m.spec.name for m in methods], values))
    accuracy = None if known is None else float((predicted == known).double().mean())
    rendered = render_table(table)
    record = {
        "tool": _TOOL_TAG,
        "settings": settings,
        "notes": notes,
        "images": [{"name": s.name, "source": s.source, "target": int(t),
                    "predicted": int(p), "true": s.label}
                   for s, t, p in zip(samples, target.tolist(), predicted.tolist())],
        "accuracy": accuracy,
        "higher_is_better": table.higher_is_better,
        "means": {row["attributor"]: {c: _finite(row[c]) for c in table.columns}
                  for row in table.rows()},
        "values": {name: {c: [_finite(float(v)) for v in table.values[name][c].tolist()]
                          for c in table.columns} for name in table.attributors},
        "skipped": [{"source": s.source, "reason": s.problem} for s in skipped],
        "seconds": seconds,
    }

    with staging:
        write_table(table, path_csv=staging.path(_TABLE_CSV))
        staging.path(_TABLE_MD).write_text(rendered, encoding="utf-8")
        for metric, file in plots.items():
            try:
                plot_pixel_flipping(
                    table, staging.path(file), metric=metric,
                    title=f"{metric.replace('_', ' ')}: {loaded.name} on {source}",
                )
            except ImportError as error:
                raise click.ClickException(
                    f"--plot needs matplotlib ({error}); install it with pip install "
                    f"'funcattr[plot]' (or pip install matplotlib)."
                ) from error
        record["files"] = staging.manifest()
        record["seconds_total"] = round(time.perf_counter() - started, 3)
        staging.path(_JSON_FILE).write_text(json.dumps(record, indent=2) + "\n",
                                            encoding="utf-8")
        staging.commit()

    if not quiet:
        correct = "" if accuracy is None else f", {accuracy:.0%} predicted correctly"
        click.echo(
            f"funcattr evaluate: {source}{correct}, model {loaded.name}, explaining the "
            f"{settings['target']} (output gradient {settings['output gradient']}), canonizer "
            f"{canonizer_text}, "
            f"seed {options['seed']}"
        )
        click.echo(rendered, nl=False)
        click.echo("(means over the images; ↑ higher / ↓ lower is better; best in bold)")
        for note in notes:
            click.echo(f"note: {note}", err=True)
        click.echo(f"wrote {', '.join(planned)} to {output_dir}/")
    return record


# --------------------------------------------------------------------------------------------
# --dataset: one store per method
# --------------------------------------------------------------------------------------------

def _dataset_metrics(values: Sequence[str], masks: bool) -> tuple[tuple[str, ...], list[str]]:
    """``--metric`` for a dataset run (names of ``DATASET_METRICS``, or all) and notes."""
    from funcattr.datasets import DATASET_METRICS, DEFAULT_DATASET_METRICS
    from funcattr.datasets.evaluation import LOCALISATION

    names = _split(values)
    if not names:
        chosen = DEFAULT_DATASET_METRICS
        if masks:
            return chosen, []
        return (tuple(m for m in chosen if m not in LOCALISATION),
                [f"skipped {', '.join(LOCALISATION)}: the images have no masks "
                 f"(NAME_mask.png next to NAME.png)"])
    chosen = []
    for name in names:
        if name == "all":
            chosen += list(DATASET_METRICS)
        elif name in DATASET_METRICS:
            chosen.append(name)
        elif name in METRIC_SPECS:
            raise click.BadParameter(
                f"{name!r} re-explains perturbed inputs, which a dataset run does not; expected "
                f"all or one of: {', '.join(DATASET_METRICS)}. Evaluate {name} on IMAGES.",
                param_hint="--metric")
        else:
            raise _unknown("a metric", name, list(DATASET_METRICS), "--metric", "all or ")
    chosen = list(dict.fromkeys(chosen))
    missing = [m for m in chosen if m in LOCALISATION]
    if missing and not masks:
        raise click.BadParameter(
            f"{', '.join(missing)} need object masks, but the images have none (NAME_mask.png "
            f"next to NAME.png). Add the masks or leave them out.", param_hint="--metric")
    return tuple(chosen), []


def _store_table(stores: dict[str, DatasetStore]) -> EvaluationTable:
    """The table of the stores' per-item metric values (done items; NaN left out of means)."""
    from funcattr.datasets.evaluation import higher_is_better

    values: dict[str, dict[str, Tensor]] = {}
    higher: dict[str, bool] = {}
    for name, store in stores.items():
        done = store.done()
        for column, array in store.metrics.items():
            direction = higher_is_better(column)
            if len(array.shape) != 1 or direction is None:
                continue
            higher[column] = direction
            values.setdefault(name, {})[column] = torch.from_numpy(array[:][done])
    columns = tuple(dict.fromkeys(c for row in values.values() for c in row))
    return EvaluationTable(attributors=tuple(stores), columns=columns, values=values,
                           higher_is_better=higher)


def run_evaluate_dataset(ctx: click.Context, **options: Any) -> dict[str, DatasetStore]:
    """The body of ``funcattr evaluate --dataset``: one store per method in
    ``OUTPUT/METHOD/``, then the table; returns the stores, opened for reading."""
    from funcattr.datasets import evaluate_dataset

    quiet = options["quiet"]
    methods = parse_methods(options["attributors"], options["composites"])
    check_option_use(ctx, [m.spec.name for m in methods], attributor_option_names(),
                     "none of which is evaluated")
    device = dataset_device(options["device"])
    loaded = model_from_options({**options, "device": device})
    dataset = load_dataset(options["dataset"], loaded)
    metrics, notes = _dataset_metrics(options["metrics"], dataset_has_masks(dataset))
    metric_options = parse_options(options["metric_options"], metrics)
    canonizers, canonizer_text = resolve_canonizers(options["canonizer"], loaded)
    window, stride = image_window(options, loaded.input_size)
    values = attributor_values(options, window=window, stride=stride)
    output: Path = options["output"]
    target = "label" if options["target"] == "true" else "prediction"
    stores: dict[str, DatasetStore] = {}
    with processes(device) as joined:
        for method in methods:
            composite, _ = build_composite(method.composite or "none", loaded,
                                           method.attributor)
            chosen = canonizers if composite else None
            with reported_errors(f"--attributor {method.name}"):
                fn, _ = functionalize(loaded.model, composite, chosen)
            function, kwargs = dataset_attributor(method.spec.name, fn, values,
                                                  options["chunk_size"], loaded.input_size)
            with library_errors(output / method.name,
                                f"--dataset {options['dataset'].text} with --attributor "
                                f"{method.name}"):
                stores[method.name] = evaluate_dataset(
                    loaded.model, dataset, output / method.name, metrics=metrics,
                    metric_options=metric_options, composite=composite, canonizers=chosen,
                    attributor=function, options=kwargs, target=target,
                    times_output=True if options["times_output"] else None,
                    dtype=options["dtype"], seed=options["seed"],
                    batch_size=options["batch_size"] or DATASET_BATCH_SIZE,
                    num_workers=options["workers"], device=device,
                    mode="resume" if options["resume"] else "overwrite",
                    retry_failed=options["retry_failed"], progress=False if quiet else None,
                )
    if joined.rank != 0:
        return stores
    table = _store_table(stores)
    rendered = render_table(table)
    write_table(table, path_csv=output / _TABLE_CSV)
    (output / _TABLE_MD).write_text(rendered, encoding="utf-8")
    if not quiet:
        first = next(iter(stores.values()))
        counts = first.counts()
        overall = (first.summary or {}).get("classes", [{}])[-1]
        accuracy = overall.get("accuracy")
        correct = "" if accuracy is None else f", {accuracy:.0%} predicted correctly"
        click.echo(
            f"funcattr evaluate: {len(first)} items of {options['dataset'].text} ({counts['done']}"
            f" done, {counts['failed']} failed){correct}, model {loaded.name}, explaining the "
            f"{'true' if target == 'label' else 'predicted'} class, canonizer {canonizer_text}, "
            f"seed {options['seed']}"
        )
        click.echo(rendered, nl=False)
        click.echo("(means over the items done; ↑ higher / ↓ lower is better; best in bold)")
        for note in notes:
            click.echo(f"note: {note}", err=True)
        for name, store in stores.items():
            for note in store_notes(store.failures()):
                click.echo(f"note: {name}: {note}", err=True)
        folders = ", ".join(f"{name}/" for name in stores)
        click.echo(f"wrote {folders} (a store each), {_TABLE_MD}, {_TABLE_CSV} to {output}/")
    return stores
