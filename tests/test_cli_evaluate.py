"""Tests of ``funcattr evaluate``: files, agreement with the library, determinism, errors.

Every run is in-process (CliRunner) on a few demo images with fast metrics.
"""

from __future__ import annotations

import csv
import json
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_helpers import assert_error as shared_assert_error
from cli_helpers import quiet_progress  # noqa: F401  (a fixture)
from click.testing import CliRunner
from PIL import Image

import funcattr.metrics as fm
from funcattr.cli import main
from funcattr.cli.evaluate import (
    DEFAULT_METHODS,
    Method,
    parse_methods,
    parse_metrics,
    parse_options,
)
from funcattr.demo import CLASSES, load_demo_model, make_dataset
from funcattr.demo.train import TEST_SEED
from funcattr.metrics.evaluate import DEFAULT_METRICS, METRICS

N = 2
FAST = ("-n", str(N), "-M", "pixel_flipping,relevance_mass_accuracy,random_logit",
        "-a", "gradient", "-c", "epsilon_plus_flat", "--canonizer", "none")
COLUMNS = [*METRICS["pixel_flipping"], "relevance_mass_accuracy", "random_logit"]
ROWS = ["gradient", "epsilon_plus_flat"]


def invoke(*args: object):
    return CliRunner().invoke(main, ["evaluate", *(str(a) for a in args)])


def assert_error(result, fragment: str) -> str:
    return shared_assert_error(result, fragment, stdout_empty=True)


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as file:
        return list(csv.DictReader(file))


pytestmark = pytest.mark.usefixtures("quiet_progress")


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """One intra-op thread: these tiny batches gain nothing from two, and on shared, loaded
    cores two threads wait for each other (runs took 3-5x longer)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def fast_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("evaluate") / "out"
    return invoke(*FAST, "--plot", "-o", out), out


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """Three procedural images without masks."""
    path = tmp_path_factory.mktemp("images")
    images, labels, _ = make_dataset(3, 0xE7A1)
    for i in range(3):
        pixels = (images[i].permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
        Image.fromarray(pixels).save(path / f"{CLASSES[labels[i]]}_{i}.png")
    return path


# --------------------------------------------------------------------------------------------
# Output: printed table, CSV, Markdown, JSON, PNG
# --------------------------------------------------------------------------------------------

@pytest.mark.filterwarnings("ignore::funcattr.ModelCheckWarning")  # un-canonized on purpose
def test_printed_table(fast_run):
    result, out = fast_run
    assert result.exit_code == 0, result.output
    assert result.stderr == ""
    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"funcattr evaluate: {N} generated test demo images")
    assert "model demo" in lines[0] and "seed 0" in lines[0]
    header = [cell.strip() for cell in lines[1].strip("|").split("|")]
    assert header == ["metric", *ROWS]
    body = lines[3:3 + len(COLUMNS)]
    assert [row.strip("|").split("|")[0].strip() for row in body] == [
        f"{c} {'↑' if h else '↓'}" for c, h in
        ((c, {**METRICS["pixel_flipping"], "relevance_mass_accuracy": True,
              "random_logit": False}[c]) for c in COLUMNS)
    ]
    assert all(row.count("**") == 2 for row in body)  # one best value per row
    assert lines[-1] == f"wrote table.csv, table.md, evaluation.json, pixel_flipping.png to {out}/"


@pytest.mark.filterwarnings("ignore::funcattr.ModelCheckWarning")  # un-canonized on purpose
def test_files(fast_run):
    result, out = fast_run
    assert result.exit_code == 0, result.output
    rows = read_csv(out / "table.csv")
    assert [row["attributor"] for row in rows] == ROWS
    assert list(rows[0]) == ["attributor", *COLUMNS]
    record = json.loads((out / "evaluation.json").read_text())
    assert record["tool"] == "funcattr evaluate"
    for row in rows:
        for column in COLUMNS:
            assert float(row[column]) == pytest.approx(record["means"][row["attributor"]][column],
                                                       rel=1e-8)
            values = record["values"][row["attributor"]][column]
            assert len(values) == N and np.mean(values) == pytest.approx(float(row[column]))
    assert 0 <= float(rows[1]["relevance_mass_accuracy"]) <= 1
    # table.md is the printed table
    markdown = (out / "table.md").read_text()
    assert markdown in result.stdout
    assert len(markdown.splitlines()) == 2 + len(COLUMNS)
    with Image.open(out / "pixel_flipping.png") as image:
        image.load()
        assert image.size[0] > 400 and image.size[1] > 200
    assert record["settings"]["methods"] == {
        "gradient": {"attributor": "gradient", "composite": None},
        "epsilon_plus_flat": {"attributor": "gradient", "composite": "epsilon_plus_flat"},
    }
    assert [i["name"] for i in record["images"]] == [
        f"{CLASSES[label]}_{index:04d}"
        for index, label in enumerate(make_dataset(N, TEST_SEED)[1].tolist())
    ]


@pytest.mark.filterwarnings("ignore::funcattr.ModelCheckWarning")  # un-canonized on purpose
def test_matches_the_library(fast_run):
    """The command computes what fm.evaluate computes on the same images and targets."""
    _, out = fast_run
    images, _, masks = make_dataset(N, TEST_SEED)
    model = load_demo_model()
    with torch.no_grad():
        target = model(images).argmax(dim=1)
    table = fm.evaluate(
        model, images, target, masks,
        {"gradient": fm.explainer(model), "epsilon_plus_flat": fm.explainer(
            model, "epsilon_plus_flat")},
        ["pixel_flipping", "relevance_mass_accuracy", "random_logit"], seed=0,
    )
    rows = {row["attributor"]: row for row in read_csv(out / "table.csv")}
    for name in ROWS:
        for column in COLUMNS:
            assert float(rows[name][column]) == pytest.approx(table.mean(name, column),
                                                              rel=1e-4, abs=1e-6), (name, column)


@pytest.mark.filterwarnings("ignore::funcattr.ModelCheckWarning")  # un-canonized on purpose
def test_deterministic_given_a_seed(fast_run, tmp_path):
    _, out = fast_run
    again = invoke(*FAST, "--plot", "-o", tmp_path / "again", "-q")
    assert again.exit_code == 0 and again.stdout == "", again.output
    assert (tmp_path / "again" / "table.csv").read_bytes() == (out / "table.csv").read_bytes()
    other = invoke(*FAST, "--seed", "1", "-o", tmp_path / "other", "-q")
    assert other.exit_code == 0, other.output
    first, second = read_csv(out / "table.csv"), read_csv(tmp_path / "other" / "table.csv")
    # random logit draws the other class from the seed; pixel flipping draws nothing
    assert first[0]["random_logit"] != second[0]["random_logit"]
    assert first[0]["pixel_flipping_morf_auc"] == second[0]["pixel_flipping_morf_auc"]


def test_folder_without_masks_skips_localisation_with_a_note(folder, tmp_path):
    result = invoke(folder, "-a", "gradient", "-M", "relevance_mass_accuracy", "-o", tmp_path,
                    "-q")  # named explicitly: an error, see below; by default: a note
    assert_error(result, "needs object masks, but 3 of 3 images have no mask file")
    result = invoke(folder, "-a", "inputxgrad", "-o", tmp_path / "out")
    assert result.exit_code == 0, result.output
    note = ("note: skipped relevance_mass_accuracy, relevance_rank_accuracy, pointing_game: 3 "
            "of 3 images have no mask file NAME_mask.png next to NAME.png")
    assert result.stderr.strip() == note
    assert "funcattr evaluate: 3 images, model demo" in result.stdout  # no accuracy: no labels
    (row,) = read_csv(tmp_path / "out" / "table.csv")
    expected = [c for m in DEFAULT_METRICS if m not in ("relevance_mass_accuracy",
                "relevance_rank_accuracy", "pointing_game") for c in METRICS[m]]
    assert list(row) == ["attributor", *expected] and row["attributor"] == "inputxgrad"
    assert json.loads((tmp_path / "out" / "evaluation.json").read_text())["notes"] == [
        note.removeprefix("note: ")]


def test_rerun_replaces_own_outputs_only(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "table.csv").write_text("mine\n")
    result = invoke("-n", "1", "-a", "gradient", "-M", "pointing_game", "-o", out)
    assert_error(result, "already holds table.csv (not written by funcattr evaluate)")
    assert (out / "table.csv").read_text() == "mine\n"  # earlier outputs kept
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no staging folder left
    mine = tmp_path / "mine"
    for _ in range(2):  # a second run replaces the first run's files
        result = invoke("-n", "1", "-a", "gradient", "-M", "pointing_game", "-o", mine)
        assert result.exit_code == 0, result.output
    assert sorted(p.name for p in mine.iterdir()) == ["evaluation.json", "table.csv", "table.md"]


def test_plot_without_matplotlib_says_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib raises
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    out = tmp_path / "out"
    result = invoke("-n", "1", "-a", "gradient", "-M", "pixel_flipping", "--plot", "-o", out)
    assert_error(result, "--plot needs matplotlib")
    assert "pip install 'funcattr[plot]'" in result.stderr
    assert not out.exists()  # nothing half-written

# --------------------------------------------------------------------------------------------
# Option parsing
# --------------------------------------------------------------------------------------------

def test_parse_methods():
    assert [m.name for m in parse_methods((), ())] == list(DEFAULT_METHODS)
    assert parse_methods((), ())[2] == Method("gradient", "epsilon_plus_flat")
    methods = parse_methods(("gradient,smoothgrad:epsilon_plus_flat", "epsilon_gamma_box",
                             "occlusion:none"), ("none", "epsilon_gamma_box", "epsilon_plus"))
    assert [m.name for m in methods] == ["gradient", "smoothgrad:epsilon_plus_flat",
                                         "epsilon_gamma_box", "occlusion", "epsilon_plus"]
    assert parse_methods((), ("epsilon_plus",)) == [Method("gradient", "epsilon_plus")]


def test_parse_metrics():
    assert parse_metrics(()) == (tuple(DEFAULT_METRICS), False)
    assert parse_metrics(("pointing_game, infidelity", "pointing_game")) == (
        ("pointing_game", "infidelity"), True)
    assert parse_metrics(("all",)) == (tuple(METRICS), True)


def test_parse_options():
    metrics = ("pixel_flipping", "max_sensitivity", "model_parameter_randomisation")
    assert parse_options(("pixel_flipping.fill=mean", "pixel_flipping.n_steps=8",
                          "max_sensitivity.relative=True", "max_sensitivity.radius=0.05",
                          "model_parameter_randomisation.layers=['classifier.1']",
                          "pixel_flipping.orders=morf,lerf"), metrics) == {
        "pixel_flipping": {"fill": "mean", "n_steps": 8, "orders": ("morf", "lerf")},
        "max_sensitivity": {"relative": True, "radius": 0.05},
        "model_parameter_randomisation": {"layers": ["classifier.1"]},
    }
    # region_perturbation passes its options to pixel_flipping
    assert parse_options(("region_perturbation.fill=0.5",), ("region_perturbation",)) == {
        "region_perturbation": {"fill": 0.5}}


def test_metric_option_reaches_the_metric(tmp_path):
    result = invoke("-n", str(N), "-a", "gradient", "-M", "pixel_flipping", "-O",
                    "pixel_flipping.fill=mean", "-o", tmp_path)
    assert result.exit_code == 0, result.output
    images, _, _ = make_dataset(N, TEST_SEED)
    model = load_demo_model()
    with torch.no_grad():
        target = model(images).argmax(dim=1)
    kwargs = {"seed": 0}
    ours, black = (fm.evaluate(model, images, target, None, {"gradient": fm.explainer(model)},
                               ["pixel_flipping"], options=options, **kwargs)
                   for options in ({"pixel_flipping": {"fill": "mean"}}, None))
    (row,) = read_csv(tmp_path / "table.csv")
    column = "pixel_flipping_morf_auc"
    assert float(row[column]) == pytest.approx(ours.mean("gradient", column), rel=1e-4)
    assert float(row[column]) != pytest.approx(black.mean("gradient", column), rel=1e-2)
    settings = json.loads((tmp_path / "evaluation.json").read_text())["settings"]
    assert settings["metric options"] == {"pixel_flipping": {"fill": "mean"}}


# --------------------------------------------------------------------------------------------
# Errors: one line, non-zero exit, nothing written
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("args", "fragment"), [
    (("-M", "pixel_flip"), "'pixel_flip' is not a metric; expected all or one of: "
                           "pixel_flipping, region_perturbation"),
    (("-M", "pixel_flip"), "Did you mean pixel_flipping?"),
    (("-a", "gradeint"), "'gradeint' is not an attributor or composite; expected one of: "
                         "gradient, smooth_grad, integrated_gradients"),
    (("-a", "gradeint:epsilon_plus"), "'gradeint' is not an attributor"),
    (("-a", "gradient:epsilon_pluz"), "'epsilon_pluz' is not a composite; expected none or "
                                      "one of:"),
    (("-c", "epsilon_plus_falt"), "Did you mean epsilon_plus_flat"),
    (("-n", "0"), "0 is not in the range x>=1"),
    (("-a", "gradient", "--n-iter", "5"), "--n-iter applies to --attributor smooth_grad or "
                                          "integrated_gradients, none of which is evaluated."),
    (("-a", "gradient", "-M", "pointing_game", "--plot"),
     "--plot draws the curves of pixel_flipping or region_perturbation"),
    (("-a", "occlusion", "--window", "99"), "larger than the 64x64 input"),
    (("-m", "resnet_18"), "'resnet_18' is not a model"),
    (("-O", "fill=mean"), "'fill=mean': expected METRIC.KEY=VALUE, e.g. "
                          "pixel_flipping.fill=mean."),
    (("-M", "pointing_game", "-O", "pixel_flipping.fill=0"),
     "pixel_flipping is not evaluated; expected one of the metrics pointing_game."),
    (("-M", "pixel_flipping", "-O", "pixel_flipping.fil=0"),
     "pixel_flipping has no option 'fil'; expected one of: patch_size, regions_per_step, "
     "n_steps, fill, orders, softmax. Did you mean fill?"),
    (("-M", "max_sensitivity", "-O", "max_sensitivity.chunk_size=3"),
     "max_sensitivity has no option 'chunk_size'"),
])
def test_bad_options(args, fragment, tmp_path):
    assert_error(invoke(*args, "-o", tmp_path / "out"), fragment)
    assert not (tmp_path / "out").exists()


def test_bad_inputs(folder, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert_error(invoke(empty, "-o", tmp_path / "out"),
                 "the folder holds no PNG or JPEG images")
    assert_error(invoke(folder, "-n", "2", "-o", tmp_path / "out"),
                 "--samples chooses demo images; it does not apply to IMAGES.")
    assert_error(invoke(folder, "-t", "true", "-a", "gradient", "-M", "pixel_flipping",
                        "-o", tmp_path / "out"),
                 "true classes are known only for the demo images")
    (tmp_path / "file").write_text("")
    assert_error(invoke("-o", tmp_path / "file"), "exists and is not a folder")
    assert not (tmp_path / "out").exists()


def test_empty_mask_and_errors_inside_the_metrics(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    Image.new("RGB", (64, 64), (30, 90, 200)).save(images / "blue.png")
    Image.new("L", (64, 64), 0).save(images / "blue_mask.png")
    assert_error(invoke(images, "-a", "gradient", "-o", tmp_path / "out"),
                 "blue.png: its mask is empty after resizing to 64x64")
    # a one-class model: random_logit has no other class to compare with
    factory = tmp_path / "one_class.py"
    factory.write_text(textwrap.dedent("""
        import torch

        def build():
            return torch.nn.Sequential(torch.nn.Conv2d(3, 1, 3), torch.nn.AdaptiveAvgPool2d(1),
                                       torch.nn.Flatten())
    """))
    # a value the metric rejects
    result = invoke("-n", "1", "-a", "gradient", "-M", "pixel_flipping", "-O",
                    "pixel_flipping.fill=purple", "-o", tmp_path / "out")
    assert_error(result, "evaluating gradient on --model demo: pixel_flipping(fill='purple'): "
                         "expected a number, 'mean'")
    result = invoke("-n", "2", "-m", f"{factory}:build", "--input-size", "16", "-a", "gradient",
                    "-M", "random_logit", "-o", tmp_path / "out")
    line = assert_error(result, "evaluating gradient on --model")
    assert "random_logit" in line and "FUNCATTR_TRACEBACK=1" in line
    assert not (tmp_path / "out").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["images", "one_class.py"]


def test_method_name_is_paste_able():
    for method in parse_methods(("smoothgrad:epsilon_plus", "inputxgrad", "epsilon_plus"), ()):
        assert parse_methods((method.name,), ()) == [method]


def test_occlusion_measures_the_score(tmp_path):
    """Occlusion is seeded with the score (a one-hot seed would make every map zero)."""
    result = invoke("-n", str(N), "-a", "occlusion", "-M", "random_logit", "-o", tmp_path)
    assert result.exit_code == 0, result.output
    assert "score * one-hot for occlusion" in result.stdout.splitlines()[0]
    (row,) = read_csv(tmp_path / "table.csv")
    assert float(row["random_logit"]) < 0.9  # maps of different classes differ
