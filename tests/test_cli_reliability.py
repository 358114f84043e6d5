"""The command line against hostile inputs and a new user's first steps (issue 14).

One test per defect: 16-bit and palette images, a named pipe, a decompression bomb, an
unwritable folder, a model that raises, a failure midway, a re-run with fewer images, Ctrl-C at
start-up, ... Never a traceback; an output folder is always exactly one whole run's output.
"""

from __future__ import annotations

import errno
import json
import os
import stat
import subprocess
import sys
import textwrap
from importlib import resources
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_helpers import assert_error, invoke
from PIL import Image

from funcattr.cli import main

SAMPLES = Path(str(resources.files("funcattr.demo") / "samples"))




def sample_files(count: int) -> list[Path]:
    files = sorted(p for p in SAMPLES.glob("*.png") if not p.stem.endswith("_mask"))
    return files[:count]


def files_of(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def summary_of(out: Path) -> dict:
    return json.loads((out / "summary.json").read_text())


def leftovers(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if p.name.endswith((".partial", ".old"))]


TINY_MODEL = """
import torch

calls = 0


def build():
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(),
                               torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                               torch.nn.Linear(4, 3))
"""


@pytest.fixture
def tiny_model(tmp_path) -> str:
    """``FILE.py:build``: a small CNN that takes any input size."""
    path = tmp_path / "tiny_model.py"
    path.write_text(TINY_MODEL)
    return f"{path}:build"


# --------------------------------------------------------------------------------------------
# Images: bit depth, palettes, pipes, decompression bombs, unreadable files in a folder
# --------------------------------------------------------------------------------------------

def test_16_bit_grayscale_png_is_scaled_not_clipped(tmp_path):
    """Issue 14.3: ``convert('RGB')`` clipped a 16-bit PNG to 255 (a white image)."""
    ramp = np.linspace(0, 65535, 64)[None, :].repeat(64, axis=0).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "deep.png")
    with Image.open(tmp_path / "deep.png") as image:
        assert image.mode == "I;16"  # what Pillow makes of a 16-bit grayscale PNG
    out = tmp_path / "out"
    result = invoke("explain", tmp_path / "deep.png", "-o", out)
    assert result.exit_code == 0, result.output
    with Image.open(out / "inputs" / "deep.png") as seen:
        pixels = np.asarray(seen).astype(np.float64)
    expected = np.round(ramp / 65535 * 255)
    np.testing.assert_allclose(pixels, np.repeat(expected[..., None], 3, axis=2), atol=1)
    assert (pixels == 255).mean() < 0.05  # not the 98 % white image of clipping
    record = summary_of(out)["images"][0]
    assert record["conversion"] == "16-bit grayscale, divided by 65535"
    assert f"note: {tmp_path / 'deep.png'}: 16-bit grayscale, divided by 65535" in result.stderr
    assert "16-bit grayscale, divided by 65535" in (out / "report.html").read_text()


def test_palette_image_with_transparency(tmp_path):
    """Issue 14.3: a palette PNG with transparency warned (an error under -W error)."""
    indices = (np.arange(64)[:, None] // 16 + np.arange(64)[None, :] // 16) % 2
    image = Image.fromarray(indices.astype(np.uint8), "P")
    image.putpalette([200, 30, 30, 20, 40, 220] + [0, 0, 0] * 254)
    image.save(tmp_path / "palette.png", transparency=b"\x00\x80")
    out = tmp_path / "out"
    result = invoke("explain", tmp_path / "palette.png", "-o", out)
    assert result.exit_code == 0, result.output
    assert "Warning" not in result.stderr
    with Image.open(out / "inputs" / "palette.png") as seen:
        pixels = np.asarray(seen)
    colours = np.array([[200, 30, 30], [20, 40, 220]], dtype=np.uint8)
    np.testing.assert_array_equal(pixels, colours[indices])


def test_named_pipe_is_refused_not_opened(tmp_path):
    """Issue 14.16: a FIFO called x.png made the command wait forever."""
    fifo = tmp_path / "x.png"
    os.mkfifo(fifo)
    result = subprocess.run(
        [sys.executable, "-m", "funcattr", "explain", str(fifo), "-o", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert result.returncode == 2, result.stderr
    assert "x.png: not a regular file (a named pipe or a device)" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()


def test_decompression_bomb_is_refused_unless_allowed(tmp_path, monkeypatch):
    """Issue 14.14: Pillow's DecompressionBombError was a traceback; --allow-large-images."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # a 64x64 image is then a "bomb"
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(sample_files(1)[0].read_bytes())
    line = assert_error(invoke("explain", bomb, "-o", tmp_path / "out"), "bomb.png: expected "
                        "at most 1,000 pixels (Pillow's guard against decompression bombs), got "
                        "4,096 (64x64). If you trust the file, pass --allow-large-images.", 2)
    assert len(line) < 300
    result = invoke("explain", bomb, "-o", tmp_path / "out", "--allow-large-images")
    assert result.exit_code == 0, result.output
    assert Image.MAX_IMAGE_PIXELS == 1000  # the limit is back
    # found in a folder, it is skipped like any unreadable file
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "big.png").write_bytes(bomb.read_bytes())
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 2100)  # only big.png is over the limit
    Image.new("RGB", (40, 40), "white").save(folder / "small.png")
    result = invoke("explain", folder, "-o", tmp_path / "out2")
    assert result.exit_code == 0, result.output
    assert [s["source"] for s in summary_of(tmp_path / "out2")["skipped"]] == [
        str(folder / "big.png")]


def test_unreadable_files_in_a_folder_are_skipped_and_recorded(tmp_path):
    """Issue 14.37: one unreadable file aborted a whole folder."""
    folder = tmp_path / "photos"
    folder.mkdir()
    for source in sample_files(2):
        (folder / source.name).write_bytes(source.read_bytes())
    data = sample_files(1)[0].read_bytes()
    (folder / "truncated.png").write_bytes(data[: len(data) // 2])  # fails when decoded
    (folder / "notes.png").write_text("not an image")  # fails at the header
    out = tmp_path / "out"
    result = invoke("explain", folder, "-o", out)
    assert result.exit_code == 0, result.output
    summary = summary_of(out)
    assert [r["name"] for r in summary["images"]] == [p.stem for p in sample_files(2)]
    skipped = {Path(s["source"]).name: s["reason"] for s in summary["skipped"]}
    assert skipped.keys() == {"truncated.png", "notes.png"}
    assert skipped["notes.png"] == "not an image file (expected PNG or JPEG)"
    assert skipped["truncated.png"].startswith("cannot read the image")
    for name in skipped:
        assert f"note: skipped {folder / name}: " in result.stderr
    assert "skipped" in (out / "report.html").read_text()
    # evaluate skips them too
    result = invoke("evaluate", folder, "-a", "gradient", "-M", "pixel_flipping", "-o",
                    tmp_path / "evaluation")
    assert result.exit_code == 0, result.output
    record = json.loads((tmp_path / "evaluation" / "evaluation.json").read_text())
    assert len(record["images"]) == 2 and len(record["skipped"]) == 2
    # named on the command line, an unreadable file is an error
    assert_error(invoke("explain", folder / "truncated.png", "-o", out),
                 "truncated.png: cannot read the image", 1)


# --------------------------------------------------------------------------------------------
# Output folders: one whole run, swapped in; user files never touched; permissions
# --------------------------------------------------------------------------------------------

def test_rerun_with_fewer_images_leaves_no_stale_files(tmp_path):
    """Issue 14.11: a re-run left old heatmaps beside a summary listing fewer images."""
    out = tmp_path / "out"
    assert invoke("explain", *sample_files(3), "-o", out, "-q").exit_code == 0
    assert invoke("explain", *sample_files(2), "-o", out, "-q",
                  "--relevance-format", "npy").exit_code == 0
    summary = summary_of(out)
    assert sorted(files_of(out)) == summary["files"]
    assert len(summary["images"]) == 2 and not (out / "relevance.npz").exists()
    assert not (out / "heatmaps" / f"{sample_files(3)[2].stem}.png").exists()
    assert leftovers(tmp_path) == []


def test_user_file_at_a_planned_path_is_never_overwritten(tmp_path):
    """Issue 14.11: a re-run overwrote a user's file that lay where a heatmap goes."""
    out = tmp_path / "out"
    assert invoke("explain", *sample_files(2), "-o", out, "-q").exit_code == 0
    third = sample_files(3)[2].stem
    mine = out / "heatmaps" / f"{third}.png"
    mine.write_bytes(b"my own drawing")
    before = files_of(out)
    assert_error(invoke("explain", *sample_files(3), "-o", out),
                 f"holds heatmaps/{third}.png, which funcattr explain did not write", 2)
    assert files_of(out) == before
    assert leftovers(tmp_path) == []


@pytest.mark.filterwarnings("ignore::funcattr.ModelCheckWarning")  # un-canonized on purpose
def test_failure_midway_leaves_the_folder_as_it_was(tmp_path, monkeypatch):
    """Issue 14.10: a failure while the results were put in place left the folder half new."""
    out = tmp_path / "out"
    assert invoke("explain", *sample_files(3), "-o", out, "-q").exit_code == 0
    before = files_of(out)
    # the model fails on the second batch, after the first batch's files were written
    factory = tmp_path / "second_batch_fails.py"
    factory.write_text(textwrap.dedent("""
        import torch
        from funcattr.demo import load_demo_model

        class Model(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.net = load_demo_model(dtype=torch.float32)
                self.batches = 0

            def forward(self, x):
                if isinstance(x, torch.Tensor) and x.shape[0] > 1:
                    self.batches += 1
                    if self.batches > 2:  # the first batch's prediction and attribution
                        raise RuntimeError("second batch broke")
                return self.net(x)
    """))
    result = invoke("explain", *sample_files(4), "-m", f"{factory}:Model", "--input-size", "64",
                    "--batch-size", "2", "--canonizer", "none", "-o", out)
    assert_error(result, "second batch broke", 1)
    assert files_of(out) == before
    # the filesystem fails on the second move while the results are put in place
    moves = []

    def failing(original):
        def move(source, target, *args, **kwargs):
            moves.append((source, target))
            if len(moves) == 2:
                raise OSError(errno.EIO, "Input/output error")
            return original(source, target, *args, **kwargs)
        return move

    monkeypatch.setattr(os, "rename", failing(os.rename))
    monkeypatch.setattr(os, "replace", failing(os.replace))
    result = invoke("explain", *sample_files(2), "-o", out)
    monkeypatch.undo()
    assert_error(result, "cannot put the results in place (Input/output error); the folder is "
                 "as it was", 1)
    assert files_of(out) == before
    assert leftovers(tmp_path) == []


def test_unwritable_output_folder_is_one_line(tmp_path, monkeypatch):
    """Issue 14.12: an existing output folder without write permission gave a traceback. The
    permission is simulated (the tests may run as root, who may write anywhere)."""
    out = tmp_path / "out"
    assert invoke("explain", *sample_files(1), "-o", out, "-q").exit_code == 0
    before = files_of(out)
    locked = str(out.resolve())

    def access(path, mode, *args, **kwargs):
        if os.path.realpath(path) == locked and mode & os.W_OK:
            return False
        return real_access(path, mode, *args, **kwargs)

    def denied(original):
        def move(source, target, *args, **kwargs):
            if locked in (os.path.realpath(os.path.dirname(target)),
                          os.path.realpath(os.path.dirname(source)), os.path.realpath(source)):
                raise PermissionError(errno.EACCES, "Permission denied")
            return original(source, target, *args, **kwargs)
        return move

    real_access = os.access
    monkeypatch.setattr(os, "access", access)
    monkeypatch.setattr(os, "rename", denied(os.rename))
    monkeypatch.setattr(os, "replace", denied(os.replace))
    result = invoke("explain", *sample_files(2), "-o", out)
    monkeypatch.undo()
    assert_error(result, "expected a writable folder, got one without write permission", 2)
    assert files_of(out) == before
    assert leftovers(tmp_path) == []
    # a folder that cannot be created
    assert_error(invoke("explain", "-o", "/proc/funcattr-out"), "/proc/funcattr-out", 2)


def test_output_folders_follow_the_umask(tmp_path):
    """Issue 14.37: output folders were created with mode 0700 (the temporary folder's)."""
    previous = os.umask(0o022)
    try:
        out = tmp_path / "out"
        assert invoke("explain", *sample_files(1), "-o", out, "-q").exit_code == 0
        evaluation = tmp_path / "evaluation"
        assert invoke("evaluate", "-n", "1", "-a", "gradient", "-M", "pointing_game", "-q",
                      "-o", evaluation).exit_code == 0
    finally:
        os.umask(previous)
    for folder in (out, out / "heatmaps", out / "inputs", evaluation):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o755, folder
    assert stat.S_IMODE((out / "summary.json").stat().st_mode) == 0o644


def test_output_folder_that_is_the_input_folder(tmp_path):
    """Issue 14.28: -o equal to the input folder said "holds no images"."""
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "a.png").write_bytes(sample_files(1)[0].read_bytes())
    for command in ("explain", "evaluate"):
        assert_error(invoke(command, folder, "-o", folder), f"{folder} is the output folder "
                     f"{folder}, which each run replaces whole. Choose another --output.", 2)
    assert sorted(p.name for p in folder.iterdir()) == ["a.png"]


# --------------------------------------------------------------------------------------------
# Options: --level, occlusion with a composite, canonizers that need arguments
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("args", [("--level", "inf"), ("--level", "nan"),
                                  ("-a", "smooth_grad", "--noise-level", "inf")])
def test_non_finite_numbers_are_refused(tmp_path, args):
    """Issue 14.28: --level inf gave a blank heatmap with exit status 0."""
    assert_error(invoke("explain", *args, "-o", tmp_path / "out"), "is not a finite number", 2)
    assert not (tmp_path / "out").exists()


def test_occlusion_with_a_composite_is_refused(tmp_path):
    """Issue 14.36: a composite has no effect on occlusion (as --n-iter has none on gradient)."""
    assert_error(invoke("explain", "-a", "occlusion", "-c", "epsilon_plus_flat", "-o",
                        tmp_path / "out"),
                 "--composite applies to --attributor gradient or smooth_grad or "
                 "integrated_gradients or inputxgrad, not occlusion", 2)
    assert_error(invoke("evaluate", "-a", "occlusion:epsilon_plus_flat", "-o", tmp_path / "ev"),
                 "occlusion:epsilon_plus_flat: a composite applies to gradient", 2)
    assert not (tmp_path / "out").exists() and not (tmp_path / "ev").exists()
    result = invoke("explain", "-a", "occlusion", "-c", "none", *sample_files(1), "-q",
                    "-o", tmp_path / "none")
    assert result.exit_code == 0, result.output


def test_canonizers_that_need_arguments(tmp_path):
    """Issue 14.15: --canonizer AttributeCanonizer (offered by funcattr list) crashed."""
    from funcattr.canonizers import CANONIZERS
    from funcattr.cli import load_model, resolve_canonizers

    assert_error(invoke("explain", "--canonizer", "AttributeCanonizer", "-o", tmp_path / "out"),
                 "'AttributeCanonizer' is not a canonizer the command line can build", 2)
    assert_error(invoke("explain", "--canonizer", "named_merge_batch_norm", "-o",
                        tmp_path / "out"),
                 "'named_merge_batch_norm' needs the argument(s) name_map, which the command "
                 "line cannot give", 2)
    listed = invoke("list", "canonizers").stdout
    assert "AttributeCanonizer" not in listed
    loaded = load_model("demo")
    for name, spec in CANONIZERS.items():
        (line,) = [line for line in listed.splitlines() if line.split()[:1] == [name]]
        if spec.arguments():
            assert "[needs name_map: Python only" in line
        else:  # every other name listed can be built
            canonizers, text = resolve_canonizers(name, loaded)
            assert [type(c).__name__ for c in canonizers] == [spec.load().__name__] == [text]


def test_auto_canonizer_comes_from_the_registry(tmp_path):
    """--canonizer auto is funcattr.canonizers_for; on the demo it merges the batch norms as
    VGGCanonizer did, with the same relevance."""
    runs = {}
    for canonizer in ("auto", "vgg"):
        out = tmp_path / canonizer
        assert invoke("explain", *sample_files(2), "--canonizer", canonizer, "-q",
                      "-o", out).exit_code == 0
        runs[canonizer] = (summary_of(out)["settings"]["canonizer"],
                           np.load(out / "relevance.npz")["relevance"])
    assert runs["auto"][0] == "SequentialMergeBatchNorm (auto)"
    assert runs["vgg"][0] == "VGGCanonizer"
    np.testing.assert_array_equal(runs["auto"][1], runs["vgg"][1])


# --------------------------------------------------------------------------------------------
# Models: one that raises, imports from the working folder, whole saved models
# --------------------------------------------------------------------------------------------

RAISING_MODEL = """
import torch


class Model(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(3, 6)
        self.calls = 0

    def forward(self, x):
        self.calls += isinstance(x, torch.Tensor)
        if self.calls > 1:  # the probe passes, the first real batch does not
            assert x.shape[0] == 1, "expected one image at a time"
        return self.linear(x.mean((2, 3)))
"""


@pytest.mark.parametrize("command", ["explain", "evaluate"])
def test_model_that_raises_in_forward(tmp_path, command):
    """Issue 14.13: the prediction pass was outside the error handling (a traceback)."""
    factory = tmp_path / "raising_model.py"
    factory.write_text(RAISING_MODEL)
    extra = ("--input-size", "64") if command == "explain" else ("--input-size", "64", "-a",
                                                                  "gradient")
    result = invoke(command, *sample_files(2), "-m", f"{factory}:Model", *extra, "-o",
                    tmp_path / "out")
    line = assert_error(result, f"--model {factory}:Model failed on ", 1)
    assert "AssertionError: expected one image at a time" in line
    assert "Fix the model's forward" in line and "FUNCATTR_TRACEBACK=1" in line
    assert not (tmp_path / "out").exists()


def test_factory_is_imported_from_the_working_folder(tmp_path, monkeypatch):
    """Issue 14.32: -m models.net:build needed PYTHONPATH=. (console scripts do not put the
    working folder on sys.path)."""
    package = tmp_path / "issue14_models"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "net.py").write_text(TINY_MODEL)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    for name in ("issue14_models", "issue14_models.net"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    result = invoke("explain", *sample_files(1), "-m", "issue14_models.net:build",
                    "--input-size", "64", "-o", tmp_path / "out", "-q")
    assert result.exit_code == 0, result.output
    assert summary_of(tmp_path / "out")["settings"]["model"] == "issue14_models.net:build"


def test_whole_saved_model(tmp_path, monkeypatch):
    """Issue 14.32: a model saved with torch.save(model) was "not a model", with no hint;
    loading it runs code from the file, so it takes --allow-pickle."""
    (tmp_path / "issue14_whole.py").write_text(TINY_MODEL)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [str(tmp_path), *sys.path])
    monkeypatch.delitem(sys.modules, "issue14_whole", raising=False)
    import issue14_whole

    model = issue14_whole.build().float()
    torch.save(model, tmp_path / "whole.pt")
    torch.save(model.state_dict(), tmp_path / "state.pt")
    before = (tmp_path / "whole.pt").read_bytes()
    monkeypatch.setattr(sys, "path", sys.path[1:])
    monkeypatch.delitem(sys.modules, "issue14_whole")
    args = ("explain", *sample_files(1), "--input-size", "64", "-o", tmp_path / "out")
    line = assert_error(invoke(*args, "-m", "whole.pt"), "whole.pt holds a pickled model "
                        "(torch.save(model)); if you trust the file, pass --allow-pickle: "
                        "loading it runs code stored in the file", 2)
    assert "torch.save(model.state_dict(), FILE)" in line
    assert_error(invoke(*args, "-w", "whole.pt"), "whole.pt: holds a pickled object, not a "
                 "state_dict; a whole model saved with torch.save(model) is passed as --model "
                 "whole.pt --allow-pickle", 2)
    assert_error(invoke(*args, "-m", "state.pt"), "state.pt holds a state_dict, not a model", 2)
    result = invoke(*args, "-m", "whole.pt", "--allow-pickle", "-q")
    assert result.exit_code == 0, result.output
    assert summary_of(tmp_path / "out")["settings"]["model"] == "whole.pt"
    assert (tmp_path / "whole.pt").read_bytes() == before


# --------------------------------------------------------------------------------------------
# Feedback: progress, the header, Ctrl-C, --help
# --------------------------------------------------------------------------------------------

def test_progress_per_image_on_a_terminal(tmp_path, monkeypatch, tiny_model):
    """Issue 14.31: explain's bar jumped from 0 % to 100 % for 16 images or fewer; large
    images are now explained one per step."""
    import io
    import pty

    master, slave = pty.openpty()
    terminal = os.fdopen(slave, "w", buffering=1)
    monkeypatch.setattr(sys, "stderr", terminal)
    monkeypatch.setattr(sys, "stdout", io.StringIO())
    args = ["explain", *map(str, sample_files(3)), "-m", tiny_model, "--input-size", "256",
            "-o", str(tmp_path / "out")]
    try:
        main.main(args, prog_name="funcattr", standalone_mode=False)
        terminal.flush()
        os.set_blocking(master, False)
        shown = os.read(master, 65536).decode()
    finally:
        terminal.close()
        os.close(master)
    assert "gradient on 3 images" in shown
    for step in ("1/3", "2/3", "3/3"):
        assert step in shown


def test_progress_lines_when_not_a_terminal(tmp_path, monkeypatch, tiny_model):
    """Issue 14.31: evaluate printed nothing for 14 minutes when not on a terminal. A long
    run (here: any, the threshold set to 0) writes a line per step to stderr."""
    from funcattr.cli import progress

    monkeypatch.setattr(progress, "QUIET_SECONDS", 0.0)
    result = invoke("explain", *sample_files(3), "-m", tiny_model, "--input-size", "256",
                    "-o", tmp_path / "out")
    assert result.exit_code == 0, result.output
    lines = result.stderr.splitlines()
    assert [line.split(" (")[0] for line in lines] == [
        f"gradient on 3 images: {k}/3 images done" for k in (1, 2, 3)]
    result = invoke("evaluate", "-n", "2", "-a", "gradient,epsilon_plus_flat", "-M",
                    "pixel_flipping,random_logit", "-o", tmp_path / "evaluation")
    assert result.exit_code == 0, result.output
    assert [line.split(" (")[0] for line in result.stderr.splitlines()] == [
        f"funcattr evaluate: [{k}/4] {name}: {metric}" for k, (name, metric) in enumerate(
            [(n, m) for n in ("gradient", "epsilon_plus_flat")
             for m in ("pixel_flipping", "random_logit")], start=1)]


def test_header_shows_the_target(tmp_path):
    """Issue 14.37: the console header never showed the target."""
    from funcattr.demo import CLASSES

    result = invoke("explain", *sample_files(2), "--target", "star", "-o", tmp_path / "out")
    assert result.exit_code == 0, result.output
    header = result.stdout.splitlines()[0]
    assert header.endswith(f", target class {CLASSES.index('star')} (star)"), header


def test_ctrl_c_during_start_up_is_not_a_traceback(tmp_path):
    """Issue 14.17: Ctrl-C while torch was being imported printed a KeyboardInterrupt
    traceback. Here the interrupt arrives exactly when torch is imported."""
    code = textwrap.dedent(f"""
        import runpy, sys

        class Interrupt:
            def find_spec(self, name, path=None, target=None):
                if name == "torch":
                    raise KeyboardInterrupt

        sys.meta_path.insert(0, Interrupt())
        sys.argv = ["funcattr", "explain", "-o", {str(tmp_path / "out")!r}]
        runpy.run_module("funcattr", run_name="__main__")
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=300, check=False)
    assert "Traceback" not in result.stderr, result.stderr
    assert result.stderr.strip() == "Aborted!" and result.returncode == 1


def test_help_does_not_import_torch():
    """Issue 14.37: ``funcattr --help`` took about 6 s, importing torch before it was needed."""
    code = ("import sys\nfrom funcattr.cli import main\n"
            "try:\n    main(['--help'], prog_name='funcattr')\nexcept SystemExit:\n    pass\n"
            "print(sorted(m for m in ('torch', 'numpy', 'PIL') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=300, check=True)
    assert "explain" in result.stdout and "evaluate" in result.stdout
    assert result.stdout.splitlines()[-1] == "[]"


@pytest.mark.filterwarnings("ignore::funcattr.ModelCheckWarning")  # un-canonized on purpose
def test_evaluate_in_steps_equals_one_library_call(tmp_path):
    """funcattr evaluate runs one metric per step (for its progress lines), reusing each
    method's attributions; the table is that of one fm.evaluate call with every metric,
    including the metrics that call the explainer again (max_sensitivity) or read its
    parameters (model_parameter_randomisation)."""
    import funcattr.metrics as fm
    from funcattr.demo import load_demo_model, make_dataset
    from funcattr.demo.train import TEST_SEED

    metrics = ["pixel_flipping", "max_sensitivity", "random_logit",
               "model_parameter_randomisation"]
    out = tmp_path / "out"
    result = invoke("evaluate", "-n", "2", "-a", "gradient", "-c", "epsilon_plus_flat", "-M",
                    ",".join(metrics), "--canonizer", "none", "-q", "-o", out)
    assert result.exit_code == 0, result.output
    record = json.loads((out / "evaluation.json").read_text())
    images, _, _ = make_dataset(2, TEST_SEED)
    model = load_demo_model()
    with torch.no_grad():
        target = model(images).argmax(dim=1)
    table = fm.evaluate(model, images, target, None,
                        {"gradient": fm.explainer(model),
                         "epsilon_plus_flat": fm.explainer(model, "epsilon_plus_flat")},
                        metrics, seed=0)
    assert list(record["values"]) == ["gradient", "epsilon_plus_flat"]
    for name, row in record["values"].items():
        assert list(row) == list(table.columns)
        for column, values in row.items():
            np.testing.assert_allclose(values, table.values[name][column].tolist(),
                                       rtol=1e-4, atol=1e-6, err_msg=f"{name} {column}")
