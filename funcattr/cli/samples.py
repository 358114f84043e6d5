"""Images for the ``funcattr`` command: files and folders (with ``NAME_mask.png`` object
masks), the built-in demo samples, and loading them as resized, cropped tensors.

Only regular files are opened (a named pipe called ``x.png`` would block the read forever).
Images above Pillow's decompression-bomb limit are refused unless ``allow_large``. A file found
in a folder that cannot be read is skipped (its :attr:`Sample.problem` says why) rather than
ending the run; a file named on the command line that cannot be read is an error. High bit
depths are scaled, not clipped: a 16-bit grayscale PNG is divided by 65535
(:attr:`Sample.conversion` says so).
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

import click
import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch import Tensor

__all__ = ["IMAGE_SUFFIXES", "MASK_SUFFIX", "Sample", "UnreadableImage", "collect_samples",
           "demo_samples", "load_sample", "load_samples", "none_readable"]

#: File name suffixes of images found in folders (explicit files may be any image Pillow reads).
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
#: A file ``NAME_mask.png`` next to ``NAME.png`` is the object mask of ``NAME``, not an input.
MASK_SUFFIX = "_mask"
#: Grayscale modes with more than 8 bits (Pillow opens a 16-bit PNG as ``I;16``).
_DEEP_GRAY = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")
_LARGE_FIX = "If you trust the file, pass --allow-large-images."


class UnreadableImage(click.ClickException):
    """An image file that cannot be read; ``reason`` says why (without the file name)."""

    def __init__(self, source: str, reason: str, fix: str) -> None:
        super().__init__(f"{source}: {reason}. {fix}")
        self.reason = reason


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
    explicit : bool
        Named on the command line (an unreadable file is then an error, not skipped).
    problem : str or None
        Why the file cannot be read (found in a folder, it is skipped).
    conversion : str or None
        How its pixels were turned into ``[0, 1]`` RGB, when that was not plain 8-bit RGB
        (set by :func:`load_sample`).
    """

    name: str
    source: str
    image: Image.Image | Path
    mask: Image.Image | Path | None = None
    label: int | None = None
    explicit: bool = True
    problem: str | None = None
    conversion: str | None = None


def _safe_stem(stem: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", stem).strip("._") or "image"


@contextlib.contextmanager
def _pillow_limits(allow_large: bool) -> Iterator[None]:
    """Pillow's decompression-bomb guard: above its limit an error (its warning too), or off."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        previous = Image.MAX_IMAGE_PIXELS
        if allow_large:
            Image.MAX_IMAGE_PIXELS = None
        try:
            yield
        finally:
            Image.MAX_IMAGE_PIXELS = previous


def _too_large(path: Path) -> str:
    limit = Image.MAX_IMAGE_PIXELS
    with _pillow_limits(True), Image.open(path) as image:  # the header only
        width, height = image.size
    return (f"expected at most {limit:,} pixels (Pillow's guard against decompression bombs), "
            f"got {width * height:,} ({width}x{height})")


def _open(obj: Image.Image | Path, source: str, allow_large: bool,
          fix: str = "Pass a readable PNG or JPEG file.") -> Image.Image:
    """The image, decoded; :class:`UnreadableImage` if it cannot be."""
    if isinstance(obj, Image.Image):
        return obj
    try:
        with _pillow_limits(allow_large), Image.open(obj) as image:
            image.load()
            return image
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise UnreadableImage(source, _too_large(obj), _LARGE_FIX) from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as error:
        raise UnreadableImage(source, f"cannot read the image ({error})", fix) from error


def _header_problem(path: Path, allow_large: bool) -> str | None:
    """Why ``path`` is not an image Pillow can open (reading the header only), or None."""
    try:
        with _pillow_limits(allow_large), Image.open(path) as image:
            image.size  # noqa: B018  (reads the header)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        return _too_large(path)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        return "not an image file (expected PNG or JPEG)"
    return None


def collect_samples(
    inputs: Sequence[str | Path], *, recursive: bool = False, exclude: Path | None = None,
    allow_large: bool = False,
) -> list[Sample]:
    """Find the input images: files as given, folders searched for PNG/JPEG files.

    Folders are searched non-recursively unless ``recursive``; files named ``*_mask.png`` in a
    folder are taken as the object mask of the image with the same stem, not as inputs. The
    order is the order of ``inputs``, sorted by path within each folder. A file named in
    ``inputs`` must be a readable image; one found in a folder that is not is returned with
    its :attr:`Sample.problem` set.

    Parameters
    ----------
    inputs : sequence of str or pathlib.Path
        Files and folders.
    recursive : bool
        Search sub-folders too.
    exclude : pathlib.Path or None
        The output folder: left out of the search; an input in it is an error (the folder is
        replaced by the run).
    allow_large : bool
        Accept images above Pillow's decompression-bomb limit.

    Returns
    -------
    list of Sample
    """
    files: list[tuple[Path, bool]] = []
    excluded = exclude.resolve() if exclude is not None else None
    for given in inputs:
        path = Path(given)
        if not path.exists():
            raise click.BadParameter(f"{path}: no such file or folder. Check the path.",
                                     param_hint="IMAGES")
        if excluded is not None and path.resolve().is_relative_to(excluded):
            where = "is" if path.resolve() == excluded else "lies inside"
            raise click.BadParameter(
                f"{path} {where} the output folder {exclude}, which each run replaces whole. "
                f"Choose another --output.", param_hint="IMAGES",
            )
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
            files += [(p, False) for p in found]
        elif not path.is_file():
            raise click.BadParameter(
                f"{path}: not a regular file (a named pipe or a device). Pass image files or "
                f"folders.", param_hint="IMAGES",
            )
        else:
            files.append((path, True))
    samples: list[Sample] = []
    seen_files: set[Path] = set()
    seen_names: set[str] = set()
    for path, explicit in files:
        if path.resolve() in seen_files:
            continue
        problem = _header_problem(path, allow_large)
        if problem is not None and explicit:
            fix = _LARGE_FIX if "decompression" in problem else "Pass image files or folders."
            raise click.BadParameter(f"{path}: {problem}. {fix}", param_hint="IMAGES")
        seen_files.add(path.resolve())
        stem = base = _safe_stem(path.stem)
        counter = 2
        while stem in seen_names:
            stem, counter = f"{base}-{counter}", counter + 1
        seen_names.add(stem)
        mask = path.with_name(f"{path.stem}{MASK_SUFFIX}.png")
        samples.append(Sample(stem, str(path), path, mask if mask.is_file() else None,
                              explicit=explicit, problem=problem))
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


def _deep_gray(image: Image.Image) -> tuple[Image.Image, str]:
    """A grayscale image of more than 8 bits as a float (``'F'``) image in ``[0, 1]``, and what
    was done: 16 bits are divided by 65535 (not clipped to 255 as ``convert('RGB')`` does)."""
    array = np.asarray(image, dtype=np.float64)
    low, high = (float(array.min()), float(array.max())) if array.size else (0.0, 0.0)
    if image.mode.startswith("I;16") or (image.mode == "I" and low >= 0 and high <= 65535):
        bits = "16-bit" if image.mode.startswith("I;16") else "integer (values within 16 bits)"
        offset, scale, note = 0.0, 65535.0, f"{bits} grayscale, divided by 65535"
    elif image.mode == "F" and low >= 0 and high <= 1:
        offset, scale, note = 0.0, 1.0, "floating-point grayscale in [0, 1], kept"
    else:
        kind = "integer" if image.mode == "I" else "floating-point"
        offset, scale = low, (high - low) or 1.0
        note = f"{kind} grayscale, scaled from its range {low:g}..{high:g} to [0, 1]"
    return Image.fromarray(((array - offset) / scale).astype(np.float32), "F"), note


def _mask_image(image: Image.Image) -> Image.Image:
    """An ``'L'`` mask image, 255 where the mask is brighter than half its range."""
    if image.mode in _DEEP_GRAY:
        gray, _ = _deep_gray(image)
        return Image.fromarray((np.asarray(gray) > 0.5).astype(np.uint8) * 255, "L")
    return image.convert("L")


def load_sample(sample: Sample, size: int, resize: int, *,
                allow_large: bool = False) -> tuple[Tensor, Tensor | None]:
    """The image as a ``float32`` tensor ``[3, size, size]`` in ``[0, 1]``, and its mask.

    The image is turned upright (EXIF orientation), converted to RGB (16-bit grayscale divided
    by 65535, palette images through RGBA, alpha dropped), resized so that its shorter side is
    ``resize`` (bilinear) and centre-cropped to ``size``; the mask likewise (nearest
    neighbour), ``True`` where it is brighter than half its range. A file that cannot be read
    raises :class:`UnreadableImage`.
    """
    if sample.problem is not None:
        raise UnreadableImage(sample.source, sample.problem, "Pass a readable image.")
    original = ImageOps.exif_transpose(_open(sample.image, sample.source, allow_large))
    if original.mode in _DEEP_GRAY:
        gray, sample.conversion = _deep_gray(original)
        gray = _resize_crop(gray, size, resize, Image.Resampling.BILINEAR)
        channel = torch.from_numpy(np.asarray(gray, dtype=np.float32).clip(0, 1))
        tensor = channel.expand(3, size, size).contiguous()
    else:
        try:  # palette images through RGBA: no warning about transparency given as bytes
            image = original.convert("RGBA") if original.mode in ("P", "PA") else original
            image = image.convert("RGB")
        except ValueError as error:
            raise UnreadableImage(sample.source, f"cannot convert its colour mode "
                                  f"{original.mode} to RGB ({error})",
                                  "Save it as an RGB or grayscale PNG.") from error
        image = _resize_crop(image, size, resize, Image.Resampling.BILINEAR)
        pixels = torch.from_numpy(np.array(image, dtype=np.uint8))
        tensor = pixels.permute(2, 0, 1).to(torch.float32) / 255.0
    mask = None
    if sample.mask is not None:
        try:
            mask_image = _mask_image(_open(sample.mask, sample.source, allow_large))
        except UnreadableImage as error:
            name = getattr(sample.mask, "name", "mask")
            raise UnreadableImage(sample.source, f"its mask {name}: {error.reason}",
                                  "Fix or remove the mask file.") from error
        if mask_image.size != original.size:
            raise click.ClickException(
                f"{sample.source}: its mask has size {mask_image.size}, the image "
                f"{original.size}. Give the mask the size of the image."
            )
        mask_image = _resize_crop(mask_image, size, resize, Image.Resampling.NEAREST)
        mask = torch.from_numpy(np.array(mask_image) > 127)
    return tensor, mask


def load_samples(samples: Sequence[Sample], size: int, resize: int, *, allow_large: bool = False
                 ) -> tuple[list[Sample], list[tuple[Tensor, Tensor | None]], list[Sample]]:
    """:func:`load_sample` for each sample: ``(kept, their (image, mask) pairs, skipped)``.

    A file found in a folder that cannot be read is skipped (its :attr:`Sample.problem` says
    why); one named on the command line raises :class:`UnreadableImage`.
    """
    kept, pairs, skipped = [], [], []
    for sample in samples:
        try:
            pairs.append(load_sample(sample, size, resize, allow_large=allow_large))
        except UnreadableImage as error:
            if sample.explicit:
                raise
            sample.problem = error.reason
            skipped.append(sample)
            continue
        kept.append(sample)
    return kept, pairs, skipped


def none_readable(count: int, skipped: Sequence[Sample]) -> click.ClickException:
    """The error when none of ``count`` images could be read (the first reasons named)."""
    reasons = "; ".join(f"{s.source}: {s.problem}" for s in skipped[:3])
    more = ", ..." if len(skipped) > 3 else ""
    return click.ClickException(f"none of the {count} images could be read ({reasons}{more}). "
                                f"Pass readable PNG or JPEG files.")
