"""Dataset sources: the procedural demo images and folders of image files."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps
from torch import Tensor

from funcattr.datasets.items import Item
from funcattr.demo import CLASSES, make_dataset
from funcattr.demo.train import TEST_SEED

__all__ = ["IMAGE_EXTENSIONS", "MASK_SUFFIX", "DemoDataset", "ImageFolder"]

#: File name endings read as images by :class:`ImageFolder` (case-insensitive).
IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff",
                                     ".webp", ".ppm")
#: A file ``NAME_mask.png`` beside ``NAME.png`` is the object mask of ``NAME``, not an item.
MASK_SUFFIX = "_mask"


class DemoDataset(torch.utils.data.Dataset):
    """``size`` procedurally generated demo images with object masks, deterministic per index.

    Item ``i`` is :func:`funcattr.demo.sample` ``(i, seed)``: a ``(3, 64, 64)`` float32 image,
    its class (an index into :data:`funcattr.demo.CLASSES`) and its boolean object mask.
    ``__getitems__`` renders consecutive indices at once (about 3x faster than one by one).

    Parameters
    ----------
    size : int
        Number of items.
    seed : int
        Dataset seed; the default is the demo model's test split (it was trained on seed 0).
    draw_objects : bool
        False leaves the objects out (background only; labels and masks kept).

    Examples
    --------
    >>> dataset = DemoDataset(10_000)
    >>> item = dataset[3]
    >>> tuple(item.image.shape), item.label, tuple(item.mask.shape)
    ((3, 64, 64), 1, (64, 64))
    """

    classes: tuple[str, ...] = CLASSES

    def __init__(self, size: int = 10_000, seed: int = TEST_SEED, *,
                 draw_objects: bool = True) -> None:
        for name, value in (("size", size), ("seed", seed)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(
                    f"DemoDataset({name}={value!r}): expected an int >= 0. Pass e.g. "
                    f"DemoDataset(10_000)."
                )
        self.size, self.seed, self.draw_objects = size, seed, bool(draw_objects)

    def __len__(self) -> int:
        return self.size

    def _index(self, index: int) -> int:
        if not -self.size <= index < self.size:
            raise IndexError(f"DemoDataset: index {index} out of range for {self.size} items")
        return index % self.size

    def _items(self, start: int, count: int) -> list[Item]:
        images, labels, masks = make_dataset(count, self.seed, start=start,
                                             draw_objects=self.draw_objects)
        return [Item(images[k], int(labels[k]), masks[k], f"demo:{self.seed}:{start + k}")
                for k in range(count)]

    def __getitem__(self, index: int) -> Item:
        return self._items(self._index(index), 1)[0]

    def __getitems__(self, indices: Sequence[int]) -> list[Item]:
        indices = [self._index(i) for i in indices]
        items: list[Item] = []
        start = 0
        for end in range(1, len(indices) + 1):  # runs of consecutive indices render together
            if end == len(indices) or indices[end] != indices[end - 1] + 1:
                items += self._items(indices[start], end - start)
                start = end
        return items

    def fingerprint(self) -> str:
        """What identifies the items: the generator's parameters."""
        return f"DemoDataset(size={self.size}, seed={self.seed}, draw_objects={self.draw_objects})"

    def __repr__(self) -> str:
        return self.fingerprint()


def _resize_crop(image: Image.Image, size: tuple[int, int], resample: int,
                 resize: int | None = None) -> Image.Image:
    """Resize so that the image covers ``size`` (height, width) (or, with ``resize``, so that
    its shorter side is ``resize``, at least covering ``size``), then centre-crop to it."""
    height, width = size
    scale = max(height / image.height, width / image.width)
    if resize is not None:
        scale = resize / min(image.height, image.width)
    new = (max(width, round(image.width * scale)), max(height, round(image.height * scale)))
    if new != image.size:
        image = image.resize(new, resample)
    left, top = (new[0] - width) // 2, (new[1] - height) // 2
    if (left, top, new) != (0, 0, (width, height)):
        image = image.crop((left, top, left + width, top + height))
    return image


def _is_image(path: Path, extensions: tuple[str, ...]) -> bool:
    return path.suffix.lower() in extensions and not path.stem.endswith(MASK_SUFFIX)


def _images_under(folder: Path, extensions: tuple[str, ...], recursive: bool) -> list[Path]:
    if not recursive:
        return sorted(p for p in folder.iterdir() if p.is_file() and _is_image(p, extensions))
    found = []
    for directory, subdirectories, files in os.walk(folder):
        subdirectories.sort()
        found += [Path(directory, name) for name in sorted(files)
                  if _is_image(Path(name), extensions)]
    return found


class ImageFolder(torch.utils.data.Dataset):
    """Image files in a folder: class sub-folders as labels (as torchvision's ``ImageFolder``),
    or the files of the folder itself without labels.

    A file ``NAME_mask.png`` beside ``NAME.png`` is its object mask (non-zero inside), not an
    item. An item's source is its file path; ``samples`` lists ``(path, label)`` per item.
    Images are turned upright (EXIF), converted to RGB and, with ``size``, resized to cover
    ``size`` and centre-cropped to it (masks alike, nearest neighbour). A file that cannot
    be read fails when its item is loaded, and the run records it.

    Parameters
    ----------
    root : str or Path
        The folder.
    size : int or (int, int), optional
        Height and width of every image; ``None`` keeps each file's size (then every image must
        have the size of the first, or its item fails).
    resize : int, optional
        With ``size``: the shorter side of each image before the centre crop (as torchvision's
        ``Resize(256)`` then ``CenterCrop(224)``); default: just enough to cover ``size``.
    transform : callable, optional
        ``PIL image -> tensor``, instead of the conversion to a ``float32`` ``[0, 1]`` tensor
        (after the resize); e.g. a torchvision transform with the model's normalisation.
    extensions : tuple of str
        File name endings read as images.

    Raises
    ------
    ValueError
        If ``root`` is no folder or holds no image (in it or in its sub-folders).
    """

    def __init__(self, root: str | os.PathLike, *, size: int | tuple[int, int] | None = None,
                 resize: int | None = None,
                 transform: Callable[[Image.Image], Tensor] | None = None,
                 extensions: Sequence[str] = IMAGE_EXTENSIONS) -> None:
        owner = "ImageFolder"
        self.root = Path(root)
        if not self.root.is_dir():
            what = "does not exist" if not self.root.exists() else "is a file"
            raise ValueError(
                f"{owner}(root={str(root)!r}): expected a folder of images (class sub-folders "
                f"as labels), got a path that {what}. Check the path."
            )
        if size is not None:
            pair = (size, size) if isinstance(size, int) else tuple(size)
            if len(pair) != 2 or any(isinstance(s, bool) or not isinstance(s, int) or s < 1
                                     for s in pair):
                raise ValueError(
                    f"{owner}(size={size!r}): expected an int >= 1 or a pair (height, width)."
                )
            size = pair
        if resize is not None and (isinstance(resize, bool) or not isinstance(resize, int)
                                   or resize < 1 or size is None):
            raise ValueError(
                f"{owner}(resize={resize!r}): expected an int >= 1 together with size=..., "
                f"got it {'without size' if size is None else 'of another kind'}."
            )
        self.size, self.resize = size, resize
        self.transform = transform
        self.extensions = tuple(e.lower() for e in extensions)
        folders = sorted(p for p in self.root.iterdir() if p.is_dir())
        files = {f.name: _images_under(f, self.extensions, True) for f in folders}
        self.classes: tuple[str, ...] = tuple(name for name, found in files.items() if found)
        if self.classes:
            self.files = [(path, label) for label, name in enumerate(self.classes)
                          for path in files[name]]
        else:
            self.files = [(path, -1) for path in _images_under(self.root, self.extensions, False)]
        #: ``(path, label)`` per item, as in torchvision (``-1``: no label).
        self.samples = [(str(path), label) for path, label in self.files]
        if not self.files:
            raise ValueError(
                f"{owner}(root={str(root)!r}): expected image files ({', '.join(self.extensions)})"
                f" in the folder or in its class sub-folders, found none. Check the path and the "
                f"file endings (extensions=...)."
            )

    def __len__(self) -> int:
        return len(self.files)

    def _load(self, path: Path, mode: str, resample: int) -> Image.Image:
        with Image.open(path) as opened:
            image = ImageOps.exif_transpose(opened).convert(mode)
        if self.size is not None:
            image = _resize_crop(image, self.size, resample, self.resize)
        return image

    def __getitem__(self, index: int) -> Item:
        path, label = self.files[index]
        image = self._load(path, "RGB", Image.Resampling.BILINEAR)
        if self.transform is not None:
            tensor = self.transform(image)
        else:
            tensor = torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1)
            tensor = tensor.to(torch.float32) / 255.0
        mask = None
        mask_path = path.with_name(f"{path.stem}{MASK_SUFFIX}.png")
        if mask_path.is_file():
            mask = torch.from_numpy(
                np.array(self._load(mask_path, "L", Image.Resampling.NEAREST)) > 127)
        return Item(tensor, None if label < 0 else label, mask, str(path))

    def fingerprint(self) -> str:
        """What identifies the items: file names and sizes, the image size and transform."""
        digest = hashlib.sha256()
        for path, label in self.files:
            digest.update(f"{path.relative_to(self.root).as_posix()}\0{label}\0"
                          f"{path.stat().st_size}\n".encode())
        return (f"ImageFolder(files={len(self.files)}, sha256={digest.hexdigest()[:16]}, "
                f"size={self.size}, "
                + ("" if self.resize is None else f"resize={self.resize}, ")
                + f"transform={self.transform!r})")

    def __repr__(self) -> str:
        return (f"ImageFolder(root={str(self.root)!r}, items={len(self)}, "
                f"classes={len(self.classes)})")


def dataset_description(dataset: Any) -> dict[str, Any]:
    """The dataset's identity as recorded in a store: its length and its ``fingerprint()``, or
    its type where it has none (then a different dataset of the same type and length passes)."""
    fingerprint = getattr(dataset, "fingerprint", None)
    if callable(fingerprint):
        return {"size": len(dataset), "fingerprint": str(fingerprint())}
    kind = type(dataset)
    return {"size": len(dataset), "type": f"{kind.__module__}.{kind.__qualname__}"}
