"""Heatmaps of the ``funcattr explain`` command: scaling relevance to a colour map, the colour
bar, and how much positive relevance lies on an object mask."""

from __future__ import annotations

import numpy as np

from funcattr.cli.output import png_bytes
from funcattr.image import imgify

__all__ = ["COLORBAR_LABELS", "RELEVANCE_NORMS", "colorbar_png", "dilate_mask",
           "normalize_relevance", "positive_fraction_in_mask"]

RELEVANCE_NORMS = ("symmetric", "absolute", "unaligned")

#: The labels under the colour bar (left, middle, right) for each ``--relevance-norm``.
COLORBAR_LABELS = {
    "symmetric": ("negative", "0", "positive"),
    "absolute": ("0", "max/2", "max |relevance|"),
    "unaligned": ("min", "(min + max) / 2", "max"),
}


def normalize_relevance(relevance: np.ndarray, mode: str = "symmetric") -> np.ndarray:
    """Map one heatmap (channels already summed) to ``[0, 1]``, as Zennit's example script does.

    ``symmetric``: ``(r + amax) / 2 / amax`` with ``amax = max |r|`` (0 maps to 0.5);
    ``absolute``: ``|r| / amax``; ``unaligned``: ``(r - min) / (max - min)``. A constant map
    becomes 0.5 (symmetric) or 0.
    """
    r = np.asarray(relevance, dtype=np.float64)
    if mode == "symmetric":
        amax = np.abs(r).max()
        return np.full_like(r, 0.5) if amax == 0 else (r + amax) / 2 / amax
    if mode == "absolute":
        amax = np.abs(r).max()
        return np.zeros_like(r) if amax == 0 else np.abs(r) / amax
    if mode == "unaligned":
        low, high = r.min(), r.max()
        return np.zeros_like(r) if high == low else (r - low) / (high - low)
    raise ValueError(
        f"normalize_relevance(mode={mode!r}): expected one of {', '.join(RELEVANCE_NORMS)}, got "
        f"{mode!r}. Pass e.g. mode='symmetric'."
    )


def dilate_mask(mask: np.ndarray, pixels: int) -> np.ndarray:
    """Grow a boolean ``(H, W)`` mask by ``pixels`` in every direction (3x3 steps)."""
    grown = np.asarray(mask, bool)
    for _ in range(pixels):
        padded = np.pad(grown, 1)
        height, width = grown.shape
        grown = np.zeros_like(grown)
        for dy in range(3):
            for dx in range(3):
                grown |= padded[dy:dy + height, dx:dx + width]
    return grown


def positive_fraction_in_mask(relevance: np.ndarray, mask: np.ndarray, dilate: int = 0) -> float:
    """Fraction of the positive relevance (channels summed) that lies inside ``mask``.

    With ``dilate``, inside the mask grown by that many pixels (relevance of edge detectors
    straddles the object's boundary). NaN if there is no positive relevance.
    """
    positive = np.clip(np.asarray(relevance, dtype=np.float64), 0, None)
    total = positive.sum()
    region = dilate_mask(mask, dilate) if dilate else np.asarray(mask, bool)
    return float("nan") if total == 0 else float(positive[region].sum() / total)


def colorbar_png(cmap: str, level: float) -> bytes:
    """A horizontal colour bar of ``cmap`` as a PNG file."""
    ramp = np.repeat(np.linspace(0.0, 1.0, 256)[None], 12, axis=0)
    return png_bytes(imgify(ramp, vmin=0.0, vmax=1.0, cmap=cmap, level=level))
