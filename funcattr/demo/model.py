"""The demo classifier :class:`DemoNet` and loaders for its shipped weights and samples."""

from __future__ import annotations

import json
from importlib import resources

import numpy as np
import torch
from PIL import Image
from torch import nn

from funcattr.demo.data import CLASSES, IMAGE_SIZE, NUM_CLASSES

__all__ = [
    "SAMPLES_DIR",
    "WEIGHTS_FILE",
    "DemoNet",
    "load_demo_model",
    "load_demo_samples",
]

#: Name of the weights file inside the ``funcattr.demo`` package.
WEIGHTS_FILE = "weights.pt"
#: Name of the sample folder inside the ``funcattr.demo`` package.
SAMPLES_DIR = "samples"

#: Output channels of the convolutions; ``"M"`` marks a 2x2 max-pooling layer.
_CONFIG: tuple[int | str, ...] = (16, "M", 32, "M", 64, 64, "M", 128)


class DemoNet(nn.Module):
    """Small VGG-style CNN for the procedural shape images.

    The network consists only of standard modules, so that rule-based attribution methods
    apply module by module: ``features`` is an :class:`~torch.nn.Sequential` of 3x3
    :class:`~torch.nn.Conv2d` (with bias) -> :class:`~torch.nn.BatchNorm2d` ->
    :class:`~torch.nn.ReLU` blocks with 2x2 :class:`~torch.nn.MaxPool2d` layers in between
    (spatial size 64 -> 32 -> 16 -> 8), and ``classifier`` is an :class:`~torch.nn.Sequential`
    of :class:`~torch.nn.AdaptiveAvgPool2d`, :class:`~torch.nn.Flatten` and one
    :class:`~torch.nn.Linear` layer producing the class logits.

    The input is an image batch ``[N, 3, 64, 64]`` with values in ``[0, 1]`` (no further
    normalisation; suitable bounds for a ZBox rule in the first layer are 0 and 1). Each
    convolution is followed by a batch normalisation, which canonizers can merge into it.

    Parameters
    ----------
    num_classes : int, optional
        Number of output classes.
    dtype : torch.dtype or None, optional
        Dtype of the parameters; the default dtype if None.
    """

    def __init__(self, num_classes: int = NUM_CLASSES, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = 3
        for item in _CONFIG:
            if item == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                out = int(item)
                layers += [
                    nn.Conv2d(channels, out, kernel_size=3, padding=1, dtype=dtype),
                    nn.BatchNorm2d(out, dtype=dtype),
                    nn.ReLU(),
                ]
                channels = out
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(channels, num_classes, dtype=dtype),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the class logits of an image batch.

        Parameters
        ----------
        x : torch.Tensor
            Images of shape ``[N, 3, H, W]`` with values in ``[0, 1]``.

        Returns
        -------
        torch.Tensor
            Logits of shape ``[N, num_classes]``.
        """
        return self.classifier(self.features(x))


def load_demo_model(dtype: torch.dtype | None = torch.float32) -> DemoNet:
    """Load the pretrained :class:`DemoNet` shipped with the package, in eval mode.

    Parameters
    ----------
    dtype : torch.dtype or None, optional
        Dtype of the returned model (the weights are stored as ``float32``); the default dtype
        if None.

    Returns
    -------
    DemoNet
        The trained model, in eval mode, with ``requires_grad`` left on for its parameters.
    """
    model = DemoNet(dtype=dtype)
    with resources.files(__package__).joinpath(WEIGHTS_FILE).open("rb") as file:
        state = torch.load(file, map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    return model.eval()


def _read_png(name: str, mode: str) -> np.ndarray:
    """Read a PNG file from the package's sample folder as an array."""
    path = resources.files(__package__).joinpath(SAMPLES_DIR, name)
    with path.open("rb") as file, Image.open(file) as image:
        return np.asarray(image.convert(mode))


def load_sample_index() -> dict:
    """Return the parsed ``samples/index.json`` shipped with the package.

    Returns
    -------
    dict
        With keys ``"classes"``, ``"seed"`` (the test-split seed the samples come from),
        ``"image_size"`` and ``"samples"``, a list of records with keys ``"name"``,
        ``"index"`` (sample index in the test split), ``"file"``, ``"mask"`` (file names in
        the sample folder), ``"label"`` and ``"class"``.
    """
    path = resources.files(__package__).joinpath(SAMPLES_DIR, "index.json")
    return json.loads(path.read_text(encoding="utf-8"))


def load_demo_samples() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[str]]:
    """Load the sample images shipped with the package.

    The samples are test-split images (see ``samples/index.json``), two per class, that the
    shipped model classifies correctly.

    Returns
    -------
    images : torch.Tensor
        ``float32`` images of shape ``[N, 3, 64, 64]`` with values in ``[0, 1]``.
    labels : torch.Tensor
        ``int64`` class indices into :data:`~funcattr.demo.data.CLASSES`, shape ``[N]``.
    masks : torch.Tensor
        Boolean object masks of shape ``[N, 64, 64]``.
    names : list of str
        Sample names such as ``"circle_0012"`` (class name and test-split index), usable as
        file name stems.
    """
    index = load_sample_index()
    records = index["samples"]
    images = torch.empty(len(records), 3, IMAGE_SIZE, IMAGE_SIZE, dtype=torch.float32)
    masks = torch.empty(len(records), IMAGE_SIZE, IMAGE_SIZE, dtype=torch.bool)
    for row, record in enumerate(records):
        pixels = torch.from_numpy(_read_png(record["file"], "RGB").copy())
        images[row] = pixels.permute(2, 0, 1).to(torch.float32) / 255.0
        masks[row] = torch.from_numpy(_read_png(record["mask"], "L") > 127)
    labels = torch.tensor([record["label"] for record in records], dtype=torch.int64)
    names = [record["name"] for record in records]
    if any(
        CLASSES[label] != record["class"]
        for label, record in zip(labels.tolist(), records, strict=True)
    ):
        raise ValueError("samples/index.json: class names do not match the labels")
    return images, labels, masks, names
