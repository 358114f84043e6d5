"""Reference samples of a concept: where in an input one neuron of a channel draws its value.

Relevance maximisation (:mod:`funcattr.datasets.concepts`) finds, per channel, the samples in
which the channel is most relevant and the position in its feature map where it peaks. To show
*what* the channel responds to there, CRP (zennit-crp's ``FeatureVisualization``, ``rf=True``)
pulls that one neuron's activation back to the input and crops the sample to where the
resulting heatmap is large:

- :func:`neuron_heatmaps`: per sample, the input relevance of one neuron (a channel at a
  position) of a layer, started at the layer from the neuron's activation (CRP's
  ``start_layer`` with ``mask_rf``); one forward pass, one backward pass from the layer down;
- :func:`gaussian_blur`: a separable Gaussian blur of maps (torchvision's ``gaussian_blur``:
  reflected borders, its default sigma for a kernel size);
- :func:`reference_box`: the box around the part of a heatmap above a fraction of its peak
  after the blur (zennit-crp's ``vis_opaque_img`` crop).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor

from funcattr.attribution.options import check_batched, check_input
from funcattr.attribution.pullback import Params
from funcattr.concepts.conditional import check_functional
from funcattr.concepts.conditions import check_layer_names
from funcattr.concepts.split import INPUT, split_pullback
from funcattr.ruled import FunctionalModel

__all__ = ["ReferenceBox", "gaussian_blur", "neuron_heatmaps", "reference_box"]

#: zennit-crp's guard in ``max_norm`` (a heatmap divided by its maximum).
MAX_NORM_EPSILON = 1e-10


def _indices(values: Any, name: str, count: int, owner: str) -> Tensor:
    if isinstance(values, int) and not isinstance(values, bool):
        values = [values] * count
    tensor = torch.as_tensor(values)
    if tensor.dtype.is_floating_point or tensor.dtype == torch.bool or tensor.shape != (count,):
        raise ValueError(
            f"{owner}({name}={values!r}): expected one int per sample ({count}), got "
            f"{tuple(tensor.shape)} of {tensor.dtype}. Pass e.g. {name}=[0] * {count}."
        )
    return tensor.long()


def neuron_heatmaps(fn: FunctionalModel, params: Params, input: Tensor, layer: str,
                    channels: int | Sequence[int] | Tensor,
                    positions: int | Sequence[int] | Tensor) -> Tensor:
    """The input relevance of one neuron of ``layer`` per sample, started from its activation.

    For sample ``b`` the relevance at the layer's output is its activation at channel
    ``channels[b]`` and flat position ``positions[b]`` (row-major over the channel's map, as
    :func:`~funcattr.concepts.concept_statistics` reports it) and zero elsewhere; it is pulled
    back through the rules of the layer and everything below it (zennit-crp's
    ``CondAttribution(..., start_layer=layer, mask_map=ChannelConcept.mask_rf)``).

    Parameters
    ----------
    fn, params
        From :func:`funcattr.functionalize`.
    input : Tensor
        A batch of samples.
    layer : str
        The layer (the model's own name).
    channels, positions : int, sequence of int or Tensor
        One channel and one flat position per sample (an int: the same for all).

    Returns
    -------
    Tensor
        Shaped like ``input``; CRP's heatmap is its sum over dimension 1.
    """
    owner = "neuron_heatmaps"
    check_functional(fn, owner)
    check_layer_names(fn, [layer], "layer", owner)
    check_input(input, owner)
    check_batched(input, owner)
    batch = input.shape[0]
    channels = _indices(channels, "channels", batch, owner)
    positions = _indices(positions, "positions", batch, owner)
    split = split_pullback(fn, params, input, {layer: "layer"}, owner)
    activation = split.outputs[layer]
    flat = activation.reshape(batch, activation.shape[1] if activation.ndim > 1 else 1, -1)
    for name, values, bound in (("channels", channels, flat.shape[1]),
                                ("positions", positions, flat.shape[2])):
        if bool(((values < 0) | (values >= bound)).any()):
            raise ValueError(
                f"{owner}({name}={values.tolist()}): expected indices in [0, {bound - 1}] for "
                f"layer {layer!r} (output of shape {tuple(activation.shape)}), got "
                f"{values.tolist()}. Pass the positions concept_statistics reports."
            )
    rows = torch.arange(batch, device=flat.device)
    mask = torch.zeros_like(flat)
    mask[rows, channels.to(flat.device), positions.to(flat.device)] = 1
    seed = activation if split.differentiated else activation.detach()
    seed = seed * mask.reshape(activation.shape)
    pulled = split.pull(layer, seed[None], [INPUT], last=True).get(INPUT)
    return torch.zeros_like(input) if pulled is None else pulled[0]


def gaussian_blur(maps: Tensor, kernel_size: int = 19, sigma: float | None = None) -> Tensor:
    """Blur the last two dimensions of ``maps`` with a Gaussian (torchvision's
    ``gaussian_blur``: reflected borders; sigma ``0.3 * ((kernel_size - 1) / 2 - 1) + 0.8``
    by default).

    Parameters
    ----------
    maps : Tensor
        ``(..., H, W)``, with ``H`` and ``W`` larger than ``kernel_size // 2``.
    kernel_size : int
        An odd kernel size >= 1.
    sigma : float, optional
        The standard deviation in pixels.
    """
    owner = "gaussian_blur"
    if isinstance(kernel_size, bool) or not isinstance(kernel_size, int) or kernel_size < 1 \
            or kernel_size % 2 == 0:
        raise ValueError(
            f"{owner}(kernel_size={kernel_size!r}): expected an odd int >= 1, got "
            f"{kernel_size!r}. Pass e.g. kernel_size=19."
        )
    if sigma is None:
        sigma = 0.3 * ((kernel_size - 1) * 0.5 - 1) + 0.8
    if not sigma > 0:
        raise ValueError(f"{owner}(sigma={sigma!r}): expected a float > 0, got {sigma!r}. "
                         f"Pass e.g. sigma=1.0 or leave it out.")
    if maps.ndim < 2:
        raise ValueError(f"{owner}(maps=tensor of shape {tuple(maps.shape)}): expected (..., H, "
                         f"W), got {maps.ndim} dimensions. Pass maps of at least 2 dimensions.")
    half = kernel_size // 2
    height, width = maps.shape[-2:]
    if half >= height or half >= width:
        raise ValueError(
            f"{owner}(maps=tensor of shape {tuple(maps.shape)}): expected maps larger than "
            f"kernel_size // 2 = {half} on both sides (the border is reflected), got {height}x"
            f"{width}. Pass a smaller kernel_size."
        )
    dtype = maps.dtype if maps.is_floating_point() else torch.float32
    x = torch.linspace(-half, half, kernel_size, dtype=dtype, device=maps.device)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    kernel = kernel / kernel.sum()
    flat = maps.to(dtype).reshape(-1, 1, height, width)
    padded = torch.nn.functional.pad(flat, (half, half, half, half), mode="reflect")
    blurred = torch.nn.functional.conv2d(padded, kernel.reshape(1, 1, 1, -1))
    blurred = torch.nn.functional.conv2d(blurred, kernel.reshape(1, 1, -1, 1))
    return blurred.reshape(maps.shape)


class ReferenceBox(NamedTuple):
    """A box of an image: rows ``top:bottom`` and columns ``left:right`` (slices)."""

    top: int
    bottom: int
    left: int
    right: int

    def crop(self, image: Tensor) -> Tensor:
        """``image[..., top:bottom, left:right]``."""
        return image[..., self.top:self.bottom, self.left:self.right]


def reference_box(heatmap: Tensor, *, crop_th: float = 0.1, kernel_size: int = 19
                  ) -> ReferenceBox:
    """Where a neuron's heatmap is large: zennit-crp's crop of a reference sample.

    The ``(H, W)`` heatmap (e.g. :func:`neuron_heatmaps` summed over the input channels) is
    blurred (:func:`gaussian_blur`), divided by its maximum, and the box spans the rows and
    columns where it exceeds ``crop_th``, from the first to (as in zennit-crp's
    ``vis_opaque_img``, exclusive) the last. Where nothing exceeds it (or the box would be
    empty), the box is the whole image.

    Parameters
    ----------
    heatmap : Tensor
        ``(H, W)``.
    crop_th : float
        In ``[0, 1)``: the fraction of the blurred heatmap's maximum.
    kernel_size : int
        The blur's kernel size (odd).
    """
    owner = "reference_box"
    if not isinstance(heatmap, Tensor) or heatmap.ndim != 2:
        shape = tuple(heatmap.shape) if isinstance(heatmap, Tensor) else type(heatmap).__name__
        raise ValueError(f"{owner}(heatmap={shape}): expected an (H, W) tensor, got {shape}. "
                         f"Sum the heatmap over its channels first.")
    if isinstance(crop_th, bool) or not isinstance(crop_th, int | float) or \
            not 0 <= crop_th < 1:
        raise ValueError(f"{owner}(crop_th={crop_th!r}): expected a float in [0, 1), got "
                         f"{crop_th!r}. Pass e.g. crop_th=0.1.")
    blurred = gaussian_blur(heatmap[None], kernel_size)[0]
    normed = blurred / (blurred.max() + MAX_NORM_EPSILON)
    rows, columns = torch.where(normed > crop_th)
    height, width = heatmap.shape
    if len(rows) == 0:
        return ReferenceBox(0, height, 0, width)
    top, bottom = int(rows.min()), int(rows.max())
    left, right = int(columns.min()), int(columns.max())
    if top >= bottom or left >= right:  # an empty crop (zennit-crp keeps the whole image)
        return ReferenceBox(0, height, 0, width)
    return ReferenceBox(top, bottom, left, right)
