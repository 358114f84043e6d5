"""``funcattr explain``: heatmaps, raw relevance, a JSON summary and an HTML report.

``funcattr explain [IMAGES or FOLDERS ...]`` explains a model's predictions; with no images it
explains the built-in demo model on its shipped sample images. With ``--dataset FOLDER`` or
``--dataset demo:N`` it explains a whole dataset into a resumable store instead (see
:mod:`funcattr.cli.dataset`). See ``docs/cli.md`` and ``docs/datasets.md``.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import re
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
import numpy as np
import torch
from PIL import Image

from funcattr.attribution.registry import ATTRIBUTORS
from funcattr.attribution.targets import one_hot
from funcattr.cli.attributors import (
    DEFAULT_LRP_COMPOSITE,
    attribute,
    auto_chunk_size,
    build_composite,
    image_window,
)
from funcattr.cli.canonizers import resolve_canonizers
from funcattr.cli.dataset import (
    DATASET_BATCH_SIZE,
    check_dataset_use,
    dataset_attributor,
    dataset_device,
    dataset_options,
    library_errors,
    load_dataset,
    processes,
    store_notes,
)
from funcattr.cli.group import COMMANDS, main
from funcattr.cli.heatmaps import (
    COLORBAR_LABELS,
    RELEVANCE_NORMS,
    colorbar_png,
    normalize_relevance,
    positive_fraction_in_mask,
)
from funcattr.cli.models import DEMO_MODELS, LoadedModel
from funcattr.cli.options import (
    AttributorChoice,
    FiniteFloatRange,
    attributor_option_names,
    attributor_options,
    attributor_settings,
    attributor_values,
    check_cmap,
    check_composite_use,
    check_option_use,
    input_options,
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
from funcattr.functional import functionalize
from funcattr.image import imgify
from funcattr.report import HeatmapEntry, ReportEntry, render_report

if TYPE_CHECKING:
    from funcattr.datasets import DatasetStore

__all__ = ["NEAR_MASK_PIXELS", "STEP_PIXELS", "TargetSpec", "auto_batch_size", "explain",
           "run_explain"]

#: ``fraction_near_mask`` counts relevance within this many pixels of the object mask.
NEAR_MASK_PIXELS = 2
#: ``--batch-size`` by default holds about this many input pixels per channel (16 images of
#: 64x64, one of 224x224): large images are explained one at a time, so that progress is
#: reported per image where a step takes long.
STEP_PIXELS = 1 << 16
_SUMMARY_FILE = "summary.json"
_TOOL_TAG = "funcattr explain"
#: Options of the per-image output, refused with ``--dataset``.
_IMAGES_ONLY = ("cmap", "level", "relevance_norm", "relevance_format", "recursive",
                "allow_large_images")
#: Classes listed in the summary of a ``--dataset`` run (all are in class_stats.csv).
_LISTED_CLASSES = 20


@dataclasses.dataclass(frozen=True)
class TargetSpec:
    """``--target``: ``pred``, an index, a class name, or ``topK``."""

    kind: str  # 'pred', 'index', 'name' or 'top'
    value: int | str = 1

    def count(self) -> int:
        """Number of heatmaps per image."""
        return int(self.value) if self.kind == "top" else 1


class TargetType(click.ParamType):
    """``--target``: ``pred``, a class index, a class name or ``topK``."""

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


@main.command(name="explain", short_help=COMMANDS["explain"][1])
@input_options
@model_options
@click.option("--composite", "-c", default="auto", show_default=True,
              help=f"LRP/modified-gradient rules: a name from `funcattr list composites`, none, "
                   f"or auto ({DEFAULT_LRP_COMPOSITE} for --attributor gradient, none otherwise).")
@click.option("--attributor", "-a", type=AttributorChoice(), default="gradient",
              show_default=True, help="How to attribute (see `funcattr list attributors`).")
@click.option("--canonizer", default="auto", show_default=True,
              help="auto (the registered canonizer that fits the architecture), none, or "
                   "names from `funcattr list canonizers` (comma-separated).")
@click.option("--target", "-t", type=TargetType(), default="pred", show_default=True,
              help="Class to explain: pred (the prediction), an index, a class name, or topK "
                   "for the K best classes (K heatmaps per image); with --dataset also true "
                   "(each item's label).")
@click.option("--times-output", is_flag=True,
              help="Seed with score * one-hot instead of one-hot (Zennit's example script; "
                   "LRP relevance then sums to the score). Occlusion always uses the score.")
@attributor_options
@click.option("--chunk-size", type=click.IntRange(min=1), default=None,
              help="Images per model call of the attributor (whole copies of the batch, at "
                   "least one) [default: about 2^18 input pixels per step].")
@click.option("--seed", type=int, default=0, show_default=True,
              help=f"{' and '.join(n for n, s in ATTRIBUTORS.items() if s.random)}: noise seed.")
@click.option("--cmap", default="bwr", show_default=True, callback=check_cmap,
              help="Colour map: a name from `funcattr list cmaps` or a spec like 00f,80:fff,f00.")
@click.option("--level", type=FiniteFloatRange(min=0, min_open=True), default=1.0,
              show_default=True, help="Colour-map contrast around the centre.")
@click.option("--relevance-norm", type=click.Choice(RELEVANCE_NORMS), default="symmetric",
              show_default=True, help="How heatmaps are scaled to the colour map.")
@click.option("--relevance-format", type=click.Choice(["npz", "npy", "none"]), default="npz",
              show_default=True, help="Raw relevance: one relevance.npz, relevance/NAME.npy "
                                      "per image, or none.")
@click.option("--output", "-o", type=click.Path(path_type=Path),
              default=Path("funcattr-output"), show_default=True, help="Output folder.")
@dataset_options
@click.option("--quiet", "-q", is_flag=True, help="Print nothing but errors.")
@click.pass_context
def explain(ctx: click.Context, **options: Any) -> None:
    """Explain a classifier's predictions on IMAGES (PNG/JPEG files or folders).

    Without IMAGES, the demo's shipped sample images are explained. The output folder receives
    heatmaps/NAME.png, inputs/NAME.png, the raw relevance, summary.json and report.html.

    With --dataset (a folder of images or demo:N), the whole dataset is explained in batches
    into a store in the output folder (store.zarr, class_means.png, class_stats.csv): the
    same command continues it after a crash, and under torchrun the processes share it.
    """
    if options["dataset"] is not None:
        run_explain_dataset(ctx, **options)
    else:
        run_explain(ctx, **options)


def _check_explain_options(ctx: click.Context, attributor: str) -> None:
    check_dataset_use(ctx, _IMAGES_ONLY)
    check_option_use(ctx, [attributor],
                     [*attributor_option_names(), "seed", "chunk_size"], f"not {attributor}")
    check_composite_use(ctx, [attributor])


def _functionalized(loaded: LoadedModel, composite: Any, canonizers: list,
                    composite_text: str, canonizer_text: str) -> tuple:
    """``functionalize`` of the model, its errors naming the options."""
    try:
        return functionalize(loaded.model, composite, canonizers)
    except (ValueError, TypeError) as error:
        raise click.ClickException(
            f"--composite {composite_text} / --canonizer {canonizer_text} do not fit --model "
            f"{loaded.name}: {error} Choose another --composite or --canonizer."
        ) from error


def run_explain(ctx: click.Context, **options: Any) -> dict:
    """The body of ``funcattr explain`` on images; returns the summary it writes."""
    attributor = options["attributor"]
    spec = ATTRIBUTORS[attributor]
    _check_explain_options(ctx, attributor)
    quiet = options["quiet"]
    started = time.perf_counter()
    output_dir: Path = options["output"]
    target: TargetSpec = options["target"]
    count = target.count()
    if options["images"]:
        samples = collect_samples(options["images"], recursive=options["recursive"],
                                  exclude=output_dir, allow_large=options["allow_large_images"])
    else:
        samples = demo_samples(with_labels=options["model"] in DEMO_MODELS)
    staging = Staging(output_dir, _SUMMARY_FILE, _TOOL_TAG)
    staging.check(_planned(samples, count, options["relevance_format"]))  # before any work
    loaded = model_from_options(options)
    target = _resolve_target(target, loaded)
    composite, composite_text = build_composite(options["composite"], loaded, attributor)
    canonizers, canonizer_text = resolve_canonizers(options["canonizer"], loaded)
    size = loaded.input_size
    window, stride = image_window(options, size)
    values = attributor_values(options, window=window, stride=stride)
    fn, params = _functionalized(loaded, composite, canonizers, composite_text, canonizer_text)

    settings = {
        "model": loaded.name,
        "weights": loaded.weights,
        "input": f"{size}x{size}, resize {loaded.resize} + centre crop, "
                 + ("ImageNet normalisation" if loaded.normalization else "values in [0, 1]"),
        "composite": composite_text,
        "canonizer": canonizer_text,
        "attributor": attributor,
        "target": _describe_target(target, loaded),
        "output gradient": "score * one-hot" if options["times_output"] or spec.scores
                else "one-hot",
        "cmap": options["cmap"],
        "level": options["level"],
        "relevance norm": options["relevance_norm"],
        "device": str(loaded.device),
    }
    settings.update(attributor_settings([attributor], values))
    if spec.random:
        settings["noise seed"] = options["seed"]

    with staging:
        records, relevance_all, report_entries, skipped = _explain_all(
            samples, loaded, fn, params, target, staging, options, values, quiet=quiet,
        )
        if options["relevance_format"] == "npz":
            np.savez(
                staging.path("relevance.npz"),
                relevance=np.stack(relevance_all),
                names=np.array([r["name"] for r in records]),
                targets=np.array([[t["index"] for t in r["targets"]] for r in records]),
            )
        notes = [f"skipped {s.source}: {s.problem}" for s in skipped]
        notes += [f"{r['source']}: {r['conversion']}" for r in records if r["conversion"]]
        staging.path("report.html").write_text(
            render_report(
                report_entries, settings, title=f"funcattr explain: {loaded.name}",
                colorbar_png=colorbar_png(options["cmap"], options["level"]),
                colorbar_labels=COLORBAR_LABELS[options["relevance_norm"]], notes=notes,
            ),
            encoding="utf-8",
        )
        summary = {
            "tool": _TOOL_TAG,
            "settings": settings,
            "class_names": list(loaded.class_names) if loaded.class_names else None,
            "images": records,
            "skipped": [{"source": s.source, "reason": s.problem} for s in skipped],
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
        summary["files"] = staging.manifest()
        summary["seconds"] = round(time.perf_counter() - started, 3)
        staging.path(_SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n",
                                               encoding="utf-8")
        staging.commit()
    if not quiet:
        for note in notes:
            click.echo(f"note: {note}", err=True)
        _print_summary(summary, output_dir, options["relevance_format"])
    return summary


def _dataset_target(target: TargetSpec, loaded: LoadedModel) -> tuple[str | int, str]:
    """``--target`` for a dataset run: the library's target and its description."""
    names = [n.lower() for n in loaded.class_names or ()]
    if target.kind == "name" and str(target.value).lower() == "true" and "true" not in names:
        return "label", "true class (label)"
    if target.kind == "top":
        raise click.BadParameter(
            f"top{target.value} applies to IMAGES; a --dataset store holds one explanation per "
            f"item. Pass pred, true, a class index or a class name.", param_hint="--target")
    target = _resolve_target(target, loaded)
    library = "prediction" if target.kind == "pred" else int(target.value)
    return library, _describe_target(target, loaded)


def run_explain_dataset(ctx: click.Context, **options: Any) -> DatasetStore:
    """The body of ``funcattr explain --dataset``: the store of the whole dataset (see
    :mod:`funcattr.cli.dataset`); returns it, opened for reading."""
    from funcattr.datasets import explain_dataset

    attributor = options["attributor"]
    _check_explain_options(ctx, attributor)
    device = dataset_device(options["device"])
    loaded = model_from_options({**options, "device": device})
    dataset = load_dataset(options["dataset"], loaded)
    target, target_text = _dataset_target(options["target"], loaded)
    composite, composite_text = build_composite(options["composite"], loaded, attributor)
    canonizers, canonizer_text = resolve_canonizers(options["canonizer"], loaded)
    window, stride = image_window(options, loaded.input_size)
    values = attributor_values(options, window=window, stride=stride)
    fn, _ = _functionalized(loaded, composite, canonizers, composite_text, canonizer_text)
    function, attributor_kwargs = dataset_attributor(attributor, fn, values,
                                                     options["chunk_size"], loaded.input_size)
    output: Path = options["output"]
    quiet = options["quiet"]
    with processes(device) as joined, library_errors(
            output, f"--dataset {options['dataset'].text} with --attributor {attributor}"):
        store = explain_dataset(
            loaded.model, dataset, output, composite=composite, canonizers=canonizers,
            attributor=function, options=attributor_kwargs, target=target,
            times_output=True if options["times_output"] else None, dtype=options["dtype"],
            seed=options["seed"], batch_size=options["batch_size"] or DATASET_BATCH_SIZE,
            num_workers=options["workers"], device=device,
            mode="resume" if options["resume"] else "overwrite",
            retry_failed=options["retry_failed"], progress=False if quiet else None,
        )
    if joined.rank == 0 and not quiet:
        click.echo(
            f"funcattr explain: {len(store)} items of {options['dataset'].text}, model "
            f"{loaded.name}, attributor {attributor}, composite {composite_text}, canonizer "
            f"{canonizer_text}, target {target_text}"
        )
        _print_store(store, output)
    return store


def _print_store(store: DatasetStore, output: Path) -> None:
    """The counts, a table per class (the first :data:`_LISTED_CLASSES`) and the files."""
    summary = store.summary or {}
    sessions = len(store.sessions)
    again = f" (session {sessions} of this store)" if sessions > 1 else ""
    click.echo(f"  done {summary.get('done')}, failed {summary.get('failed')}, pending "
               f"{summary.get('pending')}{again}")
    rows = summary.get("classes", [])
    labelled = any("accuracy" in row for row in rows)
    width = max([10, *(len(str(row["name"])) for row in rows[-_LISTED_CLASSES - 1:])])
    header = f"  {'class':<{width}} {'items':>6} {'failed':>6}"
    header += f" {'accuracy':>8}" if labelled else ""
    click.echo(header + f" {'score':>8} {'relevance+ share':>16}")
    shown = [*rows[:-1][:_LISTED_CLASSES], rows[-1]] if rows else []
    for row in shown:
        line = f"  {str(row['name'])[:width]:<{width}} {row['items']:>6} {row['failed']:>6}"
        if labelled:
            line += f" {_cell(row.get('accuracy')):>8}"
        click.echo(line + f" {_cell(row['score_mean']):>8} "
                          f"{_cell(row['positive_share_mean']):>16}")
    if len(rows) - 1 > _LISTED_CLASSES:
        click.echo(f"  ({len(rows) - 1 - _LISTED_CLASSES} more classes in class_stats.csv)")
    for note in store_notes(store.failures()):
        click.echo(f"note: {note}", err=True)
    files = ", ".join(["store.zarr", *summary.get("files", [])])
    click.echo(f"wrote {files} to {output}/")
    click.echo(f"read it with funcattr.datasets.open_store({str(output)!r})")


def _cell(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _planned(samples: Sequence[Sample], count: int, relevance_format: str) -> list[str]:
    """The files a run on ``samples`` writes (to name a clash before any work)."""
    names = [s.name for s in samples if s.problem is None]
    planned = ["report.html", _SUMMARY_FILE]
    planned += [f"heatmaps/{_heatmap_name(n, r, count)}" for n in names for r in range(count)]
    planned += [f"inputs/{n}.png" for n in names]
    if relevance_format == "npz":
        planned.append("relevance.npz")
    elif relevance_format == "npy":
        planned += [f"relevance/{n}.npy" for n in names]
    return planned


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
                f"model.{hint} Pass e.g. --target pred.", param_hint="--target",
            )
        return TargetSpec("index", index)
    return target


def _describe_target(target: TargetSpec, loaded: LoadedModel) -> str:
    if target.kind == "pred":
        return "predicted class"
    if target.kind == "top":
        return f"top {target.value} classes"
    return f"class {target.value} ({loaded.class_name(int(target.value))})"


def _batches(items: Sequence, size: int) -> Iterator[Sequence]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def auto_batch_size(input_size: int) -> int:
    """``--batch-size`` by default: about :data:`STEP_PIXELS` input pixels per step (16 images
    at 64x64, one at 224x224), so that progress is reported per image where images are large
    and steps are slow."""
    return max(1, min(16, STEP_PIXELS // (input_size * input_size)))


def _explain_all(samples, loaded, fn, params, target, staging, options, values, *, quiet):
    count = target.count()
    attributor = options["attributor"]
    times_output = options["times_output"] or ATTRIBUTORS[attributor].scores
    records, relevance_all, entries = [], [], []
    skipped = [s for s in samples if s.problem is not None]
    readable = [s for s in samples if s.problem is None]
    # one noise stream for the whole run: batches get fresh noise, runs repeat exactly
    generator = torch.Generator(device=loaded.device).manual_seed(options["seed"])
    step = options["batch_size"] or auto_batch_size(loaded.input_size)
    progress = Progress(len(readable), f"{attributor} on {len(readable)} images", "images",
                        quiet=quiet)
    with progress:
        for batch in _batches(readable, step):
            kept, loaded_batch, unreadable = load_samples(
                batch, loaded.input_size, loaded.resize,
                allow_large=options["allow_large_images"])
            skipped += unreadable
            if not kept:
                progress.advance(len(batch))
                continue
            x = torch.stack([image for image, _ in loaded_batch]).to(loaded.device)
            with reported_errors(f"--model {loaded.name} failed on {_which(kept)}",
                                 fix="Fix the model's forward, or check --input-size and "
                                     "--normalization;",
                                 memory="lower --batch-size"), torch.no_grad():
                logits = loaded.model(x)
            probabilities = torch.softmax(logits.double(), dim=1)
            if target.kind == "top":
                chosen = logits.topk(int(target.value), dim=1).indices
            elif target.kind == "index":
                chosen = torch.full((len(kept), 1), int(target.value), device=loaded.device)
            else:
                chosen = logits.argmax(dim=1, keepdim=True)
            relevance = []
            for rank in range(count):
                seed_fn = one_hot(chosen[:, rank].clone(), times_output=times_output)
                failed = (f"--attributor {attributor} with --composite {options['composite']} "
                          f"and --canonizer {options['canonizer']} failed on --model "
                          f"{loaded.name}")
                with reported_errors(failed, fix="Try --canonizer auto or another --composite;",
                                     memory="lower --batch-size or --chunk-size"):
                    _, attribution = attribute(
                        attributor, fn, params, x, seed_fn, generator=generator,
                        chunk_size=options["chunk_size"] or auto_chunk_size(x), **values,
                    )
                relevance.append(attribution.detach().float().cpu())
            relevance_batch = torch.stack(relevance, dim=1).numpy()  # (B, K, C, H, W)
            for row, sample in enumerate(kept):
                image, mask = loaded_batch[row]
                records.append(_record_one(
                    sample, image, mask, relevance_batch[row], chosen[row].tolist(),
                    logits[row], probabilities[row], loaded, staging, options, count, entries,
                ))
                if options["relevance_format"] == "npz":
                    relevance_all.append(relevance_batch[row])
                elif options["relevance_format"] == "npy":
                    np.save(staging.path(f"relevance/{sample.name}.npy"), relevance_batch[row])
            progress.advance(len(batch))
    if not records:
        raise none_readable(len(samples), skipped)
    return records, relevance_all, entries, skipped


def _which(samples: Sequence[Sample]) -> str:
    names = ", ".join(s.source for s in samples[:2])
    return f"{names}{', ...' if len(samples) > 2 else ''} ({len(samples)} images)"


def _record_one(sample, image, mask, relevance, chosen, logits, probabilities, loaded, staging,
                options, count, entries) -> dict:
    input_png = png_bytes(Image.fromarray(
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
        "conversion": sample.conversion,
        "targets": [],
    }
    heatmaps = []
    for rank, index in enumerate(chosen):
        summed = relevance[rank].sum(axis=0)
        normed = normalize_relevance(summed, options["relevance_norm"])
        png = png_bytes(imgify(normed, vmin=0.0, vmax=1.0, cmap=options["cmap"],
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
        f"{settings['canonizer']}, target {settings['target']}"
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


