"""Tests of the built-in demo: procedural dataset, shipped model and samples, training script."""

import json
from importlib import resources

import pytest
import torch

from funcattr.demo import (
    CLASSES,
    IMAGE_SIZE,
    NUM_CLASSES,
    DemoNet,
    load_demo_model,
    load_demo_samples,
    load_sample_index,
    make_dataset,
    sample,
)
from funcattr.demo import train as demo_train

# A dataset seed used by neither the training stream nor the test split of the training script.
FRESH_SEED = 0xD3A0


@pytest.fixture(scope="module")
def fresh_split() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return make_dataset(500, FRESH_SEED)


@pytest.fixture(scope="module")
def demo_model() -> DemoNet:
    return load_demo_model()


def test_dataset_shapes_and_ranges(fresh_split):
    images, labels, masks = fresh_split
    assert images.shape == (500, 3, IMAGE_SIZE, IMAGE_SIZE)
    assert images.dtype == torch.float32
    assert labels.shape == (500,) and labels.dtype == torch.int64
    assert masks.shape == (500, IMAGE_SIZE, IMAGE_SIZE) and masks.dtype == torch.bool
    assert images.min() >= 0.0 and images.max() <= 1.0
    # quantised to 8 bit, so that PNG files store the images exactly
    assert torch.equal(torch.round(images * 255) / 255, images)
    assert labels.min() >= 0 and labels.max() < NUM_CLASSES == len(CLASSES)


def test_dataset_is_deterministic(fresh_split):
    images, labels, masks = make_dataset(40, FRESH_SEED)
    again = make_dataset(40, FRESH_SEED)
    assert torch.equal(images, again[0])
    assert torch.equal(labels, again[1])
    assert torch.equal(masks, again[2])
    # independent of the number of samples and of chunking: prefix of the larger split
    assert torch.equal(images, fresh_split[0][:40])
    assert torch.equal(masks, fresh_split[2][:40])


def test_dataset_pieces_and_single_samples(fresh_split):
    images, labels, masks = fresh_split
    piece = make_dataset(7, FRESH_SEED, start=123)
    assert torch.equal(piece[0], images[123:130])
    assert torch.equal(piece[1], labels[123:130])
    assert torch.equal(piece[2], masks[123:130])
    image, label, mask = sample(321, FRESH_SEED)
    assert torch.equal(image, images[321])
    assert label == int(labels[321])
    assert torch.equal(mask, masks[321])


def test_different_seeds_differ():
    first = make_dataset(20, 1)
    second = make_dataset(20, 2)
    assert not torch.equal(first[0], second[0])
    assert not torch.equal(first[2], second[2])


def test_dtype_agnostic():
    previous = torch.get_default_dtype()
    try:
        torch.set_default_dtype(torch.float32)
        in_float32 = make_dataset(8, FRESH_SEED)
    finally:
        torch.set_default_dtype(previous)
    in_float64 = make_dataset(8, FRESH_SEED)
    for a, b in zip(in_float32, in_float64, strict=True):
        assert torch.equal(a, b)


def test_classes_are_balanced(fresh_split):
    _, labels, _ = fresh_split
    counts = torch.bincount(labels, minlength=NUM_CLASSES)
    expected = labels.numel() / NUM_CLASSES
    assert counts.min() >= 0.7 * expected
    assert counts.max() <= 1.3 * expected


def test_masks_match_drawn_objects(fresh_split):
    images, labels, masks = fresh_split
    background, background_labels, background_masks = make_dataset(
        500, FRESH_SEED, draw_objects=False
    )
    assert torch.equal(labels, background_labels)
    assert torch.equal(masks, background_masks)
    area = masks.sum(dim=(1, 2))
    assert area.min() >= 50  # every object is clearly visible
    assert area.max() <= 0.4 * IMAGE_SIZE**2
    outside = ~masks[:, None].expand_as(images)
    # the object changes exactly the pixels of its mask ...
    assert torch.equal(images[outside], background[outside])
    # ... and stands out from the background it covers
    difference = (images - background).abs().amax(dim=1)  # [N, H, W]
    mean_difference = (difference * masks).sum(dim=(1, 2)) / area
    assert mean_difference.min() > 0.15
    assert (difference[masks] > 0.1).double().mean() > 0.9
    # the object is one colour in a 2-px checkerboard of full and 0.55 brightness (up to
    # sensor noise and clipping)
    rows, cols = torch.meshgrid(torch.arange(IMAGE_SIZE), torch.arange(IMAGE_SIZE),
                                indexing="ij")
    bright = ((rows // 2 + cols // 2) % 2).bool()
    for image, mask in zip(images[:50], masks[:50], strict=True):
        full, dark = image[:, mask & bright], image[:, mask & ~bright]
        for pixels in (full, dark):
            spread = (pixels - pixels.mean(dim=1, keepdim=True)).abs().amax()
            assert spread <= 0.09
        torch.testing.assert_close(dark.mean(dim=1), 0.55 * full.mean(dim=1), rtol=0, atol=0.05)


def test_objects_stay_inside_the_image(fresh_split):
    _, _, masks = fresh_split
    border = masks[:, 0].any() or masks[:, -1].any()
    border = border or masks[:, :, 0].any() or masks[:, :, -1].any()
    assert not border


def test_model_structure():
    model = DemoNet()
    assert sum(parameter.numel() for parameter in model.parameters()) < 200_000
    allowed = (
        torch.nn.Sequential,
        torch.nn.Conv2d,
        torch.nn.BatchNorm2d,
        torch.nn.ReLU,
        torch.nn.MaxPool2d,
        torch.nn.AdaptiveAvgPool2d,
        torch.nn.Flatten,
        torch.nn.Linear,
    )
    children = [module for module in model.modules() if module is not model]
    assert all(isinstance(module, allowed) for module in children)
    assert isinstance(children[-1], torch.nn.Linear)
    assert children[-1].out_features == NUM_CLASSES
    logits = model(torch.rand(2, 3, IMAGE_SIZE, IMAGE_SIZE))
    assert logits.shape == (2, NUM_CLASSES)
    assert logits.dtype == torch.get_default_dtype()


def test_weights_file_is_small():
    path = resources.files("funcattr.demo").joinpath("weights.pt")
    with path.open("rb") as file:
        assert len(file.read()) < 1_000_000


def test_shipped_model_loads(demo_model):
    assert not demo_model.training
    assert all(parameter.dtype == torch.float32 for parameter in demo_model.parameters())
    as_float64 = load_demo_model(dtype=torch.float64)
    assert all(parameter.dtype == torch.float64 for parameter in as_float64.parameters())
    x = torch.rand(3, 3, IMAGE_SIZE, IMAGE_SIZE, dtype=torch.float32)
    with torch.no_grad():
        torch.testing.assert_close(
            as_float64(x.double()), demo_model(x).double(), rtol=1e-4, atol=1e-4
        )


def test_shipped_model_accuracy(demo_model, fresh_split):
    images, labels, _ = fresh_split
    accuracy = demo_train.evaluate(demo_model, images, labels)
    assert accuracy >= 0.9


def test_shipped_samples_match_index(demo_model):
    index = load_sample_index()
    images, labels, masks, names = load_demo_samples()
    records = index["samples"]
    assert tuple(index["classes"]) == CLASSES
    assert len(records) == len(names) == images.shape[0] == labels.shape[0] == masks.shape[0]
    assert images.shape[1:] == (3, IMAGE_SIZE, IMAGE_SIZE) and images.dtype == torch.float32
    assert masks.dtype == torch.bool and masks.any(dim=(1, 2)).all()
    assert set(labels.tolist()) == set(range(NUM_CLASSES))
    for row, record in enumerate(records):
        assert names[row] == record["name"]
        assert record["class"] == CLASSES[record["label"]] == CLASSES[int(labels[row])]
        # the files hold exactly the generated test-split samples
        image, label, mask = sample(record["index"], index["seed"])
        assert label == record["label"]
        assert torch.equal(images[row], image)
        assert torch.equal(masks[row], mask)
    with torch.no_grad():
        predictions = demo_model(images).argmax(dim=1)
    assert torch.equal(predictions, labels)


def test_sample_files_exist():
    folder = resources.files("funcattr.demo").joinpath("samples")
    index = json.loads(folder.joinpath("index.json").read_text(encoding="utf-8"))
    for record in index["samples"]:
        assert folder.joinpath(record["file"]).is_file()
        assert folder.joinpath(record["mask"]).is_file()


def _tiny_training() -> tuple[DemoNet, list[float]]:
    with demo_train.deterministic(threads=None):
        return demo_train.train(epochs=2, samples_per_epoch=24, batch_size=8, seed=3)


def test_training_runs_and_is_deterministic():
    previous_state = torch.random.get_rng_state()
    model, losses = _tiny_training()
    # the global random state and the determinism setting are left untouched
    assert torch.equal(torch.random.get_rng_state(), previous_state)
    assert not torch.are_deterministic_algorithms_enabled()
    assert len(losses) == 2
    assert all(torch.isfinite(torch.tensor(loss)) for loss in losses)
    assert not model.training
    untrained = DemoNet(dtype=torch.float32)
    assert all(parameter.dtype == torch.float32 for parameter in model.parameters())
    assert set(model.state_dict()) == set(untrained.state_dict())

    again, again_losses = _tiny_training()
    assert losses == again_losses
    for key, value in model.state_dict().items():
        assert torch.equal(value, again.state_dict()[key]), key


def test_training_rejects_empty_schedule():
    with pytest.raises(ValueError, match="full batch"):
        demo_train.train(epochs=1, samples_per_epoch=4, batch_size=8)


def test_sample_selection_and_writing(tmp_path):
    images, labels, masks = make_dataset(60, FRESH_SEED)
    predictions = labels.clone()
    predictions[0] = (labels[0] + 1) % NUM_CLASSES  # a misclassified sample is skipped
    indices = demo_train.select_samples(predictions, labels, per_class=2)
    assert 0 not in indices
    assert [int(labels[i]) for i in indices] == sorted(int(labels[i]) for i in indices)
    path = demo_train.write_samples(
        tmp_path, images, labels, masks, indices, seed=FRESH_SEED, extra={"note": 1}
    )
    index = json.loads(path.read_text(encoding="utf-8"))
    assert index["seed"] == FRESH_SEED and index["note"] == 1
    assert [record["index"] for record in index["samples"]] == indices
    assert len(list(tmp_path.glob("*.png"))) == 2 * len(indices)
