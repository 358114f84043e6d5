"""``funcattr explain --dataset`` and ``funcattr evaluate --dataset``: the store equals the
library call, failures are recorded, runs resume, another run's store is refused, a full disk
and a bad folder are one line, and torchrun with 2 ranks equals one process."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import zarr
from cli_helpers import invoke
from datasets_worker import assert_same_store
from PIL import Image

import funcattr
from funcattr.composites import EpsilonPlusFlat
from funcattr.datasets import (
    PENDING,
    DemoDataset,
    evaluate_dataset,
    explain_dataset,
    open_store,
)
from funcattr.demo import load_demo_model

ROOT = Path(__file__).resolve().parents[1]



def assert_one_line_error(result, fragment: str, code: int = 1) -> str:
    assert result.exit_code == code, (result.exit_code, result.output)
    assert "Traceback" not in result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, result.stderr
    assert fragment in errors[0], errors[0]
    return errors[0]


@pytest.fixture(scope="module")
def model():
    return load_demo_model()


def library_store(model, path, **options):
    """``explain_dataset`` as the command runs it on the demo (its default composite and
    canonizer)."""
    return explain_dataset(model, DemoDataset(options.pop("size", 12)), path,
                           composite=EpsilonPlusFlat(),
                           canonizers=funcattr.canonizers_for(model), batch_size=4,
                           progress=False, **options)


def test_explain_demo_dataset_equals_the_library_call(model, tmp_path):
    result = invoke("explain", "--dataset", "demo:12", "-b", 4, "-o", tmp_path / "cli")
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("funcattr explain: 12 items of demo:12, model demo, "
                                    "attributor gradient, composite epsilon_plus_flat")
    assert "done 12, failed 0, pending 0" in result.stdout
    assert f"wrote store.zarr, class_stats.csv, class_means.png to {tmp_path / 'cli'}/" in (
        result.stdout)
    cli = open_store(tmp_path / "cli")
    assert_same_store(cli, library_store(model, tmp_path / "library"))
    assert cli.relevance.dtype == np.float16 and cli.settings["batch_size"] == 4
    assert (tmp_path / "cli" / "class_means.png").is_file()


def test_options_reach_the_store(model, tmp_path):
    result = invoke("explain", "-d", "demo:8", "-b", 4, "-a", "smooth_grad", "--n-iter", 3,
                    "--seed", 5, "--dtype", "float32", "--target", "true", "-q",
                    "-o", tmp_path / "cli")
    assert result.exit_code == 0, result.output
    assert result.output == ""
    store = open_store(tmp_path / "cli")
    settings = store.settings
    assert (settings["attributor"], settings["seed"], settings["target"]) == (
        "smooth_grad", 5, "label")
    assert settings["options"]["n_iter"] == 3 and settings["composite"] is None
    expected = explain_dataset(model, DemoDataset(8), tmp_path / "library",
                               canonizers=funcattr.canonizers_for(model),
                               attributor="smooth_grad", options=settings["options"], seed=5,
                               dtype="float32", target="label", batch_size=4, progress=False)
    assert_same_store(store, expected)


def _write_folder(root: Path) -> Path:
    dataset = DemoDataset(5)
    for index in range(5):
        folder = root / dataset.classes[dataset[index].label]
        folder.mkdir(parents=True, exist_ok=True)
        array = (dataset[index].image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        Image.fromarray(array).save(folder / f"{index}.png")
    bad = next(root.iterdir()) / "broken.png"
    bad.write_bytes(b"this is no PNG")
    return bad


def test_folder_with_a_corrupt_file_records_it_and_goes_on(tmp_path):
    bad = _write_folder(tmp_path / "images")
    result = invoke("explain", "--dataset", tmp_path / "images", "-b", 2,
                    "-o", tmp_path / "out")
    assert result.exit_code == 0, result.output
    store = open_store(tmp_path / "out")
    assert store.counts() == {"done": 5, "failed": 1, "pending": 0}
    (_, source, error), = store.failures()
    assert source == str(bad) and error.startswith("loading failed: UnidentifiedImageError")
    assert f"({bad}) failed: loading failed: UnidentifiedImageError" in result.stderr
    assert "Traceback" not in result.output


def test_rerun_continues_an_interrupted_store(tmp_path):
    arguments = ("explain", "--dataset", "demo:8", "-b", 4, "-o", tmp_path / "run")
    assert invoke(*arguments).exit_code == 0
    status = zarr.open_array(tmp_path / "run" / "store.zarr" / "items" / "status", mode="r+")
    status[4:8] = PENDING  # as a crash before the second batch was marked done leaves it
    relevance = zarr.open_array(tmp_path / "run" / "store.zarr" / "relevance", mode="r+")
    relevance[4:8] = np.nan
    again = invoke(*arguments)
    assert again.exit_code == 0, again.output
    assert "done 8, failed 0, pending 0 (session 2 of this store)" in again.stdout
    assert invoke("explain", "--dataset", "demo:8", "-b", 4, "-o", tmp_path / "whole",
                  "-q").exit_code == 0
    assert_same_store(open_store(tmp_path / "run"), open_store(tmp_path / "whole"))


def test_another_runs_store_is_refused_saying_what_differs(tmp_path):
    out = tmp_path / "run"
    assert invoke("explain", "-d", "demo:4", "-b", 4, "-o", out, "-q").exit_code == 0
    refused = invoke("explain", "-d", "demo:4", "-b", 4, "--dtype", "float32", "-o", out)
    line = assert_one_line_error(refused, f"Invalid value for --output: {out} holds a store "
                                          f"written by another run", 2)
    assert "dtype: 'float16' in the store, 'float32' now" in line
    assert line.endswith("Pass --overwrite to start a new run there, or choose another "
                         "--output.")
    replaced = invoke("explain", "-d", "demo:4", "-b", 4, "--dtype", "float32", "--overwrite",
                      "-o", out, "-q")
    assert replaced.exit_code == 0, replaced.output
    assert open_store(out).settings["dtype"] == "float32"


def test_a_full_disk_is_one_line_and_the_store_stays_resumable(tmp_path, monkeypatch):
    original = zarr.AsyncArray.setitem
    calls = {"n": 0}

    async def full_after_a_while(self, selection, value, **kwargs):
        calls["n"] += 1
        if calls["n"] > 14:
            raise OSError(errno.ENOSPC, "No space left on device")
        return await original(self, selection, value, **kwargs)

    arguments = ("explain", "-d", "demo:12", "-b", 4, "-o", tmp_path / "run", "-q")
    monkeypatch.setattr(zarr.AsyncArray, "setitem", full_after_a_while)
    full = invoke(*arguments)
    monkeypatch.setattr(zarr.AsyncArray, "setitem", original)
    assert_one_line_error(full, f"--output {tmp_path / 'run'}: the disk is full (No space "
                                f"left on device). The items done so far are kept")
    assert 0 < open_store(tmp_path / "run").counts()["done"] < 12
    assert invoke(*arguments).exit_code == 0
    assert open_store(tmp_path / "run").counts()["done"] == 12


@pytest.mark.parametrize(("args", "fragment", "code"), [
    (("--dataset", "missing-folder"), "Invalid value for --dataset: missing-folder: expected "
                                      "a folder of images", 2),
    (("--dataset", "demo:0"), "'demo:0': expected demo:N with a number of images N >= 1", 2),
    (("--dataset", "demo:4", "photo.png"), "--dataset and IMAGES: give one", 2),
    (("--dataset", "demo:4", "--cmap", "coldnhot"), "--cmap applies to IMAGES", 2),
    (("--workers", "1",), "--workers applies to --dataset", 2),
    (("--overwrite",), "--resume/--overwrite applies to --dataset", 2),
    (("--dataset", "demo:4", "--target", "top2"), "top2 applies to IMAGES", 2),
    (("--dataset", "demo:4", "--input-size", "32"), "demo:4 gives 64x64 demo images, but "
                                                    "--model demo takes 32x32", 2),
])
def test_user_errors_name_the_option(tmp_path, args, fragment, code):
    result = invoke("explain", *args, "-o", tmp_path / "out")
    assert_one_line_error(result, fragment, code)
    assert not (tmp_path / "out").exists()


def test_a_folder_without_images_is_one_line(tmp_path):
    (tmp_path / "empty").mkdir()
    result = invoke("evaluate", "--dataset", tmp_path / "empty", "-o", tmp_path / "out")
    assert_one_line_error(result, f"{tmp_path / 'empty'}: expected image files", 2)


def test_evaluate_dataset_equals_the_library_call(model, tmp_path):
    result = invoke("evaluate", "--dataset", "demo:8", "-b", 4, "-a", "epsilon_plus_flat",
                    "-M", "pixel_flipping,pointing_game", "-O", "pixel_flipping.n_steps=4",
                    "-o", tmp_path / "cli")
    assert result.exit_code == 0, result.output
    assert "| pointing_game ↑" in result.stdout
    assert (tmp_path / "cli" / "table.md").is_file() and (tmp_path / "cli" / "table.csv").is_file()
    expected = evaluate_dataset(
        model, DemoDataset(8), tmp_path / "library", composite=EpsilonPlusFlat(),
        canonizers=funcattr.canonizers_for(model), batch_size=4, progress=False,
        metrics=("pixel_flipping", "pointing_game"),
        metric_options={"pixel_flipping": {"n_steps": 4}})
    cli = open_store(tmp_path / "cli" / "epsilon_plus_flat")
    assert cli.counts() == expected.counts() == {"done": 8, "failed": 0, "pending": 0}
    np.testing.assert_array_equal(cli.output[:], expected.output[:])
    assert sorted(cli.metrics) == sorted(expected.metrics)
    for name, values in expected.metrics.items():
        np.testing.assert_array_equal(cli.metrics[name][:], values[:], err_msg=name)
    rows = (tmp_path / "cli" / "table.csv").read_text().splitlines()
    assert rows[1].startswith("epsilon_plus_flat,")


def test_evaluate_dataset_refuses_metrics_it_cannot_stream(tmp_path):
    result = invoke("evaluate", "--dataset", "demo:4", "-M", "max_sensitivity",
                    "-o", tmp_path / "out")
    assert_one_line_error(result, "'max_sensitivity' re-explains perturbed inputs", 2)


def test_torchrun_two_ranks_equal_one_process(tmp_path):
    """The command under torchrun (gloo, loopback, a free port) writes the store of one
    process, item for item."""
    environment = dict(os.environ)
    environment["PYTHONPATH"] = os.pathsep.join(
        [str(ROOT), *filter(None, [environment.get("PYTHONPATH")])])
    environment.update(OMP_NUM_THREADS="1", MASTER_ADDR="127.0.0.1")
    arguments = ["explain", "--dataset", "demo:12", "-b", "2", "-a", "smooth_grad",
                 "--n-iter", "2", "--seed", "3"]
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2",
               "--rdzv-backend=c10d", "--rdzv-endpoint=127.0.0.1:0", "--max-restarts=0",
               "-m", "funcattr", *arguments, "-o", str(tmp_path / "two")]
    done = subprocess.run(command, env=environment, capture_output=True, text=True,
                          timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("funcattr explain: 12 items of demo:12") == 1  # rank 0 only
    assert "Traceback" not in done.stderr
    one = invoke(*arguments, "-q", "-o", tmp_path / "one")
    assert one.exit_code == 0, one.output
    two = open_store(tmp_path / "two")
    assert_same_store(open_store(tmp_path / "one"), two)
    assert [s["world_size"] for s in two.sessions] == [2]
