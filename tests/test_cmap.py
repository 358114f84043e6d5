"""funcattr.cmap against Zennit 1.0.0's zennit.cmap: tokens, nodes, colours, palettes and errors."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from zennit import cmap as zcmap

from funcattr.cmap import CMapToken, ColorMap, ColorNode, LazyColorMapCache, _tokenize

LEVELS = (1.0, 0.5, 2.0, 0.0, -1.0, 3.7)
HEX = "0123456789abcdefABCDEF"

VALID = [
    "000,fff",
    " 000 , fff ",
    "000\n,\tfff",
    "000,fff,",  # one trailing comma is accepted
    "0:000,f:fff",
    "00:000,ff:fff",
    "00f,80:fff,f00",
    "AbC,dEf",
    "0055a4,80:fff,ef4135",
    "0ff,00f,80:000,f00,ff0,fff",
    "40:f00,0f0,00f",  # first index > 0 is repeated at 0
    "000,0f0,c0:00f",  # last index < 255 is repeated at 256
    "000,80:f00,80:0f0,fff",  # equal indices are allowed
    "123,456,789,abc,def,fed,cba",  # evenly spaced, truncated to int
    "a0:123456,654321,b0:abcdef,fff",
]
INVALID = [
    "",
    "000",
    "80:fff",
    ",000,fff",
    "000,,fff",
    "000 fff",
    "80 000,fff",
    "80:",
    "000,80",
    "000,80:",
    "000:fff",
    "000,fff,,",
    "000,g00",
    "000,ffff",
    "80:80:000,fff",
    "000,80:fff,40:000",
    "80:000,40:fff",
    "000;fff",
]


def compile_or_none(cls, source):
    try:
        return cls(source)
    except RuntimeError:
        return None


def assert_same_map(ours, theirs):
    """Same nodes, same colours for any value, same palette at every level."""
    np.testing.assert_array_equal(ours._indices, theirs._indices)
    np.testing.assert_array_equal(ours._colours, theirs._colors)
    for dtype in (np.float64, np.float32):
        x = np.linspace(-0.2, 1.2, 337, dtype=dtype).reshape(1, -1)
        assert np.array_equal(ours(x), theirs(x))
    for level in LEVELS:
        ours_palette, theirs_palette = ours.palette(level), theirs.palette(level)
        assert ours_palette.dtype == np.uint8 and ours_palette.shape == (256, 3)
        assert np.array_equal(ours_palette, theirs_palette)


# -- lexer -----------------------------------------------------------------------------------------


def test_tokens_name_type_value_and_position():
    assert _tokenize("00f, 8:fff") == [
        CMapToken("shortcolor", "00f", 0),
        CMapToken("sep", ",", 3),
        CMapToken("whitespace", " ", 4),
        CMapToken("index", "8", 5),
        CMapToken("adsep", ":", 6),
        CMapToken("shortcolor", "fff", 7),
    ]


@pytest.mark.parametrize(
    ("source", "kinds"),
    [
        ("8000", ["shortcolor", "index"]),  # four digits: short colour, then an index
        ("1234567", ["longcolor", "index"]),
        ("12345", ["shortcolor", "index"]),
        ("g00,fff\n000", ["error", "whitespace", "shortcolor"]),  # error runs to end of line
        ("ab:", ["index", "adsep"]),
    ],
)
def test_lexer_longest_alternative_first(source, kinds):
    tokens = _tokenize(source)
    assert [token.type for token in tokens] == kinds
    assert "".join(token.value for token in tokens) == source


@pytest.mark.parametrize("source", VALID + INVALID)
def test_lexer_matches_zennit(source):
    assert _tokenize(source) == zcmap.ColorMap._lex(source)


# -- grammar and nodes -----------------------------------------------------------------------------


@pytest.mark.parametrize("source", VALID)
def test_valid_sources_match_zennit(source):
    ours = ColorMap(source)
    assert ours.source == source
    assert_same_map(ours, zcmap.ColorMap(source))


@pytest.mark.parametrize("source", INVALID)
def test_invalid_sources_fail_like_zennit(source):
    with pytest.raises(RuntimeError, match="Compilation of ColorMap failed"):
        zcmap.ColorMap(source)
    with pytest.raises(RuntimeError, match=r"^ColorMap\(source=.*Compilation of ColorMap failed"):
        ColorMap(source)


@pytest.mark.parametrize(
    ("source", "indices"),
    [
        ("00f,80:fff,f00", [0, 128, 255, 256]),
        ("000,f00,ff0,fff", [0, 85, 170, 255, 256]),
        ("0ff,00f,80:000,f00,ff0,fff", [0, 64, 128, 170, 212, 255, 256]),
        ("40:f00,0f0,00f", [0, 64, 159, 255, 256]),
        ("000,0f0,c0:00f", [0, 96, 192, 256]),
        ("000,8:fff,000", [0, 0x88, 255, 256]),  # one index digit is doubled
    ],
)
def test_node_placement(source, indices):
    assert ColorMap(source)._indices.tolist() == indices


def test_short_colour_digits_are_doubled():
    cmap = ColorMap("f0a,fff")
    np.testing.assert_array_equal(cmap._colours[0], [0xFF, 0x00, 0xAA])
    np.testing.assert_allclose(cmap(0.0), [1.0, 0.0, 0xAA / 255])
    np.testing.assert_array_equal(ColorMap("ff00aa,fff").palette(), cmap.palette())


def test_single_digit_index_is_doubled():
    cmap = ColorMap("000,8:fff,000")
    np.testing.assert_array_equal(cmap(0x88 / 255), [1.0, 1.0, 1.0])
    assert not np.array_equal(cmap(0x80 / 255), [1.0, 1.0, 1.0])


def test_color_node_fields():
    node = ColorNode(None, np.array([1, 2, 3]))
    assert node.index is None and node.value.tolist() == [1, 2, 3]
    assert ColorNode._fields == zcmap.ColorNode._fields
    assert CMapToken._fields == zcmap.CMapToken._fields


sources = st.builds(
    lambda entries, seps, trailing: (
        "".join(
            f"{'' if index is None else index + ':'}{colour}{sep}"
            for (index, colour), sep in zip(entries, seps, strict=False)
        ).rstrip(",")
        + trailing
    ),
    st.lists(
        st.tuples(
            st.none() | st.text(HEX, min_size=1, max_size=2),
            st.text(HEX, min_size=3, max_size=3) | st.text(HEX, min_size=6, max_size=6),
        ),
        min_size=1,
        max_size=7,
    ),
    st.lists(st.sampled_from([",", " ,", ", ", "\t,\n"]), min_size=7, max_size=7),
    st.sampled_from(["", ",", " "]),
)


@settings(max_examples=150, deadline=None)
@given(source=sources)
def test_random_sources_match_zennit(source):
    ours, theirs = compile_or_none(ColorMap, source), compile_or_none(zcmap.ColorMap, source)
    assert (ours is None) == (theirs is None)
    if ours is not None:
        assert_same_map(ours, theirs)


@settings(max_examples=150, deadline=None)
@given(source=st.text("0123456789abcdefAF:, \t\ngx", max_size=24))
def test_random_text_matches_zennit(source):
    assert _tokenize(source) == zcmap.ColorMap._lex(source)
    ours, theirs = compile_or_none(ColorMap, source), compile_or_none(zcmap.ColorMap, source)
    assert (ours is None) == (theirs is None)
    if ours is not None:
        assert_same_map(ours, theirs)


# -- errors ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("", r"expected at least 2 colours, got 0\."),
        ("80:fff", r"expected at least 2 colours, got 1\."),
        ("000,,fff", r"expected an index or a colour, got ',' \(sep\) at position 4\."),
        ("000,g00", r"expected an index or a colour, got 'g00' \(error\) at position 4\."),
        ("80 000,fff", r"expected ':' after the index, got '000' \(shortcolor\) at position 3\."),
        ("000,80:,fff", r"expected a colour \(RGB or RRGGBB\), got ',' \(sep\) at position 7\."),
        ("000,ffff", r"expected ',' or the end of the source, got 'f' \(index\) at position 7\."),
        ("000,80", r"expected ':' after the index, got the end at position 6\."),
        (
            "000,80:fff,40:000",
            r"expected indices in ascending order \(at least 0x80\), got index 0x40 at position 11",
        ),
    ],
)
def test_compile_error_names_token_and_position(source, message):
    with pytest.raises(RuntimeError, match=message) as info:
        ColorMap(source)
    assert str(info.value).startswith(
        f"ColorMap(source={source!r}): Compilation of ColorMap failed"
    )
    assert str(info.value).endswith("for example '00f,80:fff,f00'.")


def test_source_must_be_a_string():
    with pytest.raises(TypeError, match=r"ColorMap\(source=5\): expected a CMSL source string"):
        ColorMap(5)


@pytest.mark.parametrize(
    ("level", "error", "message"),
    [
        ("1", TypeError, "expected a real number, got str"),
        (float("nan"), ValueError, "expected a real number, got NaN"),
    ],
)
def test_palette_level_is_checked(level, error, message):
    with pytest.raises(error, match=rf"^ColorMap\.palette\(level=.*\): {message}\. Pass a float"):
        ColorMap("000,fff").palette(level)


# -- ColorMap behaviour ----------------------------------------------------------------------------


def test_source_setter_recompiles_and_keeps_old_on_error():
    cmap = ColorMap("000,fff")
    gray = cmap.palette()
    cmap.source = "fff,000"
    assert cmap.source == "fff,000"
    np.testing.assert_array_equal(cmap.palette(), gray[::-1])
    with pytest.raises(RuntimeError, match="Compilation of ColorMap failed"):
        cmap.source = "fff"
    assert cmap.source == "fff,000"
    np.testing.assert_array_equal(cmap.palette(), gray[::-1])
    assert repr(cmap) == "ColorMap('fff,000')"


def test_call_appends_colour_axis_and_clips():
    cmap = ColorMap("00f,80:fff,f00")
    assert cmap(np.zeros((2, 5))).shape == (2, 5, 3)
    assert cmap(0.25).shape == (3,)
    np.testing.assert_array_equal(cmap(np.array([-3.0, 7.0])), [[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize(
    ("source", "indices", "colours"),
    [
        ("00f,80:fff,f00", [0, 128, 255, 256], ["00f", "fff", "f00", "f00"]),
        ("000,f00,ff0,fff", [0, 85, 170, 255, 256], ["000", "f00", "ff0", "fff", "fff"]),
        ("0000d0,80:d0d0d0,d00000", [0, 128, 255, 256], ["00d", "ddd", "d00", "d00"]),
    ],
)
def test_palette_against_np_interp(source, indices, colours, level):
    rgb = np.array([[int(c * 2, 16) for c in colour] for colour in colours])
    if "d0" in source:
        rgb = rgb // 0xDD * 0xD0
    x = ((np.linspace(-1.0, 1.0, 256) * level + 1.0) / 2.0).clip(0.0, 1.0) * 255
    expected = np.stack([np.interp(x, indices, rgb[:, c]) for c in range(3)], axis=1)
    np.testing.assert_array_equal(ColorMap(source).palette(level), np.floor(expected.round(9)))


def test_palette_level_zero_is_centre_colour_and_negative_reverses():
    cmap = ColorMap("00f,80:fff,f00")
    assert (cmap.palette(0.0) == np.floor(cmap(0.5) * 255)).all()
    np.testing.assert_array_equal(cmap.palette(-1.0), cmap.palette(1.0)[::-1])


# -- LazyColorMapCache -----------------------------------------------------------------------------


def test_cache_compiles_lazily_and_caches():
    sources = {"gray": "000,fff", "broken": "000,"}
    cache = LazyColorMapCache(sources)  # nothing compiled: the broken source does not raise yet
    assert len(cache) == 2 and list(cache) == ["gray", "broken"]
    assert "gray" in cache and "blue" not in cache and [] not in cache
    gray = cache["gray"]
    assert isinstance(gray, ColorMap) and cache["gray"] is gray
    with pytest.raises(RuntimeError, match="Compilation of ColorMap failed"):
        cache["broken"]
    cache["extra"] = "f00,0f0"
    assert sources == {"gray": "000,fff", "broken": "000,"}  # the given dict is copied
    assert repr(cache).startswith("LazyColorMapCache({'gray': '000,fff'")


def test_cache_setitem_recompiles_in_place():
    cache = LazyColorMapCache({"gray": "000,fff"})
    gray = cache["gray"]
    cache["gray"] = "fff,000"
    assert cache["gray"] is gray and gray.source == "fff,000"
    np.testing.assert_array_equal(gray.palette()[0], [255, 255, 255])
    with pytest.raises(RuntimeError, match="Compilation of ColorMap failed"):
        cache["gray"] = "fff"
    assert gray.source == "fff,000" and cache["gray"] is gray
    cache["new"] = "f00"  # not compiled yet: stored as it is, fails on first use
    with pytest.raises(RuntimeError, match="at least 2 colours"):
        cache["new"]


def test_cache_delitem_and_missing_key():
    cache = LazyColorMapCache({"gray": "000,fff", "hot": "000,f00,ff0,fff"})
    gray = cache["gray"]
    del cache["gray"]
    assert len(cache) == 1 and "gray" not in cache
    cache["gray"] = "000,fff"
    assert cache["gray"] is not gray  # a deleted map is compiled afresh
    with pytest.raises(
        KeyError, match=r"LazyColorMapCache\['hott'\]: .* got 'hott'\. Did you mean"
    ):
        cache["hott"]
    with pytest.raises(KeyError, match=r"got 'blue'\. Add it with cache\[name\] = source\."):
        cache["blue"]
    with pytest.raises(KeyError):
        del cache["blue"]
