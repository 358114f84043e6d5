"""Procedurally generated shape images with known object masks.

Every image shows exactly one *object*, a hard-edged shape of one of the classes in
:data:`CLASSES`, filled with a fine two-tone checkerboard of its colour (full and
:data:`_CHECKER_DARK` brightness, :data:`_CHECKER` px squares), on a cluttered background.
The fill gives the object's interior a texture of its own, so that a model finds objects by
their pixels and not only by their outlines, and an explanation of the class score can lie
on the object rather than on both sides of its edge. The clutter is built so that it never
contains a class shape:

* a textured background: a mix of smooth colour noise, medium-scale noise and oriented
  sinusoidal stripes, blended between two random colours;
* up to three soft, anisotropic Gaussian blobs (no hard edges) in random colours;
* up to three thin line segments in random colours;
* per-pixel sensor noise over the whole image.

The object is drawn last, on top of the clutter, at a random position, scale and rotation, in a
random colour that is chosen to stand out from the background it covers. Its boolean mask is
exactly the set of pixels it replaced, so a good explanation of the class score has to lie on
the mask. The image values are quantised to multiples of ``1/255``, so images survive a round
trip through an 8-bit PNG file unchanged.

Each sample is a pure function of ``(seed, index)``: its random numbers come from its own
generator, seeded with a hash of both, so ``make_dataset(n, seed)[i]`` equals
``sample(i, seed)`` for every ``n > i`` and a dataset can be generated in pieces with ``start``.
Rendering is vectorised over chunks of samples with ``torch``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = [
    "CLASSES",
    "IMAGE_SIZE",
    "NUM_CLASSES",
    "make_dataset",
    "object_masks",
    "sample",
]

#: Names of the object classes; a label is an index into this tuple.
CLASSES: tuple[str, ...] = ("circle", "ring", "square", "triangle", "cross", "star")
#: Number of object classes.
NUM_CLASSES: int = len(CLASSES)
#: Height and width of the generated images in pixels.
IMAGE_SIZE: int = 64

_DTYPE = torch.float32
_CHUNK = 512
_MASK64 = (1 << 64) - 1

# Object geometry, in units of the object radius (``_R_MIN`` to ``_R_MAX`` pixels).
_R_MIN, _R_MAX = 9.0, 17.0
_EXTENT = 1.15  # every shape lies inside this multiple of its radius around its centre
_RING_INNER = 0.5
_SQUARE_HALF = 0.8
_TRIANGLE_RADIUS = 1.15
_CROSS_HALF_WIDTH, _CROSS_HALF_LENGTH = 0.28, 1.0
_STAR_OUTER, _STAR_INNER, _STAR_POINTS = 1.15, 0.5, 5

_CHECKER = 2  # side of the fill's checkerboard squares, in pixels
_CHECKER_DARK = 0.55  # brightness of the darker squares, relative to the object colour
_N_COLOUR_CANDIDATES = 6
_MIN_CONTRAST = 0.35  # minimal max-channel distance between object and mean covered background
_N_BLOBS = 3
_N_LINES = 3
_SENSOR_NOISE = 0.04

# Layout of the per-sample uniform random numbers: name -> number of values.
_LAYOUT: tuple[tuple[str, int], ...] = (
    ("label", 1),
    ("object", 4),  # centre x, centre y, radius, rotation
    ("object_colour", 3 * _N_COLOUR_CANDIDATES),
    ("background_colours", 6),
    ("texture", 7),  # 3 mixing weights, stripe frequency, angle, phase, contrast
    ("blobs", 10 * _N_BLOBS),  # active, x, y, sigma x, sigma y, angle, rgb, opacity
    ("lines", 9 * _N_LINES),  # active, x, y, angle, length, width, rgb
    ("smooth_noise", 4 * 8 * 8),  # 1 mixing channel + 3 colour channels at 8x8
    ("medium_noise", 16 * 16),
    ("sensor_noise", 3 * IMAGE_SIZE * IMAGE_SIZE),
)
_SIZES = [size for _, size in _LAYOUT]
_NUM_UNIFORMS = sum(_SIZES)


def _splitmix64(value: int) -> int:
    """Return the SplitMix64 hash of a 64-bit integer."""
    value = (value + 0x9E3779B97F4A7C15) & _MASK64
    value = ((value ^ (value >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    value = ((value ^ (value >> 27)) * 0x94D049BB133111EB) & _MASK64
    return value ^ (value >> 31)


def _sample_seed(seed: int, index: int) -> int:
    """Return the generator seed of sample ``index`` of the dataset ``seed``."""
    return _splitmix64(_splitmix64(seed & _MASK64) ^ (index & _MASK64)) & ((1 << 63) - 1)


def _uniforms(seed: int, indices: range) -> dict[str, torch.Tensor]:
    """Draw the uniform random numbers of the samples ``indices``, split by purpose."""
    generator = torch.Generator()
    rows = torch.empty(len(indices), _NUM_UNIFORMS, dtype=_DTYPE)
    for row, index in enumerate(indices):
        generator.manual_seed(_sample_seed(seed, index))
        torch.rand(_NUM_UNIFORMS, generator=generator, dtype=_DTYPE, out=rows[row])
    parts = torch.split(rows, _SIZES, dim=1)
    return {name: part for (name, _), part in zip(_LAYOUT, parts, strict=True)}


def _lerp(low: float, high: float, unit: torch.Tensor) -> torch.Tensor:
    """Map uniform numbers in ``[0, 1)`` linearly to ``[low, high)``."""
    return low + (high - low) * unit


def object_masks(
    labels: torch.Tensor,
    centres: torch.Tensor,
    radii: torch.Tensor,
    angles: torch.Tensor,
    size: int = IMAGE_SIZE,
) -> torch.Tensor:
    """Rasterise class shapes into boolean masks.

    Parameters
    ----------
    labels : torch.Tensor
        Class indices into :data:`CLASSES`, shape ``[N]``.
    centres : torch.Tensor
        Object centres ``(x, y)`` in pixels, shape ``[N, 2]``; pixel ``(i, j)`` has its centre
        at ``(x, y) = (j + 0.5, i + 0.5)``.
    radii : torch.Tensor
        Object radii in pixels, shape ``[N]``.
    angles : torch.Tensor
        Object rotations in radians, shape ``[N]``.
    size : int, optional
        Height and width of the masks.

    Returns
    -------
    torch.Tensor
        Boolean masks of shape ``[N, size, size]``.
    """
    coords = torch.arange(size, dtype=_DTYPE) + 0.5
    dx = coords.view(1, 1, size) - centres[:, 0, None, None].to(_DTYPE)
    dy = coords.view(1, size, 1) - centres[:, 1, None, None].to(_DTYPE)
    cos = torch.cos(angles.to(_DTYPE))[:, None, None]
    sin = torch.sin(angles.to(_DTYPE))[:, None, None]
    radii = radii.to(_DTYPE)[:, None, None]
    u = (dx * cos + dy * sin) / radii
    v = (dy * cos - dx * sin) / radii

    masks = torch.zeros(labels.shape[0], size, size, dtype=torch.bool)
    for label, name in enumerate(CLASSES):
        rows = (labels == label).nonzero().flatten()
        if rows.numel() == 0:
            continue
        masks[rows] = _SHAPES[name](u[rows], v[rows])
    return masks


def _circle(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return u * u + v * v <= 1.0


def _ring(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    rr = u * u + v * v
    return (rr <= 1.0) & (rr >= _RING_INNER**2)


def _square(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return torch.maximum(u.abs(), v.abs()) <= _SQUARE_HALF


def _triangle(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    inside = torch.ones_like(u, dtype=torch.bool)
    for k in range(3):
        beta = -math.pi / 2 + 2 * math.pi * k / 3  # normal of the edge opposite vertex k
        inside &= u * math.cos(beta) + v * math.sin(beta) <= _TRIANGLE_RADIUS / 2
    return inside


def _cross(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    au, av = u.abs(), v.abs()
    horizontal = (au <= _CROSS_HALF_LENGTH) & (av <= _CROSS_HALF_WIDTH)
    vertical = (av <= _CROSS_HALF_LENGTH) & (au <= _CROSS_HALF_WIDTH)
    return horizontal | vertical


def _star(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    # Fold the angle into the half sector between an outer vertex (angle 0) and an inner
    # vertex (angle pi / points), then test against the edge joining the two.
    sector = 2 * math.pi / _STAR_POINTS
    phi = torch.remainder(torch.atan2(v, u), sector)
    alpha = torch.minimum(phi, sector - phi)
    rho = torch.sqrt(u * u + v * v)
    px, py = rho * torch.cos(alpha), rho * torch.sin(alpha)
    x0, y0 = _STAR_OUTER, 0.0
    x1 = _STAR_INNER * math.cos(sector / 2)
    y1 = _STAR_INNER * math.sin(sector / 2)
    ex, ey = x1 - x0, y1 - y0
    # The origin lies on the positive side of the edge direction (ex, ey).
    return ex * (py - y0) - ey * (px - x0) >= 0.0


_SHAPES = {
    "circle": _circle,
    "ring": _ring,
    "square": _square,
    "triangle": _triangle,
    "cross": _cross,
    "star": _star,
}


def _background(rand: dict[str, torch.Tensor], size: int) -> torch.Tensor:
    """Render the textured background of a chunk, shape ``[B, 3, size, size]``."""
    batch = rand["label"].shape[0]
    texture = rand["texture"]
    smooth = rand["smooth_noise"].view(batch, 4, 8, 8)
    smooth = F.interpolate(smooth, size=(size, size), mode="bilinear", align_corners=False)
    medium = rand["medium_noise"].view(batch, 1, 16, 16)
    medium = F.interpolate(medium, size=(size, size), mode="bilinear", align_corners=False)

    coords = (torch.arange(size, dtype=_DTYPE) + 0.5) / size
    angle = math.pi * texture[:, 4, None, None]
    frequency = _lerp(2.0, 9.0, texture[:, 3, None, None])
    phase = 2 * math.pi * texture[:, 5, None, None]
    along = coords.view(1, 1, size) * torch.cos(angle) + coords.view(1, size, 1) * torch.sin(angle)
    stripes = 0.5 + 0.5 * torch.sin(2 * math.pi * frequency * along + phase)

    weights = texture[:, :3] ** 2 + 1e-3
    weights = weights / weights.sum(dim=1, keepdim=True)
    pattern = (
        weights[:, 0, None, None] * smooth[:, 0]
        + weights[:, 1, None, None] * stripes
        + weights[:, 2, None, None] * medium[:, 0]
    )
    contrast = _lerp(1.0, 3.0, texture[:, 6, None, None])
    pattern = ((pattern - 0.5) * contrast + 0.5).clamp(0.0, 1.0)[:, None]

    colours = rand["background_colours"].view(batch, 2, 3, 1, 1)
    image = colours[:, 0] * (1.0 - pattern) + colours[:, 1] * pattern
    return image + 0.25 * (smooth[:, 1:] - 0.5)


def _composite(image: torch.Tensor, alpha: torch.Tensor, colour: torch.Tensor) -> torch.Tensor:
    """Blend ``colour`` ``[B, 3]`` over ``image`` with opacity ``alpha`` ``[B, H, W]``."""
    return image.lerp_(colour[:, :, None, None].expand_as(image), alpha[:, None])


def _distractors(image: torch.Tensor, rand: dict[str, torch.Tensor]) -> torch.Tensor:
    """Draw soft blobs and thin line segments over the background."""
    batch, _, size, _ = image.shape
    coords = torch.arange(size, dtype=_DTYPE) + 0.5
    xs, ys = coords.view(1, 1, size), coords.view(1, size, 1)

    blobs = rand["blobs"].view(batch, _N_BLOBS, 10)
    for k in range(_N_BLOBS):
        params = blobs[:, k, :, None, None]
        active = (params[:, 0] < (0.9 if k == 0 else 0.5)).to(_DTYPE)
        dx, dy = xs - size * params[:, 1], ys - size * params[:, 2]
        sigma_u, sigma_v = _lerp(2.5, 9.0, params[:, 3]), _lerp(2.5, 9.0, params[:, 4])
        angle = math.pi * params[:, 5]
        u = dx * torch.cos(angle) + dy * torch.sin(angle)
        v = dy * torch.cos(angle) - dx * torch.sin(angle)
        opacity = _lerp(0.5, 1.0, params[:, 9]) * active
        alpha = opacity * torch.exp(-0.5 * ((u / sigma_u) ** 2 + (v / sigma_v) ** 2))
        image = _composite(image, alpha, blobs[:, k, 6:9])

    lines = rand["lines"].view(batch, _N_LINES, 9)
    for k in range(_N_LINES):
        params = lines[:, k, :, None, None]
        active = (params[:, 0] < (0.8 if k == 0 else 0.45)).to(_DTYPE)
        angle = 2 * math.pi * params[:, 3]
        length = _lerp(10.0, 0.75 * size, params[:, 4])
        width = _lerp(1.0, 2.5, params[:, 5])
        dx, dy = xs - size * params[:, 1], ys - size * params[:, 2]
        along = (dx * torch.cos(angle) + dy * torch.sin(angle)).clamp(min=0.0)
        along = torch.minimum(along, length)
        distance = torch.sqrt(
            (dx - along * torch.cos(angle)) ** 2 + (dy - along * torch.sin(angle)) ** 2
        )
        alpha = (width / 2 - distance + 0.5).clamp(0.0, 1.0) * active
        image = _composite(image, alpha, lines[:, k, 6:9])
    return image


def _object_parameters(
    rand: dict[str, torch.Tensor], size: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Return labels ``[B]``, centres ``[B, 2]``, radii ``[B]`` and angles ``[B]``."""
    labels = (rand["label"][:, 0] * NUM_CLASSES).long().clamp(max=NUM_CLASSES - 1)
    obj = rand["object"]
    radii = _lerp(_R_MIN, _R_MAX, obj[:, 2])
    margin = _EXTENT * radii + 1.0
    centres = margin[:, None] + (size - 2 * margin[:, None]) * obj[:, :2]
    angles = 2 * math.pi * obj[:, 3]
    return labels, centres, radii, angles


def _object_colours(
    rand: dict[str, torch.Tensor], image: torch.Tensor, masks: torch.Tensor
) -> torch.Tensor:
    """Pick per sample the first candidate colour that contrasts with the covered background."""
    batch = image.shape[0]
    weight = masks[:, None].to(_DTYPE)
    covered = (image * weight).sum(dim=(2, 3)) / weight.sum(dim=(2, 3)).clamp(min=1.0)
    candidates = rand["object_colour"].view(batch, _N_COLOUR_CANDIDATES, 3)
    distance = (candidates - covered[:, None]).abs().amax(dim=2)
    valid = distance >= _MIN_CONTRAST
    choice = torch.where(valid.any(dim=1), valid.to(_DTYPE).argmax(dim=1), distance.argmax(dim=1))
    return candidates[torch.arange(batch), choice]


def _render(
    rand: dict[str, torch.Tensor], size: int, draw_objects: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Render one chunk of samples from their uniform random numbers."""
    batch = rand["label"].shape[0]
    labels, centres, radii, angles = _object_parameters(rand, size)
    masks = object_masks(labels, centres, radii, angles, size=size)

    image = _distractors(_background(rand, size).clamp_(0.0, 1.0), rand)
    if draw_objects:
        colours = _object_colours(rand, image, masks)
        rows, cols = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
        bright = ((rows // _CHECKER + cols // _CHECKER) % 2).to(_DTYPE)
        fill = colours[:, :, None, None] * (_CHECKER_DARK + (1.0 - _CHECKER_DARK) * bright)
        image = torch.where(masks[:, None], fill, image)
    noise = rand["sensor_noise"].view(batch, 3, size, size)
    image = image + 2 * _SENSOR_NOISE * (noise - 0.5)
    image = torch.round(image.clamp(0.0, 1.0) * 255.0) / 255.0
    return image, labels, masks


def make_dataset(
    n: int,
    seed: int,
    *,
    start: int = 0,
    draw_objects: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Generate samples ``start, ..., start + n - 1`` of the procedural dataset ``seed``.

    Parameters
    ----------
    n : int
        Number of samples.
    seed : int
        Dataset seed; different seeds give independent datasets.
    start : int, optional
        Index of the first sample, so that a dataset can be generated in pieces.
    draw_objects : bool, optional
        If False, leave the objects out: the images show only the cluttered background (with
        its sensor noise), while labels and masks are those of the omitted objects. Outside the
        masks these images equal the normal ones exactly.

    Returns
    -------
    images : torch.Tensor
        ``float32`` images of shape ``[n, 3, IMAGE_SIZE, IMAGE_SIZE]`` with values in
        ``[0, 1]``, quantised to multiples of ``1/255``.
    labels : torch.Tensor
        ``int64`` class indices into :data:`CLASSES`, shape ``[n]``.
    masks : torch.Tensor
        Boolean object masks of shape ``[n, IMAGE_SIZE, IMAGE_SIZE]``.
    """
    if n < 0 or start < 0:
        raise ValueError(f"n and start must be non-negative, got n={n}, start={start}")
    size = IMAGE_SIZE
    images = torch.empty(n, 3, size, size, dtype=_DTYPE)
    labels = torch.empty(n, dtype=torch.int64)
    masks = torch.empty(n, size, size, dtype=torch.bool)
    for offset in range(0, n, _CHUNK):
        stop = min(n, offset + _CHUNK)
        rand = _uniforms(seed, range(start + offset, start + stop))
        chunk = _render(rand, size, draw_objects)
        images[offset:stop], labels[offset:stop], masks[offset:stop] = chunk
    return images, labels, masks


def sample(
    index: int, seed: int, *, draw_objects: bool = True
) -> tuple[torch.Tensor, int, torch.Tensor]:
    """Generate the single sample ``index`` of the procedural dataset ``seed``.

    Parameters
    ----------
    index : int
        Index of the sample.
    seed : int
        Dataset seed.
    draw_objects : bool, optional
        If False, leave the object out (see :func:`make_dataset`).

    Returns
    -------
    image : torch.Tensor
        ``float32`` image of shape ``[3, IMAGE_SIZE, IMAGE_SIZE]``.
    label : int
        Class index into :data:`CLASSES`.
    mask : torch.Tensor
        Boolean object mask of shape ``[IMAGE_SIZE, IMAGE_SIZE]``.
    """
    images, labels, masks = make_dataset(1, seed, start=index, draw_objects=draw_objects)
    return images[0], int(labels[0]), masks[0]
