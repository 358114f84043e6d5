"""Concepts against zennit-crp 0.6.0 (on Zennit 1.0.0), in float64.

Conditional heatmaps (CRP's ``heatmap``: the input relevance summed over the input channels),
the relevance recorded at layers (``relevances``), concept relevance
(``ChannelConcept.attribute``), attribution graphs (``AttributionGraph``) and the per-batch
statistics of relevance maximisation (``ChannelConcept.reference_sampling``), on torchvision
VGG (with batch norms merged) and ResNet (canonized) for several composites, layers and
conditions, both values of ``exclude_parallel``. The default run uses small members of each
family; the full-size VGG16 and ResNet50 (weights=None, seeded) are marked slow.

One difference is known and left out of the comparisons: with ``exclude_parallel=True``,
zennit-crp records the relevance of a *conditioned* layer twice (its partial backward passes the
layer's gradient through the recording hook once more), so the relevance it reports there is
twice the masked relevance; funcattr reports the masked relevance, which is what zennit-crp
reports with ``exclude_parallel=False``, and that is what the tests compare it with.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch
import zennit.composites as zc
import zennit.torchvision as ztv
from crp.attribution import AttributionGraph as CrpGraph
from crp.attribution import CondAttribution
from crp.concepts import ChannelConcept
from crp.graph import trace_model_graph
from helpers import assert_close
from test_canonizers import _one_thread, randomise  # noqa: F401  (_one_thread: autouse)
from torch import Tensor, nn
from torchvision.models import resnet50, vgg16
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet
from torchvision.models.vgg import VGG, make_layers

import funcattr
from funcattr import composites as fc
from funcattr.concepts import (
    INPUT_NODE,
    attribution_graph,
    concept_relevance,
    concept_statistics,
    conditional_attribution,
)
from funcattr.torchvision import ResNetCanonizer, VGGCanonizer

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning:crp.*")

RTOL = 1e-10
COMPOSITES = {
    "EpsilonPlusFlat": ({}, zc.EpsilonPlusFlat, fc.EpsilonPlusFlat),
    "EpsilonGammaBox": ({"low": -3.0, "high": 3.0}, zc.EpsilonGammaBox, fc.EpsilonGammaBox),
    "EpsilonAlpha2Beta1": ({}, zc.EpsilonAlpha2Beta1, fc.EpsilonAlpha2Beta1),
}
CANONIZERS = {"vgg": (ztv.VGGCanonizer, VGGCanonizer), "resnet": (ztv.ResNetCanonizer,
                                                                 ResNetCanonizer)}


def small_vgg(seed: int = 0) -> nn.Module:
    """A torchvision VGG with batch norms: 4 convolutions, a small classifier, 32x32 inputs."""
    torch.manual_seed(seed)
    model = VGG(make_layers([8, "M", 16, 16, "M", 16], batch_norm=True), init_weights=False)
    model.classifier = nn.Sequential(nn.Linear(16 * 7 * 7, 12), nn.ReLU(True), nn.Dropout(),
                                     nn.Linear(12, 5))
    return randomise(model, seed)


def small_resnet(block: type, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return randomise(ResNet(block, [1, 1, 1, 1], num_classes=5), seed)


def image(size: int, batch: int = 1, seed: int = 1) -> Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


def composites(name: str, family: str) -> tuple[Any, Any]:
    kwargs, zennit_class, funcattr_class = COMPOSITES[name]
    zennit_canonizer, funcattr_canonizer = CANONIZERS[family]
    return (zennit_class(canonizers=[zennit_canonizer()], **kwargs),
            funcattr_class(canonizers=[funcattr_canonizer()], **kwargs))


def crp(model: nn.Module, composite: Any, x: Tensor, conditions: list[dict], record: list[str],
        exclude_parallel: bool = True):
    """zennit-crp's result, on a copy of the model: Zennit's batch-norm canonizer leaves the
    merged parameters in a model's parameter registry when it is removed (it restores the old
    ones as plain attributes), so the model it ran on is not used again."""
    attribution = CondAttribution(copy.deepcopy(model), no_param_grad=False)
    return attribution(x.clone().requires_grad_(True), conditions, composite,
                       record_layer=record, exclude_parallel=exclude_parallel)


def compare(model, family, composite_name, x, conditions, record, exclude_parallel):
    zennit_composite, funcattr_composite = composites(composite_name, family)
    expected = crp(model, zennit_composite, x, conditions, record, exclude_parallel)
    fn, params = funcattr.functionalize(model, funcattr_composite)
    result = conditional_attribution(fn, params, x, conditions, record=record,
                                     exclude_parallel=exclude_parallel, chunk_size=3)
    assert float(expected.heatmap.abs().max()) > 0.0  # a comparison that can fail
    assert_close(result.attribution.sum(2)[:, 0], expected.heatmap, rtol=RTOL)
    for name in record:
        assert_close(result.relevances[name][:, 0], expected.relevances[name], rtol=RTOL,
                     msg=name)
        assert_close(result.activations[name], expected.activations[name][:1], rtol=RTOL)


# --------------------------------------------------------------------------------------------
# Conditional heatmaps and recorded relevance
# --------------------------------------------------------------------------------------------

VGG_CASES = [  # (conditions' layers, channels, recorded layers)
    ({"features.11": [[0], [3, 5], [15], []]}, ["features.7", "features.0"]),
    ({"features.7": [[1], [2, 9]]}, ["features.4", "features.11"]),
    ({"features.11": [[3], [9, 2]], "features.4": [[0], [1, 4]]}, ["features.0"]),
    ({"classifier.0": [[0], [5, 6]]}, ["features.11"]),
]


def _conditions(layers: dict[str, list[list[int]]], targets: list[int]) -> list[dict]:
    """Every combination of one channel set per layer, for each target."""
    combos: list[dict] = [{}]
    for name, sets in layers.items():
        combos = [{**combo, name: channels} for combo in combos for channels in sets]
    return [{"y": [target], **combo} for target in targets for combo in combos]


@pytest.mark.parametrize("exclude_parallel", [True, False], ids=["exclusive", "parallel"])
@pytest.mark.parametrize("composite_name", sorted(COMPOSITES))
@pytest.mark.parametrize("case", range(len(VGG_CASES)))
def test_vgg_conditional_heatmaps_and_relevances(case, composite_name, exclude_parallel):
    layers, record = VGG_CASES[case]
    compare(small_vgg(), "vgg", composite_name, image(32), _conditions(layers, [1, 3]), record,
            exclude_parallel)


RESNET_CASES = [
    ({"layer4.0.conv2": [[0], [3, 5]]}, ["layer3", "layer4.0.conv1"]),  # inside a block
    ({"layer3": [[1], [2, 9]]}, ["layer2.0.conv1", "layer1"]),  # a block's output
    ({"layer3.0.bn3": [[0], [11]]}, ["layer3.0.conv1"]),  # a merged batch norm
    ({"layer4.0.conv3": [[4], [6]], "layer3": [[0], [1, 2]]}, ["layer2"]),  # two layers
    ({"fc": [[1], [4, 2]]}, ["layer4", "layer4.0.downsample.0"]),  # the output layer
]


@pytest.mark.parametrize("exclude_parallel", [True, False], ids=["exclusive", "parallel"])
@pytest.mark.parametrize("composite_name", ["EpsilonPlusFlat", "EpsilonGammaBox"])
@pytest.mark.parametrize("block", [BasicBlock, Bottleneck], ids=["basic", "bottleneck"])
@pytest.mark.parametrize("case", range(len(RESNET_CASES)))
def test_resnet_conditional_heatmaps_and_relevances(case, block, composite_name,
                                                    exclude_parallel):
    """Layer names are the model's own: blocks, convolutions, batch norms the canonizer merged
    into the convolution before them, and the downsampling path."""
    layers, record = RESNET_CASES[case]
    if block is BasicBlock:  # a basic block has no conv3/bn3: use its second convolution
        layers = {name.replace("conv3", "conv2").replace("bn3", "bn2"): sets
                  for name, sets in layers.items()}
    compare(small_resnet(block), "resnet", composite_name, image(48),
            _conditions(layers, [1, 4]), record, exclude_parallel)


def test_relevance_recorded_above_the_condition_equals_crp():
    """A layer between the output and the condition's layer gets the unmasked relevance."""
    model = small_resnet(Bottleneck)
    zennit_composite, funcattr_composite = composites("EpsilonPlusFlat", "resnet")
    conditions = _conditions({"layer3": [[0], [4]]}, [2])
    expected = crp(model, zennit_composite, image(48), conditions, ["layer4.0.conv1", "layer4"])
    fn, params = funcattr.functionalize(model, funcattr_composite)
    result = conditional_attribution(fn, params, image(48), conditions,
                                     record=["layer4.0.conv1", "layer4"])
    for name in ("layer4.0.conv1", "layer4"):
        assert_close(result.relevances[name][:, 0], expected.relevances[name], rtol=RTOL)


def test_batch_of_several_samples_equals_crp_per_sample():
    model = small_vgg()
    zennit_composite, funcattr_composite = composites("EpsilonPlusFlat", "vgg")
    x = image(32, batch=3)
    conditions = _conditions({"features.11": [[0], [4, 5]]}, [2])
    fn, params = funcattr.functionalize(model, funcattr_composite)
    result = conditional_attribution(fn, params, x, conditions)
    for sample in range(3):
        expected = crp(model, zennit_composite, x[sample:sample + 1], conditions, [])
        assert_close(result.attribution[:, sample].sum(1), expected.heatmap, rtol=RTOL)


# --------------------------------------------------------------------------------------------
# Concept relevance, attribution graphs, statistics
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("layer", ["features.11", "features.4", "classifier.0"])
def test_concept_relevance_equals_crp_attribute(layer):
    model = small_vgg()
    zennit_composite, funcattr_composite = composites("EpsilonGammaBox", "vgg")
    expected = crp(model, zennit_composite, image(32), [{"y": [3]}], [layer])
    shares = ChannelConcept().attribute(expected.relevances[layer], abs_norm=True)
    fn, params = funcattr.functionalize(model, funcattr_composite)
    assert_close(concept_relevance(fn, params, image(32), layer, target=3), shares, rtol=RTOL)


@pytest.mark.filterwarnings("ignore:`torch.jit.trace:FutureWarning")
def test_attribution_graph_equals_crp():
    model = small_vgg()
    layers = ["features.0", "features.4", "features.7", "features.11"]
    zennit_composite, funcattr_composite = composites("EpsilonPlusFlat", "vgg")
    graph = trace_model_graph(model, image(32), layers)
    crp_graph = CrpGraph(CondAttribution(copy.deepcopy(model), no_param_grad=False), graph,
                         {name: ChannelConcept() for name in layers})
    _, connections = crp_graph(image(32).requires_grad_(True), zennit_composite, 4,
                               "features.11", target=2, width=[3, 2], verbose=False)
    fn, params = funcattr.functionalize(model, funcattr_composite)
    ours = attribution_graph(fn, params, image(32), "features.11", 4, target=2, width=(3, 2),
                             layers=layers)
    expected = {((s[0], s[1]), (t[0], t[1])): t[2]
                for s, targets in connections.items() for t in targets}
    edges = {((e.source.layer, e.source.channel), (e.target.layer, e.target.channel)):
             e.relevance for e in ours.edges if e.target != INPUT_NODE}
    assert edges.keys() == expected.keys()
    for key, value in expected.items():
        assert abs(edges[key] - value) <= RTOL * max(abs(v) for v in expected.values()), key


@pytest.mark.parametrize("max_target", ["sum", "max"])
def test_statistics_equal_crp_reference_sampling(max_target):
    model = small_resnet(BasicBlock)
    zennit_composite, funcattr_composite = composites("EpsilonPlusFlat", "resnet")
    x, labels = image(48, batch=4), [0, 3, 1, 3]
    layers = ["layer3.0.conv2", "layer4", "fc"]
    expected = crp(model, zennit_composite, x, [{"y": [t]} for t in labels], layers,
                   exclude_parallel=False)
    fn, params = funcattr.functionalize(model, funcattr_composite)
    stats = concept_statistics(fn, params, x, layers, torch.tensor(labels),
                               max_target=max_target)
    concept = ChannelConcept()
    for name in layers:
        for ours, ours_position, theirs in (
                (stats[name].relevance, stats[name].relevance_position,
                 expected.relevances[name]),
                (stats[name].activation, stats[name].activation_position,
                 expected.activations[name])):
            order, values, positions = concept.reference_sampling(theirs, max_target=max_target,
                                                                  abs_norm=True)
            assert_close(ours.gather(0, order), values, rtol=RTOL, msg=name)
            assert torch.equal(ours_position.gather(0, order), positions), name


# --------------------------------------------------------------------------------------------
# Full-size torchvision models (slow)
# --------------------------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("exclude_parallel", [True, False], ids=["exclusive", "parallel"])
def test_vgg16(exclude_parallel):
    torch.manual_seed(0)
    model = randomise(vgg16(weights=None), 0)
    conditions = (_conditions({"features.28": [[0], [7, 300], [511]]}, [1])
                  + _conditions({"features.28": [[3]], "features.19": [[5], [100]]}, [7]))
    compare(model, "vgg", "EpsilonPlusFlat", image(112), conditions,
            ["features.26", "features.14"], exclude_parallel)


@pytest.mark.slow
@pytest.mark.parametrize("exclude_parallel", [True, False], ids=["exclusive", "parallel"])
def test_resnet50(exclude_parallel):
    torch.manual_seed(0)
    model = randomise(resnet50(weights=None), 0)
    conditions = (_conditions({"layer4.2.conv3": [[0], [7, 300]]}, [1])
                  + _conditions({"layer4.0": [[2047]], "layer3.5": [[5], [900]]}, [5]))
    compare(model, "resnet", "EpsilonGammaBox", image(112), conditions,
            ["layer3.2", "layer4.1.conv1"], exclude_parallel)
