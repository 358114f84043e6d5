"""funcattr.datasets in one process: items, sources, the store, resume, failures, settings."""

from __future__ import annotations

import errno
import functools
import io

import numpy as np
import pytest
import torch
import zarr
from datasets_worker import assert_same_store
from PIL import Image

import funcattr
from funcattr.datasets import (
    DONE,
    DemoDataset,
    ImageFolder,
    Item,
    StoreFullError,
    as_item,
    evaluate_dataset,
    explain_dataset,
    item_seed,
    open_store,
)
from funcattr.demo import load_demo_model
from funcattr.metrics import pixel_flipping, relevance_mass_accuracy

BATCH = 4
# the store's mechanics, compared with the same un-canonized functionalize: un-canonized on purpose
pytestmark = pytest.mark.filterwarnings("ignore::funcattr.ModelCheckWarning")


@pytest.fixture(scope="module")
def model():
    return load_demo_model()


@pytest.fixture(scope="module")
def images():
    dataset = DemoDataset(12)
    return torch.stack([dataset[i].image for i in range(12)])


def explain(model, dataset, path, **options):
    options = {"composite": "epsilon_plus_flat", "batch_size": BATCH, "progress": False,
               **options}
    return explain_dataset(model, dataset, path, **options)


# ---- items and sources -------------------------------------------------------------------

def test_as_item_reads_every_form():
    image = torch.rand(3, 8, 8)
    mask = torch.zeros(8, 8, dtype=torch.bool)
    assert as_item(image).label is None
    assert as_item((image, 3)).label == 3
    assert as_item((image, torch.tensor(2), mask)).mask is mask
    assert as_item({"image": image, "label": np.int64(1), "source": "a.png"}).source == "a.png"
    assert as_item(Item(image, -1)).label is None
    pil = as_item(Image.new("RGB", (5, 4), (255, 0, 0))).image
    assert pil.shape == (3, 4, 5) and pil.dtype == torch.float32 and float(pil[0].min()) == 1.0
    with pytest.raises(TypeError, match="expected a mapping with the key 'image'"):
        as_item({"x": image})
    with pytest.raises(TypeError, match="expected an image tensor or a PIL image"):
        as_item("image.png")


def test_demo_dataset_batched_equals_one_by_one():
    dataset = DemoDataset(40, seed=3)
    batched = dataset.__getitems__([5, 6, 7, 20, 39])
    for index, item in zip([5, 6, 7, 20, 39], batched):
        single = dataset[index]
        assert torch.equal(single.image, item.image) and torch.equal(single.mask, item.mask)
        assert single.label == item.label and single.source == f"demo:3:{index}"
    with pytest.raises(IndexError):
        dataset[40]
    with pytest.raises(ValueError, match=r"DemoDataset\(size=-1\): expected an int >= 0"):
        DemoDataset(-1)


def _png(path, colour, size=(16, 16)):
    Image.new("RGB", size, colour).save(path)


def test_image_folder_labels_masks_and_errors(tmp_path):
    for name in ("cat", "dog"):
        (tmp_path / name).mkdir()
    _png(tmp_path / "cat" / "a.png", (255, 0, 0))
    Image.new("L", (16, 16), 255).save(tmp_path / "cat" / "a_mask.png")
    _png(tmp_path / "dog" / "b.png", (0, 255, 0), size=(32, 24))
    folder = ImageFolder(tmp_path, size=16)
    assert folder.classes == ("cat", "dog") and len(folder) == 2
    first, second = folder[0], folder[1]
    assert first.label == 0 and bool(first.mask.all())
    assert first.source == str(tmp_path / "cat" / "a.png") == folder.samples[0][0]
    assert second.label == 1 and second.image.shape == (3, 16, 16) and second.mask is None
    assert folder.fingerprint() == ImageFolder(tmp_path, size=16).fingerprint()
    with pytest.raises(ValueError, match=r"ImageFolder\(root='.*missing'\): expected a folder"):
        ImageFolder(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"found none\. Check the path"):
        ImageFolder(tmp_path / "empty")
    with pytest.raises(ValueError, match=r"ImageFolder\(size=0\)"):
        ImageFolder(tmp_path, size=0)


# ---- explain_dataset: values, store, reading ---------------------------------------------

def test_store_holds_the_attribution_of_each_batch(model, images, tmp_path):
    store = explain(model, DemoDataset(12), tmp_path / "run")
    assert store.counts() == {"done": 12, "failed": 0, "pending": 0}
    assert store.relevance.shape == (12, 3, 64, 64) and store.relevance.dtype == np.float16
    fn, params = funcattr.functionalize(model, "epsilon_plus_flat")
    for start in range(0, 12, BATCH):
        output, relevance = funcattr.gradient(fn, params, images[start:start + BATCH],
                                              funcattr.one_hot(None))
        np.testing.assert_array_equal(store.relevance[start:start + BATCH],
                                      relevance.half().numpy())
        np.testing.assert_array_equal(store.output[start:start + BATCH], output.numpy())
    table = store.read_table()
    labels = np.array([DemoDataset(12)[i].label for i in range(12)])
    np.testing.assert_array_equal(table["index"], np.arange(12))
    np.testing.assert_array_equal(table["label"], labels)
    np.testing.assert_array_equal(table["prediction"], store.output[:].argmax(1))
    np.testing.assert_array_equal(table["target"], table["prediction"])
    np.testing.assert_array_equal(table["score"], store.output[:].max(1))
    assert list(table["source"][:2]) == ["demo:1:0", "demo:1:1"]
    assert set(table["status"]) == {DONE} and set(table["error"]) == {""}
    settings = store.settings
    assert settings["attributor"] == "gradient"
    assert settings["dataset"]["fingerprint"] == "DemoDataset(size=12, seed=1, draw_objects=True)"
    assert settings["composite"].startswith("EpsilonPlusFlat(")
    assert len(settings["model"]["sha256"]) == 64 and settings["batch_size"] == BATCH
    assert store.sessions[0]["world_size"] == 1


def test_worker_processes_give_the_same_store(model, tmp_path):
    assert_same_store(explain(model, DemoDataset(12), tmp_path / "w1", num_workers=1),
                      explain(model, DemoDataset(12), tmp_path / "w0"))


def test_store_opens_with_plain_zarr(model, tmp_path):
    store = explain(model, DemoDataset(8), tmp_path / "run")
    group = zarr.open_group(tmp_path / "run" / "store.zarr", mode="r")
    np.testing.assert_array_equal(group["relevance"][:], store.relevance[:])
    assert group["relevance"].chunks == (BATCH, 3, 64, 64)
    assert group["relevance"].metadata.dimension_names == ("item", "channel", "height", "width")
    assert group["items/score"].metadata.dimension_names == ("item",)
    assert group.attrs["funcattr"]["settings"] == store.settings
    assert open_store(tmp_path / "run" / "store.zarr").settings == store.settings


def test_summary_files_and_class_means(model, tmp_path):
    store = explain(model, DemoDataset(12), tmp_path / "run")
    summary = store.summary
    assert summary["done"] == 12 and summary["grouped_by"] == "label"
    for name in ("class_means.png", "class_stats.csv"):
        assert (tmp_path / "run" / name).is_file()
    lines = (tmp_path / "run" / "class_stats.csv").read_text().splitlines()
    assert lines[0].startswith("class,name,items,failed,accuracy,score_mean")
    assert lines[-1].startswith("all,all,12,0,")
    labels = store.read_table(["label"])["label"]
    relevance = store.relevance[:].astype(np.float64).sum(axis=1)  # channels summed
    abs_sum = store.read_table(["relevance_abs_sum"])["relevance_abs_sum"]
    means = store.class_means()
    assert sorted(means) == sorted(set(labels.tolist()))
    for k in np.unique(labels):
        expected = (relevance[labels == k] / abs_sum[labels == k][:, None, None]).mean(0)
        assert means[k].shape == (64, 64)
        np.testing.assert_allclose(means[k], expected, rtol=1e-5, atol=1e-8)
    plain = store.class_means(normalized=False)
    np.testing.assert_allclose(plain[labels[0]], relevance[labels == labels[0]].mean(0),
                               rtol=1e-5, atol=1e-8)


def test_class_means_are_summed_while_running(model, tmp_path, monkeypatch):
    """The job sums the class means as it explains (rank 0 merges the processes' sums); they
    equal the means read back from the store, and a partial sum that does not hold exactly
    done items, each once, is not trusted."""
    import funcattr.datasets.explain as explain_module
    from funcattr.datasets.summary import ClassSums, summarize_explanation

    seen = []
    original = explain_module.summarize_explanation

    def spy(*arguments, partials=(), **options):
        seen.append(partials)
        return original(*arguments, partials=partials, **options)

    monkeypatch.setattr(explain_module, "summarize_explanation", spy)
    folder = tmp_path / "run"
    running = explain(model, DemoDataset(12), folder, dtype="float32").class_means()
    assert sorted(seen[0][0]["label"].held().tolist()) == list(range(12))
    summarize_explanation(folder, "", None)  # no partials: every item read back
    read_back = open_store(folder).class_means()
    for k in running:
        np.testing.assert_allclose(running[k], read_back[k], rtol=1e-6, atol=1e-12)

    store = open_store(folder)
    labels = torch.from_numpy(store.read_table(["label"])["label"])
    abs_sum = torch.from_numpy(store.read_table(["relevance_abs_sum"])["relevance_abs_sum"])
    relevance = torch.from_numpy(store.relevance[:])

    def sums_of(rows, scale=1.0):
        sums = ClassSums(0)
        sums.add(labels[rows], relevance[rows] * scale, abs_sum[rows], np.asarray(rows))
        return {"label": sums}

    doubled = [sums_of(list(range(6)), 2.0), sums_of(list(range(6, 12)), 2.0)]
    summarize_explanation(folder, "", None, partials=doubled)  # used: nothing read back
    for k, mean in open_store(folder).class_means(normalized=False).items():
        plain = relevance[labels == k].sum(dim=1).mean(dim=0).numpy()
        np.testing.assert_allclose(mean, 2 * plain, rtol=1e-5, atol=1e-8)
    outside = sums_of([0, 1], 2.0)
    outside["label"].indices = [np.array([0, 12])]  # no item 12
    for untrusted in ([sums_of([0, 1, 1], 2.0)], [outside]):  # ignored: all read back
        summarize_explanation(folder, "", None, partials=untrusted)
        for k, mean in open_store(folder).class_means().items():
            np.testing.assert_allclose(mean, read_back[k], rtol=1e-6, atol=1e-12)
    summarize_explanation(folder, "", None, partials=doubled + [sums_of([3], 5.0)])
    for k, mean in open_store(folder).class_means().items():  # the item twice: not trusted
        np.testing.assert_allclose(mean, 2 * read_back[k], rtol=1e-5, atol=1e-12)


def test_model_is_not_changed_and_must_be_in_eval_mode(model, tmp_path):
    before = {k: (v.clone(), v.data_ptr()) for k, v in model.state_dict().items()}
    explain(model, DemoDataset(4), tmp_path / "run")
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key][0]) and value.data_ptr() == before[key][1]
    assert not model.training
    training = load_demo_model().train()
    with pytest.raises(ValueError, match=r"explain_dataset\(model=...\): expected a model in eval"):
        explain(training, DemoDataset(4), tmp_path / "other")


# ---- failures --------------------------------------------------------------------------

class Broken(torch.utils.data.Dataset):
    """Demo items, with a loading error at 1, a wrong shape at 2 and NaN at 5."""

    classes = DemoDataset.classes

    def __init__(self, size: int = 8) -> None:
        self.dataset = DemoDataset(size)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index):
        item = self.dataset[index]
        if index == 1:
            raise OSError("cannot read sample 1")
        if index == 2:
            return item.image[:, :32], item.label
        if index == 5:
            item.image[0, 0, 0] = float("nan")
        return item.image, item.label, item.mask


def test_broken_items_are_recorded_and_skipped(model, tmp_path):
    store = explain(model, Broken(), tmp_path / "run")
    assert store.counts() == {"done": 5, "failed": 3, "pending": 0}
    failures = {index: error for index, _, error in store.failures()}
    assert failures[1].startswith("loading failed: OSError: cannot read sample 1")
    assert "wrong shape: expected an image of shape (3, 64, 64)" in failures[2]
    assert "got (3, 32, 64)" in failures[2]
    assert failures[5] == "non-finite values (NaN or infinity) in the image"
    assert np.isnan(store.relevance[1].astype(np.float32)).all()
    good = explain(model, DemoDataset(8), tmp_path / "good")
    for index in (0, 3, 4, 6, 7):
        np.testing.assert_array_equal(store.output[index], good.output[index])
    assert store.summary["failed"] == 3
    stats = (tmp_path / "run" / "class_stats.csv").read_text().splitlines()
    assert stats[-1].startswith("all,all,5,3,")


def test_collate_fails_non_finite_images_only():
    from funcattr.datasets.items import Loaded, collate

    huge = torch.full((3, 4, 4), 3e38)  # finite, but its sum overflows to infinity
    infinite, zeros = torch.zeros(3, 4, 4), torch.zeros(3, 4, 4)
    infinite[1, 2, 3] = float("inf")
    batch = collate([Loaded(k, image, 0, None, "") for k, image in
                     enumerate([huge, infinite, zeros])])
    assert batch.ok.tolist() == [True, False, True] and batch.images.shape == (2, 3, 4, 4)
    assert batch.errors[1] == "non-finite values (NaN or infinity) in the image"
    assert torch.equal(batch.images[0], huge)


def test_corrupt_image_file_is_recorded(model, tmp_path):
    folder = tmp_path / "images" / "shapes"
    folder.mkdir(parents=True)
    dataset = DemoDataset(3)
    for index in range(3):
        array = (dataset[index].image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        Image.fromarray(array).save(folder / f"{index}.png")
    (folder / "1.png").write_bytes(b"this is no PNG")
    store = explain(model, ImageFolder(tmp_path / "images"), tmp_path / "run")
    assert store.counts() == {"done": 2, "failed": 1, "pending": 0}
    (index, source, error), = store.failures()
    assert (index, source) == (1, str(folder / "1.png"))
    assert store.read_table(["label"])["label"][1] == 0
    assert error.startswith("loading failed: UnidentifiedImageError: cannot identify image")


def test_an_item_failing_in_the_attributor_fails_alone(model, tmp_path):
    dataset = DemoDataset(8)
    bad = float(dataset[6].image[0, 0, 0])

    def fragile(fn, params, input, attr_output_fn):
        if bool((input[:, 0, 0, 0] == bad).any()):
            raise RuntimeError("too bright")
        return funcattr.gradient(fn, params, input, attr_output_fn)

    expected = [i for i in range(8) if float(dataset[i].image[0, 0, 0]) == bad]
    store = explain(model, dataset, tmp_path / "run", attributor=fragile)
    assert store.failures() == [
        (index, f"demo:1:{index}", "explain_dataset fragile failed: RuntimeError: too bright")
        for index in expected
    ]
    assert store.counts()["done"] == 8 - len(expected) >= 6
    good = explain(model, dataset, tmp_path / "good")
    np.testing.assert_array_equal(store.output[:4], good.output[:4])  # a batch without failure
    # the others of item 6's batch are computed one by one: equal up to float rounding
    np.testing.assert_allclose(store.relevance[4:6].astype(np.float32),
                               good.relevance[4:6].astype(np.float32), rtol=1e-2, atol=1e-4)


def test_no_item_loads(model, tmp_path):
    class Nothing(torch.utils.data.Dataset):
        def __len__(self):
            return 3

        def __getitem__(self, index):
            raise ValueError("gone")

    with pytest.raises(ValueError, match="none of the first 3 items loads"):
        explain(model, Nothing(), tmp_path / "run")


# ---- resume, settings, foreign stores, a full disk --------------------------------------

class StopAt(torch.utils.data.Dataset):
    """Demo items; loading item ``index`` interrupts the run (as Ctrl-C would)."""

    classes = DemoDataset.classes

    def __init__(self, size: int, index: int) -> None:
        self.dataset, self.index = DemoDataset(size), index

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, index):
        if index == self.index:
            raise KeyboardInterrupt
        return self.dataset[index]

    def fingerprint(self):
        return self.dataset.fingerprint()


def test_interrupted_run_resumes_to_the_same_result(model, tmp_path):
    with pytest.raises(KeyboardInterrupt):
        explain(model, StopAt(12, 9), tmp_path / "run")
    partial = open_store(tmp_path / "run")
    assert partial.counts() == {"done": 8, "failed": 0, "pending": 4}
    assert partial.summary is None
    resumed = explain(model, DemoDataset(12), tmp_path / "run")
    assert [s["mode"] for s in resumed.sessions] == ["resume", "resume"]
    assert_same_store(resumed, explain(model, DemoDataset(12), tmp_path / "whole"))


def test_changed_settings_are_refused_naming_the_difference(model, tmp_path):
    explain(model, DemoDataset(8), tmp_path / "run")
    with pytest.raises(ValueError, match=r"composite: 'EpsilonPlusFlat\(.*\)' in the store, "
                                         r"'EpsilonAlpha2Beta1\(.*\)' now"):
        explain(model, DemoDataset(8), tmp_path / "run", composite="epsilon_alpha2_beta1")
    with pytest.raises(ValueError, match="seed: 0 in the store, 5 now"):
        explain(model, DemoDataset(8), tmp_path / "run", seed=5)
    with pytest.raises(ValueError, match=r"dataset.size: 8 in the store, 9 now.*mode='overwrite'"):
        explain(model, DemoDataset(9), tmp_path / "run")
    other = load_demo_model()
    with torch.no_grad():
        other.classifier[2].bias.add_(1.0)
    with pytest.raises(ValueError, match=r"model\.sha256: "):
        explain(other, DemoDataset(8), tmp_path / "run")
    store = explain(model, DemoDataset(8), tmp_path / "run", seed=5, mode="overwrite")
    assert store.settings["seed"] == 5 and store.counts()["done"] == 8


def test_a_foreign_store_is_refused(model, tmp_path):
    zarr.open_group(tmp_path / "run" / "store.zarr", mode="w").attrs["x"] = 1
    for mode in ("resume", "overwrite"):
        with pytest.raises(ValueError, match=r"is not a store written by funcattr\.datasets"):
            explain(model, DemoDataset(4), tmp_path / "run", mode=mode)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="expected a folder for the run's store, got a file"):
        explain(model, DemoDataset(4), tmp_path / "file")


def test_full_disk_says_so_and_the_store_stays_resumable(model, tmp_path, monkeypatch):
    original = zarr.AsyncArray.setitem
    calls = {"n": 0}

    async def full_after_a_while(self, selection, value, **kwargs):
        calls["n"] += 1
        if calls["n"] > 25:
            raise OSError(errno.ENOSPC, "No space left on device")
        return await original(self, selection, value, **kwargs)

    monkeypatch.setattr(zarr.AsyncArray, "setitem", full_after_a_while)
    with pytest.raises(StoreFullError, match=r"the disk is full \(No space left on device\).*"
                                             r"resumable"):
        explain(model, DemoDataset(12), tmp_path / "run")
    monkeypatch.setattr(zarr.AsyncArray, "setitem", original)
    assert 0 < open_store(tmp_path / "run").counts()["done"] < 12
    assert_same_store(explain(model, DemoDataset(12), tmp_path / "run"),
                      explain(model, DemoDataset(12), tmp_path / "whole"))


def test_retry_failed_recomputes_failed_items(model, tmp_path):
    explain(model, Broken(), tmp_path / "run")
    assert open_store(tmp_path / "run").counts()["failed"] == 3
    again = explain(model, Broken(), tmp_path / "run")
    assert again.counts()["failed"] == 3 and len(again.sessions) == 2
    retried = explain(model, Broken(), tmp_path / "run", retry_failed=True)
    assert retried.counts() == {"done": 5, "failed": 3, "pending": 0}


# ---- attributors, targets, options -------------------------------------------------------

def test_smooth_grad_noise_is_drawn_per_item(model, images, tmp_path):
    store = explain(model, DemoDataset(8), tmp_path / "run", attributor="smooth_grad",
                    options={"n_iter": 3}, dtype="float32", seed=11)
    fn, params = funcattr.functionalize(model, "epsilon_plus_flat")
    for index in (0, 5):
        x = images[index:index + 1]
        generator = torch.Generator().manual_seed(item_seed(11, index))
        noise = torch.randn((2, *x.shape[1:]), generator=generator, dtype=x.dtype)[:, None]
        target = model(x).argmax(1)
        _, expected = funcattr.smooth_grad(fn, params, x, funcattr.one_hot(target), n_iter=3,
                                           noise=noise)
        np.testing.assert_allclose(store.relevance[index], expected[0].numpy(), rtol=1e-4,
                                   atol=1e-6)
    assert store.settings["options"] == {"n_iter": 3}
    partial = explain(model, DemoDataset(8), tmp_path / "partial",
                      attributor=functools.partial(funcattr.smooth_grad, n_iter=3),
                      dtype="float32", seed=11)
    np.testing.assert_array_equal(partial.relevance[:], store.relevance[:])


@pytest.mark.parametrize("attributor", ["integrated_gradients", "occlusion"])
def test_other_attributors(model, images, tmp_path, attributor):
    options = {"n_iter": 4} if attributor == "integrated_gradients" else {"window": 16,
                                                                          "stride": 16}
    store = explain(model, DemoDataset(4), tmp_path / "run", attributor=attributor,
                    options=options, dtype="float32", composite=None)
    fn, params = funcattr.functionalize(model)
    function = getattr(funcattr, attributor)
    target = model(images[:4]).argmax(1)
    _, expected = function(fn, params, images[:4],
                           funcattr.one_hot(target, times_output=attributor == "occlusion"),
                           **options)
    np.testing.assert_allclose(store.relevance[:], expected.numpy(), rtol=1e-5, atol=1e-6)
    assert store.settings["times_output"] is (attributor == "occlusion")


def test_targets_label_and_fixed_class(model, tmp_path):
    store = explain(model, DemoDataset(8), tmp_path / "label", target="label")
    table = store.read_table()
    np.testing.assert_array_equal(table["target"], table["label"])
    fixed = explain(model, DemoDataset(8), tmp_path / "fixed", target=2)
    assert set(fixed.read_table(["target"])["target"]) == {2}
    np.testing.assert_array_equal(fixed.read_table(["score"])["score"], fixed.output[:, 2])
    unlabelled = explain(model, [t.image for t in DemoDataset(4).__getitems__(range(4))],
                         tmp_path / "none", target="label")
    assert {e for _, _, e in unlabelled.failures()} == {"no label, but target='label'"}


def test_bad_options_are_refused_before_any_work(model, tmp_path):
    cases = [
        ({"attributor": "smoothgrad"}, ValueError, "expected one of"),
        ({"attributor": 3}, TypeError, "expected a pure attributor"),
        ({"attributor": "smooth_grad", "options": {"n_iters": 3}},
         ValueError, r"smooth_grad takes no option 'n_iters'"),
        ({"attributor": "smooth_grad", "options": {"generator": 1}},
         ValueError, "drawn per item from seed"),
        ({"target": "pred"}, ValueError, "expected 'prediction', 'label' or a class index"),
        ({"dtype": "int8"}, ValueError, "expected one of"),
        ({"batch_size": 0}, ValueError, r"batch_size=0\): expected an int >= 1"),
        ({"mode": "append"}, ValueError, r"mode='append'\): expected one of"),
        ({"metrics": ("max_sensitivity",)}, ValueError, "re-explain perturbed inputs"),
    ]
    for options, kind, message in cases:
        with pytest.raises(kind, match=message):
            explain(model, DemoDataset(4), tmp_path / "run", **options)
    assert not (tmp_path / "run").exists()
    with pytest.raises(ValueError, match="need object masks"):
        evaluate_dataset(model, [t.image for t in DemoDataset(2).__getitems__(range(2))],
                         tmp_path / "run")


def test_a_callable_object_as_attributor_resumes(model, tmp_path):
    class Scaled:
        def __call__(self, fn, params, input, attr_output_fn):
            output, relevance = funcattr.gradient(fn, params, input, attr_output_fn)
            return output, 2 * relevance

    explain(model, DemoDataset(4), tmp_path / "run", attributor=Scaled())
    store = explain(model, DemoDataset(4), tmp_path / "run", attributor=Scaled())
    assert len(store.sessions) == 2 and " at 0x" not in store.settings["attributor"]
    assert store.settings["attributor"].startswith("test_datasets.")


def test_float16_overflow_fails_the_item(model, tmp_path):
    def huge(fn, params, input, attr_output_fn):
        output, relevance = funcattr.gradient(fn, params, input, attr_output_fn)
        return output, relevance * 1e9

    store = explain(model, DemoDataset(4), tmp_path / "run", attributor=huge)
    assert store.counts()["failed"] == 4
    assert "exceeds the float16 range" in store.failures()[0][2]
    assert explain(model, DemoDataset(4), tmp_path / "f32", attributor=huge,
                   dtype="float32").counts()["done"] == 4


# ---- metrics ------------------------------------------------------------------------------

def test_evaluate_dataset_equals_the_metrics_on_each_batch(model, images, tmp_path):
    store = evaluate_dataset(model, DemoDataset(8), tmp_path / "run",
                             composite="epsilon_plus_flat", batch_size=BATCH, progress=False,
                             metrics=("pixel_flipping", "relevance_mass_accuracy"))
    with pytest.raises(KeyError, match="did not keep the relevance"):
        store.relevance  # noqa: B018
    fn, params = funcattr.functionalize(model, "epsilon_plus_flat")
    masks = torch.stack([DemoDataset(8)[i].mask for i in range(8)])
    metrics = store.metrics
    for start in (0, 4):
        x = images[start:start + 4]
        output, relevance = funcattr.gradient(fn, params, x, funcattr.one_hot(None))
        target = output.argmax(1)
        curves = pixel_flipping(model, x, target, relevance, regions_per_step=128)
        np.testing.assert_allclose(metrics["pixel_flipping_morf_auc"][start:start + 4],
                                   curves.auc("morf").numpy(), rtol=1e-6)
        np.testing.assert_allclose(metrics["pixel_flipping_morf_curve"][start:start + 4],
                                   curves.curves["morf"].numpy(), rtol=1e-6)
        np.testing.assert_allclose(metrics["relevance_mass_accuracy"][start:start + 4],
                                   relevance_mass_accuracy(relevance, masks[start:start + 4])
                                   .numpy(), rtol=1e-6)
    means = store.summary["metrics"]
    assert means["pixel_flipping_difference"] == pytest.approx(
        float(np.mean(metrics["pixel_flipping_difference"][:])))
    lines = (tmp_path / "run" / "metrics.csv").read_text().splitlines()
    assert lines[0] == "column,higher_is_better,mean,std,items"
    assert any(line.startswith("relevance_mass_accuracy,True,") for line in lines)


# ---- progress -----------------------------------------------------------------------------

def test_progress_lines_when_not_a_terminal(model, tmp_path, monkeypatch):
    stream = io.StringIO()
    monkeypatch.setattr("sys.stderr", stream)
    explain(model, DemoDataset(8), tmp_path / "run", progress=True)
    last = stream.getvalue().splitlines()[-1]
    assert last.startswith("explain_dataset gradient: 8/8 items (100%)")
    assert not (tmp_path / "run" / "progress").exists()


# ---- the machinery for other jobs (concepts) ---------------------------------------------

class ChannelMeans:
    """A job of its own: each item's mean per channel, in a group beside the explanation."""

    owner = "channel_means"
    label = "channel means"

    def __init__(self, scale: float = 1.0) -> None:
        self.scale = scale

    def settings(self):
        return {"job": "channel_means", "scale": self.scale}

    def setup(self, device):
        self.device = device

    def dims(self, name, shape):
        return ("channel",) if name == "means" else None

    def __call__(self, batch):
        return {"means": batch.images.mean(dim=(2, 3)) * self.scale}

    def summarize(self, folder, group, dataset):
        return {"items": len(dataset)}


def test_a_job_of_its_own_in_a_group_of_the_store(model, tmp_path):
    from funcattr.datasets import run_job

    explain(model, DemoDataset(8), tmp_path / "run")
    run_job(ChannelMeans(), DemoDataset(8), tmp_path / "run", group="stats/channels",
            batch_size=3, progress=False)
    stats = open_store(tmp_path / "run", group="stats/channels")
    images = torch.stack([DemoDataset(8)[i].image for i in range(8)])
    np.testing.assert_allclose(stats.group["means"][:], images.mean(dim=(2, 3)).numpy())
    assert stats.group["means"].chunks == (3, 3)
    assert stats.summary == {"items": 8} and stats.counts()["done"] == 8
    assert open_store(tmp_path / "run").counts()["done"] == 8  # the explanation is intact
    with pytest.raises(ValueError, match=r"scale: 1\.0 in the store, 2\.0 now"):
        run_job(ChannelMeans(2.0), DemoDataset(8), tmp_path / "run", group="stats/channels",
                progress=False)
    run_job(ChannelMeans(2.0), DemoDataset(8), tmp_path / "run", group="stats/channels",
            mode="overwrite", progress=False)
    assert open_store(tmp_path / "run").counts()["done"] == 8
