"""Images for the ``funcattr`` command: files and folders (with ``NAME_mask.png`` object
masks), the built-in demo samples, and loading them as resized, cropped tensors."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from pathlib import Path

import click
import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch import Tensor

#: File name suffixes of images found in folders (explicit files may be any image Pillow reads).
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
#: A file ``NAME_mask.png`` next to ``NAME.png`` is the object mask of ``NAME``, not an input.
MASK_SUFFIX = "_mask"


@dataclasses.dataclass
class Sample:
    """One input image: a name for its files, where it came from, and what is known about it.

    Attributes
    ----------
    name : str
        Unique file-name stem.
    source : str
        The file it came from (or ``demo:NAME``).
    image : PIL.Image.Image or pathlib.Path
        The image, or the file to read it from when needed.
    mask : PIL.Image.Image, pathlib.Path or None
        Object mask (non-zero inside), if known.
    label : int or None
        True class, if known.
    """

    name: str
    source: str
    image: Image.Image | Path
    mask: Image.Image | Path | None = None
    label: int | None = None


def _safe_stem(stem: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", stem).strip("._") or "image"


def _check_image_file(path: Path) -> None:
    try:
        with Image.open(path) as image:
            image.size  # noqa: B018  (reads the header)
    except (UnidentifiedImageError, OSError) as error:
        raise click.BadParameter(
            f"{path}: not an image file (expected PNG or JPEG). Pass image files or folders.",
            param_hint="IMAGES",
        ) from error


def collect_samples(
    inputs: Sequence[str | Path], *, recursive: bool = False, exclude: Path | None = None
) -> list[Sample]:
    """Find the input images: files as given, folders searched for PNG/JPEG files.

    Folders are searched non-recursively unless ``recursive``; files named ``*_mask.png`` in a
    folder are taken as the object mask of the image with the same stem, not as inputs. The
    order is the order of ``inputs``, sorted by path within each folder.

    Parameters
    ----------
    inputs : sequence of str or pathlib.Path
        Files and folders.
    recursive : bool
        Search sub-folders too.
    exclude : pathlib.Path or None
        A folder to leave out of the search (the output folder).

    Returns
    -------
    list of Sample
    """
    files: list[Path] = []
    excluded = exclude.resolve() if exclude is not None else None
    for given in inputs:
        path = Path(given)
        if not path.exists():
            raise click.BadParameter(f"{path}: no such file or folder. Check the path.",
                                     param_hint="IMAGES")
        if path.is_dir():
            candidates = path.rglob("*") if recursive else path.iterdir()
            found = sorted(
                p for p in candidates
                if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                and not p.stem.endswith(MASK_SUFFIX)
                and (excluded is None or not p.resolve().is_relative_to(excluded))
            )
            if not found:
                how = "or its sub-folders" if recursive else "(add --recursive for sub-folders)"
                raise click.BadParameter(
                    f"{path}: the folder holds no PNG or JPEG images {how}.", param_hint="IMAGES"
                )
            files += found
        else:
            files.append(path)
    samples: list[Sample] = []
    seen_files: set[Path] = set()
    seen_names: set[str] = set()
    for path in files:
        if path.resolve() in seen_files:
            continue
        _check_image_file(path)
        seen_files.add(path.resolve())
        stem = base = _safe_stem(path.stem)
        counter = 2
        while stem in seen_names:
            stem, counter = f"{base}-{counter}", counter + 1
        seen_names.add(stem)
        mask = path.with_name(f"{path.stem}{MASK_SUFFIX}.png")
        samples.append(Sample(stem, str(path), path, mask if mask.is_file() else None))
    return samples


def demo_samples(with_labels: bool = True, count: int | None = None) -> list[Sample]:
    """The demo's shipped sample images, with their masks (and true classes if ``with_labels``).

    With ``count``, the first ``count`` images of the demo's test split, generated.
    """
    from funcattr.demo import CLASSES, load_demo_samples, make_dataset
    from funcattr.demo.train import TEST_SEED

    if count is None:
        images, labels, masks, names = load_demo_samples()
    else:
        images, labels, masks = make_dataset(count, TEST_SEED)
        names = [f"{CLASSES[label]}_{index:04d}" for index, label in enumerate(labels.tolist())]
    samples = []
    for image, label, mask, name in zip(images, labels, masks, names, strict=True):
        pixels = torch.round(image.permute(1, 2, 0) * 255).to(torch.uint8).numpy()
        samples.append(Sample(
            name=name, source=f"demo:{name}", image=Image.fromarray(pixels, "RGB"),
            mask=Image.fromarray(mask.numpy().astype(np.uint8) * 255, "L"),
            label=int(label) if with_labels else None,
        ))
    return samples


def _open(obj: Image.Image | Path, source: str) -> Image.Image:
    if isinstance(obj, Image.Image):
        return obj
    try:
        with Image.open(obj) as image:
            image.load()
            return image
    except (UnidentifiedImageError, OSError) as error:
        raise click.ClickException(
            f"{source}: cannot read the image ({error}). Pass a readable PNG or JPEG file."
        ) from error


def _resize_crop(image: Image.Image, size: int, resize: int, resample: int) -> Image.Image:
    width, height = image.size
    scale = resize / min(width, height)
    new = (max(size, round(width * scale)), max(size, round(height * scale)))
    if new != (width, height):
        image = image.resize(new, resample)
    left, top = (new[0] - size) // 2, (new[1] - size) // 2
    if (left, top, new) != (0, 0, (size, size)):
        image = image.crop((left, top, left + size, top + size))
    return image


def load_sample(sample: Sample, size: int, resize: int) -> tuple[Tensor, Tensor | None]:
    """The image as a ``float32`` tensor ``[3, size, size]`` in ``[0, 1]``, and its mask.

    The image is turned upright (EXIF orientation), converted to RGB, resized so that its
    shorter side is ``resize`` (bilinear) and centre-cropped to ``size``; the mask likewise
    (nearest neighbour), ``True`` where it is brighter than 127.
    """
    original = ImageOps.exif_transpose(_open(sample.image, sample.source))
    image = _resize_crop(original.convert("RGB"), size, resize, Image.Resampling.BILINEAR)
    pixels = torch.from_numpy(np.array(image, dtype=np.uint8))
    tensor = pixels.permute(2, 0, 1).to(torch.float32) / 255.0
    mask = None
    if sample.mask is not None:
        mask_image = _open(sample.mask, f"mask of {sample.source}").convert("L")
        if mask_image.size != original.size:
            raise click.ClickException(
                f"{sample.source}: its mask has size {mask_image.size}, the image "
                f"{original.size}. Give the mask the size of the image."
            )
        mask_image = _resize_crop(mask_image, size, resize, Image.Resampling.NEAREST)
        mask = torch.from_numpy(np.array(mask_image) > 127)
    return tensor, mask
