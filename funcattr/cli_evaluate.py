"""``funcattr evaluate``: attributors and composites x metrics, as a table, from the shell.

``funcattr evaluate [IMAGES or FOLDERS ...]`` runs :func:`funcattr.metrics.evaluate` for several
explanation methods on one set of images and prints a table (one row per metric column, one
column per method; the best value of each row in bold), writes it as ``table.md`` and, one row
per method, as ``table.csv``, with the settings and per-image values in ``evaluation.json``;
``--plot`` adds the perturbation curves as PNG files. Without IMAGES, the demo model is
evaluated on its 12 shipped sample images (or ``--samples N`` generated test images), whose
object masks are known. See ``docs/metrics.md`` (section "Command line").

The model, the images and the composites are loaded by :mod:`funcattr.cli`'s building blocks
and shared option decorators; this module registers the command on :func:`funcattr.cli.main`.
"""

from __future__ import annotations

import contextlib
import difflib
import json
import math
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import torch
from torch import Tensor

from funcattr.cli import (
    _ATTRIBUTOR_OPTIONS,
    ATTRIBUTORS,
    TRACEBACK_VARIABLE,
    LoadedModel,
    Sample,
    _Staging,
    attribute,
    attributor_options,
    auto_chunk_size,
    build_composite,
    collect_samples,
    demo_samples,
    image_arguments,
    load_sample,
    main,
    model_from_options,
    model_options,
    resolve_canonizers,
)

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
#: Metrics that need object masks.
LOCALISATION_METRICS = ("relevance_mass_accuracy", "relevance_rank_accuracy", "pointing_game")
#: Curve metrics that ``--plot`` draws: metric -> file.
PLOTS = {"pixel_flipping": "pixel_flipping.png", "region_perturbation": "region_perturbation.png"}
_TABLE_CSV, _TABLE_MD, _JSON_FILE = "table.csv", "table.md", "evaluation.json"
_TOOL_TAG = "funcattr evaluate"


@dataclass(frozen=True)
class Method:
    """One explanation method (a row of the CSV, a column of the printed table).

    Attributes
    ----------
    attributor : str
        A name from :data:`funcattr.cli.ATTRIBUTORS`.
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
    from funcattr.composites import COMPOSITES

    def composite_of(name: str, option: str) -> str | None:
        if name == "none":
            return None
        if name not in COMPOSITES:
            raise _unknown("a composite", name, list(COMPOSITES), option, "none or ")
        return name

    entries = _split(attributors)
    composite_entries = _split(composites)
    if not entries and not composite_entries:
        entries = list(DEFAULT_METHODS)
    methods: list[Method] = []
    for entry in entries:
        head, sep, tail = entry.partition(":")
        if sep:
            if head not in ATTRIBUTORS:
                raise _unknown("an attributor", head, list(ATTRIBUTORS), "--attributor")
            methods.append(Method(head, composite_of(tail, "--attributor")))
        elif entry in ATTRIBUTORS:
            methods.append(Method(entry))
        elif entry in COMPOSITES:
            methods.append(Method("gradient", entry))
        else:
            raise _unknown("an attributor or composite", entry,
                           [*ATTRIBUTORS, *COMPOSITES], "--attributor")
    methods += [Method("gradient", composite_of(entry, "--composite"))
                for entry in composite_entries]
    return list(dict.fromkeys(methods))


def parse_metrics(values: Sequence[str]) -> tuple[tuple[str, ...], bool]:
    """``--metric`` values (``all`` for every metric) -> ``(metrics, explicit)``."""
    from funcattr.metrics.evaluate import DEFAULT_METRICS, METRICS

    names = _split(values)
    if not names:
        return tuple(DEFAULT_METRICS), False
    chosen: list[str] = []
    for name in names:
        if name == "all":
            chosen += list(METRICS)
        elif name in METRICS:
            chosen.append(name)
        else:
            raise _unknown("a metric", name, list(METRICS), "--metric", "all or ")
    return tuple(dict.fromkeys(chosen)), True


#: Arguments ``evaluate`` itself passes to the metrics; ``--option`` cannot set them.
_RESERVED = frozenset({"model", "x", "target", "attribution", "params", "generator", "chunk_size",
                       "explain", "masks", "owner", "options"})
#: Metrics taking ``**options`` for another function.
_DELEGATES = {"region_perturbation": "pixel_flipping", "max_sensitivity": "sensitivities",
              "avg_sensitivity": "sensitivities"}


def metric_keywords(metric: str) -> list[str]:
    """The keywords of ``metric`` that ``--option`` may set."""
    import inspect

    import funcattr.metrics as fm

    names: list[str] = []
    for function in (metric, _DELEGATES.get(metric)):
        if function is not None:
            names += list(inspect.signature(getattr(fm, function)).parameters)
    return [n for n in dict.fromkeys(names) if n not in _RESERVED]


def _literal(text: str) -> Any:
    import ast

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
                f"{', '.join(metrics)}.", param_hint="--option",
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

def _make_method(kind: str, *, n_iter: int, noise_level: float, window: tuple[int, int],
                 stride: tuple[int, int], seed: int) -> Callable:
    """``method(fn, params, input, attr_output_fn) -> (output, attribution)`` for ``kind``."""

    def method(fn: Callable, params: dict, input: Tensor,
               attr_output_fn: Callable) -> tuple[Tensor, Tensor]:
        # a fresh generator per call: smoothgrad is a deterministic function of its input
        return attribute(kind, fn, params, input, attr_output_fn, n_iter=n_iter,
                         noise_level=noise_level, window=window, stride=stride,
                         chunk_size=auto_chunk_size(input), seed=seed)

    method.__name__ = kind
    return method


def _option_checks(ctx: click.Context, methods: list[Method]) -> None:
    kinds = {m.attributor for m in methods}
    for name, users in _ATTRIBUTOR_OPTIONS.items():
        if name in ("seed", "chunk_size") or name not in ctx.params:
            continue
        source = ctx.get_parameter_source(name)
        if source is click.core.ParameterSource.COMMANDLINE and not kinds & set(users):
            flag = "--" + name.replace("_", "-")
            raise click.UsageError(
                f"{flag} applies to --attributor {' or '.join(users)}, none of which is "
                f"evaluated."
            )


def _load_images(samples: list[Sample], loaded: LoadedModel) -> tuple[Tensor, Tensor | None]:
    pairs = [load_sample(s, loaded.input_size, loaded.resize) for s in samples]
    images = torch.stack([image for image, _ in pairs])
    masks = [mask for _, mask in pairs]
    if any(mask is None for mask in masks):
        return images, None
    for sample, mask in zip(samples, masks):
        if not bool(mask.any()):
            raise click.ClickException(
                f"{sample.source}: its mask is empty after resizing to "
                f"{loaded.input_size}x{loaded.input_size}. Give every mask object pixels "
                f"(non-zero), or remove the mask files to skip the localisation metrics."
            )
    return images, torch.stack(masks)


def _predict(loaded: LoadedModel, images: Tensor, chunk: int) -> Tensor:
    with torch.no_grad():
        return torch.cat([loaded.model(images[i:i + chunk].to(loaded.device)).argmax(dim=1)
                          for i in range(0, images.shape[0], chunk)]).cpu()


@contextlib.contextmanager
def _reported_errors(what: str) -> Iterator[None]:
    """Errors inside the metrics and attributors as one line (no traceback)."""
    try:
        yield
    except torch.OutOfMemoryError as error:
        raise click.ClickException("out of memory; lower --chunk-size.") from error
    except (ValueError, TypeError, RuntimeError) as error:
        if os.environ.get(TRACEBACK_VARIABLE):
            raise
        first = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise click.ClickException(
            f"{what}: {first[:400]} (set {TRACEBACK_VARIABLE}=1 for the traceback)"
        ) from error


@contextlib.contextmanager
def _progress(quiet: bool) -> Iterator[Callable[[str], None]]:
    if quiet or not sys.stderr.isatty():
        yield lambda text: None
        return
    yield lambda text: click.echo(f"  {text}", err=True)


def _finite(value: float) -> float | None:
    return None if math.isnan(value) else value


def _merge(parts: list[Any]) -> Any:
    from funcattr.metrics import EvaluationTable

    first = parts[0]
    return EvaluationTable(
        attributors=tuple(name for part in parts for name in part.attributors),
        columns=first.columns,
        values={name: row for part in parts for name, row in part.values.items()},
        higher_is_better=first.higher_is_better,
        curves={metric: {name: curve for part in parts
                         for name, curve in part.curves.get(metric, {}).items()}
                for metric in first.curves},
    )


def _is_our_folder(folder: Path) -> bool:
    try:
        data = json.loads((folder / _JSON_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and data.get("tool") == _TOOL_TAG


@main.command(name="evaluate",
              short_help="Tabulate metrics of explanation methods (on the demo by default).")
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
              help="A metric (repeatable, or comma-separated), or all. [default: pixel_flipping, "
                   "region_perturbation, max_sensitivity, relevance_mass_accuracy, "
                   "relevance_rank_accuracy, pointing_game, random_logit; the localisation "
                   "metrics only with masks]")
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
              help="For methods with a composite: auto (by architecture), none, or canonizer "
                   "names (comma-separated).")
@attributor_options
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seed of the metrics' random draws (the same for every method) and of "
                   "smoothgrad's noise.")
@click.option("--chunk-size", type=click.IntRange(min=1), default=None,
              help="Inputs per model or attributor call [default: about 2^18 pixels].")
@click.option("--plot", is_flag=True,
              help="Also draw the perturbation curves: pixel_flipping.png (and "
                   "region_perturbation.png).")
@click.option("--output", "-o", type=click.Path(path_type=Path),
              default=Path("funcattr-evaluation"), show_default=True, help="Output folder.")
@click.option("--quiet", "-q", is_flag=True, help="Print nothing but errors.")
@click.pass_context
def evaluate_command(ctx: click.Context, **options: Any) -> None:
    """Evaluate explanation methods with metrics on IMAGES (PNG/JPEG files or folders).

    Prints a table (metrics x methods, best in bold) and writes table.md, table.csv (one row
    per method) and evaluation.json to the output folder. A file NAME_mask.png next to NAME.png
    is the object mask the localisation metrics need. Without IMAGES, the demo's sample images
    are used.
    """
    run_evaluate(ctx, **options)


def run_evaluate(ctx: click.Context, **options: Any) -> dict:
    """The body of ``funcattr evaluate``; returns the record it writes to evaluation.json."""
    from funcattr.metrics import evaluate, explainer, plot_pixel_flipping, write_table

    started = time.perf_counter()
    quiet = options["quiet"]
    methods = parse_methods(options["attributors"], options["composites"])
    metrics, explicit_metrics = parse_metrics(options["metrics"])
    _option_checks(ctx, methods)
    if options["samples"] is not None and options["images"]:
        raise click.UsageError("--samples chooses demo images; it does not apply to IMAGES.")
    output_dir: Path = options["output"]
    if output_dir.exists() and not output_dir.is_dir():
        raise click.BadParameter(f"{output_dir} exists and is not a folder.",
                                 param_hint="--output")
    loaded = model_from_options(options)
    if options["images"]:
        samples = collect_samples(options["images"], recursive=options["recursive"],
                                  exclude=output_dir)
        source = f"{len(samples)} images"
    else:
        samples = demo_samples(with_labels=loaded.name == "demo", count=options["samples"])
        which = "shipped" if options["samples"] is None else "generated test"
        source = f"{len(samples)} {which} demo images"
    images, masks = _load_images(samples, loaded)

    notes: list[str] = []
    localisation = [m for m in metrics if m in LOCALISATION_METRICS]
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
        metrics = tuple(m for m in metrics if m not in LOCALISATION_METRICS)
        notes.append(f"skipped {', '.join(localisation)}: {why}")
    metric_options = parse_options(options["metric_options"], metrics)
    plots = {m: f for m, f in PLOTS.items() if m in metrics} if options["plot"] else {}
    if options["plot"] and not plots:
        raise click.UsageError(
            "--plot draws the curves of pixel_flipping or region_perturbation; add --metric "
            "pixel_flipping."
        )

    chunk = options["chunk_size"] or auto_chunk_size(images[:1])
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
    window = options["window"] or (max(1, size // 4),) * 2
    stride = options["stride"] or tuple(max(1, w // 2) for w in window)
    if max(window) > size:
        raise click.BadParameter(f"{window} is larger than the {size}x{size} input.",
                                 param_hint="--window")
    canonizers, canonizer_text = resolve_canonizers(options["canonizer"], loaded)

    explainers = {}
    for method in methods:
        composite, _ = build_composite(method.composite or "none", loaded, method.attributor)
        with _reported_errors(f"--attributor {method.name}"):
            explainers[method.name] = explainer(
                loaded.model, composite, canonizers=canonizers if composite else None,
                # occlusion measures the score itself, as in funcattr explain
                times_output=options["times_output"] or method.attributor == "occlusion",
                method=_make_method(method.attributor, n_iter=options["n_iter"],
                                    noise_level=options["noise_level"], window=window,
                                    stride=stride, seed=options["seed"]),
            )

    planned = [_TABLE_CSV, _TABLE_MD, _JSON_FILE, *plots.values()]
    if output_dir.is_dir() and not _is_our_folder(output_dir):
        clashes = [name for name in planned if (output_dir / name).exists()]
        if clashes:
            raise click.BadParameter(
                f"{output_dir} already holds {clashes[0]} (not written by funcattr evaluate); "
                f"choose another output folder.", param_hint="--output",
            )

    device = loaded.device
    x = images.to(device)
    y = target.to(device)
    m = masks.to(device) if masks is not None else None
    parts, seconds = [], {}
    with _progress(quiet) as say:
        for index, (name, explain) in enumerate(explainers.items()):
            say(f"[{index + 1}/{len(explainers)}] {name}")
            tick = time.perf_counter()
            with _reported_errors(f"evaluating {name} on --model {loaded.name}"):
                parts.append(evaluate(loaded.model, x, y, m, {name: explain}, metrics,
                                      seed=options["seed"], chunk_size=chunk,
                                      num_classes=loaded.num_classes, options=metric_options))
            seconds[name] = round(time.perf_counter() - tick, 3)
    table = _merge(parts)

    settings = {
        "model": loaded.name,
        "weights": loaded.weights,
        "images": source,
        "input": f"{size}x{size}",
        "target": "true class" if options["target"] == "true" else "predicted class",
        "output gradient": "score * one-hot" if options["times_output"] else
                           "one-hot; score * one-hot for occlusion" if any(
                               m.attributor == "occlusion" for m in methods) else "one-hot",
        "canonizer": canonizer_text,
        "methods": {m.name: {"attributor": m.attributor, "composite": m.composite}
                    for m in methods},
        "metrics": list(metrics),
        "metric options": metric_options,
        "seed": options["seed"],
        "chunk_size": chunk,
        "device": str(device),
    }
    if any(m.attributor in ("smoothgrad", "integrads") for m in methods):
        settings["n_iter"] = options["n_iter"]
    if any(m.attributor == "smoothgrad" for m in methods):
        settings["noise_level"] = options["noise_level"]
    if any(m.attributor == "occlusion" for m in methods):
        settings["window"] = "x".join(map(str, window))
        settings["stride"] = "x".join(map(str, stride))
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
        "seconds": seconds,
        "files": planned,
    }

    staging = _Staging(output_dir)
    try:
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
        record["seconds_total"] = round(time.perf_counter() - started, 3)
        staging.path(_JSON_FILE).write_text(json.dumps(record, indent=2) + "\n",
                                            encoding="utf-8")
        staging.commit()
    except BaseException:
        staging.discard()
        raise

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
