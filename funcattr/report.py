"""A self-contained HTML report of explanations: one file, images embedded, no external resources.

:func:`render_report` turns :class:`ReportEntry` values (an input image, its heatmaps as PNG
bytes and the predictions) and a table of settings into one HTML page. Images are embedded as
``data:image/png;base64`` URIs, styles are inline, and there is no script, so the page opens in
any browser, offline, and can be mailed as it is.

Examples
--------
>>> entry = ReportEntry(name="x", source="x.png", input_png=png, heatmaps=[])  # doctest: +SKIP
>>> html = render_report([entry], {"model": "demo"})                            # doctest: +SKIP
"""

from __future__ import annotations

import base64
import dataclasses
import html
import struct
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["HeatmapEntry", "ReportEntry", "png_size", "render_report"]

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
#: Small images are shown enlarged (by a whole factor, pixelated) to about this width.
_DISPLAY_WIDTH = 192

_STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 1.5em;
       color: #222; background: #fff; }
h1 { font-size: 1.4em; margin: 0 0 0.5em 0; }
table.settings { border-collapse: collapse; margin: 0.5em 0 1em 0; font-size: 0.9em; }
table.settings th, table.settings td { text-align: left; padding: 0.15em 0.8em 0.15em 0;
       vertical-align: top; }
table.settings th { font-weight: 600; color: #555; }
p.overview { margin: 0.3em 0; }
ul.notes { margin: 0.3em 0; font-size: 0.9em; color: #7a4a00; overflow-wrap: anywhere; }
div.colorbar { display: flex; align-items: center; gap: 0.5em; font-size: 0.85em;
       margin: 0.5em 0 1em 0; }
div.colorbar img { border: 1px solid #ccc; }
div.samples { display: flex; flex-wrap: wrap; gap: 1em; }
section.sample { border: 1px solid #ddd; border-radius: 6px; padding: 0.6em; }
section.sample h2 { font-size: 1em; margin: 0 0 0.4em 0; font-weight: 600;
       contain: inline-size; overflow-wrap: anywhere; }
div.images { display: flex; gap: 0.5em; align-items: flex-start; }
figure { margin: 0; }
figcaption { font-size: 0.8em; color: #444; contain: inline-size; overflow-wrap: anywhere; }
img { image-rendering: pixelated; display: block; }
p.details { font-size: 0.8em; color: #444; margin: 0.4em 0 0 0; contain: inline-size;
       overflow-wrap: anywhere; }
"""


@dataclasses.dataclass
class HeatmapEntry:
    """One heatmap of a report entry.

    Attributes
    ----------
    label : str
        The explained class.
    score : float
        Its score (probability).
    png : bytes
        The heatmap as a PNG file.
    fraction_in_mask : float or None
        Fraction of the positive relevance inside the object mask, if known.
    """

    label: str
    score: float
    png: bytes
    fraction_in_mask: float | None = None


@dataclasses.dataclass
class ReportEntry:
    """One input image with its prediction and heatmaps.

    Attributes
    ----------
    name : str
        Name of the image (used as its heading and element id).
    source : str
        Where it came from.
    input_png : bytes
        The input as the model saw it, as a PNG file.
    heatmaps : list of HeatmapEntry
    true_class, predicted : str or None
        The true class (if known) and the predicted one.
    probability : float or None
        Score of the predicted class.
    mask_area : float or None
        Fraction of the image covered by the object mask, if known.
    """

    name: str
    source: str
    input_png: bytes
    heatmaps: list[HeatmapEntry]
    true_class: str | None = None
    predicted: str | None = None
    probability: float | None = None
    mask_area: float | None = None


def png_size(data: bytes) -> tuple[int, int]:
    """``(width, height)`` of a PNG file from its header.

    Raises
    ------
    ValueError
        If ``data`` is not a PNG file.
    """
    if len(data) < 24 or not data.startswith(_PNG_SIGNATURE) or data[12:16] != b"IHDR":
        raise ValueError(
            f"png_size(data=<{len(data)} bytes>): expected a PNG file, got bytes starting "
            f"{data[:8]!r}. Pass the bytes of a PNG file."
        )
    return struct.unpack(">II", data[16:24])


def _img(data: bytes, css_class: str, alt: str) -> str:
    width, height = png_size(data)
    scale = max(1, _DISPLAY_WIDTH // width)
    source = "data:image/png;base64," + base64.b64encode(data).decode("ascii")
    return (
        f'<img class="{css_class}" src="{source}" width="{width * scale}" '
        f'height="{height * scale}" alt="{html.escape(alt)}">'
    )


def _format(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def render_report(
    entries: Sequence[ReportEntry],
    settings: Mapping[str, Any],
    title: str = "funcattr report",
    colorbar_png: bytes | None = None,
    colorbar_labels: tuple[str, str, str] = ("negative", "0", "positive"),
    notes: Sequence[str] = (),
) -> str:
    """Render the report as one self-contained HTML page.

    Parameters
    ----------
    entries : sequence of ReportEntry
        The images, in order.
    settings : mapping of str to any
        Shown as a table (model, composite, attributor, ...).
    title : str
        Page title and heading.
    colorbar_png : bytes or None
        A PNG of the colour map, shown with ``colorbar_labels`` (left, middle, right).
    notes : sequence of str
        Shown as a list under the overview, e.g. files that were skipped and how images were
        converted.

    Returns
    -------
    str
        The HTML document.
    """
    esc = html.escape
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{esc(title)}</title>",
        f"<style>{_STYLE}</style>",
        "</head>",
        "<body>",
        f"<h1>{esc(title)}</h1>",
        '<table class="settings">',
    ]
    for key, value in settings.items():
        parts.append(f"<tr><th>{esc(str(key))}</th><td>{esc(_format(value))}</td></tr>")
    parts.append("</table>")

    count = sum(len(entry.heatmaps) for entry in entries)
    overview = f"{len(entries)} images, {count} heatmaps."
    fractions = [e.heatmaps[0].fraction_in_mask for e in entries
                 if e.heatmaps and e.heatmaps[0].fraction_in_mask is not None]
    areas = [e.mask_area for e in entries if e.mask_area is not None]
    if fractions:
        overview += (
            f" Mean fraction of positive relevance inside the object mask (first heatmap of "
            f"each image): "
            f"{sum(fractions) / len(fractions):.3f} (mean mask area "
            f"{sum(areas) / max(1, len(areas)):.3f})."
        )
    parts.append(f'<p class="overview">{esc(overview)}</p>')
    if notes:
        parts.append('<ul class="notes">')
        parts += [f"<li>{esc(note)}</li>" for note in notes]
        parts.append("</ul>")
    if colorbar_png is not None:
        left, middle, right = (esc(label) for label in colorbar_labels)
        bar = _img(colorbar_png, "colorbar", "colour map")
        parts.append(
            f'<div class="colorbar"><span>{left}</span>{bar}<span>{right}</span>'
            f"<span>(middle: {middle})</span></div>"
        )

    parts.append('<div class="samples">')
    for index, entry in enumerate(entries):
        parts.append(f'<section class="sample" id="sample-{index}">')
        parts.append(f"<h2>{esc(entry.name)}</h2>")
        parts.append('<div class="images">')
        parts.append(
            f"<figure>{_img(entry.input_png, 'input', f'input {entry.name}')}"
            f"<figcaption>input</figcaption></figure>"
        )
        for heatmap in entry.heatmaps:
            caption = f"{heatmap.label} ({heatmap.score:.3f})"
            if heatmap.fraction_in_mask is not None:
                caption += f", in mask {heatmap.fraction_in_mask:.2f}"
            image = _img(heatmap.png, "heatmap", f"heatmap of {heatmap.label} for {entry.name}")
            parts.append(f"<figure>{image}<figcaption>{esc(caption)}</figcaption></figure>")
        parts.append("</div>")
        details = []
        if entry.true_class is not None:
            details.append(f"true class: {entry.true_class}")
        if entry.predicted is not None:
            score = f" ({entry.probability:.3f})" if entry.probability is not None else ""
            details.append(f"predicted: {entry.predicted}{score}")
        if entry.mask_area is not None:
            details.append(f"mask area: {entry.mask_area:.2f}")
        details.append(f"source: {entry.source}")
        parts.append(f'<p class="details">{esc("; ".join(details))}</p>')
        parts.append("</section>")
    parts.append("</div>")
    parts.append("</body>")
    parts.append("</html>")
    return "\n".join(parts) + "\n"
