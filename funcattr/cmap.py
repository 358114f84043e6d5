"""Colour maps compiled from the colour-map specification language (CMSL).

A CMSL source is a comma-separated list of entries ``[index:]colour``:

* ``colour`` is ``RRGGBB`` or the short form ``RGB`` (each digit doubled: ``f0a`` is ``ff00aa``);
* ``index`` is one or two hex digits giving the position (0 to 255) of the colour; a single digit
  is doubled as well (``8:`` is ``0x88``);
* whitespace may appear between tokens, and one trailing comma is allowed.

Unindexed colours are spread evenly between their indexed neighbours; an unindexed first colour
sits at 0 and an unindexed last colour at 255. Indices must not decrease from left to right.
Values in between the nodes are interpolated linearly. The behaviour (tokens, node placement,
interpolation and the 8-bit palette) reproduces ``zennit.cmap`` of Zennit 1.0.0 exactly.

Examples
--------
>>> cmap = ColorMap("00f,80:fff,f00")
>>> cmap(128 / 255).tolist()
[1.0, 1.0, 1.0]
>>> cmap.palette()[[0, 255]].tolist()
[[0, 0, 255], [255, 0, 0]]
"""

from __future__ import annotations

import difflib
import math
import numbers
import re
from collections.abc import Iterator, Mapping
from typing import NamedTuple

import numpy as np
from numpy.typing import ArrayLike

__all__ = ["CMapToken", "ColorMap", "ColorNode", "LazyColorMapCache"]


class CMapToken(NamedTuple):
    """One lexical token of a CMSL source.

    Attributes
    ----------
    type : str
        One of ``'longcolor'``, ``'shortcolor'``, ``'index'``, ``'adsep'`` (the colon), ``'sep'``
        (the comma), ``'whitespace'`` or ``'error'`` (everything else, up to the end of the line).
    value : str
        The matched text.
    pos : int
        Offset of the token in the source.
    """

    type: str
    value: str
    pos: int


class ColorNode(NamedTuple):
    """One colour of a colour map: its index (``None`` if not given) and its RGB value (0 to 255).

    Attributes
    ----------
    index : int or None
        Position of the colour on the 0 to 255 scale, or ``None`` when the source gave none.
    value : numpy.ndarray
        Integer array of shape ``(3,)`` with the red, green and blue components.
    """

    index: int | None
    value: np.ndarray


# Token kinds in the order they are tried; the first alternative that matches wins, so a run of six
# hex digits is one long colour, three are a short colour and one or two are an index.
_TOKEN_KINDS = (
    ("longcolor", "[0-9a-fA-F]{6}"),
    ("shortcolor", "[0-9a-fA-F]{3}"),
    ("index", "[0-9a-fA-F]{1,2}"),
    ("adsep", ":"),
    ("sep", ","),
    ("whitespace", r"\s+"),
    ("error", ".+"),
)
_SCANNER = re.compile("|".join(f"(?P<{kind}>{pattern})" for kind, pattern in _TOKEN_KINDS))
_COLOUR_KINDS = ("longcolor", "shortcolor")

# What the parser accepts next, per state, and how to say it in an error message.
_EXPECTED = {
    "entry": "an index or a colour",
    "colon": "':' after the index",
    "colour": "a colour (RGB or RRGGBB)",
    "after": "',' or the end of the source",
}

_CMSL_HINT = (
    "Write comma-separated entries [index:]colour, where colour has 3 or 6 hex digits and the "
    "optional index 1 or 2 hex digits, for example '00f,80:fff,f00'"
)


def _compile_error(source: str, expected: str, got: str) -> RuntimeError:
    return RuntimeError(
        f"ColorMap(source={source!r}): Compilation of ColorMap failed: "
        f"expected {expected}, got {got}. {_CMSL_HINT}."
    )


def check_level(caller: str, level: object) -> None:
    """Check a palette ``level`` before any work: a real number that is not NaN."""
    if not isinstance(level, numbers.Real):
        raise TypeError(
            f"{caller}(level={level!r}): expected a real number, got {type(level).__name__}. "
            "Pass a float such as 1.0 (full range) or 2.0 (saturate earlier)."
        )
    if math.isnan(level):
        raise ValueError(
            f"{caller}(level={level!r}): expected a real number, got NaN. "
            "Pass a float such as 1.0 (full range) or 2.0 (saturate earlier)."
        )


def _tokenize(source: str) -> list[CMapToken]:
    """Split a CMSL source into tokens; unknown text becomes an ``'error'`` token."""
    return [CMapToken(m.lastgroup, m.group(), m.start()) for m in _SCANNER.finditer(source)]


def _hex_rgb(token: CMapToken) -> np.ndarray:
    """Turn a colour token into its integer RGB components; short colours double each digit."""
    text = token.value if token.type == "longcolor" else "".join(c * 2 for c in token.value)
    return np.array([int(text[k : k + 2], 16) for k in range(0, 6, 2)])


def _parse(source: str) -> list[tuple[ColorNode, int]]:
    """Parse a CMSL source into colour nodes, each paired with the position of its entry.

    The parser is a four-state machine: ``entry`` (start of an entry), ``colon`` (an index was
    read), ``colour`` (index and colon were read) and ``after`` (a colour ended the entry).
    Whitespace is skipped in every state; the source may end in ``entry`` or ``after``.
    """
    nodes = []
    state, index, start = "entry", None, 0
    for token in _tokenize(source):
        kind = token.type
        if kind == "whitespace":
            continue
        if state == "entry" and kind == "index":
            digits = token.value if len(token.value) == 2 else token.value * 2
            state, index, start = "colon", int(digits, 16), token.pos
        elif state == "colon" and kind == "adsep":
            state = "colour"
        elif state in ("entry", "colour") and kind in _COLOUR_KINDS:
            where = token.pos if index is None else start  # an entry starts at its index
            nodes.append((ColorNode(index, _hex_rgb(token)), where))
            state, index = "after", None
        elif state == "after" and kind == "sep":
            state = "entry"
        else:
            got = f"{token.value!r} ({kind}) at position {token.pos}"
            raise _compile_error(source, _EXPECTED[state], got)
    if state not in ("entry", "after"):
        raise _compile_error(source, _EXPECTED[state], f"the end at position {len(source)}")
    return nodes


def _place(source: str, nodes: list[tuple[ColorNode, int]]) -> tuple[np.ndarray, np.ndarray]:
    """Give every node its final index and return ``(indices, colours)`` of the interpolation.

    The first colour is pinned to 0 (and repeated at its own index if that is larger), an
    unindexed last colour goes to 255, runs of unindexed colours are spaced evenly (truncating
    to ``int``) between the indexed nodes around them, and the last colour is repeated at 256.
    """
    if len(nodes) < 2:
        raise _compile_error(source, "at least 2 colours", f"{len(nodes)}")
    (first, _), *rest = nodes
    indices, colours = [0], [first.value]
    if first.index is not None and first.index > 0:
        indices.append(first.index)
        colours.append(first.value)
    waiting: list[np.ndarray] = []
    for number, (node, pos) in enumerate(rest, start=1):
        index = node.index
        if index is None:
            if number < len(rest):
                waiting.append(node.value)
                continue
            index = 255
        elif index < indices[-1]:
            raise _compile_error(
                source,
                f"indices in ascending order (at least {indices[-1]:#04x})",
                f"index {index:#04x} at position {pos}",
            )
        if waiting:
            start = indices[-1]
            fractions = np.linspace(0.0, 1.0, len(waiting) + 2)[1:-1]
            indices.extend(int(start * (1.0 - f) + index * f) for f in fractions)
            colours.extend(waiting)
            waiting = []
        indices.append(index)
        colours.append(node.value)
    indices.append(256)
    colours.append(colours[-1])
    return np.array(indices), np.stack(colours, axis=0)


class ColorMap:
    """A linear colour map compiled from CMSL source (see the module docstring for the language).

    Parameters
    ----------
    source : str
        The CMSL source, for example ``'00f,80:fff,f00'`` (blue, white at 0x80, red).

    Raises
    ------
    RuntimeError
        If the source does not compile; the message names the offending token and its position.
    TypeError
        If ``source`` is not a string.

    Examples
    --------
    >>> ColorMap("000,fff")(np.array([0.0, 1.0])).tolist()
    [[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]]
    """

    def __init__(self, source: str) -> None:
        self._source: str | None = None
        self.source = source

    @property
    def source(self) -> str:
        """The CMSL source; assigning a new one recompiles the map (the old stays on error)."""
        return self._source

    @source.setter
    def source(self, value: str) -> None:
        if not isinstance(value, str):
            raise TypeError(
                f"ColorMap(source={value!r}): expected a CMSL source string, got "
                f"{type(value).__name__}. {_CMSL_HINT}."
            )
        self._indices, self._colours = _place(value, _parse(value))
        self._source = value

    def __repr__(self) -> str:
        return f"ColorMap({self._source!r})"

    def __call__(self, x: ArrayLike) -> np.ndarray:
        """Map values in [0, 1] to RGB in [0, 1], appending an axis of size 3.

        Parameters
        ----------
        x : array_like
            Values of any shape; they are clipped to [0, 1].

        Returns
        -------
        numpy.ndarray
            Array of shape ``x.shape + (3,)`` with the interpolated colours scaled to [0, 1].
        """
        scaled = (np.asarray(x) * 255).clip(0, 255)
        upper = np.searchsorted(self._indices[:-1], scaled, side="right")
        lower = upper - 1
        span = self._indices[upper] - self._indices[lower]
        weight = ((scaled - self._indices[lower]) / span)[..., None]
        return (self._colours[lower] * (1 - weight) + self._colours[upper] * weight) / 255.0

    def palette(self, level: float = 1.0) -> np.ndarray:
        """Return the 8-bit palette, a ``uint8`` array of shape ``(256, 3)``.

        Parameters
        ----------
        level : float, optional
            Contrast of the palette around its centre. ``1.0`` (default) spans the whole map;
            values above 1 reach the ends of the map earlier, values below 1 use a narrower part
            of it (``0.0`` gives the centre colour only), negative values reverse it.

        Returns
        -------
        numpy.ndarray
            Palette entry ``k`` is the colour at ``(1 + level * (2k/255 - 1)) / 2``, clipped to
            [0, 1], scaled to 0 to 255 and truncated.
        """
        check_level("ColorMap.palette", level)
        positions = np.linspace(-1.0, 1.0, 256, dtype=np.float64) * level
        rgb = self(((positions + 1.0) / 2.0).clip(0.0, 1.0))
        return (rgb * 255.0).round(12).clip(0.0, 255.0).astype(np.uint8)


class LazyColorMapCache:
    """A dict-like store of CMSL sources that compiles each colour map on first access.

    Looking a name up compiles its source once and caches the :class:`ColorMap`; assigning a new
    source to a compiled name recompiles that same object in place, so references to it stay
    valid. The mapping passed in is copied, never changed.

    Parameters
    ----------
    sources : Mapping[str, str]
        Names and their CMSL sources.

    Examples
    --------
    >>> cache = LazyColorMapCache({"gray": "000,fff"})
    >>> gray = cache["gray"]
    >>> cache["gray"] = "fff,000"
    >>> cache["gray"] is gray, gray.source
    (True, 'fff,000')
    """

    def __init__(self, sources: Mapping[str, str]) -> None:
        self._sources = dict(sources)
        self._compiled: dict[str, ColorMap] = {}

    def __getitem__(self, name: str) -> ColorMap:
        if name not in self._sources:
            close = difflib.get_close_matches(str(name), [str(key) for key in self._sources], n=1)
            fix = f"Did you mean {close[0]!r}?" if close else "Add it with cache[name] = source."
            raise KeyError(
                f"LazyColorMapCache[{name!r}]: expected one of {sorted(map(str, self._sources))}, "
                f"got {name!r}. {fix}"
            )
        if name not in self._compiled:
            self._compiled[name] = ColorMap(self._sources[name])
        return self._compiled[name]

    def __setitem__(self, name: str, source: str) -> None:
        if name in self._compiled:
            self._compiled[name].source = source  # compile first: a bad source changes nothing
        self._sources[name] = source

    def __delitem__(self, name: str) -> None:
        del self._sources[name]
        self._compiled.pop(name, None)

    def __contains__(self, name: object) -> bool:
        try:
            return name in self._sources
        except TypeError:  # unhashable names are simply not present
            return False

    def __iter__(self) -> Iterator[str]:
        return iter(self._sources)

    def __len__(self) -> int:
        return len(self._sources)

    def __repr__(self) -> str:
        return f"LazyColorMapCache({self._sources!r})"
