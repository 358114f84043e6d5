"""The concept sections of the HTML report: concept heatmaps and attribution graphs as pictures.

:func:`render_concept_report` turns :class:`ConceptReportEntry` values (an input image, its
most relevant concepts with their conditional heatmaps, and an attribution graph) into one
self-contained HTML page, as :func:`funcattr.report.render_report` does for heatmaps (with, per
concept, its reference samples from a dataset when given: :class:`ConceptReference`): images are
embedded as ``data:`` URIs, styles are inline, there is no script. :func:`graph_svg` draws an
:class:`funcattr.concepts.AttributionGraph` as an inline SVG: one row per level (the root on
top, the input at the bottom), each concept as its conditional heatmap, each edge as a line
whose width follows the relevance it carries, relative to the other edges into the same layer
(red: positive, blue: negative; dashed: into the input).
"""

from __future__ import annotations

import base64
import dataclasses
import html
from collections.abc import Mapping, Sequence
from typing import Any

from funcattr.concepts import INPUT_NODE, AttributionGraph, ConceptNode
from funcattr.report import png_size

__all__ = ["ConceptHeatmap", "ConceptReference", "ConceptReportEntry", "graph_svg",
           "render_concept_report"]

#: Size of a node's picture in the graph, in pixels.
NODE_SIZE = 72
_GAP_X, _GAP_Y, _LABEL = 28, 70, 30
_POSITIVE, _NEGATIVE = "#c0392b", "#2e6fbf"

_STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 1.5em;
       color: #222; background: #fff; }
h1 { font-size: 1.4em; margin: 0 0 0.5em 0; }
h2 { font-size: 1.05em; margin: 0 0 0.4em 0; overflow-wrap: anywhere; }
h3 { font-size: 0.95em; margin: 0.8em 0 0.3em 0; font-weight: 600; }
table.settings { border-collapse: collapse; margin: 0.5em 0 1em 0; font-size: 0.9em; }
table.settings th, table.settings td { text-align: left; padding: 0.15em 0.8em 0.15em 0; }
table.settings th { font-weight: 600; color: #555; }
section.sample { border: 1px solid #ddd; border-radius: 6px; padding: 0.6em; margin: 0 0 1em 0; }
div.concepts { display: flex; flex-wrap: wrap; gap: 0.5em; align-items: flex-start; }
figure { margin: 0; }
figcaption { font-size: 0.8em; color: #444; max-width: 12em; overflow-wrap: anywhere; }
img { image-rendering: pixelated; display: block; }
div.graph { overflow-x: auto; }
p.note { font-size: 0.8em; color: #555; margin: 0.3em 0; }
div.references { display: flex; flex-wrap: wrap; gap: 0.3em; align-items: flex-end;
                 margin: 0.2em 0; }
div.references span.label { font-size: 0.8em; color: #444; min-width: 9em; }
"""


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _img(png: bytes, alt: str, width: int = 160) -> str:
    w, h = png_size(png)
    scale = width / max(w, 1)
    return (f'<img src="{_data_uri(png)}" width="{round(w * scale)}" '
            f'height="{round(h * scale)}" alt="{html.escape(alt)}">')


@dataclasses.dataclass
class ConceptReference:
    """One reference sample of a concept (relevance maximisation): the part of a dataset item
    where the concept's peak neuron draws its value.

    Attributes
    ----------
    png : bytes
        The patch as a PNG file.
    caption : str
        E.g. the item's source and score.
    """

    png: bytes
    caption: str


@dataclasses.dataclass
class ConceptHeatmap:
    """One concept of a report entry: its conditional heatmap and relevance.

    Attributes
    ----------
    layer : str
    channel : int
    relevance : float
        The concept's relevance (its share at the layer, as ranked).
    png : bytes
        The conditional heatmap as a PNG file.
    local : float or None
        Its relevance inside the region of interest, when one was given.
    references : list of ConceptReference
        Its reference samples from a dataset, best first (none: no row).
    """

    layer: str
    channel: int
    relevance: float
    png: bytes
    local: float | None = None
    references: list[ConceptReference] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class ConceptReportEntry:
    """One input image: its most relevant concepts and an attribution graph.

    Attributes
    ----------
    name : str
    input_png : bytes
    explained : str
        The explained class, as text (``"3 (cat)"``).
    concepts : list of ConceptHeatmap
    graph : AttributionGraph or None
    graph_pngs : mapping of ConceptNode to bytes
        The picture of each node of the graph (its conditional heatmap).
    details : str
        A line under the entry (source, prediction).
    """

    name: str
    input_png: bytes
    explained: str
    concepts: list[ConceptHeatmap]
    graph: AttributionGraph | None = None
    graph_pngs: Mapping[ConceptNode, bytes] = dataclasses.field(default_factory=dict)
    details: str = ""


def _layout(graph: AttributionGraph) -> tuple[dict[ConceptNode, tuple[float, float]], int, int]:
    """Node centres ``(x, y)`` in rows by level, and the picture's width and height."""
    depth = graph.depth()
    rows: dict[int, list[ConceptNode]] = {}
    for node in graph.nodes:
        rows.setdefault(depth.get(node, 0), []).append(node)
    widest = max(len(row) for row in rows.values())
    width = widest * (NODE_SIZE + _GAP_X) + _GAP_X
    height = len(rows) * (NODE_SIZE + _LABEL + _GAP_Y) - _GAP_Y + 2 * _GAP_X // 2
    centres = {}
    for level, row in sorted(rows.items()):
        span = len(row) * (NODE_SIZE + _GAP_X) - _GAP_X
        left = (width - span) / 2
        y = _GAP_X // 2 + level * (NODE_SIZE + _LABEL + _GAP_Y) + NODE_SIZE / 2
        for i, node in enumerate(row):
            centres[node] = (left + i * (NODE_SIZE + _GAP_X) + NODE_SIZE / 2, y)
    return centres, width, height


def graph_svg(graph: AttributionGraph, pngs: Mapping[ConceptNode, bytes] | None = None) -> str:
    """The attribution graph as an inline SVG element.

    Parameters
    ----------
    graph : AttributionGraph
    pngs : mapping of ConceptNode to bytes, optional
        A picture per node (its conditional heatmap); nodes without one are drawn as boxes.

    Returns
    -------
    str
        ``<svg ...>...</svg>``, with a tooltip (``<title>``) on every node and edge.
    """
    if not isinstance(graph, AttributionGraph):
        raise TypeError(
            f"graph_svg(graph={type(graph).__name__}): expected an AttributionGraph, got "
            f"{type(graph).__name__}. Pass the result of funcattr.concepts.attribution_graph."
        )
    pngs = pngs or {}
    esc = html.escape
    centres, width, height = _layout(graph)
    strongest: dict[str, float] = {}  # per lower layer: relevance shares of one layer compare
    for edge in graph.edges:
        layer = edge.target.layer
        strongest[layer] = max(strongest.get(layer, 0.0), abs(edge.relevance))
    half = NODE_SIZE / 2
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" role="img" '
             f'aria-label="attribution graph of {esc(str(graph.root))}">']
    for edge in graph.edges:
        (x1, y1), (x2, y2) = centres[edge.source], centres[edge.target]
        stroke = _POSITIVE if edge.relevance >= 0 else _NEGATIVE
        thickness = 0.75 + 6.0 * abs(edge.relevance) / (strongest[edge.target.layer] or 1.0)
        dashes = ' stroke-dasharray="6 4"' if edge.target == INPUT_NODE else ""
        parts.append(
            f'<line x1="{x1:.1f}" y1="{y1 + half + _LABEL - 4:.1f}" x2="{x2:.1f}" '
            f'y2="{y2 - half:.1f}" stroke="{stroke}" stroke-width="{thickness:.2f}" '
            f'stroke-opacity="0.75"{dashes}><title>{esc(str(edge.source))} \u2192 '
            f'{esc(str(edge.target))}: {edge.relevance:+.4g}</title></line>')
    for node in graph.nodes:
        x, y = centres[node]
        left, top = x - half, y - half
        label = "input" if node == INPUT_NODE else f"{node.layer} : {node.channel}"
        title = f"{label}" + (" (root)" if node == graph.root else "")
        parts.append(f"<g><title>{esc(title)}</title>")
        png = pngs.get(node)
        if png is not None:
            parts.append(f'<image x="{left:.1f}" y="{top:.1f}" width="{NODE_SIZE}" '
                         f'height="{NODE_SIZE}" href="{_data_uri(png)}" '
                         f'style="image-rendering: pixelated"/>')
        border = "#222" if node == graph.root else "#999"
        parts.append(f'<rect x="{left:.1f}" y="{top:.1f}" width="{NODE_SIZE}" '
                     f'height="{NODE_SIZE}" fill="{"none" if png else "#f4f4f4"}" '
                     f'stroke="{border}" stroke-width="{2 if node == graph.root else 1}"/>')
        parts.append(f'<text x="{x:.1f}" y="{top + NODE_SIZE + 14:.1f}" font-size="11" '
                     f'text-anchor="middle" font-family="sans-serif">{esc(label)}</text>')
        parts.append("</g>")
    parts.append("</svg>")
    return "".join(parts)


def _format(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _references(concepts: Sequence[ConceptHeatmap]) -> list[str]:
    """One row per concept with reference samples: the label, then the patches."""
    esc = html.escape
    rows = [concept for concept in concepts if concept.references]
    if not rows:
        return []
    parts = ["<h3>reference samples (relevance maximisation over the dataset)</h3>"]
    for concept in rows:
        parts.append(f'<div class="references"><span class="label">{esc(concept.layer)} : '
                     f'{concept.channel}</span>')
        for reference in concept.references:
            alt = f"reference sample of {concept.layer} channel {concept.channel}"
            parts.append(f"<figure>{_img(reference.png, alt, width=72)}"
                         f"<figcaption>{esc(reference.caption)}</figcaption></figure>")
        parts.append("</div>")
    parts.append('<p class="note">Each picture is the part of a dataset item where the '
                 'concept\'s most relevant neuron draws its value (its heatmap from the layer '
                 'down, above a tenth of its peak after a blur: CRP\'s receptive-field crop), '
                 'best item first.</p>')
    return parts


def render_concept_report(entries: Sequence[ConceptReportEntry], settings: Mapping[str, Any],
                          title: str = "funcattr concepts") -> str:
    """Render concept entries as one self-contained HTML page.

    Parameters
    ----------
    entries : sequence of ConceptReportEntry
    settings : mapping of str to any
        Shown as a table (model, composite, layer, ...).
    title : str
        Page title and heading.

    Returns
    -------
    str
        The HTML document.
    """
    esc = html.escape
    parts = ["<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
             '<meta name="viewport" content="width=device-width, initial-scale=1">',
             f"<title>{esc(title)}</title>", f"<style>{_STYLE}</style>", "</head>", "<body>",
             f"<h1>{esc(title)}</h1>", '<table class="settings">']
    for key, value in settings.items():
        parts.append(f"<tr><th>{esc(str(key))}</th><td>{esc(_format(value))}</td></tr>")
    parts.append("</table>")
    for index, entry in enumerate(entries):
        parts.append(f'<section class="sample" id="sample-{index}">')
        parts.append(f"<h2>{esc(entry.name)}: {esc(entry.explained)}</h2>")
        parts.append('<div class="concepts">')
        parts.append(f"<figure>{_img(entry.input_png, f'input {entry.name}')}"
                     f"<figcaption>input</figcaption></figure>")
        for concept in entry.concepts:
            caption = f"{concept.layer} : {concept.channel} ({concept.relevance:+.3f})"
            if concept.local is not None:
                caption += f", in region {concept.local:+.3g}"
            alt = f"conditional heatmap of {concept.layer} channel {concept.channel}"
            parts.append(f"<figure>{_img(concept.png, alt)}"
                         f"<figcaption>{esc(caption)}</figcaption></figure>")
        parts.append("</div>")
        parts.extend(_references(entry.concepts))
        if entry.graph is not None:
            graph = entry.graph
            parts.append(f"<h3>attribution graph of {esc(str(graph.root))} "
                         f"(relevance {graph.root_relevance:+.3f})</h3>")
            parts.append(f'<div class="graph">{graph_svg(graph, entry.graph_pngs)}</div>')
            parts.append('<p class="note">Each concept passes on the relevance of the one '
                         'above it; line width: its share of the relevance at the lower layer '
                         '(red positive, blue negative; dashed: into the input); pictures: '
                         'conditional heatmaps; hover for the values.</p>')
        if entry.details:
            parts.append(f'<p class="note">{esc(entry.details)}</p>')
        parts.append("</section>")
    parts.extend(["</body>", "</html>"])
    return "\n".join(parts) + "\n"
