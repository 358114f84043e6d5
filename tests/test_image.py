"""funcattr.image against Zennit 1.0.0's zennit.image: every image is compared pixel for pixel.

Zennit 1.0.0 hands ``putpalette`` a numpy array, which Pillow 13 cannot load (reference §14), so
its palette images are made here with ``zennit.image.palette`` patched to return bytes.
"""

import io
from unittest import mock

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from PIL import Image
from zennit import image as zimage

from funcattr.cmap import ColorMap, LazyColorMapCache
from funcattr.image import (
    CMAPS,
    get_cmap,
    gridify,
    imgify,
    imsave,
    interval_norm_bounds,
    palette,
)

NAMES = list(zimage.CMAPS)
RNG = np.random.default_rng(0xC0FFEE)


def zennit_imgify(*args, **kwargs):
    original = zimage.palette
    with mock.patch.object(zimage, "palette", lambda *a, **k: original(*a, **k).tobytes()):
        return zimage.imgify(*args, **kwargs)


def assert_same_image(ours, theirs):
    assert isinstance(ours, Image.Image)
    assert (ours.mode, ours.size) == (theirs.mode, theirs.size)
    assert np.array_equal(np.asarray(ours), np.asarray(theirs))
    if theirs.mode == "P":
        assert ours.getpalette() == theirs.getpalette()


def check(obj, **kwargs):
    ours = imgify(obj, **kwargs)
    assert_same_image(ours, zennit_imgify(obj, **kwargs))
    return ours


def sample(shape, dtype=np.float64):
    if dtype == np.uint8:
        return RNG.integers(0, 256, size=shape, dtype=np.uint8)
    return (RNG.normal(size=shape) * 3.0 + 0.5).astype(dtype)


def test_builtin_sources_equal_zennit():
    assert isinstance(CMAPS, LazyColorMapCache)
    assert list(CMAPS) == NAMES and len(CMAPS) == 11
    for name in NAMES:
        assert CMAPS[name].source == zimage.CMAPS[name].source


@pytest.mark.parametrize("level", [1.0, 0.5, 2.0, 0.0, -1.0])
@pytest.mark.parametrize("name", NAMES)
def test_palette_equals_zennit(name, level):
    np.testing.assert_array_equal(palette(name, level), zimage.palette(name, level))


@pytest.mark.parametrize("grid", [False, True, (2, 3)])
@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("level", [1.0, 0.5, 2.0])
@pytest.mark.parametrize("name", NAMES)
def test_every_builtin_cmap(name, level, symmetric, grid):
    data = sample((5, 1, 7, 6)) if grid else sample((7, 6))
    image = check(data, cmap=name, level=level, symmetric=symmetric, grid=grid)
    assert image.mode == "P" and len(image.getpalette()) == 768


SINGLE_SHAPES = [(6, 5), (6, 5, 1), (1, 6, 5), (6, 5, 3), (3, 6, 5), (3, 6, 3), (1, 1, 1)]
BATCH_SHAPES = [(4, 6, 5), (4, 1, 6, 5), (4, 6, 5, 1), (4, 3, 6, 5), (4, 6, 5, 3), (4, 3, 6, 3)]
BOUNDS = [(None, None), (-0.5, None), (None, 0.7), (-2.0, 3.0), (1, 2)]


@pytest.mark.parametrize(("vmin", "vmax"), BOUNDS)
@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.uint8, np.int16])
@pytest.mark.parametrize(
    ("shape", "grid"),
    [(shape, False) for shape in SINGLE_SHAPES] + [(shape, True) for shape in BATCH_SHAPES],
)
def test_layouts_dtypes_and_bounds(shape, grid, dtype, symmetric, vmin, vmax):
    data = sample(shape, dtype)
    if dtype == np.int16:
        data = data * 100
    if shape == (1, 1, 1) and vmin is None is vmax:
        data = np.array([[[0.25]]], dtype=dtype)
        vmin = -1.0  # a single value needs one given bound to avoid 0 / 0
    image = check(data, vmin=vmin, vmax=vmax, symmetric=symmetric, grid=grid, cmap="coldnhot")
    assert image.mode == ("RGB" if 3 in (shape[-1], shape[-3 if grid else 0]) else "P")


@pytest.mark.parametrize("gridfill", [None, 0, 128, 255, 300, -1, 17.9])
@pytest.mark.parametrize(
    ("shape", "grid"),
    [((3, 5, 4), (2, 2)), ((3, 1, 5, 4), (1, 5)), ((7, 5, 4), (2, 2)), ((5, 5, 4), True)],
)
def test_gridfill_and_grid_shapes(shape, grid, gridfill):
    image = check(sample(shape), grid=grid, gridfill=gridfill, symmetric=True)
    rows, columns = (3, 2) if grid is True else grid
    assert image.size == (columns * shape[-1], rows * shape[-2])


@pytest.mark.parametrize("gridfill", [None, 9, [10, 20, 30]])
def test_gridfill_rgb(gridfill):
    check(sample((3, 3, 4, 5)), grid=(2, 3), gridfill=gridfill)
    check(sample((3, 4, 5, 3), np.uint8), grid=True, gridfill=gridfill)


def test_grid_as_list_and_empty_grid():
    data = sample((4, 6, 5))
    check(data, grid=[1, 4])
    check(data[0], grid=())  # an empty tuple is falsy: no grid, as in Zennit


@pytest.mark.parametrize("name", ["gray", "hot"])
def test_cmap_source_and_colormap_objects(name):
    data = sample((6, 5))
    source = zimage.CMAPS[name].source
    check(data, cmap=source)
    assert_same_image(imgify(data, cmap=ColorMap(source)), zennit_imgify(data, cmap=name))


def test_tensors_are_detached():
    data = torch.tensor(sample((2, 1, 5, 4)), requires_grad=True)
    assert_same_image(imgify(data, grid=True), zennit_imgify(data.detach(), grid=True))
    assert_same_image(imgify(data[0, 0]), zennit_imgify(data[0, 0].detach().numpy()))


def test_given_bounds_promote_like_zennit():
    # Given bounds become 0-d float64 arrays, so float32 data is scaled in float64; scaling in
    # float32 would truncate at least one of these values differently.
    data = np.linspace(-1.0, 1.0, 20001, dtype=np.float32)[None]
    image = check(data, vmin=-1.0, vmax=1.0)
    in_float32 = ((data + 1.0) / 2.0 * 255).clip(0, 255).astype(np.uint8)
    assert not np.array_equal(np.asarray(image), in_float32)


def test_constant_input_matches_zennit_nan_path():
    # 0 / 0 gives NaN and numpy warns; both libraries take the same arithmetic path.
    data = np.zeros((4, 5))
    with np.errstate(all="ignore"):
        check(data)
        check(data, symmetric=True)


def test_per_sample_bounds():
    # Zennit 1.0.0 fails here (``None in (vmin, vmax)`` on arrays); funcattr scales per sample.
    data = sample((2, 4, 5))
    vmin, vmax = np.array([-1.0, -2.0])[:, None, None], np.array([1.0, 3.0])[:, None, None]
    with pytest.raises(ValueError, match="truth value of an array"):
        zimage.imgify(data, vmin=vmin, vmax=vmax, grid=True)
    expected = gridify(((data - vmin) / (vmax - vmin) * 255).clip(0, 255).astype(np.uint8))
    np.testing.assert_array_equal(
        np.asarray(imgify(data, vmin=vmin, vmax=vmax, grid=True)), expected[..., 0]
    )


array_cases = st.sampled_from(
    [((h, w), False) for h, w in [(3, 4), (1, 7)]]
    + [((1, 3, 4), False), ((3, 4, 3), False), ((3, 2, 5), False)]
    + [((n, 3, 4), True) for n in (1, 2, 5)]
    + [((3, 1, 2, 3), True), ((2, 3, 3, 4), True), ((4, 2, 3, 3), (2, 2))]
).flatmap(
    lambda case: st.tuples(
        hnp.arrays(
            st.sampled_from([np.float64, np.float32]),
            case[0],
            elements=st.floats(-1e3, 1e3, width=32),
        ),
        st.just(case[1]),
    )
)


@settings(max_examples=120, deadline=None)
@given(
    case=array_cases,
    name=st.sampled_from(NAMES),
    level=st.sampled_from([1.0, 0.3, 1.7]),
    symmetric=st.booleans(),
    bounds=st.sampled_from([(None, None), (-10.0, None), (None, 10.0), (-5.0, 7.5)]),
)
def test_random_arrays_match_zennit(case, name, level, symmetric, bounds):
    data, grid = case
    with np.errstate(all="ignore"):  # constant samples: 0 / 0 on both sides
        check(data, cmap=name, level=level, symmetric=symmetric, grid=grid, vmin=bounds[0],
              vmax=bounds[1])  # fmt: skip


# -- gridify, interval_norm_bounds, get_cmap -------------------------------------------------------


@pytest.mark.parametrize("fill_value", [None, 0.5, [1.0, 2.0, 3.0]])
@pytest.mark.parametrize(
    ("shape", "grid"),
    [((5, 4, 3), None), ((5, 3, 4, 3), None), ((5, 4, 3, 3), (3, 2)), ((2, 1, 4, 3), (1, 3))],
)
def test_gridify_equals_zennit(shape, grid, fill_value):
    data = sample(shape)
    if fill_value is not None and np.ndim(fill_value) and 3 not in shape[1::2]:
        fill_value = fill_value[0]
    ours = gridify(data, shape=grid, fill_value=fill_value)
    np.testing.assert_array_equal(ours, zimage.gridify(data, shape=grid, fill_value=fill_value))
    assert ours.dtype == data.dtype


def test_gridify_layout_is_row_major():
    tiles = np.arange(5)[:, None, None] * np.ones((5, 2, 2), dtype=int)
    np.testing.assert_array_equal(gridify(tiles)[::2, ::2, 0], [[0, 1], [2, 3], [4, 0]])


@pytest.mark.parametrize("dim", [None, (0,), (0, 1, 2), 1, [1, 2]])
@pytest.mark.parametrize("symmetric", [False, True])
def test_interval_norm_bounds_equal_zennit(symmetric, dim):
    data = sample((3, 4, 5))
    ours = interval_norm_bounds(data, symmetric=symmetric, dim=dim)
    theirs = zimage.interval_norm_bounds(
        data, symmetric=symmetric, dim=tuple(dim) if isinstance(dim, list) else dim
    )
    for a, b in zip(ours, theirs, strict=True):
        np.testing.assert_array_equal(a, b)
        assert a.shape == b.shape


def test_get_cmap():
    cmap = ColorMap("000,fff")
    assert get_cmap(cmap) is cmap
    assert get_cmap("bwr") is CMAPS["bwr"]
    assert get_cmap("00f,80:fff,f00") is not CMAPS["bwr"]
    np.testing.assert_array_equal(get_cmap("00f,80:fff,f00").palette(), CMAPS["bwr"].palette())


# -- imsave ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("shape", "grid"), [((6, 5), False), ((3, 6, 5), False), ((3, 1, 6, 5), True)]
)
def test_imsave_round_trip(tmp_path, shape, grid):
    data = sample(shape)
    path = tmp_path / "attribution.png"
    imsave(path, data, cmap="coldnhot", level=1.5, grid=grid, symmetric=True)
    expected = imgify(data, cmap="coldnhot", level=1.5, grid=grid, symmetric=True)
    with Image.open(path) as image:
        image.load()
        assert (image.format, image.mode, image.size) == ("PNG", expected.mode, expected.size)
        np.testing.assert_array_equal(np.asarray(image), np.asarray(expected))
        if image.mode == "P":
            assert image.getpalette() == expected.getpalette()
            np.testing.assert_array_equal(
                np.asarray(image.convert("RGB")), np.asarray(expected.convert("RGB"))
            )


def test_imsave_format_and_writer_params():
    buffer = io.BytesIO()
    data = sample((6, 5))
    imsave(buffer, data, format="png", writer_params={"compress_level": 1}, vmin=-1.0, vmax=1.0)
    buffer.seek(0)
    with Image.open(buffer) as image:
        np.testing.assert_array_equal(np.asarray(image), np.asarray(imgify(data, vmin=-1, vmax=1)))


# -- errors ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (
            lambda: imgify(np.zeros((2, 3, 4, 5))),
            TypeError,
            r"^imgify\(obj=array\(shape=\(2, 3, 4, 5\), dtype=float64\)\): expected \(H, W\), "
            r".*got 4 axes\. Pass grid=True",
        ),
        (
            lambda: imgify(np.zeros((4, 5)), grid=True),
            TypeError,
            r"^imgify\(obj=array\(shape=\(4, 5\).*expected \(N, H, W\).*got 2 axes\. Add a batch",
        ),
        (
            lambda: imgify(np.zeros((4, 5, 6))),
            TypeError,
            r"^imgify\(obj=.*got no colour axis of size 1 or 3 first or last\. Reduce the channels"
            r" first, for example obj\.sum\(0\)",
        ),
        (
            lambda: imgify(np.zeros((2, 4, 5, 6)), grid=True),
            TypeError,
            r"^imgify\(obj=.*expected \(N, H, W\), .*got no colour axis.*obj\.sum\(1\)",
        ),
        (
            lambda: imgify(np.zeros((2, 4, 5)), grid=(1, 2, 3)),
            TypeError,
            r"^imgify\(grid=\(1, 2, 3\)\): expected a \(rows, columns\) pair, "
            r"got tuple of size 3\.",
        ),
        (
            lambda: imgify(np.zeros((2, 4, 5)), grid=2),
            TypeError,
            r"^imgify\(grid=2\): expected a \(rows, columns\) pair, got int\. Pass grid=\(rows",
        ),
        (
            lambda: imgify(np.zeros((2, 4, 5)), grid=(1.0, 2)),
            TypeError,
            r"^imgify\(grid=\(1\.0, 2\)\): expected two integers, got \(float, int\)\.",
        ),
        (
            lambda: imgify(np.zeros((2, 4, 5)), grid=(0, 2)),
            ValueError,
            r"^imgify\(grid=\(0, 2\)\): expected both sizes >= 1, got \(0, 2\)\.",
        ),
        (
            lambda: imgify(np.zeros((4, 5)), level="high"),
            TypeError,
            r"^imgify\(level='high'\): expected a real number, got str\.",
        ),
        (
            lambda: imgify(np.zeros((4, 5)), cmap=3),
            TypeError,
            r"^imgify\(cmap=3\): expected a colour-map name, CMSL source or ColorMap, got int\.",
        ),
        (
            lambda: imgify(np.zeros((4, 5)), cmap="bwrr"),
            RuntimeError,
            r"^imgify\(cmap='bwrr'\): expected a name in CMAPS or CMSL source, got neither\. "
            r"Did you mean 'bwr'\?",
        ),
        (
            lambda: get_cmap("zzz"),
            RuntimeError,
            r"^ColorMap\(source='zzz'\): Compilation of ColorMap failed",
        ),
        (lambda: get_cmap(None), TypeError, r"^get_cmap\(cmap=None\): expected a colour-map name"),
        (
            lambda: palette("gray", float("nan")),
            ValueError,
            r"^palette\(level=nan\): expected a real number, got NaN",
        ),
        (
            lambda: gridify(np.zeros((4, 5))),
            TypeError,
            r"^gridify\(obj=array\(shape=\(4, 5\).*got 2 axes\. Stack the images",
        ),
        (
            lambda: gridify(np.zeros((0, 4, 5))),
            ValueError,
            r"^gridify\(obj=array\(shape=\(0, 4, 5, 1\).*expected at least one image, got none\.",
        ),
        (
            lambda: gridify(np.zeros((2, 4, 5)), shape=(2,)),
            TypeError,
            r"^gridify\(shape=\(2,\)\): expected a \(rows, columns\) pair, got tuple of size 1\.",
        ),
        (
            lambda: imsave(io.BytesIO(), np.zeros((4, 5)), format="png", writer_params=[1]),
            TypeError,
            r"^imsave\(writer_params=\[1\]\): expected a mapping of Pillow writer options, "
            r"got list",
        ),
    ],
)
def test_error_messages(call, error, message):
    with pytest.raises(error, match=message):
        call()
