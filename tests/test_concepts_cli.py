"""``funcattr concepts`` and the concept report: files, summary, ranking against the library,
local analysis, the attribution graph picture, and mistakes on the command line."""

from __future__ import annotations

import html.parser
import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from helpers import single_thread

import funcattr
from funcattr.cli import DEFAULT_LRP_COMPOSITE, build_composite, main, resolve_canonizers
from funcattr.cli.models import load_model
from funcattr.cli.samples import Sample, load_sample
from funcattr.concept_report import (
    ConceptHeatmap,
    ConceptReportEntry,
    graph_svg,
    render_concept_report,
)
from funcattr.concepts import (
    INPUT_NODE,
    AttributionGraph,
    ConceptEdge,
    ConceptNode,
    concept_relevance,
    local_concept_relevance,
)
from funcattr.datasets import DemoDataset, open_concept_store

pytestmark = pytest.mark.usefixtures(single_thread.__name__)

SAMPLES = Path(funcattr.__file__).parent / "demo" / "samples"
IMAGES = [SAMPLES / "ring_0003.png", SAMPLES / "star_0001.png"]


def demo_functional():
    """The demo model with the command's default composite and canonizers."""
    loaded = load_model("demo", None, device="cpu", input_size=None, normalization="auto",
                        class_names=None)
    composite, _ = build_composite(DEFAULT_LRP_COMPOSITE, loaded)
    canonizers, _ = resolve_canonizers("auto", loaded)
    return (loaded, *funcattr.functionalize(loaded.model, composite, canonizers))


def run(*args) -> object:
    return CliRunner().invoke(main, ["concepts", *[str(a) for a in args]])


@pytest.fixture(scope="module")
def default_run(tmp_path_factory) -> tuple[Path, object]:
    output = tmp_path_factory.mktemp("concepts") / "out"
    result = run(*IMAGES, "--top", "3", "--width", "2,1", "--output", output)
    return output, result


def test_default_run_writes_the_report_and_summary(default_run):
    output, result = default_run
    assert result.exit_code == 0, result.output
    assert "funcattr concepts: 2 images, model demo, layer features.15" in result.output
    summary = json.loads((output / "concepts.json").read_text())
    assert summary["settings"]["layer"] == "features.15"
    assert [r["name"] for r in summary["images"]] == ["ring_0003", "star_0001"]
    for record in summary["images"]:
        assert len(record["concepts"]) == 3
        relevance = [c["relevance"] for c in record["concepts"]]
        assert relevance == sorted(relevance, reverse=True)
        for concept in record["concepts"]:
            assert (output / concept["heatmap"]).is_file()
        graph = record["graph"]
        assert graph["nodes"][graph["root"]] == {"layer": "features.15",
                                                 "channel": record["concepts"][0]["channel"]}
        assert graph["nodes"][-1] == {"layer": "input", "channel": None}
    page = (output / "report.html").read_text()
    assert page.count("<svg") == 2 and "http://" not in page.replace(
        "http://www.w3.org/2000/svg", "")


def test_default_run_ranks_like_the_library(default_run):
    output, _ = default_run
    summary = json.loads((output / "concepts.json").read_text())
    loaded, fn, params = demo_functional()
    for record, path in zip(summary["images"], IMAGES):
        image, _ = load_sample(Sample(path.stem, str(path), path), loaded.input_size,
                               loaded.resize)
        shares = concept_relevance(fn, params, image[None], "features.15",
                                   record["explained"]["index"])[0]
        channels = [c["channel"] for c in record["concepts"]]
        assert channels == shares.sort(descending=True, stable=True).indices[:3].tolist()


def test_region_ranks_by_local_relevance(tmp_path):
    output = tmp_path / "out"
    result = run(IMAGES[0], "--top", "2", "--no-graph", "--region", "8,8,40,40",
                 "--output", output)
    assert result.exit_code == 0, result.output
    record = json.loads((output / "concepts.json").read_text())["images"][0]
    assert record["graph"] is None
    loaded, fn, params = demo_functional()
    image, _ = load_sample(Sample(IMAGES[0].stem, str(IMAGES[0]), IMAGES[0]),
                           loaded.input_size, loaded.resize)
    region = torch.zeros(64, 64)
    region[8:40, 8:40] = 1.0
    local = local_concept_relevance(fn, params, image[None], "features.15", region,
                                    record["explained"]["index"])[0]
    assert [c["channel"] for c in record["concepts"]] == local.sort(
        descending=True, stable=True).indices[:2].tolist()
    assert record["concepts"][0]["local_relevance"] == pytest.approx(
        float(local.max()), rel=1e-5)


@pytest.mark.parametrize(("args", "message"), [
    (["--layer", "features.51"], "'features.51' is not a layer of --model demo; use a name "
                                 "from model.named_modules(). Did you mean features.5"),
    (["--target", "hexagon"], "'hexagon' is not pred, a class index or a class name"),
    (["--target", "9"], "class 9 does not exist; the model has 6 classes"),
    (["--region", "8,8,80,40"], "lies outside the 64x64 model input"),
    (["--region", "8,8,4,40"], "expected X0,Y0,X1,Y1 with 0 <= X0 < X1"),
    (["--width", "2,0"], "expected positive integers separated by commas"),
    (["--dataset", "demo:0"], "expected demo:N with a number of images N >= 1"),
    (["--dataset", "demo:many"], "expected demo:N with a number of images N >= 1"),
    (["--dataset", "no/such/folder"], "expected a folder of images (class sub-folders as "
                                      "labels), got a path that does not exist"),
    (["--store", "somewhere"], "--store and --overwrite-store need --dataset"),
])
def test_mistakes_on_the_command_line(tmp_path, args, message):
    result = run(IMAGES[0], *args, "--output", tmp_path / "out")
    assert result.exit_code == 2
    assert message in " ".join(result.output.split()), result.output
    assert not (tmp_path / "out").exists()


def _graph() -> AttributionGraph:
    root, a, b = ConceptNode("l2", 0), ConceptNode("l1", 3), ConceptNode("l1", 1)
    edges = (ConceptEdge(root, a, 0.6), ConceptEdge(root, b, -0.2),
             ConceptEdge(a, INPUT_NODE, 0.9), ConceptEdge(b, INPUT_NODE, -0.5))
    return AttributionGraph(root, 2, 0.3, (root, a, b, INPUT_NODE), edges)


class _Elements(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))


def test_graph_picture_has_a_box_per_node_and_a_line_per_edge():
    png = (SAMPLES / "ring_0003.png").read_bytes()
    svg = graph_svg(_graph(), {ConceptNode("l1", 3): png})
    parser = _Elements()
    parser.feed(svg)
    tags = [tag for tag, _ in parser.tags]
    assert tags.count("rect") == 4 and tags.count("line") == 4 and tags.count("image") == 1
    lines = [attrs for tag, attrs in parser.tags if tag == "line"]
    widths = [float(attrs["stroke-width"]) for attrs in lines]
    # widths compare within the edges into one layer: 0.6 > |-0.2| into l1, 0.9 > |-0.5| into
    # the input, and the strongest edge into each layer has the largest width
    assert widths[0] == widths[2] == max(widths) and widths[1] < widths[0]
    assert widths[3] < widths[2] and "stroke-dasharray" in lines[2]
    assert lines[1]["stroke"] != lines[0]["stroke"]  # negative relevance in another colour
    rows = sorted({float(attrs["y"]) for tag, attrs in parser.tags if tag == "rect"})
    assert len(rows) == 3  # root, concepts, input


def test_concept_report_page():
    png = (SAMPLES / "ring_0003.png").read_bytes()
    entry = ConceptReportEntry("ring", png, "1 (ring)", [ConceptHeatmap("l2", 0, 0.25, png, 0.1)],
                               graph=_graph(), details="source: ring.png")
    page = render_concept_report([entry], {"layer": "l2"}, title="t <concepts>")
    assert page.startswith("<!DOCTYPE html>") and "t &lt;concepts&gt;" in page
    assert "l2 : 0 (+0.250), in region +0.1" in page
    assert "attribution graph of l2:0 (relevance +0.300)" in page
    with pytest.raises(TypeError, match=r"^graph_svg\(graph=dict\): expected an "
                                        r"AttributionGraph"):
        graph_svg({})


# --------------------------------------------------------------------------------------------
# Reference samples from a dataset (relevance maximisation)
# --------------------------------------------------------------------------------------------

def test_dataset_references_come_from_the_store_and_are_reused(tmp_path):
    output = tmp_path / "out"
    args = (IMAGES[0], "--top", "2", "--no-graph", "--dataset", "demo:24", "--references", "3",
            "--batch-size", "8", "--output", output)
    result = run(*args)
    assert result.exit_code == 0, result.output
    assert "references/" in result.output
    summary = json.loads((output / "concepts.json").read_text())
    assert "demo:24" in summary["settings"]["reference samples"]
    store = open_concept_store(tmp_path / "out-store", group="concepts/features.15")
    assert store.store.counts() == {"done": 24, "failed": 0, "pending": 0}
    _, fn, params = demo_functional()
    for concept in summary["images"][0]["concepts"]:
        references = concept["references"]
        assert [r["sample"] for r in references] == store.reference_samples(
            "features.15", concept["channel"], n=3)
        patches = store.reference_patches(fn, params, DemoDataset(24), "features.15",
                                          concept["channel"], n=3)
        assert [r["box"] for r in references] == [list(p.box) for p in patches]
        assert all((output / r["file"]).is_file() for r in references)
        assert references[0]["source"].startswith("demo:")
    page = (output / "report.html").read_text()
    assert "reference samples (relevance maximisation over the dataset)" in page
    assert page.count('alt="reference sample of features.15') == 6
    again = run(*args)  # the store is reused: nothing is computed again
    assert again.exit_code == 0, again.output
    reopened = open_concept_store(tmp_path / "out-store", group="concepts/features.15")
    assert [s["mode"] for s in reopened.store.sessions] == ["resume", "resume"]
    assert json.loads((output / "concepts.json").read_text())["images"] == summary["images"]


def test_dataset_store_with_other_settings_is_refused_until_overwritten(tmp_path):
    output = tmp_path / "out"
    common = (IMAGES[0], "--top", "1", "--no-graph", "--dataset", "demo:8", "--references", "2",
              "--output", output)
    assert run(*common).exit_code == 0
    result = run(*common, "--composite", "epsilon_alpha2_beta1")
    assert result.exit_code == 2
    assert "holds a relevance maximisation of features.15 with other settings" in " ".join(
        result.output.split())
    assert "--overwrite-store" in result.output
    result = run(*common, "--composite", "epsilon_alpha2_beta1", "--overwrite-store")
    assert result.exit_code == 0, result.output


def test_store_inside_the_output_folder_is_refused(tmp_path):
    result = run(IMAGES[0], "--dataset", "demo:4", "--store", tmp_path / "out" / "store",
                 "--output", tmp_path / "out")
    assert result.exit_code == 2
    assert "lies inside --output" in " ".join(result.output.split())


def test_output_folder_checked_before_any_work(tmp_path):
    output = tmp_path / "out"
    output.mkdir()
    (output / "report.html").write_text("mine")
    result = run(IMAGES[0], "--dataset", "demo:4", "--output", output)
    assert result.exit_code == 2
    assert "not written by funcattr concepts" in " ".join(result.output.split())
    assert not (tmp_path / "out-store").exists()  # nothing was computed
    assert (output / "report.html").read_text() == "mine"


def test_unreadable_image_in_a_folder_is_skipped(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    (folder / "good.png").write_bytes(IMAGES[0].read_bytes())
    (folder / "broken.png").write_bytes(b"not a png")
    result = run(folder, "--top", "1", "--no-graph", "--output", tmp_path / "out")
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "out" / "concepts.json").read_text())
    assert [r["name"] for r in summary["images"]] == ["good"]
    assert [s["source"] for s in summary["skipped"]] == [str(folder / "broken.png")]
    assert "note: skipped" in result.output
