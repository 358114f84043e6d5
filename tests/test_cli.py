"""Tests of the ``funcattr`` command: outputs, options, error messages, explanation quality."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_helpers import assert_error as shared_assert_error
from cli_helpers import invoke, quiet_progress  # noqa: F401  (quiet_progress: a fixture)
from PIL import Image

from funcattr import COMPOSITES
from funcattr.cli import (
    ATTRIBUTORS,
    auto_chunk_size,
    dilate_mask,
    main,
    normalize_relevance,
    positive_fraction_in_mask,
)
from funcattr.demo import CLASSES, IMAGE_SIZE, load_demo_samples, make_dataset
from funcattr.image import CMAPS

LRP_COMPOSITES = ("epsilon_plus_flat", "epsilon_gamma_box", "epsilon_alpha2_beta1")



def assert_error(result, fragment: str, code: int | None = None) -> str:
    return shared_assert_error(result, fragment, code, stdout_empty=True)


pytestmark = pytest.mark.usefixtures("quiet_progress")


@pytest.fixture(scope="module")
def demo() -> tuple:
    return load_demo_samples()


@pytest.fixture(scope="module")
def default_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "out"
    result = invoke("explain", "--output", out)
    return result, out


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory) -> Path:
    """Six fresh procedural images with ``*_mask.png`` files, one more in a sub-folder."""
    folder = tmp_path_factory.mktemp("images")
    images, labels, masks = make_dataset(7, 0xF01D)
    for i in range(7):
        target = folder if i < 6 else folder / "sub"
        target.mkdir(exist_ok=True)
        stem = target / f"{CLASSES[labels[i]]}_{i}"
        pixels = (images[i].permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
        Image.fromarray(pixels).save(f"{stem}.png")
        Image.fromarray(masks[i].numpy().astype(np.uint8) * 255).save(f"{stem}_mask.png")
    return folder


def demo_sample_files(count: int) -> list[Path]:
    """The first ``count`` shipped sample files (their ``*_mask.png`` lie next to them)."""
    from importlib import resources

    folder = resources.files("funcattr.demo") / "samples"
    files = sorted(p for p in Path(str(folder)).glob("*.png") if not p.stem.endswith("_mask"))
    return files[:: len(files) // count][:count]


def summary_of(out: Path) -> dict:
    return json.loads((out / "summary.json").read_text())


# --------------------------------------------------------------------------------------------
# The default run: demo model on the shipped samples
# --------------------------------------------------------------------------------------------

def test_default_run_prints_summary(default_run, demo):
    result, out = default_run
    assert result.exit_code == 0, result.output
    assert result.stderr == ""  # no progress bar when stderr is not a terminal
    _, labels, _, names = demo
    lines = result.stdout.splitlines()
    assert "model demo" in lines[0] and "epsilon_plus_flat" in lines[0]
    assert "true class" in lines[1] and "relevance+ in mask" in lines[1]
    for name, label in zip(names, labels.tolist(), strict=True):
        (line,) = [line for line in lines if line.split()[:1] == [name]]
        fields = line.split()
        assert fields[1] == CLASSES[label]  # true class
        assert fields[2] in CLASSES  # predicted class
        assert 0 <= float(fields[3]) <= 1  # score
        assert 0 <= float(fields[4]) <= 1 and fields[5].startswith("(")  # fraction (area)
    assert "mean positive relevance in mask" in result.stdout
    assert f"to {out}/" in result.stdout and "report.html" in result.stdout


def test_default_run_files(default_run, demo):
    _, out = default_run
    images, labels, masks, names = demo
    summary = summary_of(out)
    assert summary["tool"] == "funcattr explain"
    assert summary["settings"]["composite"] == "epsilon_plus_flat"
    assert [r["name"] for r in summary["images"]] == names
    for record, label, mask in zip(summary["images"], labels.tolist(), masks, strict=True):
        assert record["true_class"] == CLASSES[label]
        assert record["predicted"]["class"] == CLASSES[label]  # the samples are classified right
        assert record["mask_area"] == pytest.approx(float(mask.double().mean()))
        with Image.open(out / "heatmaps" / f"{record['name']}.png") as heatmap:
            assert heatmap.size == (IMAGE_SIZE, IMAGE_SIZE) and heatmap.mode == "P"
        with Image.open(out / "inputs" / f"{record['name']}.png") as image:
            assert image.size == (IMAGE_SIZE, IMAGE_SIZE) and image.mode == "RGB"
    # the input written is the shipped sample, pixel for pixel
    with Image.open(out / "inputs" / f"{names[0]}.png") as image:
        written = torch.from_numpy(np.array(image)).permute(2, 0, 1).float() / 255.0
    assert torch.equal(written.float(), images[0])
    data = np.load(out / "relevance.npz")
    assert data["relevance"].shape == (len(names), 1, 3, IMAGE_SIZE, IMAGE_SIZE)
    assert data["relevance"].dtype == np.float32
    assert data["names"].tolist() == names
    assert data["targets"].tolist() == [[int(label)] for label in labels]
    # the summary's fractions are those of the saved relevance
    for row, record in enumerate(summary["images"]):
        summed = data["relevance"][row, 0].sum(axis=0)
        fraction = positive_fraction_in_mask(summed, masks[row].numpy())
        assert record["targets"][0]["fraction_in_mask"] == pytest.approx(fraction)
    assert not [p for p in out.parent.iterdir() if p.name.endswith(".partial")]


def test_default_run_matches_library(default_run, demo):
    """The CLI's relevance is funcattr.gradient with the composite (and auto canonizer)."""
    import funcattr
    from funcattr.cli import load_model, resolve_canonizers

    _, out = default_run
    images, labels, _, _ = demo
    loaded = load_model("demo", device="cpu")
    canonizers, _ = resolve_canonizers("auto", loaded)
    fn, params = funcattr.functionalize(loaded.model, COMPOSITES["epsilon_plus_flat"](),
                                        canonizers)
    _, relevance = funcattr.gradient(fn, params, images, funcattr.one_hot(labels))
    saved = np.load(out / "relevance.npz")["relevance"][:, 0]
    np.testing.assert_allclose(saved, relevance.numpy(), rtol=1e-4, atol=1e-6)


def test_subprocess_python_m_funcattr(tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONWARNINGS": "error"}
    result = subprocess.run(
        [sys.executable, "-m", "funcattr", "explain", "--output", str(out)],
        capture_output=True, text=True, timeout=120, env=env, check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""  # no progress bar: stderr is not a terminal
    assert "mean positive relevance in mask" in result.stdout
    assert (out / "report.html").is_file() and (out / "relevance.npz").is_file()


# --------------------------------------------------------------------------------------------
# Explanation quality on the demo: relevance lies on the object
# --------------------------------------------------------------------------------------------

def mask_fractions(tmp_path: Path, *args: str) -> tuple[float, float, float]:
    """Mean fractions of positive relevance in the mask and within 2 px of it; mean mask area."""
    out = tmp_path / "out"
    result = invoke("explain", "--output", out, "--relevance-format", "none", *args)
    assert result.exit_code == 0, result.output
    summary = summary_of(out)
    fraction, near = summary["mean_fraction_in_mask"], summary["mean_fraction_near_mask"]
    area = summary["mean_mask_area"]
    label = " ".join(str(a) for a in args if not str(a).endswith(".png"))
    print(f"{label}: mean fraction of positive relevance in mask {fraction:.3f}, "
          f"within 2 px {near:.3f}, mask area {area:.3f}")
    return fraction, near, area


@pytest.fixture(scope="module")
def gradient_fractions(tmp_path_factory) -> tuple[float, float, float]:
    return mask_fractions(tmp_path_factory.mktemp("plain"), "--composite", "none")


@pytest.mark.parametrize("composite", LRP_COMPOSITES)
def test_lrp_relevance_lies_on_the_object(tmp_path, composite, gradient_fractions):
    # Most positive relevance lies on the object (its checkerboard fill is what the model
    # finds): measured 0.70 / 0.86 / 0.77 inside the mask (area 0.096) for EpsilonPlusFlat /
    # EpsilonGammaBox / EpsilonAlpha2Beta1, 0.91-0.98 within 2 px; the gradient 0.39.
    fraction, near, area = mask_fractions(tmp_path, "--composite", composite)
    assert fraction > 0.5
    assert fraction > 5 * area
    assert near > 0.85
    assert fraction > gradient_fractions[0] and near > gradient_fractions[1]  # beats gradient


@pytest.mark.parametrize(("attributor", "options"), [
    ("smoothgrad", ("--n-iter", "8")),
    ("integrads", ("--n-iter", "8")),
    ("occlusion", ("--window", "16", "--stride", "16")),
    ("inputxgrad", ()),
])
def test_other_attributors_run_and_report_fractions(tmp_path, attributor, options):
    files = demo_sample_files(4)  # a third of the samples keeps the test fast
    fraction, near, area = mask_fractions(tmp_path, "--attributor", attributor, *options, *files)
    assert 0 <= fraction <= near <= 1
    assert fraction > 1.5 * area  # better than chance


# --------------------------------------------------------------------------------------------
# Options
# --------------------------------------------------------------------------------------------

def test_folder_with_masks_recursive_and_npy(tmp_path, image_folder):
    out = tmp_path / "out"
    result = invoke("explain", image_folder, "-o", out, "--relevance-format", "npy")
    assert result.exit_code == 0, result.output
    records = summary_of(out)["images"]
    assert len(records) == 6  # *_mask.png are masks, sub/ is not searched
    assert all(r["mask_area"] is not None and r["true_class"] is None for r in records)
    assert all(r["targets"][0]["fraction_in_mask"] is not None for r in records)
    for record in records:
        assert np.load(out / "relevance" / f"{record['name']}.npy").shape == (1, 3, 64, 64)
    assert not (out / "relevance.npz").exists()
    assert "true class" not in result.stdout

    out = tmp_path / "recursive"
    result = invoke("explain", image_folder, "-r", "-o", out, "--relevance-format", "none")
    assert result.exit_code == 0, result.output
    assert len(summary_of(out)["images"]) == 7
    assert not (out / "relevance").exists() and not (out / "relevance.npz").exists()


def test_explicit_files_same_stem_and_resize(tmp_path, image_folder):
    first = sorted(image_folder.glob("*_?.png"))[0]
    other = tmp_path / "other"
    other.mkdir()
    big = other / first.name  # same stem, different folder, 3x larger and not square
    with Image.open(first) as image:
        image.resize((192, 240)).convert("RGB").save(big.with_suffix(".jpg"))
    out = tmp_path / "out"
    result = invoke("explain", first, big.with_suffix(".jpg"), first, "-o", out, "-q")
    assert result.exit_code == 0, result.output
    assert result.stdout == ""  # --quiet
    names = [r["name"] for r in summary_of(out)["images"]]
    assert names == [first.stem, f"{first.stem}-2"]  # duplicates dropped, names unique
    for name in names:
        with Image.open(out / "heatmaps" / f"{name}.png") as heatmap:
            assert heatmap.size == (64, 64)


def test_top_k_class_names_and_indices(tmp_path):
    out = tmp_path / "top"
    few = demo_sample_files(3)
    result = invoke("explain", *few, "-o", out, "--target", "top2", "-q")
    assert result.exit_code == 0, result.output
    summary = summary_of(out)
    data = np.load(out / "relevance.npz")
    assert data["relevance"].shape[:2] == (3, 2)
    for record in summary["images"]:
        first, second = record["targets"]
        assert first["index"] == record["predicted"]["index"] != second["index"]
        assert first["probability"] >= second["probability"]
        for rank in (1, 2):
            assert (out / "heatmaps" / f"{record['name']}_top{rank}.png").is_file()
    for target, index in (("star", CLASSES.index("star")), ("2", 2)):
        out = tmp_path / f"target-{target}"
        result = invoke("explain", *few, "-o", out, "--target", target, "-q")
        assert result.exit_code == 0, result.output
        summary = summary_of(out)
        assert {r["targets"][0]["index"] for r in summary["images"]} == {index}
        assert summary["settings"]["target"] == f"class {index} ({CLASSES[index]})"


def test_relevance_norm_cmap_and_level(tmp_path):
    out = tmp_path / "out"
    result = invoke("explain", *demo_sample_files(2), "-o", out, "--cmap", "000,fff",
                    "--relevance-norm", "absolute", "--level", "2", "--times-output", "-q")
    assert result.exit_code == 0, result.output
    summary = summary_of(out)
    assert summary["settings"]["output gradient"] == "score * one-hot"
    record = summary["images"][0]
    relevance = np.load(out / "relevance.npz")["relevance"][0, 0].sum(axis=0)
    with Image.open(out / record["targets"][0]["heatmap"]) as heatmap:
        indices = np.asarray(heatmap)
        palette = np.array(heatmap.getpalette()[:768]).reshape(256, 3)
    expected = (normalize_relevance(relevance, "absolute") * 255).clip(0, 255).astype(np.uint8)
    np.testing.assert_array_equal(indices, expected)
    # a grey ramp at level 2 saturates halfway
    assert palette[0].tolist() == [0, 0, 0] and palette[200].tolist() == [255, 255, 255]
    # LRP with score * one-hot conserves (about) the score: sum of relevance ~ logit
    assert record["targets"][0]["relevance_sum"] == pytest.approx(
        record["targets"][0]["logit"], rel=0.3)


def test_normalize_relevance_semantics():
    r = np.array([[-2.0, 0.0], [1.0, 4.0]])
    np.testing.assert_allclose(normalize_relevance(r, "symmetric"), [[0.25, 0.5], [0.625, 1.0]])
    np.testing.assert_allclose(normalize_relevance(r, "absolute"), [[0.5, 0.0], [0.25, 1.0]])
    np.testing.assert_allclose(normalize_relevance(r, "unaligned"),
                               [[0.0, 2 / 6], [3 / 6, 1.0]])
    zero = np.zeros((2, 2))
    assert normalize_relevance(zero, "symmetric").tolist() == [[0.5, 0.5], [0.5, 0.5]]
    assert normalize_relevance(zero, "absolute").tolist() == [[0.0, 0.0], [0.0, 0.0]]
    assert normalize_relevance(zero, "unaligned").tolist() == [[0.0, 0.0], [0.0, 0.0]]
    with pytest.raises(ValueError, match=r"normalize_relevance\(mode='x'\): expected one of"):
        normalize_relevance(r, "x")
    assert positive_fraction_in_mask(r, np.array([[True, True], [False, False]])) == 0.0
    assert positive_fraction_in_mask(r, np.array([[False, False], [True, False]])) == 0.2
    assert positive_fraction_in_mask(r, np.array([[True, False], [False, False]]), dilate=1) == 1
    grown = dilate_mask(np.pad([[True]], 2), 1)
    assert grown.sum() == 9 and grown[1:4, 1:4].all()
    assert np.isnan(positive_fraction_in_mask(-np.abs(r), np.ones((2, 2), bool)))


def test_composite_none_and_canonizer_choice(tmp_path):
    out = tmp_path / "plain"
    few = demo_sample_files(2)
    result = invoke("explain", *few, "-o", out, "--composite", "none", "--canonizer", "none",
                    "-q")
    assert result.exit_code == 0, result.output
    settings = summary_of(out)["settings"]
    assert settings["composite"] == "none" and settings["canonizer"] == "none"
    out = tmp_path / "box"
    result = invoke("explain", *few, "-o", out, "--composite", "epsilon_gamma_box", "-q")
    assert result.exit_code == 0, result.output
    assert summary_of(out)["settings"]["composite"] == "epsilon_gamma_box (input bounds 0.0..1.0)"


def test_module_factory_model(tmp_path, image_folder):
    factory = tmp_path / "tiny_model.py"
    factory.write_text(textwrap.dedent("""
        import torch

        def build():
            torch.manual_seed(0)
            return torch.nn.Sequential(
                torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(),
                torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4, 3))

        NOT_A_MODEL = 3
    """))
    names = tmp_path / "names.txt"
    names.write_text("alpha\nbeta\ngamma\n")
    out = tmp_path / "out"
    result = invoke("explain", image_folder, "-m", f"{factory}:build", "--input-size", "32",
                    "--class-names", names, "--target", "gamma", "-o", out, "-q")
    assert result.exit_code == 0, result.output
    summary = summary_of(out)
    assert summary["class_names"] == ["alpha", "beta", "gamma"]
    assert {r["targets"][0]["class"] for r in summary["images"]} == {"gamma"}
    with Image.open(out / summary["images"][0]["targets"][0]["heatmap"]) as heatmap:
        assert heatmap.size == (32, 32)
    assert_error(invoke("explain", "-m", f"{factory}:NOT_A_MODEL", "-o", out),
                 "is neither a torch.nn.Module nor callable", 2)
    assert_error(invoke("explain", "-m", f"{factory}:missing", "-o", out),
                 "has no attribute 'missing'", 2)
    assert_error(invoke("explain", "-m", "no_such_module_xyz:build", "-o", out),
                 "cannot import no_such_module_xyz", 2)
    assert_error(invoke("explain", "-m", f"{factory}:build", "--class-names", names,
                        "--target", "delta", "-o", out), "'delta' is not pred", 2)


def test_torchvision_architecture(tmp_path, image_folder):
    """torchvision models at 224 with ImageNet normalisation inside the model."""
    from torchvision.models import squeezenet1_1

    first = sorted(image_folder.glob("*_?.png"))[0]
    out = tmp_path / "squeezenet"
    result = invoke("explain", first, "-m", "squeezenet1_1", "--weights", "random",
                    "--composite", "epsilon_gamma_box", "-o", out, "-q")
    assert result.exit_code == 0, result.output
    summary = summary_of(out)
    settings = summary["settings"]
    assert "224x224, resize 256 + centre crop, ImageNet normalisation" == settings["input"]
    assert settings["composite"] == "epsilon_gamma_box (input bounds per channel)"
    assert len(summary["class_names"]) == 1000 and summary["class_names"][0] == "tench"
    with Image.open(out / summary["images"][0]["targets"][0]["heatmap"]) as heatmap:
        assert heatmap.size == (224, 224)
    relevance = np.load(out / "relevance.npz")["relevance"]
    assert relevance.shape == (1, 1, 3, 224, 224) and np.isfinite(relevance).all()

    out = tmp_path / "resnet"
    result = invoke("explain", first, "-m", "resnet18", "--weights", "random",
                    "--composite", "none", "--input-size", "64", "-o", out, "-q")
    assert result.exit_code == 0, result.output
    settings = summary_of(out)["settings"]
    assert settings["canonizer"] == "ResNetCanonizer (auto)"

    # weights from a file are loaded, also of a fine-tuned model with fewer classes
    model = squeezenet1_1(num_classes=10)
    torch.nn.init.normal_(model.classifier[1].bias)
    weights = tmp_path / "squeezenet.pt"
    torch.save(model.state_dict(), weights)
    out = tmp_path / "fitting"
    result = invoke("explain", first, "-m", "squeezenet1_1", "-w", weights, "-o", out, "-q",
                    "--class-names", write_lines(tmp_path / "ten.txt", 10), "-c", "none",
                    "--input-size", "64")
    assert result.exit_code == 0, result.output
    summary = summary_of(out)
    assert summary["class_names"][3] == "class 3" and summary["settings"]["weights"] == str(weights)
    record = summary["images"][0]
    with Image.open(out / "inputs" / f"{record['name']}.png") as image:
        x = torch.from_numpy(np.array(image)).permute(2, 0, 1)[None].float() / 255
    mean = torch.tensor([0.485, 0.456, 0.406], dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225], dtype=torch.float32).view(1, 3, 1, 1)
    with torch.no_grad():
        logits = model.float().eval()((x - mean) / std)[0]
    assert record["predicted"]["index"] == int(logits.argmax())
    assert record["predicted"]["logit"] == pytest.approx(float(logits.max()), rel=1e-4)
    # weights of another architecture are an error naming the misfit
    state = model.state_dict()
    state["classifier.1.weight"] = state["classifier.1.weight"][:, :100]
    torch.save(state, weights)
    assert_error(invoke("explain", first, "-m", "squeezenet1_1", "-w", weights, "-o", out),
                 "does not fit the architecture squeezenet1_1 (shape mismatches: "
                 "classifier.1.weight: file (10, 100, 1, 1) vs model (10, 512, 1, 1))", 2)


@pytest.mark.slow
def test_resnet_with_lrp(tmp_path, image_folder):
    first = sorted(image_folder.glob("*_?.png"))[0]
    out = tmp_path / "out"
    result = invoke("explain", first, "-m", "resnet50", "--weights", "random", "-o", out, "-q")
    assert result.exit_code == 0, result.output
    assert summary_of(out)["settings"]["canonizer"] == "ResNetCanonizer (auto)"


def write_lines(path: Path, count: int) -> Path:
    path.write_text("".join(f"class {i}\n" for i in range(count)))
    return path


# --------------------------------------------------------------------------------------------
# Errors a user will make: one line on stderr, non-zero exit, nothing destroyed
# --------------------------------------------------------------------------------------------

@pytest.fixture
def junk(tmp_path) -> dict[str, Path]:
    text = tmp_path / "notes.txt"
    text.write_text("not an image")
    fake = tmp_path / "fake.png"
    fake.write_bytes(b"\x89PNG not really")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.md").write_text("no images here")
    state = tmp_path / "state.pt"
    torch.save({"features.0.weight": torch.zeros(1)}, state)
    pickle = tmp_path / "weights.pt"
    pickle.write_text("this is text")
    return {"text": text, "fake": fake, "empty": empty, "state": state, "pickle": pickle,
            "file": text}


@pytest.mark.parametrize(("args", "fragment"), [
    (("{tmp}/missing.png",), "missing.png: no such file or folder"),
    (("{text}",), "notes.txt: not an image file (expected PNG or JPEG)"),
    (("{fake}",), "fake.png: not an image file"),
    (("{empty}",), "the folder holds no PNG or JPEG images (add --recursive"),
    (("-m", "resnet181"), "'resnet181' is not a model"),
    (("-m", "resnet181"), "Did you mean resnet18"),
    (("-m", "resnet18"), "resnet18 needs --weights FILE"),
    (("-w", "{tmp}/nothing.pt"), "nothing.pt: no such file"),
    (("-w", "{pickle}"), "weights.pt: not a PyTorch state_dict file"),
    (("-w", "{state}"), "does not fit the architecture demo (missing: features.0.bias"),
    (("-c", "epsilon_plus_flatt"), "'epsilon_plus_flatt' is not a composite"),
    (("-c", "epsilon_plus_flatt"), "Did you mean epsilon_plus_flat"),
    (("--canonizer", "vgggg"), "'vgggg' is not a canonizer"),
    (("--cmap", "rainbow"), "'rainbow' is neither a colour map name"),
    (("--cmap", "bwrr"), "Did you mean bwr"),
    (("-a", "lime"), "'lime' is not one of"),
    (("--relevance-norm", "max"), "'max' is not one of"),
    (("--batch-size", "0"), "0 is not in the range x>=1"),
    (("-a", "smoothgrad", "--n-iter", "0"), "0 is not in the range x>=1"),
    (("-a", "smoothgrad", "--noise-level", "0"), "0.0 is not in the range x>0"),
    (("--level", "-1"), "-1.0 is not in the range x>0"),
    (("--n-iter", "5"), "--n-iter applies to --attributor smooth_grad or integrated_gradients, "
                        "not gradient"),
    (("-a", "smoothgrad", "--window", "4"), "--window applies to --attributor occlusion"),
    (("-a", "occlusion", "--window", "0"), "'0': expected a positive integer"),
    (("-a", "occlusion", "--window", "8,x"), "expected a positive integer or two as H,W"),
    (("-a", "occlusion", "--window", "100"), "(100, 100) is larger than the 64x64 input"),
    (("--target", "top0"), "top-k needs k >= 1"),
    (("--target", "top7"), "top7: the model has only 6 classes"),
    (("--target", "6"), "class 6 does not exist; the model has 6 classes (0 to 5)"),
    (("--target", "-1"), "expected a class index >= 0"),
    (("--target", "sqare"), "'sqare' is not pred, a class index, topK or a class name"),
    (("--target", "sqare"), "Did you mean square"),
    (("--device", "gpu0"), "'gpu0' is not a device"),
    (("--device", "cuda:7"), "no such CUDA device here"),
    (("-o", "{file}"), "exists and is not a folder"),
    (("--class-names", "{empty}/readme.md"), "readme.md has 1 names, but the model has 6"),
    (("--input-size", "4"), "4 is not in the range x>=8"),
])
def test_user_errors(tmp_path, junk, args, fragment):
    args = [a.format(tmp=tmp_path, **junk) for a in args]
    if "-o" not in args:
        args += ["-o", str(tmp_path / "out")]
    line = assert_error(invoke("explain", *args), fragment, 2)
    assert len(line) < 400
    assert not (tmp_path / "out").exists()  # nothing written
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".partial")]


def test_model_that_cannot_take_the_input(tmp_path):
    factory = tmp_path / "flat_model.py"
    factory.write_text("import torch\n\ndef build():\n    return torch.nn.Sequential("
                       "torch.nn.Flatten(), torch.nn.Linear(12, 2))\n")
    assert_error(invoke("explain", "-m", f"{factory}:build", "-o", tmp_path / "out"),
                 "the model cannot process a 3x224x224 image", 1)


def test_failure_keeps_earlier_outputs(tmp_path, image_folder):
    out = tmp_path / "out"
    assert invoke("explain", image_folder, "-o", out, "-q").exit_code == 0
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    mine = out / "my-notes.txt"
    mine.write_text("keep me")
    # a file that looks like a PNG but is cut short: accepted, fails when decoded (named on
    # the command line, it is an error; found in a folder, it would be skipped)
    broken = tmp_path / "broken"
    broken.mkdir()
    with Image.open(sorted(image_folder.glob("*_?.png"))[0]) as image:
        image.save(broken / "a.png")
    data = (broken / "a.png").read_bytes()
    (broken / "b.png").write_bytes(data[: len(data) // 2])
    # the folder holds a file of the user's: refused before any work (a run replaces the
    # folder whole), nothing changed
    assert_error(invoke("explain", *demo_sample_files(2), "-o", out),
                 "holds my-notes.txt, which funcattr explain did not write", 2)
    mine.unlink()
    result = invoke("explain", broken / "a.png", broken / "b.png", "-o", out, "--batch-size", "1")
    assert_error(result, "b.png: cannot read the image", 1)
    after = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after == before  # nothing replaced, a.png's heatmap not added
    assert not [p for p in tmp_path.iterdir() if p.name.endswith((".partial", ".old"))]
    # a successful run into our own folder replaces it whole: no stale files of the first run
    result = invoke("explain", *demo_sample_files(2), "-o", out, "-q", "--composite",
                    "epsilon_alpha2_beta1")
    assert result.exit_code == 0, result.output
    summary = summary_of(out)
    assert summary["settings"]["composite"] == "epsilon_alpha2_beta1"
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert files == summary["files"] and len(summary["images"]) == 2


def test_refuses_to_overwrite_foreign_files(tmp_path):
    out = tmp_path / "site"
    out.mkdir()
    (out / "report.html").write_text("<p>my own report</p>")
    assert_error(invoke("explain", "-o", out), "already holds report.html (not written by "
                 "funcattr explain)", 2)
    assert (out / "report.html").read_text() == "<p>my own report</p>"
    assert sorted(p.name for p in out.iterdir()) == ["report.html"]


# --------------------------------------------------------------------------------------------
# funcattr list, --help, --version
# --------------------------------------------------------------------------------------------

def test_list_shows_everything():
    result = invoke("list")
    assert result.exit_code == 0, result.output
    for section in ("composites:", "attributors:", "canonizers:", "cmaps:", "models:"):
        assert section in result.stdout
    for name in [*COMPOSITES, *ATTRIBUTORS, *CMAPS, "resnet18", "vgg16_bn", "demo"]:
        assert name in result.stdout
    result = invoke("list", "cmaps")
    assert result.exit_code == 0
    assert "bwr" in result.stdout and "00f,80:fff,f00" in result.stdout
    assert "composites" not in result.stdout
    assert_error(invoke("list", "rules"), "'rules' is not one of", 2)


def test_help_and_version():
    result = invoke("--help")
    assert result.exit_code == 0 and "explain" in result.stdout and "list" in result.stdout
    result = invoke("explain", "--help")
    for option in ("--composite", "--attributor", "--canonizer", "--target", "--cmap",
                   "--relevance-norm", "--window", "--stride", "--n-iter", "--noise-level",
                   "--batch-size", "--device", "--output", "--weights", "--recursive"):
        assert option in result.stdout
    result = invoke("--version")
    assert result.exit_code == 0 and "funcattr" in result.stdout


@pytest.mark.parametrize("quiet", [False, True])
def test_progress_bar_only_on_a_terminal(tmp_path, monkeypatch, quiet):
    import io
    import pty

    master, slave = pty.openpty()
    terminal = os.fdopen(slave, "w", buffering=1)
    monkeypatch.setattr(sys, "stderr", terminal)
    monkeypatch.setattr(sys, "stdout", io.StringIO())
    files = [str(f) for f in demo_sample_files(3)]
    args = ["explain", *files, "-o", str(tmp_path / "out"), "--batch-size", "2"]
    main.main(args + ["--quiet"] * quiet, prog_name="funcattr", standalone_mode=False)
    terminal.flush()
    os.set_blocking(master, False)
    chunks = []
    try:
        while chunk := os.read(master, 65536):  # a pty hands its buffer out in pieces
            chunks.append(chunk)
    except BlockingIOError:
        pass
    finally:
        terminal.close()
        os.close(master)
    shown = b"".join(chunks).decode()
    if quiet:
        assert shown == "" and sys.stdout.getvalue() == ""
    else:
        assert "gradient on 3 images" in shown and "100%" in shown
        assert "mean positive relevance in mask" in sys.stdout.getvalue()


def test_mask_of_another_size(tmp_path, image_folder):
    first = sorted(image_folder.glob("*_?.png"))[0]
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / first.name).write_bytes(first.read_bytes())
    Image.new("L", (32, 32)).save(folder / f"{first.stem}_mask.png")
    assert_error(invoke("explain", folder, "-o", tmp_path / "out"),
                 "its mask has size (32, 32), the image (64, 64)", 1)
    assert not (tmp_path / "out").exists()


def test_failure_inside_the_attributor(tmp_path, monkeypatch):
    factory = tmp_path / "fragile_model.py"
    factory.write_text(textwrap.dedent("""
        import torch

        class Fragile(torch.nn.Module):
            calls = 0

            def __init__(self):
                super().__init__()
                self.linear = torch.nn.Linear(3, 2)

            def forward(self, x):
                Fragile.calls += isinstance(x, torch.Tensor)  # not --canonizer auto's fx trace
                if Fragile.calls > 2:  # the probe and the prediction pass, then the attribution
                    raise RuntimeError("something broke inside\\nsecond line")
                return self.linear(x.mean((2, 3)))
    """))
    files = demo_sample_files(1)
    args = ["explain", *files, "-m", f"{factory}:Fragile", "-o", tmp_path / "out"]
    line = assert_error(invoke(*args), "--attributor gradient with --composite auto and "
                        "--canonizer auto failed on --model", 1)
    assert "something broke inside" in line and "second line" not in line
    assert "FUNCATTR_TRACEBACK=1" in line
    monkeypatch.setenv("FUNCATTR_TRACEBACK", "1")
    result = invoke(*args)
    assert isinstance(result.exception, RuntimeError)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("shape", "expected", "copies"), [
    ((1, 3, 64, 64), 64, 64),  # funcattr evaluate: 64 demo images per model call
    ((12, 3, 64, 64), 64, 5),  # funcattr explain: 5 noisy copies of the 12 demo images per step
    ((16, 3, 224, 224), 5, 1),  # one copy of an ImageNet batch
    ((1, 3, 2048, 2048), 1, 1),  # never zero
])
def test_auto_chunk_size_keeps_steps_near_2_to_the_18_pixels(shape, expected, copies):
    """Steps of about 2^18 input pixels per channel: small enough that a CNN's first
    activations stay below glibc's 32 MiB mmap threshold (faster, see funcattr.cli).
    ``chunk_size`` counts model inputs (images); an attributor takes whole copies of the batch
    per step, at least one."""
    from funcattr.attribution.options import copies_per_step

    chunk_size = auto_chunk_size(torch.zeros(shape))
    assert chunk_size == expected
    assert copies_per_step(chunk_size, shape[0], 100) == copies
