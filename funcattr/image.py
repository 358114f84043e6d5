"""Turn attributions and other arrays into Pillow images, pixel for pixel as ``zennit.image`` does.

Single-channel data becomes a palette (``'P'``) image coloured by a colour map; three channels
become an ``'RGB'`` image. Arrays that are not ``uint8`` are first scaled to [0, 255] with
``(x - vmin) / (vmax - vmin) * 255``, clipped and **truncated** to ``uint8`` (no rounding). With
``grid``, the first axis is a batch: each sample is scaled on its own and the samples are tiled
row by row.

Examples
--------
>>> import numpy as np
>>> image = imgify(np.array([[-1.0, 0.0], [0.5, 1.0]]), symmetric=True)
>>> image.mode, np.asarray(image).tolist()
('P', [[0, 127], [191, 255]])
"""

from __future__ import annotations

import difflib
import numbers
import os
from collections.abc import Mapping
from typing import IO, Any

import numpy as np
import torch
from numpy.typing import ArrayLike
from PIL import Image

from .cmap import ColorMap, LazyColorMapCache, check_level

__all__ = ["CMAPS", "get_cmap", "gridify", "imgify", "imsave", "interval_norm_bounds", "palette"]

CMAPS = LazyColorMapCache(
    {
        "gray": "000,fff",  # black to white
        "wred": "fff,f00",  # white to red
        "wblue": "fff,00f",  # white to blue
        "hot": "000,f00,ff0,fff",  # black, red, yellow, white
        "cold": "000,00f,0ff",  # black, blue, cyan
        "coldnhot": "0ff,00f,80:000,f00,ff0,fff",  # cold reversed, then hot; black in the middle
        "bwr": "00f,80:fff,f00",  # blue, white, red
        "france": "0055a4,80:fff,ef4135",  # the blue, white and red of the French flag
        "seismic": "0000d0,80:d0d0d0,d00000",  # blue, grey, red at brightness 0xd0
        "coolio": "00d0d0,80:d0d0d0,d000d0",  # cyan, grey, magenta at brightness 0xd0
        "coleus": "00d000,80:d0d0d0,d000d0",  # green, grey, magenta at brightness 0xd0
    }
)
"""The built-in colour maps, compiled on first use; assign to add or change one."""

_CHANNELS = (1, 3)
_SINGLE_LAYOUT = "(H, W), (H, W, C) or (C, H, W) with C in (1, 3)"
_BATCH_LAYOUT = "(N, H, W), (N, H, W, C) or (N, C, H, W) with C in (1, 3)"


def _describe(array: np.ndarray) -> str:
    return f"array(shape={tuple(array.shape)}, dtype={array.dtype})"


def _to_numpy(obj: Any) -> np.ndarray:
    """View ``obj`` as a numpy array; tensors are detached and moved to the CPU first."""
    if isinstance(obj, torch.Tensor):
        obj = obj.detach().cpu()
    return np.asarray(obj)


def _resolve_cmap(caller: str, cmap: str | ColorMap) -> ColorMap:
    """Return a ColorMap as it is, a built-in map by name, or compile ``cmap`` as CMSL source."""
    if isinstance(cmap, ColorMap):
        return cmap
    if not isinstance(cmap, str):
        raise TypeError(
            f"{caller}(cmap={cmap!r}): expected a colour-map name, CMSL source or ColorMap, got "
            f"{type(cmap).__name__}. Pass for example cmap='bwr' or cmap='00f,80:fff,f00'."
        )
    if cmap in CMAPS:
        return CMAPS[cmap]
    try:
        return ColorMap(cmap)
    except RuntimeError as error:
        close = difflib.get_close_matches(cmap, list(CMAPS), n=1)
        if not close:
            raise
        raise RuntimeError(
            f"{caller}(cmap={cmap!r}): expected a name in CMAPS or CMSL source, got neither. "
            f"Did you mean {close[0]!r}?"
        ) from error


def _grid_shape(caller: str, name: str, shape: Any) -> tuple[int, int]:
    """Check a ``(rows, columns)`` grid shape: two positive integers."""
    fix = f"Pass {name}=(rows, columns), for example {name}=(2, 4)."
    if not isinstance(shape, (tuple, list)) or len(shape) != 2:
        got = type(shape).__name__
        if isinstance(shape, (tuple, list)):
            got = f"{got} of size {len(shape)}"
        raise TypeError(
            f"{caller}({name}={shape!r}): expected a (rows, columns) pair, got {got}. {fix}"
        )
    if not all(isinstance(n, numbers.Integral) and not isinstance(n, bool) for n in shape):
        raise TypeError(
            f"{caller}({name}={shape!r}): expected two integers, got "
            f"({', '.join(type(n).__name__ for n in shape)}). {fix}"
        )
    if min(shape) < 1:
        raise ValueError(
            f"{caller}({name}={shape!r}): expected both sizes >= 1, got {shape}. {fix}"
        )
    return int(shape[0]), int(shape[1])


def _grid_option(grid: Any) -> tuple[bool, tuple[int, int] | None]:
    """Read imgify's ``grid``: ``(tile?, shape)``; a bool or an empty sequence needs no shape."""
    if (
        grid is None
        or isinstance(grid, (bool, np.bool_))
        or (isinstance(grid, (tuple, list)) and not grid)
    ):
        return bool(grid), None  # an empty sequence is falsy and means no grid, as in Zennit
    return True, _grid_shape("imgify", "grid", grid)


def _channels_last(caller: str, array: np.ndarray, batch: int) -> np.ndarray:
    """Move a colour axis found right after the ``batch`` leading axes to the end.

    A last axis of size 1 or 3 is taken as the colour axis and wins over the first one.
    """
    if array.shape[-1] in _CHANNELS:
        return array
    if array.shape[batch] in _CHANNELS:
        return np.moveaxis(array, batch, -1)
    layout = _BATCH_LAYOUT if batch else _SINGLE_LAYOUT
    raise TypeError(
        f"{caller}(obj={_describe(array)}): expected {layout}, got no colour axis of size 1 or 3 "
        f"first or last. Reduce the channels first, for example obj.sum({batch}) for relevance."
    )


def get_cmap(cmap: str | ColorMap) -> ColorMap:
    """Look up a built-in colour map, compile CMSL source, or return a ColorMap as it is.

    Parameters
    ----------
    cmap : str or ColorMap
        A key of :data:`CMAPS`, CMSL source (see :mod:`funcattr.cmap`) or a :class:`ColorMap`.

    Returns
    -------
    ColorMap
        The cached built-in map, a newly compiled map, or ``cmap`` itself.

    Examples
    --------
    >>> get_cmap("bwr").source
    '00f,80:fff,f00'
    """
    return _resolve_cmap("get_cmap", cmap)


def palette(cmap: str | ColorMap = "bwr", level: float = 1.0) -> np.ndarray:
    """Return the 8-bit palette of a colour map, a ``uint8`` array of shape ``(256, 3)``.

    Parameters
    ----------
    cmap : str or ColorMap, optional
        Colour map, as for :func:`get_cmap`; default ``'bwr'``.
    level : float, optional
        Contrast around the centre, see :meth:`ColorMap.palette`; default ``1.0``.

    Returns
    -------
    numpy.ndarray
        The palette, one RGB row per palette index.
    """
    check_level("palette", level)
    return _resolve_cmap("palette", cmap).palette(level)


def interval_norm_bounds(
    input: ArrayLike, symmetric: bool = False, dim: int | tuple[int, ...] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Return the bounds ``(vmin, vmax)`` that map ``input`` to [0, 1] along ``dim``.

    Parameters
    ----------
    input : array_like
        The data.
    symmetric : bool, optional
        If true, ``vmax`` is the largest absolute value and ``vmin = -vmax``, so 0 maps to 0.5;
        otherwise (default) the minimum and the maximum.
    dim : int or tuple of int, optional
        Axes to reduce over; default every axis but the first (one bound per sample).

    Returns
    -------
    tuple of numpy.ndarray
        ``vmin`` and ``vmax``, with the reduced axes kept as size 1.
    """
    array = _to_numpy(input)
    if dim is None:
        axes: int | tuple[int, ...] = tuple(range(1, array.ndim))
    else:
        axes = dim if isinstance(dim, numbers.Integral) else tuple(dim)
    if symmetric:
        vmax = np.abs(array).max(axes, keepdims=True)
        return -vmax, vmax
    return array.min(axes, keepdims=True), array.max(axes, keepdims=True)


def gridify(
    obj: ArrayLike, shape: tuple[int, int] | None = None, fill_value: ArrayLike | None = None
) -> np.ndarray:
    """Tile a batch of images into one image, row by row.

    Parameters
    ----------
    obj : array_like
        A batch ``(N, H, W)``, ``(N, H, W, C)`` or ``(N, C, H, W)`` with C in (1, 3); a last axis
        of size 1 or 3 is taken as the colour axis first.
    shape : tuple of int, optional
        Grid ``(rows, columns)``. Default: ``int(sqrt(N))`` columns and as many rows as needed.
        Samples beyond ``rows * columns`` are dropped.
    fill_value : scalar or array_like, optional
        Value of empty cells, cast to the dtype of ``obj``. Default: the per-channel minimum over
        the whole batch (Zennit's docstring says "mean", but its code takes the minimum).

    Returns
    -------
    numpy.ndarray
        Array of shape ``(rows * H, columns * W, C)``.
    """
    grid = None if shape is None else _grid_shape("gridify", "shape", shape)
    array = _to_numpy(obj)
    if array.ndim not in (3, 4):
        raise TypeError(
            f"gridify(obj={_describe(array)}): expected {_BATCH_LAYOUT}, got {array.ndim} axes. "
            "Stack the images along a new first axis."
        )
    if array.ndim == 3:
        array = array[..., None]
    array = _channels_last("gridify", array, batch=1)
    count, height, width, channels = array.shape
    if count == 0:
        raise ValueError(
            f"gridify(obj={_describe(array)}): expected at least one image, got none. "
            "Pass a non-empty batch."
        )
    if grid is None:
        columns = int(count**0.5)
        grid = (-(-count // columns), columns)
    rows, columns = grid
    if fill_value is None:
        fill = array.min(axis=(0, 1, 2), keepdims=True)
    else:
        fill = _to_numpy(fill_value).astype(array.dtype)
    cells = np.full((rows * columns, height, width, channels), fill, dtype=array.dtype)
    used = min(count, rows * columns)
    cells[:used] = array[:used]
    tiled = cells.reshape(rows, columns, height, width, channels).swapaxes(1, 2)
    return tiled.reshape(rows * height, columns * width, channels)


def imgify(
    obj: ArrayLike,
    vmin: ArrayLike | None = None,
    vmax: ArrayLike | None = None,
    cmap: str | ColorMap = "bwr",
    level: float = 1.0,
    symmetric: bool = False,
    grid: bool | tuple[int, int] = False,
    gridfill: ArrayLike | None = None,
) -> Image.Image:
    """Convert an array with 1 or 3 colour channels (first or last) to a Pillow image.

    Parameters
    ----------
    obj : array_like
        An image ``(H, W)``, ``(H, W, C)`` or ``(C, H, W)`` with C in (1, 3), or with ``grid`` a
        batch of them. Tensors are detached and moved to the CPU.
    vmin, vmax : float or array_like, optional
        Values mapped to 0 and 255; missing ones come from :func:`interval_norm_bounds` over
        the whole image (or each sample, with ``grid``). Ignored for ``uint8`` input, which is
        used as it is.
    cmap : str or ColorMap, optional
        Colour map of single-channel images, as for :func:`get_cmap`; default ``'bwr'``.
    level : float, optional
        Palette contrast, see :meth:`ColorMap.palette`; default ``1.0``.
    symmetric : bool, optional
        If true, the missing bounds are ``-max|x|`` and ``max|x|``, so 0 lands in the middle of the
        colour map; default false (minimum and maximum).
    grid : bool or tuple of int, optional
        False (default): ``obj`` is one image. True: the first axis is a batch, tiled in a square
        grid. ``(rows, columns)``: the grid shape.
    gridfill : scalar or array_like, optional
        Value of empty grid cells (after scaling); default the per-channel minimum.

    Returns
    -------
    PIL.Image.Image
        A ``'P'`` image with the colour map as palette, or an ``'RGB'`` image.

    Raises
    ------
    TypeError
        If the shape is not an image (or batch) layout, as in Zennit, or an option has the
        wrong type.
    """
    gridded, shape = _grid_option(grid)
    check_level("imgify", level)
    colormap = _resolve_cmap("imgify", cmap)

    array = _to_numpy(obj)
    batch = int(gridded)
    if array.ndim not in (batch + 2, batch + 3):
        layout, fix = (
            (_BATCH_LAYOUT, "Add a batch axis, or pass grid=False for a single image.")
            if gridded
            else (_SINGLE_LAYOUT, "Pass grid=True for a batch, or select one image.")
        )
        raise TypeError(
            f"imgify(obj={_describe(array)}): expected {layout}, got {array.ndim} axes. {fix}"
        )
    if array.ndim == batch + 3:
        array = _channels_last("imgify", array, batch=batch)

    if array.dtype != np.uint8:
        if vmin is None or vmax is None:
            axes = tuple(range(batch, array.ndim))
            low, high = interval_norm_bounds(array, symmetric=symmetric, dim=axes)
        # Given bounds become numpy arrays (not Python scalars), which fixes the result dtype
        # exactly as in Zennit, so the truncation to uint8 matches bit for bit.
        vmin = low if vmin is None else _to_numpy(vmin)
        vmax = high if vmax is None else _to_numpy(vmax)
        array = ((array - vmin) / (vmax - vmin) * 255).clip(0, 255).astype(np.uint8)

    if gridded:
        array = gridify(array, shape=shape, fill_value=gridfill)
    elif array.ndim == 2:
        array = array[..., None]

    if array.shape[2] == 1:
        image = Image.fromarray(np.ascontiguousarray(array[..., 0]), mode="P")
        # Pillow >= 13 cannot load a palette given as a numpy array, so pass bytes.
        image.putpalette(colormap.palette(level).tobytes())
        return image
    return Image.fromarray(np.ascontiguousarray(array), mode="RGB")


def imsave(
    fp: str | os.PathLike | IO[bytes],
    obj: ArrayLike,
    vmin: ArrayLike | None = None,
    vmax: ArrayLike | None = None,
    cmap: str | ColorMap = "bwr",
    level: float = 1.0,
    grid: bool | tuple[int, int] = False,
    format: str | None = None,
    writer_params: Mapping[str, Any] | None = None,
    symmetric: bool = False,
    gridfill: ArrayLike | None = None,
) -> None:
    """Convert an array to an image with :func:`imgify` and save it with Pillow.

    Parameters
    ----------
    fp : str, os.PathLike or file object
        Where to save.
    obj, vmin, vmax, cmap, level, grid, symmetric, gridfill
        As for :func:`imgify`.
    format : str, optional
        Pillow format name; default: taken from the file name.
    writer_params : Mapping, optional
        Extra keyword options for ``PIL.Image.Image.save``.
    """
    if writer_params is not None and not isinstance(writer_params, Mapping):
        raise TypeError(
            f"imsave(writer_params={writer_params!r}): expected a mapping of Pillow writer "
            f"options, got {type(writer_params).__name__}. Pass for example "
            "writer_params={'optimize': True}."
        )
    image = imgify(
        obj, vmin=vmin, vmax=vmax, cmap=cmap, level=level, symmetric=symmetric, grid=grid,
        gridfill=gridfill,
    )  # fmt: skip
    image.save(fp, format=format, **(writer_params or {}))
