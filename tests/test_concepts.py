"""Concepts: the laws of conditional relevance, the taps of the ruled tree, ranking and local
analysis, attribution graphs, the statistics and their top-N merge, and every error message.

The laws (hypothesis): the conditional heatmaps of all channels of a layer add up to the
unconditional heatmap; a condition on no channel gives zero; heatmaps are additive in the
channel set; K conditions at once equal one condition at a time; chunked equals unchunked; the
transform route (``vmap``, differentiated inputs) equals the plain one. zennit-crp as the oracle
is in ``test_concepts_crp.py``.
"""

from __future__ import annotations

import ast
import json
import re
import threading
from pathlib import Path

import pytest
import torch
from helpers import assert_close, assert_unchanged, single_thread, small_cnn, snapshot
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_canonizers import randomise
from test_vocabulary import _message
from torch import Tensor, nn
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

import funcattr
from funcattr import composites as fc
from funcattr.attribution import gradient, one_hot
from funcattr.concepts import (
    INPUT_NODE,
    ConceptNode,
    Condition,
    TopSamples,
    attribution_graph,
    channel_relevance,
    concept_heatmaps,
    concept_relevance,
    concept_statistics,
    conditional_attribution,
    input_layers,
    local_concept_relevance,
    merge_top_samples,
    top_concepts,
    top_samples,
)
from funcattr.core import reference_path
from funcattr.torchvision import ResNetCanonizer

pytestmark = pytest.mark.usefixtures(single_thread.__name__)

ROOT = Path(__file__).resolve().parents[1]
RTOL = 1e-10
LAW_SETTINGS = settings(max_examples=12, deadline=None,
                        suppress_health_check=[HealthCheck.function_scoped_fixture])
PRESETS = {
    "epsilon_plus_flat": fc.EpsilonPlusFlat,
    "epsilon_gamma_box": lambda **kw: fc.EpsilonGammaBox(low=-3.0, high=3.0, **kw),
    "epsilon_alpha2_beta1": fc.EpsilonAlpha2Beta1,
    "none": None,
}


def cnn() -> nn.Module:
    """Conv-ReLU x3 (in-place), average pooling, dense layers: a chain of concept layers."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(inplace=True),
        nn.Conv2d(6, 8, 3, padding=1), nn.ReLU(inplace=True), nn.AvgPool2d(2),
        nn.Conv2d(8, 7, 3, padding=1), nn.ReLU(),
        nn.Flatten(), nn.Linear(7 * 4 * 4, 9), nn.ReLU(), nn.Linear(9, 4),
    ).eval()


CNN_LAYERS = ["0", "2", "5", "8"]


def resnet(block: type = BasicBlock) -> nn.Module:
    torch.manual_seed(0)
    return randomise(ResNet(block, [1, 1, 1, 1], num_classes=5))


def functional(model: nn.Module, preset: str = "epsilon_plus_flat", canonizers=None):
    make = PRESETS[preset]
    return funcattr.functionalize(model, None if make is None else make(), canonizers)


def images(batch: int = 1, size: int = 8, seed: int = 1) -> Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


def channels_of(fn, params, x, layer) -> int:
    return conditional_attribution(fn, params, x, {}, record=[layer]).activations[layer].shape[1]


# --------------------------------------------------------------------------------------------
# Laws
# --------------------------------------------------------------------------------------------

@LAW_SETTINGS
@given(preset=st.sampled_from(sorted(PRESETS)), layer=st.sampled_from(CNN_LAYERS),
       target=st.integers(0, 3), seed=st.integers(0, 2**16),
       exclude_parallel=st.booleans())
def test_heatmaps_of_all_channels_add_up_to_the_unconditional_heatmap(preset, layer, target,
                                                                      seed, exclude_parallel):
    fn, params = functional(cnn(), preset)
    x = images(2, seed=seed)
    count = channels_of(fn, params, x, layer)
    parts = conditional_attribution(fn, params, x, [{"y": [target], layer: [c]}
                                                    for c in range(count)],
                                    exclude_parallel=exclude_parallel)
    whole = conditional_attribution(fn, params, x, {"y": [target]})
    _, expected = gradient(fn, params, x, one_hot(target, times_output=True))
    assert_close(whole.attribution[0], expected, rtol=RTOL)
    assert_close(parts.attribution.sum(0), expected, rtol=1e-9)


@pytest.mark.parametrize("layer", ["layer2", "layer3.0", "layer4"])
def test_resnet_trunk_channels_add_up_with_canonizers(layer):
    """All relevance passes a block's output: its channels add up to the heatmap."""
    fn, params = functional(resnet(Bottleneck), "epsilon_gamma_box", [ResNetCanonizer()])
    x = images(1, 32)
    count = channels_of(fn, params, x, layer)
    parts = conditional_attribution(fn, params, x, [{"y": [2], layer: [c]}
                                                    for c in range(count)], chunk_size=64)
    _, expected = gradient(fn, params, x, one_hot(2, times_output=True))
    assert_close(parts.attribution.sum(0), expected, rtol=1e-9)


@pytest.mark.parametrize("layer", ["layer3.0.conv2", "layer2.0.bn1", "layer4.0.downsample.0"])
def test_all_channels_without_exclude_parallel_is_the_gradient(layer):
    """With exclude_parallel=False a mask of ones changes nothing, also inside a block."""
    fn, params = functional(resnet(), "epsilon_plus_flat", [ResNetCanonizer()])
    x = images(2, 32)
    count = channels_of(fn, params, x, layer)
    result = conditional_attribution(fn, params, x, {"y": [1], layer: list(range(count))},
                                     exclude_parallel=False)
    _, expected = gradient(fn, params, x, one_hot(1, times_output=True))
    assert_close(result.attribution[0], expected, rtol=RTOL)


@LAW_SETTINGS
@given(layer=st.sampled_from(CNN_LAYERS), seed=st.integers(0, 2**16),
       exclude_parallel=st.booleans())
def test_a_condition_on_no_channel_gives_zero(layer, seed, exclude_parallel):
    fn, params = functional(cnn())
    x = images(2, seed=seed)
    result = conditional_attribution(fn, params, x, [{"y": [1], layer: []}, {"y": []}],
                                     record=["0"], exclude_parallel=exclude_parallel)
    assert torch.equal(result.attribution, torch.zeros_like(result.attribution))
    assert torch.equal(result.relevances["0"], torch.zeros_like(result.relevances["0"]))


@LAW_SETTINGS
@given(channels=st.sets(st.integers(0, 7), min_size=2, max_size=8), split=st.integers(1, 7),
       seed=st.integers(0, 2**16))
def test_heatmaps_are_additive_in_the_channel_set(channels, split, seed):
    fn, params = functional(cnn(), "epsilon_alpha2_beta1")
    x = images(1, seed=seed)
    channels = sorted(channels)
    first, second = channels[:split], channels[split:]
    result = conditional_attribution(fn, params, x, [{"y": [0], "2": channels},
                                                     {"y": [0], "2": first},
                                                     {"y": [0], "2": second}])
    assert_close(result.attribution[1] + result.attribution[2], result.attribution[0],
                 rtol=1e-9)


CONDITIONS = [
    {"y": [1], "5": [0]}, {"y": [3], "5": [2, 6], "0": [1]}, {"y": [1, 2]},
    {"y": [0], "2": [7], "5": [1]}, {"y": [2], "8": [4]}, {"5": [3]},
]


@LAW_SETTINGS
@given(chunk_size=st.integers(1, 12), exclude_parallel=st.booleans(),
       preset=st.sampled_from(sorted(PRESETS)))
def test_all_at_once_equals_one_at_a_time_and_every_chunk_size(chunk_size, exclude_parallel,
                                                               preset):
    fn, params = functional(cnn(), preset)
    x = images(2)
    options = {"record": ["2", "8"], "exclude_parallel": exclude_parallel}
    together = conditional_attribution(fn, params, x, CONDITIONS, **options)
    chunked = conditional_attribution(fn, params, x, CONDITIONS, chunk_size=chunk_size,
                                      **options)
    for k, condition in enumerate(CONDITIONS):
        alone = conditional_attribution(fn, params, x, condition, **options)
        assert_close(together.attribution[k], alone.attribution[0], rtol=RTOL)
        for name in ("2", "8"):
            assert_close(together.relevances[name][k], alone.relevances[name][0], rtol=RTOL)
    assert_close(chunked.attribution, together.attribution, rtol=RTOL)
    assert_close(chunked.relevances["8"], together.relevances["8"], rtol=RTOL)


@pytest.mark.parametrize("exclude_parallel", [True, False])
def test_vmap_over_samples_equals_the_batch(exclude_parallel):
    fn, params = functional(cnn(), "epsilon_gamma_box")
    x = images(3)

    def one(sample: Tensor) -> tuple[Tensor, Tensor]:
        result = conditional_attribution(fn, params, sample[None], CONDITIONS, record=["2"],
                                         exclude_parallel=exclude_parallel)
        return result.attribution[:, 0], result.relevances["2"][:, 0]

    attribution, relevance = torch.func.vmap(one)(x)
    batch = conditional_attribution(fn, params, x, CONDITIONS, record=["2"],
                                    exclude_parallel=exclude_parallel)
    assert_close(attribution.transpose(0, 1), batch.attribution, rtol=RTOL)
    assert_close(relevance.transpose(0, 1), batch.relevances["2"], rtol=RTOL)


@pytest.mark.parametrize("exclude_parallel", [True, False])
def test_conditional_heatmaps_are_differentiable(exclude_parallel):
    """A differentiated input takes the torch.func route: same values; the derivative of a
    loss on the heatmaps matches finite differences (the true derivative of the backward)."""
    fn, params = functional(cnn())
    x = images(2)
    plain = conditional_attribution(fn, params, x, CONDITIONS, record=["5"],
                                    exclude_parallel=exclude_parallel)
    leaf = x.clone().requires_grad_(True)
    result = conditional_attribution(fn, params, leaf, CONDITIONS, record=["5"],
                                     exclude_parallel=exclude_parallel)
    assert_close(result.attribution.detach(), plain.attribution, rtol=RTOL)
    assert_close(result.relevances["5"].detach(), plain.relevances["5"], rtol=RTOL)
    (grad,) = torch.autograd.grad(result.attribution.pow(2).sum(), leaf)
    direction = torch.randn(x.shape, generator=torch.Generator().manual_seed(3))

    def loss(u: Tensor) -> float:
        return float(conditional_attribution(fn, params, u, CONDITIONS,
                                             exclude_parallel=exclude_parallel
                                             ).attribution.pow(2).sum())

    step = 1e-6
    numeric = (loss(x + step * direction) - loss(x - step * direction)) / (2 * step)
    assert abs(float((grad * direction).sum()) - numeric) <= 1e-6 * abs(numeric) + 1e-15


def test_reference_path_gives_the_same_conditional_relevance():
    fn, params = functional(resnet(), "epsilon_gamma_box", [ResNetCanonizer()])
    x = images(1, 32)
    conditions = [{"y": [0], "layer3.0.conv2": [c], "layer2": [1, 5]} for c in range(4)]
    fast = conditional_attribution(fn, params, x, conditions, record=["layer1"])
    with reference_path():
        reference = conditional_attribution(fn, params, x, conditions, record=["layer1"])
    assert_close(fast.attribution, reference.attribution, rtol=1e-9)
    assert_close(fast.relevances["layer1"], reference.relevances["layer1"], rtol=1e-9)


def test_mask_conditions_select_positions():
    """A mask shaped like one sample of the layer output: one channel at one position equals
    the channel's heatmap restricted to that neuron's relevance."""
    fn, params = functional(cnn())
    x = images(1)
    channel = int(concept_relevance(fn, params, x, "2", 1).abs().argmax())
    mask = torch.zeros(8, 8, 8)
    mask[channel, 2:4, 5] = 1.0
    result = conditional_attribution(fn, params, x, [{"y": [1], "2": mask},
                                                     {"y": [1], "2": [channel]}], record=["2"])
    relevance = result.relevances["2"]
    assert float(relevance[0].abs().sum()) > 0.0
    assert torch.equal(relevance[0, 0], relevance[1, 0] * mask)


def test_model_unchanged_and_threads_independent():
    model = resnet()
    before = snapshot(model)
    fn, params = functional(model, "epsilon_plus_flat", [ResNetCanonizer()])
    x = images(1, 32)
    conditions = [{"y": [1], "layer3": [c]} for c in range(3)]
    expected = conditional_attribution(fn, params, x, conditions).attribution
    results: list[Tensor] = []

    def work() -> None:
        results.append(conditional_attribution(fn, params, x, conditions).attribution)

    threads = [threading.Thread(target=work) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for result in results:
        assert torch.equal(result, expected)
    assert_unchanged(model, before)


# --------------------------------------------------------------------------------------------
# The taps of the ruled tree
# --------------------------------------------------------------------------------------------

def test_tapped_call_applies_taps_for_that_call_only():
    model = small_cnn()
    fn, params = funcattr.functionalize(model, fc.EpsilonPlusFlat())
    x = images(2)
    seen: dict[str, Tensor] = {}

    def observe(output: Tensor) -> Tensor:
        seen["features.4"] = output
        return output

    tapped = fn.tapped(params, x, {"features.4": observe, "features.1": lambda y: y * 0})
    assert tapped.shape == fn(params, x).shape
    assert seen["features.4"].shape == (2, 5, 4, 4)
    assert torch.equal(fn(params, x), model(x))  # no taps outside the call
    assert not torch.equal(tapped, model(x))  # the zeroing tap took effect


def test_a_tap_that_calls_the_model_runs_it_without_taps():
    fn, params = funcattr.functionalize(small_cnn(), fc.EpsilonPlusFlat())
    x = images(1)
    inner: list[Tensor] = []

    def tap(output: Tensor) -> Tensor:
        inner.append(fn(params, x))
        return output

    fn.tapped(params, x, {"features.0": tap})
    assert torch.equal(inner[0], fn(params, x))


def test_tapped_names_unknown_modules():
    fn, params = funcattr.functionalize(small_cnn(), fc.EpsilonPlusFlat())
    with pytest.raises(ValueError, match=r"^FunctionalModel\.tapped\(taps=\{'feature\.4': "
                                         r"\.\.\.\}\): expected names .*did you mean "
                                         r"'features\.4'"):
        fn.tapped(params, images(1), {"feature.4": lambda y: y})


# --------------------------------------------------------------------------------------------
# Ranking, local analysis, heatmaps
# --------------------------------------------------------------------------------------------

def test_concept_relevance_and_top_concepts():
    fn, params = functional(cnn())
    x = images(3)
    shares = concept_relevance(fn, params, x, "5", target=[0, 2, 1])
    raw = concept_relevance(fn, params, x, "5", target=[0, 2, 1], abs_norm=False)
    result = conditional_attribution(fn, params, x, {}, record=["5"],
                                     attr_output_fn=one_hot([0, 2, 1], times_output=True))
    assert_close(raw, channel_relevance(result.relevances["5"][0]), rtol=RTOL)
    assert_close(shares.abs().sum(1), torch.ones(3), rtol=1e-8)
    top = top_concepts(fn, params, x, "5", target=[0, 2, 1], k=3)
    assert torch.equal(top.channels, shares.topk(3).indices)
    assert_close(top.relevance, shares.topk(3).values, rtol=RTOL)
    predicted = concept_relevance(fn, params, x, "5")  # target=None: the prediction
    assert_close(predicted, concept_relevance(fn, params, x, "5",
                                              target=fn(params, x).argmax(1)), rtol=RTOL)


def test_concept_relevance_within_a_concept():
    fn, params = functional(cnn(), "epsilon_gamma_box")
    x = images(1)
    within = concept_relevance(fn, params, x, "2", target=1, condition={"5": [4]},
                               abs_norm=False)
    result = conditional_attribution(fn, params, x, {"y": [1], "5": [4]}, record=["2"])
    assert_close(within, channel_relevance(result.relevances["2"][0]), rtol=RTOL)


@pytest.mark.parametrize("preset", ["epsilon_plus_flat", "epsilon_gamma_box",
                                    "epsilon_alpha2_beta1", "none"])
@pytest.mark.parametrize("reference", [False, True], ids=["fast", "reference"])
def test_local_concept_relevance_equals_the_sum_of_heatmaps_in_the_region(preset, reference):
    fn, params = functional(cnn(), preset)
    x = images(2)
    region = torch.zeros(8, 8)
    region[1:5, 3:7] = 1.0
    count = channels_of(fn, params, x, "5")
    with reference_path(reference):
        local = local_concept_relevance(fn, params, x, "5", region, target=2)
        heatmaps = concept_heatmaps(fn, params, x, "5", list(range(count)), target=2,
                                    region=region)
    assert_close(local, heatmaps.sum((2, 3, 4)).T, rtol=1e-9)
    assert float(local.abs().max()) > 0.0


def test_local_concept_relevance_on_a_canonized_resnet_and_under_transforms():
    fn, params = functional(resnet(), "epsilon_plus_flat", [ResNetCanonizer()])
    x = images(1, 32)
    region = torch.zeros(1, 1, 32, 32)
    region[..., 8:20, 4:30] = 1.0
    local = local_concept_relevance(fn, params, x, "layer3.0.conv1", region, target=3)
    heatmaps = concept_heatmaps(fn, params, x, "layer3.0.conv1", list(range(local.shape[1])),
                                target=3, chunk_size=32)
    assert_close(local, (heatmaps * region).sum((2, 3, 4)).T, rtol=1e-9)
    leaf = x.clone().requires_grad_(True)
    transformed = local_concept_relevance(fn, params, leaf, "layer3.0.conv1", region, target=3)
    assert_close(transformed.detach(), local, rtol=1e-9)


def test_concept_heatmaps_are_conditional_heatmaps_times_the_region():
    fn, params = functional(cnn())
    x = images(2)
    region = torch.rand(8, 8, generator=torch.Generator().manual_seed(0))
    heatmaps = concept_heatmaps(fn, params, x, "2", torch.tensor([3, 1]), target=1,
                                region=region, condition={"5": [2, 3]})
    expected = conditional_attribution(
        fn, params, x, [{"5": [2, 3], "2": [3]}, {"5": [2, 3], "2": [1]}],
        attr_output_fn=one_hot(1, times_output=True)).attribution * region
    assert_close(heatmaps, expected, rtol=RTOL)


def test_channel_relevance_normalises_like_crp():
    relevance = torch.tensor([[[[1.0, -3.0]], [[2.0, 0.0]]]])  # (1, 2, 1, 2)
    assert torch.equal(channel_relevance(relevance), torch.tensor([[-2.0, 2.0]]))
    assert_close(channel_relevance(relevance, abs_norm=True),
                 torch.tensor([[-2.0, 2.0]]) / (4.0 + 1e-10))
    stacked = relevance[None].expand(3, -1, -1, -1, -1)
    assert channel_relevance(stacked, dim=2).shape == (3, 1, 2)


# --------------------------------------------------------------------------------------------
# Attribution graphs
# --------------------------------------------------------------------------------------------

def test_input_layers_follow_the_residual_structure():
    fn, params = functional(resnet(), "epsilon_plus_flat", [ResNetCanonizer()])
    layers = ["conv1", "layer1.0.conv1", "layer1.0.conv2", "layer2.0.conv1", "layer2.0.conv2",
              "layer2.0.downsample.0", "layer3.0.conv1", "fc"]
    feeds = input_layers(fn, params, images(1, 32), layers)
    assert feeds["conv1"] == ["<input>"]
    assert feeds["layer1.0.conv1"] == ["conv1"]
    assert feeds["layer2.0.conv1"] == ["conv1", "layer1.0.conv2"]  # skip and block
    assert feeds["layer2.0.downsample.0"] == ["conv1", "layer1.0.conv2"]
    assert feeds["layer3.0.conv1"] == ["layer2.0.conv2", "layer2.0.downsample.0"]
    # fc is fed by layer4 and layer3, whose convolutions are not concept layers here, and by
    # layer3's downsampling path, which is not either: on to layer3.0.conv1 and layer2's output
    assert feeds["fc"] == ["layer2.0.conv2", "layer2.0.downsample.0", "layer3.0.conv1"]


def test_attribution_graph_as_data():
    fn, params = functional(cnn())
    x = images(1)
    graph = attribution_graph(fn, params, x, "5", 2, target=1, width=(2, 2))
    assert graph.root == ConceptNode("5", 2) and graph.nodes[0] == graph.root
    assert graph.target == 1
    assert [str(e.target) for e in graph.children(graph.root)] == [
        str(ConceptNode("2", int(c))) for c in concept_relevance(
            fn, params, x, "2", 1, condition={"5": [2]})[0].sort(
                descending=True, stable=True).indices[:2]]
    depth = graph.depth()
    assert depth[graph.root] == 0 and depth[INPUT_NODE] == max(depth.values())
    assert all(depth[e.target] == depth[e.source] + 1 or e.target == INPUT_NODE
               for e in graph.edges)
    child = graph.children(graph.root)[0].target
    expected = conditional_attribution(fn, params, x, {"y": [1], "5": [2], child.layer:
                                                       [child.channel]}).attribution[0, 0]
    assert_close(graph.heatmaps[child], expected, rtol=RTOL)
    data = json.loads(json.dumps(graph.to_dict()))
    assert data["nodes"][data["root"]] == {"layer": "5", "channel": 2}
    assert len(data["edges"]) == len(graph.edges)
    assert data["nodes"][-1] == {"layer": "input", "channel": None}


def test_attribution_graph_root_relevance_and_input_edges():
    fn, params = functional(cnn(), "epsilon_gamma_box")
    x = images(1)
    graph = attribution_graph(fn, params, x, "8", 4, width=1, layers=["0", "2", "5", "8"],
                              heatmaps=False)
    shares = concept_relevance(fn, params, x, "8")
    assert graph.root_relevance == pytest.approx(float(shares[0, 4]), rel=1e-12)
    assert graph.heatmaps == {}
    leaves = [e for e in graph.edges if e.target == INPUT_NODE]
    assert len(leaves) == 1 and -1.0 <= leaves[0].relevance <= 1.0


# --------------------------------------------------------------------------------------------
# Statistics and the top-N merge
# --------------------------------------------------------------------------------------------

def test_statistics_of_each_layer():
    fn, params = functional(cnn())
    x = images(4)
    stats = concept_statistics(fn, params, x, ["2", "8"], torch.tensor([0, 1, 2, 3]),
                               abs_norm=False)
    result = conditional_attribution(fn, params, x, {}, record=["2", "8"],
                                     attr_output_fn=one_hot(torch.tensor([0, 1, 2, 3]),
                                                            times_output=True))
    relevance = result.relevances["2"][0]
    assert_close(stats["2"].relevance, channel_relevance(relevance), rtol=RTOL)
    assert torch.equal(stats["2"].relevance_position, relevance.flatten(2).argmax(2))
    assert torch.equal(stats["2"].activation_position,
                       result.activations["2"].flatten(2).argmax(2))
    assert stats["8"].relevance.shape == (4, 9)
    assert torch.equal(stats["8"].relevance_position, torch.zeros(4, 9, dtype=torch.long))
    peak = concept_statistics(fn, params, x, "2", max_target="max", abs_norm=False)["2"]
    assert_close(peak.activation, result.activations["2"].flatten(2).amax(2), rtol=RTOL)


scores = st.lists(st.integers(-4, 4), min_size=1, max_size=6)


def _table(values: list[int], start: int, n: int) -> TopSamples:
    tensor = torch.tensor(values, dtype=torch.float64)[:, None].repeat(1, 2)
    tensor[:, 1] = -tensor[:, 1]
    positions = torch.arange(len(values))[:, None].repeat(1, 2)
    return top_samples(tensor, positions, range(start, start + len(values)), n)


@settings(max_examples=60, deadline=None)
@given(a=scores, b=scores, c=scores, n=st.integers(1, 5))
def test_top_n_merge_is_associative_commutative_idempotent_and_exact(a, b, c, n):
    ta, tb, tc = _table(a, 0, n), _table(b, 10, n), _table(c, 20, n)

    def same(x: TopSamples, y: TopSamples) -> bool:
        return all(torch.equal(u, v) for u, v in zip(x, y))

    left = merge_top_samples(merge_top_samples(ta, tb), tc)
    right = merge_top_samples(ta, merge_top_samples(tb, tc))
    assert same(left, right)
    assert same(merge_top_samples(ta, tb), merge_top_samples(tb, ta))
    assert same(merge_top_samples(left, left), left)
    assert same(merge_top_samples(left, ta), left)  # a sample met twice counts once
    values = a + b + c
    ids = [*range(len(a)), *range(10, 10 + len(b)), *range(20, 20 + len(c))]
    for channel, sign in ((0, 1), (1, -1)):
        expected = sorted(zip([sign * v for v in values], ids), key=lambda p: (-p[0], p[1]))[:n]
        got = [(int(v), int(s)) for v, s in zip(left.values[channel], left.samples[channel])
               if s >= 0]
        assert got == expected


def test_top_samples_pads_empty_slots():
    table = top_samples(torch.tensor([[2.0]]), torch.tensor([[5]]), [7], 3)
    assert table.samples.tolist() == [[7, -1, -1]]
    assert table.positions.tolist() == [[5, -1, -1]]
    assert table.values[0, 1] == float("-inf")


# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------

def test_unknown_layer_names_are_suggested():
    fn, params = functional(resnet(), "epsilon_plus_flat", [ResNetCanonizer()])
    with pytest.raises(ValueError, match=r"^conditional_attribution\(conditions='layer3\.0\."
                                         r"conv4'\): expected the name of a layer of the model, "
                                         r"got 'layer3\.0\.conv4', which names no module\. .*"
                                         r"did you mean .*'layer3\.0\.conv1'"):
        conditional_attribution(fn, params, images(1, 32), {"y": [0], "layer3.0.conv4": [1]})
    with pytest.raises(ValueError, match=r"^concept_relevance\(layer='fetures'\): expected"):
        concept_relevance(fn, params, images(1, 32), "fetures")
    with pytest.raises(ValueError, match=r"^conditional_attribution\(record='layer9'\)"):
        conditional_attribution(fn, params, images(1, 32), {"y": [0]}, record="layer9")


def test_channels_out_of_range():
    fn, params = functional(cnn())
    with pytest.raises(ValueError, match=r"^conditional_attribution\(conditions=\[\{'5': "
                                         r"\(1, 7\)\}\]\): channel out of range for a layer "
                                         r"with 7 channels; expected indices in \[0, 6\], got "
                                         r"\[7\]\. Pass channels of this layer\.$"):
        conditional_attribution(fn, params, images(1), {"y": [0], "5": [1, 7]})
    with pytest.raises(ValueError, match=r"^conditional_attribution\(conditions=\[\{'5': "
                                         r"\(-1,\)\}\]\): expected indices >= 0, got \[-1\]"):
        conditional_attribution(fn, params, images(1), {"5": [-1]})
    with pytest.raises(ValueError, match=r"^attribution_graph\(conditions=\[\{'5': \(9,\)\}\]"
                                         r"\): channel out of range"):
        attribution_graph(fn, params, images(1), "5", 9)


class WithUnusedLayer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = cnn()
        self.unused = nn.Conv2d(3, 3, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x)


def test_a_layer_the_model_never_calls():
    fn, params = funcattr.functionalize(WithUnusedLayer(), fc.EpsilonPlusFlat())
    with pytest.raises(ValueError, match=r"^conditional_attribution\(conditions='unused'\): "
                                         r"expected a layer that the model calls, got 'unused', "
                                         r"which the forward pass of this input never called"):
        conditional_attribution(fn, params, images(1), {"y": [0], "unused": [0]})
    with pytest.raises(ValueError, match=r"^concept_statistics\(record='unused'\): expected a "
                                         r"layer that the model calls"):
        concept_statistics(fn, params, images(1), ["unused"])


def test_a_layer_called_twice():
    fn, params = functional(resnet(), "epsilon_plus_flat", [ResNetCanonizer()])
    with pytest.raises(ValueError, match=r"^conditional_attribution\(record='layer1\.0\.relu'"
                                         r"\): expected a layer called once per forward pass, "
                                         r"got 'layer1\.0\.relu', called 2 times"):
        conditional_attribution(fn, params, images(1, 32), {"y": [0]}, record="layer1.0.relu")


def test_parallel_layers_in_one_condition():
    fn, params = functional(resnet(), "epsilon_plus_flat", [ResNetCanonizer()])
    condition = {"y": [0], "layer2.0.conv2": [0], "layer2.0.downsample.0": [1]}
    with pytest.raises(ValueError, match=r"^conditional_attribution\(conditions=\[\{\.\.\., "
                                         r"'layer2\.0\.conv2': \.\.\.\}\]\): with "
                                         r"exclude_parallel=True, expected the layers of a "
                                         r"condition to lie one after another .* got "
                                         r"'layer2\.0\.conv2', which no relevance from "
                                         r"'layer2\.0\.downsample\.0' reaches"):
        conditional_attribution(fn, params, images(1, 32), condition)
    result = conditional_attribution(fn, params, images(1, 32), condition,
                                     exclude_parallel=False)
    assert result.attribution.shape == (1, 1, 3, 32, 32)


@pytest.mark.parametrize(("call", "error", "match"), [
    (lambda fn, p, x: conditional_attribution(fn, p, x, "y"), TypeError,
     r"^conditional_attribution\(conditions=str\): expected a list of conditions"),
    (lambda fn, p, x: conditional_attribution(fn, p, x, []), ValueError,
     r"^conditional_attribution\(conditions=\[\]\): expected at least one condition"),
    (lambda fn, p, x: conditional_attribution(fn, p, x, [3]), TypeError,
     r"^conditional_attribution\(conditions=\[int\]\): expected a Condition or a dict"),
    (lambda fn, p, x: conditional_attribution(fn, p, x, {"y": [9]}), ValueError,
     r"^conditional_attribution\(conditions=\[\{'y': \[9\]\}\]\): target out of range for an "
     r"output with 4 classes"),
    (lambda fn, p, x: conditional_attribution(fn, p, x, {"y": 1.5}), TypeError,
     r"^conditional_attribution\(conditions=\[\{'y': 1\.5\}\]\): expected an int or a "
     r"sequence of ints"),
    (lambda fn, p, x: Condition(target=(1,), channels={"5": "a"}), TypeError,
     r"^Condition\(channels=\{'5': 'a'\}\): expected an int or a sequence of ints, got str"),
    (lambda fn, p, x: conditional_attribution(fn, p, x, {"5": torch.ones(7, 2, 2)}),
     ValueError, r"^conditional_attribution\(conditions=\[\{'5': tensor of shape \(7, 2, 2\)"
                 r"\}\]\): expected a mask shaped like one sample of the layer's output "
                 r"\(7, 4, 4\)"),
    (lambda fn, p, x: conditional_attribution(fn, p, x, {}, record=3), TypeError,
     r"^conditional_attribution\(record=3\): expected a layer name"),
    (lambda fn, p, x: conditional_attribution(fn, p, x, {}, chunk_size=0), ValueError,
     r"^conditional_attribution\(chunk_size=0\): expected an int >= 1"),
    (lambda fn, p, x: conditional_attribution(fn, p, x, {}, exclude_parallel=1), TypeError,
     r"^conditional_attribution\(exclude_parallel=1\): expected True or False"),
    (lambda fn, p, x: conditional_attribution(lambda q, u: u, p, x, {}), TypeError,
     r"^conditional_attribution\(fn=function\): expected the fn that funcattr\.functionalize "
     r"returns"),
    (lambda fn, p, x: local_concept_relevance(fn, p, x, "5", torch.ones(3, 3)), ValueError,
     r"^local_concept_relevance\(region=tensor of shape \(3, 3\)\): expected a tensor that "
     r"broadcasts to the input's shape"),
    (lambda fn, p, x: top_concepts(fn, p, x, "5", k=8), ValueError,
     r"^top_concepts\(k=8\): expected at most the layer's 7 channels"),
    (lambda fn, p, x: attribution_graph(fn, p, x.expand(2, -1, -1, -1), "5", 1), ValueError,
     r"^attribution_graph\(input=tensor of shape \(2, 3, 8, 8\)\): expected one sample"),
    (lambda fn, p, x: attribution_graph(fn, p, x, "5", 1, width=(2, 0)), ValueError,
     r"^attribution_graph\(width=0\): expected an int >= 1"),
    (lambda fn, p, x: concept_statistics(fn, p, x, "5", max_target="mean"), ValueError,
     r"^concept_statistics\(max_target='mean'\): expected one of sum, max"),
    (lambda fn, p, x: merge_top_samples(top_samples(torch.ones(1, 2), torch.ones(1, 2), [0], 2),
                                        top_samples(torch.ones(1, 3), torch.ones(1, 3), [0], 2)),
     ValueError, r"^merge_top_samples\(first=TopSamples\(2, 2\), second=TopSamples\(3, 2\)\): "
                 r"expected tables of the same"),
    (lambda fn, p, x: Condition(channels={"y": (1,)}), ValueError,
     r"^Condition\(channels=\{'y': \.\.\.\}\): expected a layer name, got 'y', which names the "
     r"output"),
])
def test_errors(call, error, match):
    fn, params = functional(cnn())
    with pytest.raises(error, match=match):
        call(fn, params, images(1))


def test_every_concepts_message_says_what_was_expected_what_came_and_the_fix():
    """Each ``ValueError``/``TypeError`` raised in ``funcattr.concepts``, the concept report
    and the ``concepts`` command: ``<call>: expected ..., got .... <fix>.``"""
    files = [*sorted((ROOT / "funcattr" / "concepts").glob("*.py")),
             ROOT / "funcattr" / "concept_report.py", ROOT / "funcattr" / "cli" / "concepts.py"]
    checked, wrong = 0, []
    for path in files:
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call)):
                continue
            assert isinstance(node.exc.func, ast.Name | ast.Attribute), f"{path.name}:{node.lineno}"
            name = ast.unparse(node.exc.func)
            assert name != "RuntimeError", f"{path.name}:{node.lineno}"
            if name not in ("ValueError", "TypeError"):
                continue
            text = _message(node.exc.args[0]) if node.exc.args else None
            checked += 1
            if text is None or not re.search(r"^[\w.{}]+(\[.*\])?\(.*\): .*expected .*got .*"
                                             r"[.;] \S.*\.$", text, re.S):
                wrong.append(f"{path.name}:{node.lineno}: {text}")
    assert checked > 30
    assert not wrong, "\n".join(wrong)
