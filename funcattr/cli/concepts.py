"""``funcattr concepts``: the most relevant concepts of a layer, their conditional heatmaps and
an attribution graph, in an HTML report.

``funcattr concepts [IMAGES or FOLDERS ...]`` ranks the channels (concepts) of a layer by their
relevance for the explained class (CRP), draws each top concept's conditional heatmap, and
decomposes the top concept into lower-layer concepts down to the input (an attribution graph);
with no images it explains the built-in demo model on its shipped samples. With ``--region`` the
concepts are ranked by their relevance inside that part of the image (local analysis). Layer
names are the model's own (``model.named_modules()``). With ``--dataset demo:N`` or a folder,
each top concept shows its reference samples: relevance maximisation over the dataset
(:func:`funcattr.datasets.relevance_maximization`), stored in ``--store`` (beside the output
folder, which each run replaces whole) and reused by later runs with the same settings. See
``docs/concepts.md``.
"""

from __future__ import annotations

import difflib
import io
import json
import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn

from funcattr.cli.attributors import DEFAULT_LRP_COMPOSITE, build_composite
from funcattr.cli.canonizers import resolve_canonizers
from funcattr.cli.dataset import DatasetSpec, DatasetType, load_dataset
from funcattr.cli.group import COMMANDS, main
from funcattr.cli.heatmaps import normalize_relevance
from funcattr.cli.models import DEMO_MODELS, LoadedModel
from funcattr.cli.options import (
    FiniteFloatRange,
    check_cmap,
    image_arguments,
    model_from_options,
    model_options,
)
from funcattr.cli.output import Staging, png_bytes, reported_errors
from funcattr.cli.progress import Progress
from funcattr.cli.samples import (
    Sample,
    collect_samples,
    demo_samples,
    load_samples,
    none_readable,
)
from funcattr.concept_report import (
    ConceptHeatmap,
    ConceptReference,
    ConceptReportEntry,
    render_concept_report,
)
from funcattr.concepts import (
    INPUT_NODE,
    attribution_graph,
    concept_heatmaps,
    concept_layers,
    concept_relevance,
    local_concept_relevance,
)
from funcattr.functional import functionalize
from funcattr.image import imgify
from funcattr.types import Convolution

if TYPE_CHECKING:
    from funcattr.datasets import ConceptStore

__all__ = ["concepts", "run_concepts"]

_SUMMARY_FILE = "concepts.json"
_TOOL_TAG = "funcattr concepts"
#: Size of a heatmap picture in the graph.
_GRAPH_PICTURE = 48


class WidthType(click.ParamType):
    """``--width``: concepts kept per layer at each level of the graph, e.g. ``3,2``."""

    name = "N[,N...]"

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):
            return value
        try:
            widths = tuple(int(part) for part in re.split(r"[,\s]+", str(value).strip()))
        except ValueError:
            widths = ()
        if not widths or min(widths) < 1:
            self.fail(f"{value!r}: expected positive integers separated by commas, e.g. 3,2.",
                      param, ctx)
        return widths


class RegionType(click.ParamType):
    """``--region``: ``X0,Y0,X1,Y1`` in pixels of the model input (right and bottom
    exclusive)."""

    name = "X0,Y0,X1,Y1"

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):
            return value
        try:
            box = tuple(int(part) for part in str(value).split(","))
        except ValueError:
            box = ()
        if len(box) != 4 or box[0] < 0 or box[1] < 0 or box[2] <= box[0] or box[3] <= box[1]:
            self.fail(f"{value!r}: expected X0,Y0,X1,Y1 with 0 <= X0 < X1 and 0 <= Y0 < Y1, "
                      f"e.g. 16,16,48,48.", param, ctx)
        return box


def _prefix(loaded: LoadedModel) -> str:
    """The prefix of the user's layer names in the loaded model (which may put an input
    normalisation in front of it)."""
    return "1." if loaded.normalization is not None else ""


def _user_layers(loaded: LoadedModel) -> dict[str, nn.Module]:
    inner = loaded.model[1] if loaded.normalization is not None else loaded.model
    return {name: module for name, module in inner.named_modules() if name}


def _resolve_layer(spec: str, loaded: LoadedModel) -> str:
    layers = _user_layers(loaded)
    if spec == "auto":
        convolutions = [name for name, module in layers.items()
                        if isinstance(module, Convolution)]
        if not convolutions:
            raise click.BadParameter(
                f"--model {loaded.name} has no convolution to take concepts from; name a layer "
                f"with channels.", param_hint="--layer")
        return convolutions[-1]
    if spec not in layers:
        close = difflib.get_close_matches(spec, list(layers), n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise click.BadParameter(
            f"{spec!r} is not a layer of --model {loaded.name}; use a name from "
            f"model.named_modules().{hint}", param_hint="--layer")
    return spec


def _resolve_target(spec: str, loaded: LoadedModel) -> int | None:
    """``--target``: ``pred`` (None), a class index or a class name."""
    text = spec.strip()
    if text.lower() in ("pred", "predicted"):
        return None
    if re.fullmatch(r"\d+", text):
        if int(text) >= loaded.num_classes:
            raise click.BadParameter(
                f"class {text} does not exist; the model has {loaded.num_classes} classes (0 to "
                f"{loaded.num_classes - 1}).", param_hint="--target")
        return int(text)
    lookup = {name.lower(): i for i, name in enumerate(loaded.class_names or ())}
    if text.lower() in lookup:
        return lookup[text.lower()]
    close = difflib.get_close_matches(text, list(loaded.class_names or ()), n=2)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    raise click.BadParameter(
        f"{text!r} is not pred, a class index or a class name of the model.{hint}",
        param_hint="--target")


@main.command(name="concepts", short_help=COMMANDS["concepts"][1])
@image_arguments
@model_options
@click.option("--layer", "-l", default="auto", show_default=True,
              help="The layer whose channels are the concepts (a name from "
                   "model.named_modules()); auto: the last convolution.")
@click.option("--top", "-k", type=click.IntRange(min=1), default=4, show_default=True,
              help="How many of the most relevant concepts to show per image.")
@click.option("--target", "-t", default="pred", show_default=True,
              help="The class to explain: pred (the prediction), an index or a class name.")
@click.option("--composite", "-c", default="auto", show_default=True,
              help=f"LRP rules: a name from `funcattr list composites` (auto: "
                   f"{DEFAULT_LRP_COMPOSITE}).")
@click.option("--canonizer", default="auto", show_default=True,
              help="auto (by architecture), none, or canonizer names (comma-separated).")
@click.option("--region", type=RegionType(), default=None,
              help="Rank concepts by their relevance inside this box of the model input "
                   "(pixels), and show their heatmaps there (local analysis).")
@click.option("--graph/--no-graph", default=True, show_default=True,
              help="Decompose the top concept into lower-layer concepts (attribution graph).")
@click.option("--width", type=WidthType(), default="3,2", show_default=True,
              help="Attribution graph: concepts kept per layer at each level.")
@click.option("--dataset", type=DatasetType(), default=None,
              help="Show each top concept's reference samples from a dataset: demo:N (N demo "
                   "images, their labels explained) or a FOLDER of images (class sub-folders "
                   "as labels, else the prediction explained). Relevance maximisation over it "
                   "is stored in --store and reused by later runs.")
@click.option("--store", type=click.Path(path_type=Path), default=None,
              help="Folder of the relevance maximisation store [default: OUTPUT-store].")
@click.option("--overwrite-store", is_flag=True,
              help="Replace a --store written with other settings (model, composite, dataset).")
@click.option("--references", type=click.IntRange(min=1), default=6, show_default=True,
              help="Reference samples shown per concept (with --dataset).")
@click.option("--batch-size", "-b", type=click.IntRange(min=1), default=32, show_default=True,
              help="Dataset items per step of the relevance maximisation.")
@click.option("--chunk-size", type=click.IntRange(min=1), default=None,
              help="Conditions per backward step (bounds memory) [default: all at once].")
@click.option("--cmap", default="bwr", show_default=True, callback=check_cmap,
              help="Colour map: a name from `funcattr list cmaps` or a spec like 00f,80:fff,f00.")
@click.option("--level", type=FiniteFloatRange(min=0, min_open=True), default=1.0,
              show_default=True, help="Colour-map contrast around the centre.")
@click.option("--output", "-o", type=click.Path(path_type=Path),
              default=Path("funcattr-concepts"), show_default=True, help="Output folder.")
@click.option("--quiet", "-q", is_flag=True, help="Print nothing but errors.")
def concepts(**options: Any) -> None:
    """Show the most relevant concepts of a layer for IMAGES (PNG/JPEG files or folders).

    For each image: the top concepts (channels) of --layer by relevance for --target, each
    concept's conditional heatmap (CRP), an attribution graph decomposing the top concept
    into lower-layer concepts down to the input, and with --dataset each concept's reference
    samples (relevance maximisation). Without IMAGES the demo model's sample images are used.
    The output folder receives report.html, concepts.json, the heatmaps and references.
    """
    run_concepts(**options)


def _png(relevance: Tensor, options: dict[str, Any]) -> bytes:
    summed = relevance.detach().double().sum(0).cpu().numpy()
    normed = normalize_relevance(summed, "symmetric")
    return png_bytes(imgify(normed, vmin=0.0, vmax=1.0, cmap=options["cmap"],
                            level=options["level"]))


def _small_png(relevance: Tensor, options: dict[str, Any]) -> bytes:
    image = Image.open(io.BytesIO(_png(relevance, options)))
    return png_bytes(image.resize((_GRAPH_PICTURE, _GRAPH_PICTURE), Image.Resampling.BILINEAR))


def _image_png(image: Tensor) -> bytes:
    """An RGB image tensor ``(3, H, W)`` in ``[0, 1]`` as a PNG file."""
    pixels = (image.detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255)
    return png_bytes(Image.fromarray(pixels.round().astype(np.uint8), "RGB"))


def _region_mask(box: tuple[int, int, int, int] | None, size: int) -> Tensor | None:
    if box is None:
        return None
    x0, y0, x1, y1 = box
    if x1 > size or y1 > size:
        raise click.BadParameter(
            f"{','.join(map(str, box))} lies outside the {size}x{size} model input.",
            param_hint="--region")
    mask = torch.zeros(size, size)
    mask[y0:y1, x0:x1] = 1.0
    return mask


def _planned(samples: Sequence[Sample]) -> list[str]:
    """The files a run on ``samples`` writes that are known before it (to name a clash before
    any work); heatmaps and references are named by the concepts found."""
    return ["report.html", _SUMMARY_FILE,
            *(f"inputs/{s.name}.png" for s in samples if s.problem is None)]


def _store_folder(options: dict[str, Any]) -> Path | None:
    """``--store`` (default ``OUTPUT-store``), refused inside the output folder (which a run
    replaces whole)."""
    if options["dataset"] is None:
        if options["store"] is not None or options["overwrite_store"]:
            raise click.BadParameter("--store and --overwrite-store need --dataset.",
                                     param_hint="--store")
        return None
    output: Path = options["output"]
    store = options["store"] or output.with_name(output.name + "-store")
    resolved, outside = store.resolve(), output.resolve()
    if resolved == outside or outside in resolved.parents:
        raise click.BadParameter(
            f"{store} lies inside --output {output}, which each run replaces whole; choose a "
            f"folder beside it.", param_hint="--store")
    return store


def _dataset(spec: DatasetSpec, loaded: LoadedModel) -> tuple[Any, str, str]:
    """``(dataset, description, target)`` for ``--dataset``."""
    dataset = load_dataset(spec, loaded)
    if spec.demo:
        return dataset, f"{spec.text} (labels explained)", "label"
    if dataset.classes:
        return dataset, f"{spec.folder} ({len(dataset)} images, labels explained)", "label"
    return dataset, f"{spec.folder} ({len(dataset)} images, predictions explained)", "prediction"


def _maximize(loaded: LoadedModel, composite, canonizers, layer: str, options: dict[str, Any],
              store: Path) -> tuple[ConceptStore, Any, str]:
    """Relevance maximisation of ``layer`` over ``--dataset`` into ``store`` (reused when
    done)."""
    from funcattr.datasets import CONCEPT_GROUP, relevance_maximization

    dataset, description, target = _dataset(options["dataset"], loaded)
    group = f"{CONCEPT_GROUP}/{layer}"
    mode = "overwrite" if options["overwrite_store"] else "resume"
    failed = f"relevance maximisation of --layer {layer} over --dataset failed"
    with reported_errors(failed, fix="Try another --layer, --composite or --canonizer;",
                         memory="lower --batch-size"):
        try:
            run = relevance_maximization(
                loaded.model, dataset, store, layers=[layer], composite=composite,
                canonizers=canonizers, target=target, n_top=max(options["references"], 8),
                group=group, batch_size=options["batch_size"], mode=mode,
                device=loaded.device, progress=not options["quiet"])
        except ValueError as error:
            if "other settings" not in str(error):
                raise
            differences = str(error).split("continued: ", 1)[-1].split(". Pass", 1)[0]
            raise click.BadParameter(
                f"{store} holds a relevance maximisation of {layer} with other settings "
                f"({differences}). Pass --overwrite-store to replace it, or another --store.",
                param_hint="--store") from error
    return run, dataset, description


def run_concepts(**options: Any) -> dict:
    """The body of ``funcattr concepts``; returns the summary it writes."""
    started = time.perf_counter()
    quiet = options["quiet"]
    output_dir: Path = options["output"]
    if options["images"]:
        samples = collect_samples(options["images"], recursive=options["recursive"],
                                  exclude=output_dir, allow_large=options["allow_large_images"])
    else:
        samples = demo_samples(with_labels=options["model"] in DEMO_MODELS)
    staging = Staging(output_dir, _SUMMARY_FILE, _TOOL_TAG)
    staging.check(_planned(samples))  # before any work
    store = _store_folder(options)
    loaded = model_from_options(options)
    layer = _resolve_layer(options["layer"], loaded)
    prefix = _prefix(loaded)
    target = _resolve_target(options["target"], loaded)
    region = _region_mask(options["region"], loaded.input_size)
    composite_spec = DEFAULT_LRP_COMPOSITE if options["composite"] == "auto" else options[
        "composite"]
    composite, composite_text = build_composite(composite_spec, loaded)
    canonizers, canonizer_text = resolve_canonizers(options["canonizer"], loaded)
    try:
        fn, params = functionalize(loaded.model, composite, canonizers)
    except (ValueError, TypeError) as error:
        raise click.ClickException(
            f"--composite {composite_text} / --canonizer {canonizer_text} do not fit --model "
            f"{loaded.name}: {error} Choose another --composite or --canonizer."
        ) from error
    user_layers = _user_layers(loaded)
    graph_layers = [name for name in concept_layers(fn) if name[len(prefix):] in user_layers]
    references = None
    if store is not None:
        references = _References(*_maximize(loaded, composite, canonizers, prefix + layer,
                                            options, store), fn, params, prefix + layer,
                                 options["references"], store)

    settings = {
        "model": loaded.name, "weights": loaded.weights, "layer": layer,
        "composite": composite_text, "canonizer": canonizer_text,
        "target": "predicted class" if target is None else
        f"class {target} ({loaded.class_name(target)})",
        "concepts ranked by": "relevance in region " + ",".join(map(str, options["region"]))
        if region is not None else "relevance (share of the layer's absolute relevance)",
        "graph width": ",".join(map(str, options["width"])) if options["graph"] else "no graph",
        "initial relevance": "score * one-hot (CRP)", "device": str(loaded.device),
    }
    if references is not None:
        settings["reference samples"] = (f"{options['references']} per concept by relevance "
                                         f"over {references.description}, store {store}")
    with staging:
        records, entries, skipped = [], [], [s for s in samples if s.problem is not None]
        readable = [s for s in samples if s.problem is None]
        progress = Progress(len(readable), f"concepts of {layer} on {len(readable)} images",
                            "images", quiet=quiet)
        with progress:
            for sample in readable:
                kept, pairs, unreadable = load_samples(
                    [sample], loaded.input_size, loaded.resize,
                    allow_large=options["allow_large_images"])
                skipped += unreadable
                if kept:
                    record, entry = _explain_one(sample, pairs[0][0], loaded, fn, params,
                                                 prefix + layer, prefix, target, region,
                                                 graph_layers, options, staging, references)
                    records.append(record)
                    entries.append(entry)
                progress.advance()
        if not records:
            raise none_readable(len(samples), skipped)
        staging.path("report.html").write_text(
            render_concept_report(entries, settings,
                                  title=f"funcattr concepts: {loaded.name}, {layer}"),
            encoding="utf-8")
        summary = {"tool": _TOOL_TAG, "settings": settings, "images": records,
                   "skipped": [{"source": s.source, "reason": s.problem} for s in skipped]}
        summary["files"] = staging.manifest()
        summary["seconds"] = round(time.perf_counter() - started, 3)
        staging.path(_SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n",
                                               encoding="utf-8")
        staging.commit()
    if not quiet:
        for s in skipped:
            click.echo(f"note: skipped {s.source}: {s.problem}", err=True)
        _print_summary(summary, output_dir)
    return summary


class _References:
    """The reference samples of the concepts of one layer, each concept's computed once."""

    def __init__(self, run: ConceptStore, dataset: Any, description: str, fn, params,
                 layer: str, count: int, store: Path) -> None:
        self.run, self.dataset, self.description = run, dataset, description
        self.fn, self.params, self.layer, self.count, self.store = fn, params, layer, count, store
        self.done: dict[int, list[tuple[dict, ConceptReference]]] = {}

    def of(self, channel: int, shown: str, staging: Staging
           ) -> list[tuple[dict, ConceptReference]]:
        if channel not in self.done:
            patches = self.run.reference_patches(self.fn, self.params, self.dataset,
                                                 self.layer, channel, n=self.count)
            sources = self.run.store.group["items/source"]
            found = []
            for rank, patch in enumerate(patches):
                file = f"references/{shown}_{channel}_{rank + 1}.png"
                png = _image_png(patch.image)
                staging.path(file).write_bytes(png)
                source = str(sources[patch.sample]) or f"item {patch.sample}"
                found.append(({"sample": patch.sample, "source": source,
                               "relevance": patch.value, "box": list(patch.box), "file": file},
                              ConceptReference(png, f"#{patch.sample} ({patch.value:+.3f})")))
            self.done[channel] = found
        return self.done[channel]


def _explain_one(sample, image, loaded, fn, params, layer, prefix, target, region, graph_layers,
                 options, staging, references) -> tuple[dict, ConceptReportEntry]:
    x = image[None].to(loaded.device)
    with torch.no_grad():
        logits = loaded.model(x)
    explained = int(logits.argmax(1)[0]) if target is None else target
    shown = layer[len(prefix):]
    failed = f"concepts of --layer {shown} on --model {loaded.name} failed"
    with reported_errors(failed, fix="Try another --layer, --composite or --canonizer;",
                         memory="lower --chunk-size"):
        shares = concept_relevance(fn, params, x, layer, explained)[0]
        local = None
        if region is not None:
            local = local_concept_relevance(fn, params, x, layer, region.to(x), explained)[0]
        ranking = local if local is not None else shares
        k = min(options["top"], ranking.shape[0])
        channels = ranking.sort(descending=True, stable=True).indices[:k].tolist()
        heatmaps = concept_heatmaps(fn, params, x, layer, channels, explained,
                                    region=None if region is None else region.to(x),
                                    chunk_size=options["chunk_size"])
        graph = None
        if options["graph"]:
            graph = attribution_graph(fn, params, x, layer, channels[0], explained,
                                      width=options["width"], layers=graph_layers,
                                      chunk_size=options["chunk_size"])
        found = {c: references.of(c, shown, staging) for c in channels} if references else {}
    input_png = _image_png(image)
    staging.path(f"inputs/{sample.name}.png").write_bytes(input_png)
    concepts_out, pictures = [], []
    for rank, channel in enumerate(channels):
        png = _png(heatmaps[rank, 0], options)
        file = f"heatmaps/{sample.name}_{shown}_{channel}.png"
        staging.path(file).write_bytes(png)
        concept: dict[str, Any] = {
            "channel": channel, "relevance": float(shares[channel]),
            "local_relevance": None if local is None else float(local[channel]),
            "heatmap": file}
        if references is not None:
            concept["references"] = [record for record, _ in found[channel]]
        concepts_out.append(concept)
        pictures.append(ConceptHeatmap(shown, channel, float(shares[channel]), png,
                                       None if local is None else float(local[channel]),
                                       [picture for _, picture in found.get(channel, [])]))
    record: dict[str, Any] = {
        "name": sample.name, "source": sample.source,
        "predicted": {"index": int(logits.argmax(1)[0]),
                      "class": loaded.class_name(int(logits.argmax(1)[0]))},
        "explained": {"index": explained, "class": loaded.class_name(explained)},
        "layer": shown, "concepts": concepts_out, "graph": None,
    }
    graph_pngs = {}
    if graph is not None:
        graph = _strip_prefix(graph, prefix)
        record["graph"] = graph.to_dict()
        graph_pngs = {node: _small_png(heat, options) for node, heat in graph.heatmaps.items()}
        graph_pngs[INPUT_NODE] = png_bytes(Image.open(io.BytesIO(input_png)).resize(
            (_GRAPH_PICTURE, _GRAPH_PICTURE), Image.Resampling.BILINEAR))
    entry = ConceptReportEntry(
        name=sample.name, input_png=input_png,
        explained=f"{explained} ({loaded.class_name(explained)})", concepts=pictures,
        graph=graph, graph_pngs=graph_pngs,
        details=f"source: {sample.source}; predicted: {record['predicted']['class']}")
    return record, entry


def _strip_node(node, prefix: str):
    if node == INPUT_NODE or not prefix:
        return node
    return type(node)(node.layer[len(prefix):], node.channel)


def _strip_prefix(graph, prefix: str):
    """The graph with the user's layer names (without the input normalisation's prefix)."""
    if not prefix:
        return graph
    edges = tuple(type(e)(_strip_node(e.source, prefix), _strip_node(e.target, prefix),
                          e.relevance) for e in graph.edges)
    return type(graph)(_strip_node(graph.root, prefix), graph.target, graph.root_relevance,
                       tuple(_strip_node(n, prefix) for n in graph.nodes), edges,
                       {_strip_node(n, prefix): h for n, h in graph.heatmaps.items()})


def _print_summary(summary: dict, output_dir: Path) -> None:
    settings = summary["settings"]
    click.echo(f"funcattr concepts: {len(summary['images'])} images, model {settings['model']}, "
               f"layer {settings['layer']}, composite {settings['composite']}")
    for record in summary["images"]:
        top = ", ".join(f"{c['channel']} ({c['relevance']:+.2f})" for c in record["concepts"])
        click.echo(f"  {record['name']}: {record['explained']['class']}: {top}")
    references = "references" in settings.get("reference samples", "") or any(
        "references" in c for r in summary["images"] for c in r["concepts"])
    folders = "heatmaps/, inputs/, references/" if references else "heatmaps/, inputs/"
    click.echo(f"wrote {_SUMMARY_FILE}, {folders} and report.html to {output_dir}/")
    click.echo(f"open {output_dir / 'report.html'} in a browser")
