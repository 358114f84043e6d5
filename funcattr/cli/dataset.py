"""Whole datasets from the shell: ``--dataset`` of ``funcattr explain`` and ``funcattr evaluate``.

``--dataset FOLDER`` (image files, class sub-folders as labels) or ``--dataset demo:N`` (N
generated demo images with object masks) makes a command write a resumable array store
through :func:`funcattr.datasets.explain_dataset` instead of one file per image: streamed in
batches, resumed when the same command runs again, split over the processes of ``torchrun``
(``torchrun --nproc-per-node N -m funcattr explain --dataset ...``). This module holds what
both commands share: the options, the dataset, the attributor's options, the processes and
the one-line errors (another run's store, a full disk, a bad folder). :mod:`funcattr.datasets`
(and zarr) load only when ``--dataset`` is given.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
import torch

from funcattr.attribution.registry import ATTRIBUTORS
from funcattr.attribution.relevance import relevance
from funcattr.cli.attributors import CHUNK_PIXELS
from funcattr.cli.models import LoadedModel
from funcattr.cli.options import explicit
from funcattr.cli.output import reported_errors
from funcattr.demo import IMAGE_SIZE

if TYPE_CHECKING:
    from funcattr.datasets.distributed import Processes

__all__ = [
    "DATASET_BATCH_SIZE",
    "DATASET_OPTIONS",
    "DatasetSpec",
    "DatasetType",
    "check_dataset_use",
    "dataset_attributor",
    "dataset_device",
    "dataset_has_masks",
    "dataset_options",
    "library_errors",
    "load_dataset",
    "processes",
    "store_notes",
]

#: ``--batch-size`` with ``--dataset`` when none is given: items per batch and per store chunk.
DATASET_BATCH_SIZE = 32
#: The options that only apply with ``--dataset``.
DATASET_OPTIONS = ("workers", "dtype", "resume", "retry_failed")
_DEMO = "demo:"


@dataclass(frozen=True)
class DatasetSpec:
    """``--dataset``: a folder of images, or ``demo:N`` generated demo images."""

    text: str
    folder: Path | None = None
    size: int = 0

    @property
    def demo(self) -> bool:
        """The generated demo images."""
        return self.folder is None


class DatasetType(click.ParamType):
    """``--dataset FOLDER`` or ``--dataset demo:N``."""

    name = "FOLDER|demo:N"

    def convert(self, value, param, ctx):
        if isinstance(value, DatasetSpec):
            return value
        text = str(value).strip()
        if text.lower().startswith(_DEMO):
            count = text[len(_DEMO):].replace("_", "")
            if not count.isdigit() or int(count) < 1:
                self.fail(f"{text!r}: expected demo:N with a number of images N >= 1, e.g. "
                          f"demo:1000.", param, ctx)
            return DatasetSpec(text, None, int(count))
        if not text:
            self.fail("expected a folder of images or demo:N, e.g. demo:1000.", param, ctx)
        return DatasetSpec(text, Path(text))


def dataset_options(function: Callable | None = None, *,
                    batch_size: bool = False) -> Callable:
    """The ``--dataset`` options (shared by ``explain`` and ``evaluate``); ``batch_size``
    adds ``--batch-size`` (``explain`` has its own)."""

    def decorate(function: Callable) -> Callable:
        options = [
            click.option("--dataset", "-d", type=DatasetType(), default=None,
                         metavar="FOLDER|demo:N",
                         help="Explain a whole dataset into a resumable store in --output "
                              "instead of IMAGES: a FOLDER of images (class sub-folders as "
                              "labels) or demo:N (N generated demo images with masks). "
                              "Splits the items over the processes of torchrun."),
            click.option("--workers", type=click.IntRange(min=0), default=0,
                         show_default=True,
                         help="--dataset: DataLoader processes per rank loading images."),
            click.option("--dtype", type=click.Choice(["float16", "float32"]),
                         default="float16", show_default=True,
                         help="--dataset: dtype of the stored relevance."),
            click.option("--resume/--overwrite", default=True, show_default=True,
                         help="--dataset: continue the store in --output (the same command "
                              "after a crash) or delete it and start anew."),
            click.option("--retry-failed", is_flag=True,
                         help="--dataset: compute the items that failed before again."),
        ]
        if batch_size:
            options.append(click.option(
                "--batch-size", "-b", type=click.IntRange(min=1), default=None,
                help=f"--dataset: items per batch and per store chunk [default: "
                     f"{DATASET_BATCH_SIZE}]."))
        for option in reversed(options):
            function = option(function)
        return function

    return decorate if function is None else decorate(function)


def check_dataset_use(ctx: click.Context, images_only: Iterable[str]) -> None:
    """Refuse ``--dataset`` with IMAGES, a dataset option without ``--dataset``, and an option
    of the per-image output (``images_only``) with ``--dataset``."""
    dataset = ctx.params.get("dataset")
    if dataset is None:
        for name in DATASET_OPTIONS:
            if explicit(ctx, name):
                flag = {"resume": "--resume/--overwrite"}.get(name, "--" + name.replace("_", "-"))
                raise click.UsageError(
                    f"{flag} applies to --dataset (a store of a whole dataset), not to IMAGES. "
                    f"Add --dataset FOLDER or --dataset demo:N, or leave {flag} out.")
        return
    if ctx.params.get("images"):
        raise click.UsageError(
            "--dataset and IMAGES: give one. IMAGES are explained one file each (heatmaps, "
            "report); --dataset writes a store of a whole dataset.")
    for name in images_only:
        if explicit(ctx, name):
            flag = "--" + name.replace("_", "-")
            raise click.UsageError(
                f"{flag} applies to IMAGES (the per-image output), not to --dataset, whose "
                f"store holds the relevance itself. Leave {flag} out.")


def load_dataset(spec: DatasetSpec, loaded: LoadedModel) -> torch.utils.data.Dataset:
    """The dataset of ``--dataset`` for ``loaded``'s input: the demo images (64x64, only for
    a model of that input size), or an image folder resized as the per-image command does
    (shorter side to the model's resize, centre crop to its input size)."""
    from funcattr.datasets import DemoDataset, ImageFolder

    if spec.demo:
        if loaded.input_size != IMAGE_SIZE:
            raise click.BadParameter(
                f"{spec.text} gives {IMAGE_SIZE}x{IMAGE_SIZE} demo images, but --model "
                f"{loaded.name} takes {loaded.input_size}x{loaded.input_size}. Pass "
                f"--input-size {IMAGE_SIZE}, or a folder of images.", param_hint="--dataset")
        return DemoDataset(spec.size)
    try:
        return ImageFolder(spec.folder, size=loaded.input_size, resize=loaded.resize)
    except ValueError as error:
        raise click.BadParameter(f"{spec.folder}: {str(error).split(': ', 1)[-1]}",
                                 param_hint="--dataset") \
            from error


def dataset_has_masks(dataset: torch.utils.data.Dataset) -> bool:
    """Whether the items have object masks: the demo's do; a folder's first image needs a
    ``NAME_mask.png`` beside it."""
    from funcattr.datasets import DemoDataset
    from funcattr.datasets.sources import MASK_SUFFIX

    if isinstance(dataset, DemoDataset):
        return True
    first = Path(dataset.samples[0][0])
    return first.with_name(f"{first.stem}{MASK_SUFFIX}.png").is_file()


def dataset_device(device: str) -> str:
    """The device of this process: ``auto`` is the library's default (CUDA if available,
    ``cuda:LOCAL_RANK`` under torchrun, else the CPU); ``cuda`` under torchrun is the local
    rank's GPU."""
    local_rank = os.environ.get("LOCAL_RANK")
    if device in ("auto", "cuda") and torch.cuda.is_available():
        return f"cuda:{local_rank or 0}"
    if device == "auto":
        return "cpu"
    return device


def dataset_attributor(name: str, fn: Callable, values: dict[str, Any],
                       chunk_size: int | None, input_size: int) -> tuple[Callable, dict]:
    """The pure attributor and its options for ``explain_dataset``, as the per-image command
    runs them: the options the attributor declares (None: its default), ``chunk_size`` (given,
    or about :data:`~funcattr.cli.attributors.CHUNK_PIXELS` pixels per step) where it takes
    one, and, for the gradient of a composite in the Gradient x Input form (AttnLRP),
    :func:`funcattr.relevance`."""
    spec = ATTRIBUTORS[name]
    if spec.name == "gradient" and getattr(fn, "form", None) == "gradient_x_input" and (
            getattr(fn, "rules", None)):
        return relevance, {}
    options = {option.name: values[option.name] for option in spec.options
               if values.get(option.name) is not None}
    if spec.chunked:
        options["chunk_size"] = chunk_size or max(1, CHUNK_PIXELS // (input_size * input_size))
    return spec.function, options


@contextmanager
def processes(device: str | None) -> Iterator[Processes]:
    """This process's place among those of ``torchrun`` (one process without it); the process
    group is started once for all the command's runs and closed at the end."""
    from funcattr.datasets.distributed import Processes

    with reported_errors("starting the processes of torchrun",
                         fix="Check the torchrun rendezvous options;"):
        joined = Processes.start(device)
    try:
        yield joined
    finally:
        joined.close()


@contextmanager
def library_errors(output: Path, what: str) -> Iterator[None]:
    """The errors of a dataset run as one line: another run's store (with what differs), a
    full disk, anything else (as :func:`~funcattr.cli.output.reported_errors`)."""
    from funcattr.datasets import StoreFullError, StoreSettingsError

    try:
        with reported_errors(what, memory="lower --batch-size (or --chunk-size)"):
            try:
                yield
            except StoreSettingsError as error:
                raise click.BadParameter(
                    f"{output} holds a store written by another run, which this command "
                    f"cannot continue: {'; '.join(error.differences)}. Pass --overwrite to "
                    f"start a new run there, or choose another --output.",
                    param_hint="--output",
                ) from error
            except StoreFullError as error:
                raise click.ClickException(
                    f"--output {output}: the disk is full ({os.strerror(error.errno)}). The "
                    f"items done "
                    f"so far are kept: free space and run the same command again (it "
                    f"continues), or choose another --output."
                ) from error
    except click.ClickException as error:
        rank = int(os.environ.get("RANK", 0))
        if int(os.environ.get("WORLD_SIZE", 1)) > 1 and rank:
            error.message = f"rank {rank}: {error.message}"
        raise


def store_notes(failures: Sequence[tuple[int, str, str]], limit: int = 5) -> list[str]:
    """Notes on the failed items: the first ``limit`` with their reasons, then a count."""
    notes = [f"item {index} ({source or 'no source'}) failed: {error}"
             for index, source, error in failures[:limit]]
    if len(failures) > limit:
        notes.append(f"{len(failures) - limit} more items failed; see "
                     f"open_store(...).failures()")
    return notes
