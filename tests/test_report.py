"""Tests of the HTML report: structure, self-containment, the default CLI run, a real browser."""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from funcattr.cli import main
from funcattr.report import HeatmapEntry, ReportEntry, png_size, render_report

VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source",
        "track", "wbr"}
URL_ATTRIBUTES = {"src", "href", "srcset", "poster", "data", "action", "formaction", "background",
                  "cite", "longdesc", "manifest", "ping", "xlink:href"}


class ReportChecker(HTMLParser):
    """Collect problems (bad nesting, external resources) and the images of an HTML page."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.problems: list[str] = []
        self.images: list[dict[str, str]] = []
        self.tags: list[str] = []
        self.style = ""
        self._in_style = False
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        attributes = dict(attrs)
        self.tags.append(tag)
        for name, value in attrs:
            if name in URL_ATTRIBUTES and value is not None and not value.startswith("data:"):
                self.problems.append(f"external resource <{tag} {name}={value[:60]!r}>")
            if name == "style" and value and "url(" in value:
                self.problems.append(f"url() in inline style of <{tag}>")
            if name.startswith("on"):
                self.problems.append(f"event handler {name} on <{tag}>")
        if tag in ("script", "link", "iframe", "object", "embed", "base"):
            self.problems.append(f"<{tag}> element")
        if tag == "img":
            self.images.append(attributes)
        if tag == "style":
            self._in_style = True
        if tag not in VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag, attrs):
        if tag not in VOID:
            self.problems.append(f"self-closing non-void <{tag}/>")
        self.handle_starttag(tag, attrs)
        if tag not in VOID:
            self.stack.pop()

    def handle_endtag(self, tag):
        if tag in VOID:
            self.problems.append(f"end tag of void element </{tag}>")
            return
        if not self.stack or self.stack[-1] != tag:
            opened = self.stack[-1] if self.stack else ""
            self.problems.append(f"</{tag}> does not close <{opened}>")
            return
        self.stack.pop()
        if tag == "style":
            self._in_style = False

    def handle_data(self, data):
        if self._in_style:
            self.style += data
        else:
            self.text.append(data)

    def check(self, page: str) -> ReportChecker:
        self.feed(page)
        self.close()
        if self.stack:
            self.problems.append(f"unclosed elements {self.stack}")
        if not page.startswith("<!DOCTYPE html>"):
            self.problems.append("no <!DOCTYPE html>")
        if "url(" in self.style or "@import" in self.style:
            self.problems.append("external resource in <style>")
        return self


def decode_data_uri(uri: str) -> bytes:
    prefix = "data:image/png;base64,"
    assert uri.startswith(prefix), uri[:40]
    return base64.b64decode(uri[len(prefix):], validate=True)


def png(width: int, height: int, colour=(255, 0, 0)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), colour).save(buffer, format="PNG")
    return buffer.getvalue()


# --------------------------------------------------------------------------------------------
# render_report on synthetic entries
# --------------------------------------------------------------------------------------------

def synthetic_entries() -> list[ReportEntry]:
    return [
        ReportEntry(
            name="a<script>alert(1)</script>", source='dir/"quoted" & <odd>.png',
            input_png=png(64, 64), true_class="cat & dog", predicted="cat", probability=0.75,
            mask_area=0.2,
            heatmaps=[HeatmapEntry("cat", 0.75, png(64, 64, (0, 0, 255)), 0.8),
                      HeatmapEntry("dog", 0.2, png(64, 64, (0, 255, 0)), None)],
        ),
        ReportEntry(name="b", source="b.jpg", input_png=png(224, 200), heatmaps=[
            HeatmapEntry("x", 0.5, png(224, 200))]),
    ]


def test_render_report_is_well_formed_and_self_contained():
    page = render_report(synthetic_entries(), {"model": "demo", "n_iter": 20, "level": 1.0},
                         title="report <1>", colorbar_png=png(256, 12))
    checker = ReportChecker().check(page)
    assert checker.problems == []
    classes = [image.get("class") for image in checker.images]
    assert classes == ["colorbar", "input", "heatmap", "heatmap", "input", "heatmap"]
    sizes = [png_size(decode_data_uri(image["src"])) for image in checker.images]
    assert sizes == [(256, 12), (64, 64), (64, 64), (64, 64), (224, 200), (224, 200)]
    # small images are enlarged by a whole factor, large ones shown as they are
    displayed = [(int(i["width"]), int(i["height"])) for i in checker.images]
    assert displayed == [(256, 12), (192, 192), (192, 192), (192, 192), (224, 200), (224, 200)]
    assert all(image.get("alt") for image in checker.images)


def test_render_report_escapes_text():
    page = render_report(synthetic_entries(), {"<b>": "x & y"}, title="t")
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert "cat &amp; dog" in page and "&lt;b&gt;" in page and "x &amp; y" in page
    text = " ".join(ReportChecker().check(page).text)
    assert "a<script>alert(1)</script>" in text
    assert "true class: cat & dog" in text and "predicted: cat (0.750)" in text
    assert "in mask 0.80" in text and "Mean fraction of positive relevance" in text


def test_checker_catches_problems():
    # the validator used on the real report must be able to fail
    bad = ('<!DOCTYPE html><html><head><link rel="stylesheet" href="http://x/y.css">'
           '<style>body{background:url(http://x/z.png)}</style></head><body><div><p></div>'
           '<img src="http://x/a.png"><script src="a.js"></script></body></html>')
    problems = " | ".join(ReportChecker().check(bad).problems)
    for fragment in ("external resource <link", "<link> element", "</div> does not close <p>",
                     "external resource <img", "<script> element", "external resource in <style>"):
        assert fragment in problems


def test_png_size_rejects_non_png():
    assert png_size(png(7, 5)) == (7, 5)
    with pytest.raises(ValueError, match=r"png_size\(data=<4 bytes>\): expected a PNG file"):
        png_size(b"GIF8")


# --------------------------------------------------------------------------------------------
# The report of the default run (demo model on the shipped samples)
# --------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def default_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("report") / "out"
    result = CliRunner().invoke(main, ["explain", "--output", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    return out


def test_default_run_report_is_valid(default_run):
    summary = json.loads((default_run / "summary.json").read_text())
    page = (default_run / "report.html").read_text(encoding="utf-8")
    checker = ReportChecker().check(page)
    assert checker.problems == []
    heatmaps = [image for image in checker.images if image.get("class") == "heatmap"]
    inputs = [image for image in checker.images if image.get("class") == "input"]
    records = summary["images"]
    assert len(records) >= 6
    assert len(heatmaps) == len(inputs) == len(records)
    for image, record in zip(heatmaps, records, strict=True):
        data = decode_data_uri(image["src"])
        assert png_size(data) == (64, 64)
        with Image.open(io.BytesIO(data)) as decoded:
            assert decoded.size == (64, 64) and decoded.mode == "P"
        # the embedded heatmap is the heatmap file written next to the report
        assert data == (default_run / record["targets"][0]["heatmap"]).read_bytes()
        assert record["name"] in image["alt"]
    for image, record in zip(inputs, records, strict=True):
        assert decode_data_uri(image["src"]) == (
            default_run / "inputs" / f"{record['name']}.png").read_bytes()
    text = " ".join(checker.text)
    for record in records:
        assert record["name"] in text
        assert f"predicted: {record['predicted']['class']}" in text
        assert f"true class: {record['true_class']}" in text
    assert "epsilon_plus_flat" in text


# --------------------------------------------------------------------------------------------
# A real browser (chromium, headless) when one is installed
# --------------------------------------------------------------------------------------------

CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--hide-scrollbars", "--force-device-scale-factor=1", "--enable-logging=stderr", "--v=0",
]
# Instrumentation added to a copy of the report: records errors and, after load, every image's
# state and layout into a <pre> that --dump-dom prints.
PROBE = """<script>
window.__errors = [];
window.addEventListener('error', function (e) {
  window.__errors.push(String(e.message || (e.target && e.target.outerHTML.slice(0, 80))));
}, true);
(function () { var original = console.error; console.error = function () {
  window.__errors.push(Array.prototype.join.call(arguments, ' '));
  original.apply(console, arguments); }; })();
window.addEventListener('load', function () {
  var images = Array.prototype.map.call(document.images, function (i) {
    var r = i.getBoundingClientRect();
    return {cls: i.className, complete: i.complete, nw: i.naturalWidth, nh: i.naturalHeight,
            x: r.left + window.scrollX, y: r.top + window.scrollY, w: r.width, h: r.height}; });
  var pre = document.createElement('pre'); pre.id = 'funcattr-probe';
  pre.textContent = JSON.stringify({errors: window.__errors, images: images,
                                    width: document.documentElement.scrollWidth,
                                    height: document.documentElement.scrollHeight});
  document.body.appendChild(pre); });
</script>"""


def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.skip("browser check not run: chromium is not installed "
                    "(apt-get install -y chromium)")
    return path


def run_chromium(page: Path, profile: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *extra, page.as_uri()],
        capture_output=True, text=True, timeout=60, check=False,
    )


def probe(page_html: str, folder: Path, name: str) -> tuple[dict, list[str]]:
    page = folder / name
    page.write_text(page_html.replace("<head>", "<head>\n" + PROBE, 1), encoding="utf-8")
    result = run_chromium(page, folder / f"profile-{name}", "--window-size=1400,900",
                          "--dump-dom")
    match = re.search(r'<pre id="funcattr-probe">(.*?)</pre>', result.stdout, re.S)
    assert match, f"no probe output; chromium said: {result.stderr[-2000:]}"
    console = [line for line in result.stderr.splitlines() if "CONSOLE" in line]
    return json.loads(match.group(1).replace("&quot;", '"').replace("&amp;", "&")), console


@pytest.mark.browser
def test_report_in_headless_chromium(default_run, tmp_path):
    page_html = (default_run / "report.html").read_text(encoding="utf-8")
    summary = json.loads((default_run / "summary.json").read_text())
    count = len(summary["images"])

    # the probe itself detects a broken page: a bad image and a script error
    broken = page_html.replace("data:image/png;base64,", "data:image/png;base64,AAAA", 1)
    broken = broken.replace("</body>", "<script>undefinedFunction();</script></body>")
    state, console = probe(broken, tmp_path, "broken.html")
    assert state["errors"] and console
    assert any(i["complete"] and i["nw"] == 0 for i in state["images"])

    state, console = probe(page_html, tmp_path, "report.html")
    assert state["errors"] == [] and console == []
    heatmaps = [i for i in state["images"] if i["cls"] == "heatmap"]
    inputs = [i for i in state["images"] if i["cls"] == "input"]
    assert len(heatmaps) == len(inputs) == count
    for image in heatmaps + inputs:
        assert image["complete"] and (image["nw"], image["nh"]) == (64, 64)
        assert (image["w"], image["h"]) == (192, 192)  # enlarged three times, as laid out
        assert image["x"] >= 0 and image["x"] + image["w"] <= state["width"]
    # each heatmap sits right of its input, in the same row
    for heatmap, image in zip(heatmaps, inputs, strict=True):
        assert heatmap["y"] == image["y"] and heatmap["x"] > image["x"] + image["w"]

    # the screenshot shows every heatmap: its region matches the PNG enlarged 3x (pixelated)
    height = int(max(i["y"] + i["h"] for i in state["images"])) + 50
    shot = tmp_path / "shot.png"
    result = run_chromium(tmp_path / "report.html", tmp_path / "profile-shot",
                          f"--window-size=1400,{height}", f"--screenshot={shot}")
    assert shot.is_file(), result.stderr[-2000:]
    with Image.open(shot) as screenshot:
        pixels = np.asarray(screenshot.convert("RGB"), dtype=np.float64)
    assert pixels.shape[:2] == (height, 1400)
    for heatmap, record in zip(heatmaps, summary["images"], strict=True):
        with Image.open(default_run / record["targets"][0]["heatmap"]) as file:
            expected = np.asarray(file.convert("RGB").resize((192, 192), Image.Resampling.NEAREST),
                                  dtype=np.float64)
        x, y = round(heatmap["x"]), round(heatmap["y"])
        shown = pixels[y:y + 192, x:x + 192]
        assert shown.shape == expected.shape
        assert np.abs(shown - expected).mean() < 3.0, record["name"]


def test_notes_are_listed_and_escaped():
    """Skipped files and image conversions (issue 14) are listed under the overview."""
    html = render_report([], {"model": "demo"}, notes=["skipped <b>x.png</b>: not an image",
                                                       "deep.png: 16-bit grayscale"])
    assert '<ul class="notes">' in html
    assert "<li>skipped &lt;b&gt;x.png&lt;/b&gt;: not an image</li>" in html
    assert "<li>deep.png: 16-bit grayscale</li>" in html
    assert "notes" not in render_report([], {"model": "demo"}).split("</style>")[1]
