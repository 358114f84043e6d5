"""Relevance maximisation over a dataset (``funcattr.datasets.relevance_maximization``).

Against zennit-crp 0.6.0's ``FeatureVisualization`` in float64: the top-40 samples per channel
by relevance and by activation (values, samples, positions of the peak) on a small labelled
dataset, for a torchvision VGG (batch norms merged) and a ResNet (canonized); the reference
patches against ``get_max_reference(..., rf=True)`` with ``vis_opaque_img``'s crop. Then the
dataset machinery: a resumed run equals an uninterrupted one, ``torchrun`` with two processes
equals one, ``n_top`` can change without recomputing, and bad arguments.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
import zennit.composites as zc
import zennit.torchvision as ztv
from crp.attribution import CondAttribution
from crp.concepts import ChannelConcept
from crp.helper import load_maximization, max_norm
from crp.image import get_crop_range
from crp.visualization import FeatureVisualization
from helpers import assert_close, assert_unchanged, snapshot
from test_canonizers import _one_thread, randomise  # noqa: F401  (_one_thread: autouse)
from test_datasets import StopAt
from test_datasets_processes import run as run_worker
from torch import nn
from torchvision.models.resnet import BasicBlock, ResNet
from torchvision.models.vgg import VGG, make_layers
from torchvision.transforms.functional import gaussian_blur as tv_gaussian_blur

import funcattr
from funcattr import composites as fc
from funcattr.concepts import gaussian_blur, neuron_heatmaps, reference_box
from funcattr.datasets import (
    DemoDataset,
    open_concept_store,
    relevance_maximization,
)
from funcattr.demo import load_demo_model
from funcattr.torchvision import ResNetCanonizer, VGGCanonizer

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning:crp.*")

WORKER = Path(__file__).with_name("concepts_worker.py")
RTOL = 1e-10
CRP_TOP = 40  # zennit-crp keeps 40 samples per channel


class Labelled(torch.utils.data.Dataset):
    """Seeded float64 images with labels, as ``(image, label)`` pairs."""

    def __init__(self, size: int, side: int, classes: int, seed: int = 3) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.images = torch.randn(size, 3, side, side, generator=generator, dtype=torch.float64)
        self.labels = torch.randint(classes, (size,), generator=generator).tolist()

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        return self.images[index], self.labels[index]

    def fingerprint(self) -> str:
        return f"labelled-{len(self)}"


def small_vgg() -> nn.Module:
    torch.manual_seed(0)
    model = VGG(make_layers([8, "M", 16, 16, "M", 16], batch_norm=True), init_weights=False)
    model.classifier = nn.Sequential(nn.Linear(16 * 7 * 7, 12), nn.ReLU(True), nn.Dropout(),
                                     nn.Linear(12, 5))
    return randomise(model, 0).double()


def small_resnet() -> nn.Module:
    torch.manual_seed(0)
    return randomise(ResNet(BasicBlock, [1, 1, 1, 1], num_classes=5), 0).double()


CASES = {  # model, side, layers, zennit composite, funcattr composite
    "vgg": (small_vgg, 32, ["features.11", "features.4", "classifier.0"],
            lambda: zc.EpsilonPlusFlat(canonizers=[ztv.VGGCanonizer()]),
            lambda: fc.EpsilonPlusFlat(canonizers=[VGGCanonizer()])),
    "resnet": (small_resnet, 40, ["layer3", "layer4.0.conv2", "layer2.0.bn1"],
               lambda: zc.EpsilonGammaBox(low=-3.0, high=3.0,
                                          canonizers=[ztv.ResNetCanonizer()]),
               lambda: fc.EpsilonGammaBox(low=-3.0, high=3.0, canonizers=[ResNetCanonizer()])),
}


def crp_maximization(model, composite, dataset, layers, path, max_target="sum"):
    """zennit-crp's relevance and activation maximisation (on a copy of the model)."""
    attribution = CondAttribution(copy.deepcopy(model), no_param_grad=True)
    visualization = FeatureVisualization(attribution, dataset,
                                         {name: ChannelConcept() for name in layers},
                                         max_target=max_target, path=str(path))
    visualization.run(composite, 0, len(dataset), batch_size=16)
    return visualization


def assert_same_top(ours, theirs_path, layer, tolerance):
    """Same values (best first), and same samples and positions wherever values differ from
    their neighbours (equal values may come in either order)."""
    samples, values, positions = (np.array(a).T for a in load_maximization(theirs_path,
                                                                             layer))
    n = min(values.shape[1], ours.values.shape[1])
    ours_values = ours.values[:, :n].numpy()
    assert_close(torch.from_numpy(ours_values), torch.from_numpy(values[:, :n]), rtol=RTOL,
                 msg=layer)
    gap = np.diff(values[:, :n], axis=1)
    distinct = np.ones_like(values[:, :n], dtype=bool)
    distinct[:, 1:] &= np.abs(gap) > tolerance
    distinct[:, :-1] &= np.abs(gap) > tolerance
    assert distinct.sum() >= n, "a comparison that can fail"
    np.testing.assert_array_equal(ours.samples[:, :n].numpy()[distinct], samples[:, :n][distinct],
                                  err_msg=layer)
    np.testing.assert_array_equal(ours.positions[:, :n].numpy()[distinct],
                                  positions[:, :n][distinct], err_msg=layer)


@pytest.mark.parametrize("case", sorted(CASES))
def test_top_samples_equal_crp_feature_visualization(case, tmp_path):
    factory, side, layers, zennit_composite, funcattr_composite = CASES[case]
    model = factory().eval()
    dataset = Labelled(52, side, 5)
    visualization = crp_maximization(model, zennit_composite(), dataset, layers,
                                     tmp_path / "crp")
    run = relevance_maximization(model, dataset, tmp_path / "ours", layers=layers,
                                 composite=funcattr_composite(), batch_size=12,
                                 n_top=CRP_TOP, progress=False)
    for layer in layers:
        for by, path in (("relevance", visualization.RelMax.PATH),
                         ("activation", visualization.ActMax.PATH)):
            table = run.top(layer, by)
            scale = float(table.values[table.samples >= 0].abs().max())
            assert_same_top(table, path, layer, 1e-9 * scale)


def test_max_target_max_equals_crp(tmp_path):
    factory, side, layers, zennit_composite, funcattr_composite = CASES["vgg"]
    model = factory().eval()
    dataset = Labelled(44, side, 5, seed=4)
    visualization = crp_maximization(model, zennit_composite(), dataset, layers[:1],
                                     tmp_path / "crp", max_target="max")
    run = relevance_maximization(model, dataset, tmp_path / "ours", layers=layers[:1],
                                 composite=funcattr_composite(), max_target="max",
                                 progress=False)
    table = run.top(layers[0])
    assert_same_top(table, visualization.RelMax.PATH, layers[0],
                    1e-9 * float(table.values.abs().max()))


@pytest.mark.parametrize(("case", "layer"), [("vgg", "features.10"), ("resnet", "layer3")])
def test_reference_patches_equal_crp(case, layer, tmp_path):
    """The neuron heatmaps and crops of ``get_max_reference(rf=True)`` with
    ``vis_opaque_img``'s crop range. zennit-crp 0.6 on Zennit 1.0 cannot start a backward pass
    at a layer that has a rule (Zennit's hook finds no stored output gradient: KeyError), so
    the layers here have none (a max pooling, a block)."""
    factory, side, _, zennit_composite, funcattr_composite = CASES[case]
    model = factory().eval()
    dataset = Labelled(20, side, 5)
    visualization = crp_maximization(model, zennit_composite(), dataset, [layer],
                                     tmp_path / "crp")
    run = relevance_maximization(model, dataset, tmp_path / "ours", layers=[layer],
                                 composite=funcattr_composite(), progress=False)
    fn, params = funcattr.functionalize(model, funcattr_composite())
    compared = 0
    live = run.top(layer).values[:, 0].argsort(descending=True)[:3].tolist()
    for channel in [*live, 0]:  # the most relevant channels, and one that may be dead
        expected = visualization.get_max_reference([channel], layer, "relevance", (0, 6),
                                                   composite=zennit_composite(), rf=True,
                                                   plot_fn=None)[channel]
        _, heatmaps = expected
        patches = run.reference_patches(fn, params, dataset, layer, channel, n=6)
        assert [p.sample for p in patches] == run.reference_samples(layer, channel, n=6)
        positions = torch.tensor([p.position for p in patches])
        x = torch.stack([dataset[p.sample][0] for p in patches])
        ours = neuron_heatmaps(fn, params, x, layer, channel, positions).sum(1)
        compared += float(heatmaps.abs().max()) > 0  # a dead channel has zero heatmaps
        assert_close(ours, heatmaps, rtol=RTOL)
        for patch, image, heatmap in zip(patches, x, heatmaps):
            blurred = max_norm(tv_gaussian_blur(heatmap[None], kernel_size=19)[0])
            top, bottom, left, right = (int(v) for v in get_crop_range(blurred, 0.1))
            if bottom > top and right > left:
                assert patch.box == (top, bottom, left, right)
            else:
                assert patch.box == (0, side, 0, side)
            assert torch.equal(patch.image, image[:, patch.box.top:patch.box.bottom,
                                                  patch.box.left:patch.box.right])
    assert compared >= 3


@pytest.mark.parametrize("kernel_size", [1, 5, 19])
def test_gaussian_blur_equals_torchvision(kernel_size):
    maps = torch.randn(3, 2, 24, 31, generator=torch.Generator().manual_seed(0),
                       dtype=torch.float64)
    assert_close(gaussian_blur(maps, kernel_size), tv_gaussian_blur(maps, kernel_size),
                 rtol=1e-12)


def test_reference_box_of_an_empty_heatmap_is_the_whole_image():
    assert reference_box(torch.zeros(30, 20)) == (0, 30, 0, 20)
    heatmap = torch.zeros(40, 40)
    heatmap[10, 12] = 1.0
    box = reference_box(heatmap, crop_th=0.5)
    assert box.top <= 10 < box.bottom + 1 and box.left <= 12 < box.right + 1


# --------------------------------------------------------------------------------------------
# The dataset machinery: resume, torchrun, n_top, bad arguments
# --------------------------------------------------------------------------------------------

DEMO_LAYERS = ["features.15", "features.10"]


def demo_run(dataset, path, **options):
    model = load_demo_model()
    return relevance_maximization(model, dataset, path, layers=DEMO_LAYERS,
                                  composite=fc.EpsilonPlusFlat(),
                                  canonizers=funcattr.canonizers_for(model), batch_size=4,
                                  n_top=6, progress=False, **options)


def assert_same_run(a, b):
    assert a.store.counts() == b.store.counts()
    for layer in DEMO_LAYERS:
        for by in ("relevance", "activation"):
            np.testing.assert_array_equal(a.scores(layer, by)[:], b.scores(layer, by)[:])
            np.testing.assert_array_equal(a.positions(layer, by)[:], b.positions(layer, by)[:])
            for x, y in zip(a.top(layer, by), b.top(layer, by)):
                assert torch.equal(x, y)


def test_interrupted_run_resumes_to_the_same_result(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        demo_run(StopAt(14, 9), tmp_path / "run")
    partial = open_concept_store(tmp_path / "run")
    assert partial.store.counts() == {"done": 8, "failed": 0, "pending": 6}
    assert partial.n_top == 0
    resumed = demo_run(DemoDataset(14), tmp_path / "run")
    assert [s["mode"] for s in resumed.store.sessions] == ["resume", "resume"]
    assert_same_run(resumed, demo_run(DemoDataset(14), tmp_path / "whole"))


def test_top_table_is_the_best_of_the_stored_scores(tmp_path):
    run = demo_run(DemoDataset(14), tmp_path / "run")
    for layer in DEMO_LAYERS:
        scores = torch.from_numpy(run.scores(layer)[:])
        table = run.top(layer)
        expected = scores.T.sort(dim=1, descending=True, stable=True)
        assert torch.equal(table.values, expected.values[:, :6])
        assert torch.equal(table.samples, expected.indices[:, :6])
        positions = torch.from_numpy(run.positions(layer)[:]).T
        assert torch.equal(table.positions, positions.gather(1, table.samples))


def test_another_n_top_rewrites_only_the_summary(tmp_path):
    run = demo_run(DemoDataset(10), tmp_path / "run")
    again = relevance_maximization(load_demo_model(), DemoDataset(10), tmp_path / "run",
                                   layers=DEMO_LAYERS, composite=fc.EpsilonPlusFlat(),
                                   canonizers=funcattr.canonizers_for(load_demo_model()),
                                   batch_size=4, n_top=3, progress=False)
    assert again.n_top == 3
    for by in ("relevance", "activation"):
        first, second = run.top("features.15", by), again.top("features.15", by)
        assert torch.equal(first.samples[:, :3], second.samples)


def test_beside_an_explanation_in_the_same_store(tmp_path):
    explained = funcattr.datasets.explain_dataset(load_demo_model(), DemoDataset(10), tmp_path,
                                                  progress=False)
    run = demo_run(DemoDataset(10), tmp_path)
    assert run.store.counts()["done"] == 10 and run.n_top == 6
    again = funcattr.datasets.explain_dataset(load_demo_model(), DemoDataset(10), tmp_path,
                                              progress=False)
    assert again.counts() == explained.counts() == {"done": 10, "failed": 0, "pending": 0}
    assert open_concept_store(tmp_path).layers == DEMO_LAYERS
    with pytest.raises(ValueError, match="relevance_maximization run"):
        open_concept_store(tmp_path, group="")


def test_torchrun_two_ranks_equals_one_process(tmp_path):
    run_worker(tmp_path / "one", "--size", "18", worker=WORKER)
    run_worker(tmp_path / "two", "--size", "18", ranks=2, worker=WORKER)
    one, two = open_concept_store(tmp_path / "one"), open_concept_store(tmp_path / "two")
    assert [s["world_size"] for s in two.store.sessions] == [2]
    assert one.store.counts() == {"done": 18, "failed": 0, "pending": 0}
    assert_same_run(one, two)
    assert one.store.summary == two.store.summary


def test_bad_arguments(tmp_path):
    model = load_demo_model()
    with pytest.raises(ValueError, match=r"relevance_maximization\(layers=\[\]\): expected"):
        relevance_maximization(model, DemoDataset(4), tmp_path, layers=[])
    with pytest.raises(ValueError, match=r"'features\.99'.*features\.9"):
        relevance_maximization(model, DemoDataset(4), tmp_path, layers=["features.99"])
    with pytest.raises(ValueError, match=r"n_top=0"):
        relevance_maximization(model, DemoDataset(4), tmp_path, layers="features.15", n_top=0)
    with pytest.raises(ValueError, match=r"target='labels'"):
        relevance_maximization(model, DemoDataset(4), tmp_path, layers="features.15",
                               target="labels")
    model.train()
    with pytest.raises(ValueError, match="eval mode"):
        relevance_maximization(model, DemoDataset(4), tmp_path, layers="features.15")
    assert not (tmp_path / "store.zarr").exists()


def test_unlabelled_items_fail_alone_with_target_label(tmp_path):
    class Half(torch.utils.data.Dataset):
        def __init__(self):
            self.dataset = DemoDataset(8)

        def __len__(self):
            return 8

        def __getitem__(self, index):
            item = self.dataset[index]
            return (item.image,) if index % 2 else (item.image, item.label)

        def fingerprint(self):
            return "half"

    model = load_demo_model()
    run = relevance_maximization(model, Half(), tmp_path, layers="features.15",
                                 canonizers=funcattr.canonizers_for(model), progress=False)
    assert run.store.counts() == {"done": 4, "failed": 4, "pending": 0}
    assert set(run.reference_samples("features.15", 0)) == {0, 2, 4, 6}
    assert "no label" in run.store.failures()[0][2]


def test_model_unchanged_and_tables_independent_of_the_batch_size(tmp_path):
    model = load_demo_model()
    before = snapshot(model)
    runs = [relevance_maximization(model, DemoDataset(14), tmp_path / str(size),
                                   layers=DEMO_LAYERS, composite=fc.EpsilonPlusFlat(),
                                   canonizers=funcattr.canonizers_for(model), batch_size=size,
                                   n_top=5, progress=False) for size in (3, 14)]
    assert_unchanged(model, before)
    for layer in DEMO_LAYERS:
        for by in ("relevance", "activation"):
            first, second = runs[0].top(layer, by), runs[1].top(layer, by)
            assert_close(first.values, second.values, rtol=1e-5)
            assert torch.equal(first.samples, second.samples)
            assert torch.equal(first.positions, second.positions)


# --------------------------------------------------------------------------------------------
# Neuron heatmaps
# --------------------------------------------------------------------------------------------

def _demo_functional():
    model = load_demo_model().double()
    return funcattr.functionalize(model, fc.EpsilonPlusFlat(),
                                  funcattr.canonizers_for(model))


def test_neuron_heatmaps_of_all_neurons_add_up_to_the_layer_started_heatmap():
    """Linearity: the heatmaps of every neuron of a layer (each from its own activation) sum to
    the heatmap started from the whole activation, and one sample's result does not depend on
    the others in the batch."""
    fn, params = _demo_functional()
    x = torch.stack([DemoDataset(3)[i].image for i in range(3)]).double()
    layer = "features.10"
    activation = {}
    fn.tapped(params, x, {layer: lambda out: activation.setdefault("a", out) * 1})
    channels, height, width = activation["a"].shape[1:]
    total = torch.zeros_like(x)
    for channel in range(0, channels, 7):
        for position in range(height * width):
            total += neuron_heatmaps(fn, params, x, layer, channel, position)
    seed = torch.zeros_like(activation["a"])
    seed[:, ::7] = activation["a"][:, ::7].detach()
    leaf = x.clone().requires_grad_(True)
    out = {}
    fn.tapped(params, leaf, {layer: lambda o: out.setdefault("a", o)})
    (expected,) = torch.autograd.grad(out["a"], leaf, seed)
    assert float(expected.abs().max()) > 0
    assert_close(total, expected, rtol=1e-10)
    single = neuron_heatmaps(fn, params, x[1:2], layer, [3], [20])
    assert_close(neuron_heatmaps(fn, params, x, layer, [0, 3, 0], [0, 20, 0])[1:2], single,
                 rtol=1e-10)


@pytest.mark.parametrize(("channels", "positions", "message"), [
    ([200], [0], r"neuron_heatmaps\(channels=\[200\]\): expected indices in \[0, 127\]"),
    ([0], [64], r"neuron_heatmaps\(positions=\[64\]\): expected indices in \[0, 63\]"),
    ([0, 1], [0], r"expected one int per sample \(1\)"),
    ([0.5], [0], r"expected one int per sample"),
])
def test_neuron_heatmaps_bad_indices(channels, positions, message):
    fn, params = _demo_functional()
    x = DemoDataset(1)[0].image[None].double()
    with pytest.raises(ValueError, match=message):
        neuron_heatmaps(fn, params, x, "features.15", channels, positions)


def test_reference_box_bad_arguments():
    with pytest.raises(ValueError, match=r"reference_box\(crop_th=1.0\): expected a float in "
                                         r"\[0, 1\)"):
        reference_box(torch.ones(30, 30), crop_th=1.0)
    with pytest.raises(ValueError, match=r"reference_box\(heatmap=\(3, 30, 30\)\)"):
        reference_box(torch.ones(3, 30, 30))
    with pytest.raises(ValueError, match=r"gaussian_blur\(kernel_size=4\): expected an odd"):
        gaussian_blur(torch.ones(30, 30), 4)
    with pytest.raises(ValueError, match=r"larger than kernel_size // 2 = 9"):
        gaussian_blur(torch.ones(8, 30), 19)
