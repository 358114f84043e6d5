"""Canonizers as pure transforms: laws, Zennit equivalence, data-flow merging, errors.

Laws (hypothesis, over random Sequential stacks of Conv1d / Conv2d / ConvTranspose2d (with
groups) / Linear and BatchNorm1d/2d / FrozenBatchNorm2d, with and without bias):
1. the canonized model gives the original output (float64, tight tolerance);
2. the original model and params are untouched (values, data_ptr, hooks, forwards);
3. canonizing twice gives the same view and params as canonizing once.
Relevance equals Zennit's on small hand-made conv-BN nets (Zennit runs on a deep copy: its
canonizers leave merged parameters behind in ``named_parameters()``).
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
import threading
from typing import Any

import pytest
import torch
import zennit.canonizers as zcan
import zennit.composites as zc
from helpers import snapshot as model_snapshot
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import Tensor, nn
from torchvision.ops import FrozenBatchNorm2d

import funcattr
from funcattr import composites as fc
from funcattr import types
from funcattr.canonizers import (
    CANONIZERS,
    AttributeCanonizer,
    Canonizer,
    CompositeCanonizer,
    MergeBatchNorm,
    NamedMergeBatchNorm,
    SequentialMergeBatchNorm,
    TracedMergeBatchNorm,
    ViewBuilder,
    canonizers_for,
    get_canonizer,
    identity_transform,
    register_canonizer,
)
from funcattr.functional import model_params
from funcattr.layer import Sum
from funcattr.rules import Epsilon, Norm, Pass

# Canonized outputs differ from the original by rounding only: merged weights are products of
# the original ones. Relevances against Zennit: both compute the same products in float64.
RTOL = 1e-12
ZENNIT_RTOL = 1e-10


# --------------------------------------------------------------------------------------------
# Helpers (shared with test_torchvision.py)
# --------------------------------------------------------------------------------------------

@pytest.fixture(autouse=True)
def _one_thread(request):
    """Small models run faster on one thread (thread hand-offs cost more than they save)."""
    if request.node.get_closest_marker("slow"):
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def randomise(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random BatchNorm statistics and affine parameters, random biases; eval mode."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, types.BatchNorm):
                module.running_mean.normal_(0.0, 0.5, generator=generator)
                module.running_var.uniform_(0.5, 2.0, generator=generator)
                if module.weight is not None:
                    module.weight.normal_(1.0, 0.3, generator=generator)
                    module.bias.normal_(0.0, 0.3, generator=generator)
            elif isinstance(getattr(module, "bias", None), Tensor) and isinstance(
                    module, types.Linear):
                module.bias.normal_(0.0, 0.1, generator=generator)
    return model.eval()


def snapshot(model: nn.Module) -> dict[str, Any]:
    """Everything a canonizer must leave alone: ``helpers.snapshot`` (values, storage, hooks,
    modes, forwards) plus parameter identity, attribute names and registries."""
    modules = dict(model.named_modules(remove_duplicate=False))
    return {
        **model_snapshot(model),
        "params": [id(p) for p in model.parameters()],
        "dicts": {name: sorted(m.__dict__) for name, m in modules.items()},
        "registries": {name: (tuple(m._parameters), tuple(m._buffers))
                       for name, m in modules.items()},
    }


def assert_unchanged(model: nn.Module, before: dict[str, Any]) -> None:
    after = snapshot(model)
    assert after["state"].keys() == before["state"].keys()
    for key, value in before["state"].items():
        assert torch.equal(after["state"][key], value), f"{key} changed"
    for key in before:
        if key != "state":
            assert after[key] == before[key], f"{key} changed"


def assert_close(actual: Tensor, expected: Tensor, rtol: float = RTOL) -> None:
    """Close relative to the largest magnitude of ``expected``."""
    assert actual.shape == expected.shape
    scale = max(expected.abs().max().item(), 1e-300)
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=rtol * scale)


def view_output(canonizer: Canonizer, model: nn.Module, x: Tensor) -> Tensor:
    view, params = canonizer(model, model_params(model))
    return torch.func.functional_call(view, params, (x,))


def zennit_relevance(model: nn.Module, composite: Any, x: Tensor, grad: Tensor) -> Tensor:
    """Zennit's relevance, on a deep copy (Zennit's canonizers leave state behind)."""
    leaf = x.clone().requires_grad_(True)
    with composite.context(copy.deepcopy(model)) as modified:
        output = modified(leaf)
        (relevance,) = torch.autograd.grad(output, leaf, grad)
    return relevance


def funcattr_relevance(model: nn.Module, composite: Any, x: Tensor, grad: Tensor,
                       canonizers: Any = None) -> Tensor:
    fn, params = funcattr.functionalize(model, composite, canonizers)
    return funcattr.gradient(fn, params, x, grad)[1]


# --------------------------------------------------------------------------------------------
# Small models
# --------------------------------------------------------------------------------------------

def conv_bn_net(bias: bool = True, seed: int = 0) -> nn.Module:
    """Conv-BN-ReLU twice, then Linear-BN1d-ReLU-Linear: every BN follows a linear layer."""
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1, bias=bias), nn.BatchNorm2d(4), nn.ReLU(),
        nn.Conv2d(4, 4, 3, padding=1, stride=2, bias=bias), nn.BatchNorm2d(4), nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 4 * 4, 6, bias=bias), nn.BatchNorm1d(6), nn.ReLU(),
        nn.Linear(6, 3),
    )
    return randomise(model, seed)


class Shuffled(nn.Module):
    """Registration order is not the data flow: bn registered before conv, a BN after ReLU."""

    def __init__(self) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(4)
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(4)
        self.head = nn.Linear(4, 2)

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.relu(self.bn2(self.conv2(x)))
        return self.head(x.mean(dim=(2, 3)))


class DenseLike(nn.Module):
    """A convolution registered before a batch norm of concatenated features (DenseNet-like):
    registration order pairs them, the data flow does not."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 1)
        self.norm = nn.BatchNorm2d(5)

    def forward(self, x):
        return self.norm(torch.cat([x, self.conv(x)], 1))


def input_for(model: nn.Module, seed: int = 1) -> Tensor:
    generator = torch.Generator().manual_seed(seed)
    first = next(m for m in model.modules() if isinstance(m, types.Linear))
    if isinstance(first, nn.Linear):
        return torch.randn(3, first.in_features, generator=generator)
    dims = first.weight.ndim - 2
    return torch.randn(2, first.in_channels if isinstance(first, types.ConvolutionStandard)
                       else first.weight.shape[0], *(8,) * dims, generator=generator)


# --------------------------------------------------------------------------------------------
# Hypothesis: random conv/BN stacks
# --------------------------------------------------------------------------------------------

@st.composite
def stacks(draw) -> tuple[nn.Module, Tensor]:
    kind = draw(st.sampled_from(["conv1d", "conv2d", "dense"]))
    seed = draw(st.integers(0, 2**16))
    torch.manual_seed(seed)
    channels = draw(st.integers(1, 4))
    size = 8
    layers: list[nn.Module] = []
    if draw(st.booleans()):  # an input batch norm (merged forward by TracedMergeBatchNorm)
        layers.append({"conv1d": nn.BatchNorm1d, "conv2d": nn.BatchNorm2d,
                       "dense": nn.BatchNorm1d}[kind](channels))
    for _ in range(draw(st.integers(1, 3))):
        bias = draw(st.booleans())
        groups = draw(st.sampled_from([1, 2])) if channels % 2 == 0 else 1
        out = groups * draw(st.integers(1, 3))
        if kind == "dense":
            layers.append(nn.Linear(channels, out, bias=bias))
        elif kind == "conv1d":
            padding = draw(st.sampled_from([0, 1])) if size >= 5 else 1
            layers.append(nn.Conv1d(channels, out, 3, padding=padding, groups=groups, bias=bias))
            size = size + 2 * padding - 2
        elif draw(st.booleans()):
            stride = draw(st.sampled_from([1, 2]))
            layers.append(nn.ConvTranspose2d(channels, out, 2, stride=stride, groups=groups,
                                             bias=bias))
            size = (size - 1) * stride + 2
        else:
            padding = draw(st.sampled_from([0, 1])) if size >= 5 else 1
            layers.append(nn.Conv2d(channels, out, 3, padding=padding, groups=groups, bias=bias))
            size = size + 2 * padding - 2
        channels = out
        if draw(st.booleans()):
            layers.append(nn.ReLU())  # blocks the merge of the batch norm after it
        choice = draw(st.sampled_from(["bn", "bn", "frozen", "none"]))
        if choice == "frozen" and kind == "conv2d":
            layers.append(FrozenBatchNorm2d(channels))
        elif choice != "none":
            affine = draw(st.booleans())
            norm = {"conv1d": nn.BatchNorm1d, "conv2d": nn.BatchNorm2d, "dense": nn.BatchNorm1d}
            layers.append(norm[kind](channels, affine=affine))
        if draw(st.booleans()):
            layers.append(nn.ReLU())
    model = randomise(nn.Sequential(*layers), seed)
    first = (2, layers[0].num_features if isinstance(layers[0], types.BatchNorm)
             else channels)
    start = layers[0] if not isinstance(layers[0], types.BatchNorm) else layers[1]
    in_channels = start.in_features if isinstance(start, nn.Linear) else start.in_channels
    shape = {"dense": (), "conv1d": (8,), "conv2d": (8, 8)}[kind]
    x = torch.randn(first[0], in_channels, *shape, generator=torch.Generator().manual_seed(seed))
    return model, x


def _randomise_frozen(model: nn.Module, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, FrozenBatchNorm2d):
            module.running_mean.normal_(0.0, 0.5, generator=generator)
            module.running_var.uniform_(0.5, 2.0, generator=generator)
            module.weight.normal_(1.0, 0.3, generator=generator)
            module.bias.normal_(0.0, 0.3, generator=generator)


LAW_CANONIZERS = [SequentialMergeBatchNorm(), TracedMergeBatchNorm(),
                  TracedMergeBatchNorm(following=False)]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(stacks(), st.sampled_from(LAW_CANONIZERS))
def test_laws_on_random_stacks(stack, canonizer):
    model, x = stack
    _randomise_frozen(model, 7)
    expected = model(x)
    before = snapshot(model)
    params = model_params(model)
    originals = {k: v.clone() for k, v in params.items()}
    view, view_params = canonizer(model, params)
    # law 1: same output, through the view params and through the view's own tensors
    assert_close(torch.func.functional_call(view, view_params, (x,)), expected)
    assert_close(view(x), expected)
    # law 2: the model and its params are untouched
    assert_unchanged(model, before)
    for key, value in params.items():
        assert torch.equal(value, originals[key])
    # law 3: canonizing twice is canonizing once
    view2, view_params2 = canonizer(view, view_params)
    assert view_params2.keys() == view_params.keys()
    for key, value in view_params.items():
        assert torch.equal(view_params2[key], value)
    assert [type(m) for m in view2.modules()] == [type(m) for m in view.modules()]
    # Sequential merging leaves no batch norm directly after a linear layer
    if isinstance(canonizer, SequentialMergeBatchNorm):
        assert SequentialMergeBatchNorm().pairs(view) == []


# --------------------------------------------------------------------------------------------
# Merge math and layer kinds
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("groups", [1, 2, 4])
@pytest.mark.parametrize("bias", [True, False])
def test_grouped_conv_transpose_merges_per_group(groups, bias):
    model = randomise(nn.Sequential(
        nn.ConvTranspose2d(4, 8, 3, stride=2, groups=groups, bias=bias), nn.BatchNorm2d(8)
    ))
    x = torch.randn(2, 4, 5, 5)
    assert_close(view_output(SequentialMergeBatchNorm(), model, x), model(x))


def test_zennit_merges_grouped_conv_transpose_wrongly():
    """The reason for funcattr's per-group merge: Zennit scales dimension 1 as if groups=1."""
    model = randomise(nn.Sequential(nn.ConvTranspose2d(4, 4, 3, groups=2), nn.BatchNorm2d(4)))
    x = torch.randn(1, 4, 5, 5)
    zennit = zc.LayerMapComposite([], canonizers=[zcan.SequentialMergeBatchNorm()])
    with pytest.raises(RuntimeError, match="size of tensor"):
        with zennit.context(copy.deepcopy(model)):
            pass
    assert_close(view_output(SequentialMergeBatchNorm(), model, x), model(x))


def test_frozen_batch_norm_and_affine_free_batch_norm_merge():
    model = nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), FrozenBatchNorm2d(4), nn.ReLU(),
                          nn.Conv2d(4, 2, 1), nn.BatchNorm2d(2, affine=False))
    randomise(model)
    _randomise_frozen(model, 3)
    x = torch.randn(2, 3, 6, 6)
    view, transform = SequentialMergeBatchNorm().apply(model)
    assert isinstance(view[1], nn.Identity) and isinstance(view[4], nn.Identity)
    assert view[0].bias is not None and model[0].bias is None
    assert_close(view(x), model(x))
    assert set(transform(model_params(model))) == set(model_params(view))


def test_merged_values_follow_the_formula():
    conv, bn = nn.Conv1d(2, 3, 1), nn.BatchNorm1d(3, eps=0.1)
    model = randomise(nn.Sequential(conv, bn))
    _, params = SequentialMergeBatchNorm()(model, model_params(model))
    scale = bn.weight / (bn.running_var + 0.1).sqrt()
    torch.testing.assert_close(params["0.weight"], conv.weight * scale[:, None, None])
    torch.testing.assert_close(params["0.bias"],
                               (conv.bias - bn.running_mean) * scale + bn.bias)
    assert set(params) == {"0.weight", "0.bias"}


def test_unchanged_model_is_returned_as_is():
    model = nn.Sequential(nn.Linear(2, 2), nn.ReLU())
    view, transform = SequentialMergeBatchNorm().apply(model)
    assert view is model and transform is identity_transform


def test_unchanged_modules_are_shared_changed_ones_copied():
    model = conv_bn_net()
    view, _ = SequentialMergeBatchNorm().apply(model)
    assert view is not model and view[2] is model[2] and view[6] is model[6]
    assert view[0] is not model[0] and view[0].weight is not model[0].weight
    assert isinstance(view[1], nn.Identity) and isinstance(model[1], nn.BatchNorm2d)


def test_shared_batch_norm_merges_into_each_named_linear_as_zennit():
    class TwoPaths(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b, self.bn = nn.Linear(3, 4), nn.Linear(3, 4), nn.BatchNorm1d(4)

        def forward(self, x):
            return self.bn(self.a(x)) * self.bn(self.b(x))

    model = randomise(TwoPaths())
    x = torch.randn(5, 3)
    canonizer = NamedMergeBatchNorm([(["a", "b"], "bn")])
    assert_close(view_output(canonizer, model, x), model(x))
    zennit = zcan.NamedMergeBatchNorm([(["a", "b"], "bn")])
    with zc.LayerMapComposite([], canonizers=[zennit]).context(copy.deepcopy(model)) as mod:
        assert_close(view_output(canonizer, model, x), mod(x))


def test_named_merge_accepts_zennit_json_format():
    model = conv_bn_net()
    canonizer = NamedMergeBatchNorm([[["0"], "1"], [["3"], "4"], ["7", "8"]])
    assert canonizer.name_map == ((("0",), "1"), (("3",), "4"), (("7",), "8"))
    x = torch.randn(2, 3, 8, 8)
    assert_close(view_output(canonizer, model, x), model(x))


# --------------------------------------------------------------------------------------------
# Data-flow merging
# --------------------------------------------------------------------------------------------

def test_traced_merge_follows_data_flow_not_registration_order():
    model = randomise(Shuffled())
    x = torch.randn(2, 3, 6, 6)
    assert TracedMergeBatchNorm().pairs(model) == [(("conv1",), "bn1"), (("conv2",), "bn2")]
    # registration order: bn1 comes before conv1 and is missed
    assert SequentialMergeBatchNorm().pairs(model) == [(("conv2",), "bn2")]
    view, _ = TracedMergeBatchNorm().apply(model)
    assert isinstance(view.bn1, nn.Identity) and isinstance(view.bn2, nn.Identity)
    assert_close(view_output(TracedMergeBatchNorm(), model, x), model(x))


class Branchy(nn.Module):
    """Pairs that must not merge, and one batch norm that merges into the conv after it."""

    def __init__(self) -> None:
        super().__init__()
        self.shared_out = nn.Conv2d(3, 3, 1)
        self.bn_a = nn.BatchNorm2d(3)
        self.twice = nn.Conv2d(3, 3, 1)
        self.bn_b = nn.BatchNorm2d(3)
        self.bn_c = nn.BatchNorm2d(3)
        self.bn_d = nn.BatchNorm2d(3)
        self.valid = nn.Conv2d(3, 2, 3, groups=1)
        self.bn_e = nn.BatchNorm2d(2)
        self.padded = nn.Conv2d(2, 2, 3, padding=1)
        self.relu = nn.ReLU()

    def forward(self, x):
        y = self.shared_out(x)
        x = self.bn_a(y) + y                      # conv output used twice: no merge
        x = self.bn_b(self.twice(self.twice(x)))  # conv called twice: no merge
        x = self.relu(self.bn_c(x))               # after a batch norm, before a ReLU: stays
        x = self.relu(self.valid(self.bn_d(x)))   # before a conv without padding: merged
        return self.padded(self.bn_e(x))          # before a conv with padding: stays


def test_traced_merge_skips_unsafe_pairs():
    model = randomise(Branchy())
    x = torch.randn(2, 3, 7, 7)
    canonizer = TracedMergeBatchNorm()
    assert canonizer.pairs(model) == []
    assert canonizer.following_pairs(model) == [(("valid",), "bn_d")]
    assert TracedMergeBatchNorm(following=False).following_pairs(model) == []
    view, _ = canonizer.apply(model)
    kinds = {name: type(m).__name__ for name, m in view.named_children()}
    assert kinds["bn_d"] == "Identity"
    assert all(kinds[n] == "BatchNorm2d" for n in ("bn_a", "bn_b", "bn_c", "bn_e"))
    assert_close(view_output(canonizer, model, x), model(x))


@pytest.mark.parametrize("groups", [1, 2])
def test_following_merge_into_grouped_conv_and_linear(groups):
    model = randomise(nn.Sequential(
        nn.BatchNorm2d(4), nn.Conv2d(4, 6, 3, groups=groups, bias=False), nn.ReLU(),
        nn.Flatten(), nn.BatchNorm1d(6 * 16), nn.Linear(6 * 16, 3),
    ))
    x = torch.randn(2, 4, 6, 6)
    canonizer = TracedMergeBatchNorm()
    assert canonizer.following_pairs(model) == [(("1",), "0"), (("5",), "4")]
    assert_close(view_output(canonizer, model, x), model(x))


def test_conv_followed_by_bn_followed_by_conv_merges_backwards_first():
    model = randomise(nn.Sequential(nn.Conv2d(2, 3, 1), nn.BatchNorm2d(3), nn.Conv2d(3, 2, 1)))
    canonizer = TracedMergeBatchNorm()
    assert canonizer.pairs(model) == [(("0",), "1")]
    assert canonizer.following_pairs(model) == []
    x = torch.randn(2, 2, 4, 4)
    assert_close(view_output(canonizer, model, x), model(x))


# --------------------------------------------------------------------------------------------
# AttributeCanonizer and CompositeCanonizer
# --------------------------------------------------------------------------------------------

class Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.bn = nn.BatchNorm2d(3)
        self.relu = nn.ReLU()

    def forward(self, x):
        return self.relu(self.bn(self.conv(x)) + x)


def _sum_forward(self, x):
    return self.relu(self.canonizer_sum(torch.stack([x, self.bn(self.conv(x))], dim=-1)))


def _residual_map(name, module):
    if isinstance(module, Residual):
        return {"forward": _sum_forward.__get__(module), "canonizer_sum": Sum()}
    return None


@pytest.mark.filterwarnings("ignore::funcattr.ModelCheckWarning")  # un-canonized on purpose
def test_attribute_canonizer_binds_forward_to_the_view_copy():
    model = randomise(nn.Sequential(Residual(), Residual()))
    x = torch.randn(2, 3, 5, 5)
    before = snapshot(model)
    view, transform = AttributeCanonizer(_residual_map).apply(model)
    assert_unchanged(model, before)
    for block in view:
        assert block.forward.__self__ is block
        assert list(block._modules) == ["conv", "bn", "relu", "canonizer_sum"]
    assert_close(view(x), model(x))
    assert transform(model_params(model)).keys() == model_params(view).keys()
    # the functional tree re-binds the forward again: the Sum gets Norm's rule
    composite = fc.LayerMapComposite([(Sum, Norm()), (types.Convolution, Epsilon())])
    fn, params = funcattr.functionalize(model, composite, AttributeCanonizer(_residual_map))
    assert sorted(fn.rules) == ["0.canonizer_sum", "0.conv", "1.canonizer_sum", "1.conv"]
    output, relevance = funcattr.gradient(fn, params, x)
    assert_close(output, model(x))
    assert torch.isfinite(relevance).all()


def test_attribute_canonizer_sets_plain_attributes_and_parameters():
    def attribute_map(name, module):
        if isinstance(module, nn.ReLU):
            return {"inplace": True}
        if isinstance(module, nn.Linear):
            return {"extra": nn.Parameter(torch.ones(2))}
        return None

    model = nn.Sequential(nn.Linear(2, 2), nn.ReLU())
    view, transform = AttributeCanonizer(attribute_map).apply(model)
    assert view[1].inplace and not model[1].inplace
    assert "extra" in dict(view[0].named_parameters()) and not hasattr(model[0], "extra")
    params = transform(model_params(model))
    assert torch.equal(params["0.extra"], torch.ones(2))


def test_composite_canonizer_composes_transforms():
    model = randomise(nn.Sequential(Residual(), nn.Conv2d(3, 3, 1), nn.BatchNorm2d(3)))
    x = torch.randn(2, 3, 5, 5)
    canonizer = CompositeCanonizer([SequentialMergeBatchNorm(), AttributeCanonizer(_residual_map)])
    view, params = canonizer(model, model_params(model))
    assert isinstance(view[0].bn, nn.Identity) and isinstance(view[0].canonizer_sum, Sum)
    assert_close(torch.func.functional_call(view, params, (x,)), model(x))
    assert canonizer == CompositeCanonizer(list(canonizer.canonizers))
    assert hash(canonizer) == hash(CompositeCanonizer(list(canonizer.canonizers)))


def test_canonizers_are_values():
    assert SequentialMergeBatchNorm() == SequentialMergeBatchNorm()
    assert hash(TracedMergeBatchNorm()) == hash(TracedMergeBatchNorm())
    assert TracedMergeBatchNorm() != TracedMergeBatchNorm(following=False)
    assert NamedMergeBatchNorm([(["a"], "b")]) == NamedMergeBatchNorm([[["a"], "b"]])
    assert repr(SequentialMergeBatchNorm()) == "SequentialMergeBatchNorm()"
    assert AttributeCanonizer(_residual_map) == AttributeCanonizer(_residual_map)
    with pytest.raises(TypeError, match="abstract"):
        MergeBatchNorm()


# --------------------------------------------------------------------------------------------
# functionalize: canonizers through composites and arguments, per-call transform
# --------------------------------------------------------------------------------------------

@pytest.mark.filterwarnings("ignore::funcattr.ModelCheckWarning")  # un-canonized on purpose
def test_canonizers_via_composite_and_argument_agree():
    model = conv_bn_net()
    x = torch.randn(2, 3, 8, 8)
    grad = torch.eye(3)[[1, 2]]
    by_composite = funcattr_relevance(
        model, fc.EpsilonPlusFlat(canonizers=[SequentialMergeBatchNorm()]), x, grad)
    by_argument = funcattr_relevance(model, fc.EpsilonPlusFlat(), x, grad,
                                     SequentialMergeBatchNorm())
    assert torch.equal(by_composite, by_argument)
    without = funcattr_relevance(model, fc.EpsilonPlusFlat(), x, grad)
    assert not torch.allclose(without, by_argument)


def test_transform_runs_on_every_call():
    model = conv_bn_net()
    x = torch.randn(2, 3, 8, 8)
    fn, params = funcattr.functionalize(model, None, SequentialMergeBatchNorm())
    assert_close(fn(params, x), model(x))
    changed = dict(params, **{"1.running_var": params["1.running_var"] * 2})
    other = copy.deepcopy(model)
    other[1].running_var.mul_(2)
    assert_close(fn(changed, x), other(x))


def test_ruled_module_context_with_canonizers():
    model = conv_bn_net()
    x = torch.randn(2, 3, 8, 8)
    grad = torch.eye(3)[[0, 0]]
    composite = fc.EpsilonPlusFlat(canonizers=[SequentialMergeBatchNorm()])
    leaf = x.clone().requires_grad_(True)
    with composite.context(model) as modified:
        output = modified(leaf)
        (relevance,) = torch.autograd.grad(output, leaf, grad)
    assert_close(relevance, funcattr_relevance(model, composite, x, grad))


def test_threads_share_one_functionalized_canonized_model():
    model = conv_bn_net()
    fn, params = funcattr.functionalize(model, fc.EpsilonPlus(), SequentialMergeBatchNorm())
    inputs = [torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(i))
              for i in range(4)]
    expected = [funcattr.gradient(fn, params, x)[1] for x in inputs]
    results: list[Any] = [None] * 4

    def work(index):
        results[index] = funcattr.gradient(fn, params, inputs[index])[1]

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for result, reference in zip(results, expected):
        assert torch.equal(result, reference)


class _Probe(nn.Module):
    """While it is traced, runs another model's plain forward: what another thread would see
    at that moment (``torch.fx.symbolic_trace`` patches ``torch.nn.Module.__call__`` for the
    whole process, and the other model's calls then fail with NameError)."""

    def __init__(self, other: nn.Module, x: Tensor, seen: list) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.__dict__["probe"] = (other, x, seen)  # not a child: not part of the traced tree

    def forward(self, x: Tensor) -> Tensor:
        other, sample, seen = self.__dict__["probe"]
        seen.append((torch.nn.Module.__call__, torch.nn.Module.__getattr__, other(sample)))
        return self.bn(self.conv(x))


def test_traced_merge_changes_no_global_state_while_tracing():
    call, getattr_ = torch.nn.Module.__call__, torch.nn.Module.__getattr__
    other, x = conv_bn_net(), torch.randn(2, 3, 8, 8)
    expected = other(x)
    seen: list = []
    model = _Probe(other, x, seen).eval()
    assert TracedMergeBatchNorm().pairs(model) == [(("conv",), "bn")]
    assert len(seen) == 1
    (during_call, during_getattr, output), = seen
    assert during_call is call and during_getattr is getattr_
    assert torch.equal(output, expected)


def test_traced_merge_while_another_thread_runs_a_model():
    """Issue 14, item 18: tracing in one thread while another thread runs plain forwards."""
    other, x = conv_bn_net(), torch.randn(2, 3, 8, 8)
    expected = other(x)
    traced = conv_bn_net(seed=1)
    errors: list[BaseException] = []
    mismatches = []
    done = threading.Event()

    def run_other() -> None:
        try:
            while not done.is_set():
                if not torch.equal(other(x), expected):
                    mismatches.append(True)
        except BaseException as error:  # reported below
            errors.append(error)

    thread = threading.Thread(target=run_other)
    thread.start()
    try:
        for _ in range(30):
            view, transform = TracedMergeBatchNorm().apply(traced)
    finally:
        done.set()
        thread.join()
    assert errors == [] and mismatches == []
    assert_close(torch.func.functional_call(view, transform(model_params(traced)), (x,)),
                 traced(x))


def test_vmap_over_inputs_equals_loop():
    model = conv_bn_net()
    fn, params = funcattr.functionalize(model, None, TracedMergeBatchNorm())
    x = torch.randn(4, 1, 3, 8, 8)
    batched = torch.func.vmap(fn, in_dims=(None, 0))(params, x)
    for index in range(4):
        assert_close(batched[index], model(x[index]))


# --------------------------------------------------------------------------------------------
# Zennit equivalence on hand-made nets
# --------------------------------------------------------------------------------------------

COMPOSITES = {
    "EpsilonPlusFlat": ({}, zc.EpsilonPlusFlat, fc.EpsilonPlusFlat),
    "EpsilonGammaBox": ({"low": -3.0, "high": 3.0}, zc.EpsilonGammaBox, fc.EpsilonGammaBox),
    "EpsilonAlpha2Beta1": ({}, zc.EpsilonAlpha2Beta1, fc.EpsilonAlpha2Beta1),
}


@pytest.mark.parametrize("name", sorted(COMPOSITES))
@pytest.mark.parametrize("bias", [True, False])
def test_relevance_equals_zennit_on_conv_bn_net(name, bias):
    kwargs, zennit_cls, funcattr_cls = COMPOSITES[name]
    model = conv_bn_net(bias=bias, seed=3)
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(4))
    grad = torch.eye(3)[[0, 2]]
    expected = zennit_relevance(
        model, zennit_cls(canonizers=[zcan.SequentialMergeBatchNorm()], **kwargs), x, grad)
    for canonizer in (SequentialMergeBatchNorm(), TracedMergeBatchNorm(following=False),
                      NamedMergeBatchNorm([(["0"], "1"), (["3"], "4"), (["7"], "8")])):
        actual = funcattr_relevance(model, funcattr_cls(canonizers=[canonizer], **kwargs),
                                    x, grad)
        assert_close(actual, expected, ZENNIT_RTOL)


def test_relevance_equals_zennit_with_named_merge():
    model = randomise(Shuffled())
    x = torch.randn(2, 3, 6, 6)
    grad = torch.eye(2)[[0, 1]]
    name_map = [(["conv1"], "bn1"), (["conv2"], "bn2")]
    expected = zennit_relevance(
        model, zc.EpsilonPlusFlat(canonizers=[zcan.NamedMergeBatchNorm(name_map)]), x, grad)
    for canonizer in (NamedMergeBatchNorm(name_map), TracedMergeBatchNorm()):
        actual = funcattr_relevance(model, fc.EpsilonPlusFlat(canonizers=[canonizer]), x, grad)
        assert_close(actual, expected, ZENNIT_RTOL)


# --------------------------------------------------------------------------------------------
# Gradients with respect to params flow through the canonized params
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("canonizer", [SequentialMergeBatchNorm(), TracedMergeBatchNorm()])
def test_gradient_of_attribution_wrt_params_matches_finite_differences(canonizer):
    torch.manual_seed(0)
    model = randomise(nn.Sequential(
        nn.Conv2d(2, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(),
        nn.Linear(3 * 4 * 4, 2),
    ))
    composite = fc.LayerMapComposite([(types.Linear, Epsilon(epsilon=0.5)),
                                      (types.Activation, Pass())])
    fn, params = funcattr.functionalize(model, composite, canonizer)
    x = torch.randn(2, 2, 4, 4, generator=torch.Generator().manual_seed(1))
    weights = torch.randn(2, 2, 4, 4, generator=torch.Generator().manual_seed(2))
    floating = {k: v for k, v in params.items() if v.is_floating_point()}
    fixed = {k: v for k, v in params.items() if not v.is_floating_point()}

    def loss(free):
        relevance = funcattr.gradient(fn, {**fixed, **free}, x, funcattr.one_hot(1))[1]
        return (relevance * weights).sum()

    grads = torch.func.grad(loss)(floating)
    step = 1e-6
    for key in ("0.weight", "0.bias", "1.weight", "1.bias", "1.running_mean", "1.running_var",
                "4.weight"):
        for index in (0, -1):
            flat = floating[key].reshape(-1)
            plus, minus = flat.clone(), flat.clone()
            plus[index] += step
            minus[index] -= step
            up = loss({**floating, key: plus.reshape(floating[key].shape)})
            down = loss({**floating, key: minus.reshape(floating[key].shape)})
            numeric = (up - down) / (2 * step)
            analytic = grads[key].reshape(-1)[index]
            assert abs(analytic - numeric) <= 1e-6 * max(1.0, abs(numeric)), key
    assert grads["1.running_var"].abs().sum() > 0


# --------------------------------------------------------------------------------------------
# The model is untouched, also when an error is raised midway
# --------------------------------------------------------------------------------------------

def test_model_untouched_by_functionalize_and_attribution():
    model = conv_bn_net(bias=False)
    handle = model[0].register_forward_hook(lambda *args: None)
    before = snapshot(model)
    composite = fc.EpsilonGammaBox(low=-3.0, high=3.0, canonizers=[SequentialMergeBatchNorm()])
    fn, params = funcattr.functionalize(model, composite, TracedMergeBatchNorm())
    funcattr.gradient(fn, params, torch.randn(2, 3, 8, 8), torch.ones(2, 3))
    assert_unchanged(model, before)
    assert model[0].bias is None and "0.bias" not in model.state_dict()
    handle.remove()


def test_model_untouched_when_a_canonizer_fails_midway():
    model = randomise(nn.Sequential(Residual(), Residual(), nn.Conv2d(3, 3, 1),
                                    nn.BatchNorm2d(3)))
    before = snapshot(model)
    calls = []

    def failing(name, module):
        calls.append(name)
        if name == "1":
            raise RuntimeError("attribute map failed")
        return _residual_map(name, module)

    canonizer = CompositeCanonizer([SequentialMergeBatchNorm(), AttributeCanonizer(failing)])
    with pytest.raises(RuntimeError, match="attribute map failed"):
        funcattr.functionalize(model, fc.EpsilonPlus(), canonizer)
    assert "0" in calls
    assert_unchanged(model, before)


# --------------------------------------------------------------------------------------------
# The registry: names, arguments, which canonizer fits which model
# --------------------------------------------------------------------------------------------

def test_every_registered_name_reads_as_its_class_name():
    for name, spec in CANONIZERS.items():
        cls = spec.load()
        assert issubclass(cls, Canonizer) and not inspect.isabstract(cls), name
        assert type(get_canonizer(cls.__name__, **_arguments(spec))) is cls, name
        assert type(get_canonizer(name, **_arguments(spec))) is cls, name
        assert spec.summary() and spec.summary() in inspect.getdoc(cls).replace("\n", " ")


def _arguments(spec) -> dict:
    return {"name_map": [(["0"], "1")]} if spec.arguments() else {}


def test_registered_arguments_are_the_constructors():
    assert CANONIZERS["named_merge_batch_norm"].arguments() == ("name_map",)
    assert CANONIZERS["traced_merge_batch_norm"].arguments() == ()
    assert get_canonizer("named_merge_batch_norm", name_map=[(["0"], "1")]) == (
        NamedMergeBatchNorm([(["0"], "1")]))
    assert get_canonizer("traced_merge_batch_norm", following=False) == TracedMergeBatchNorm(
        following=False)


@pytest.mark.parametrize(("model", "expected"), [
    (conv_bn_net, [SequentialMergeBatchNorm()]),
    (Shuffled, [TracedMergeBatchNorm()]),  # registration order misses conv1 -> bn1
    (lambda: nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)), []),
    (lambda: nn.Sequential(nn.BatchNorm1d(3), nn.ReLU(), nn.Linear(3, 2)), []),
], ids=["conv_bn", "shuffled", "no_batch_norm", "batch_norm_before_relu"])
def test_canonizers_for_generic_models(model, expected):
    model = model().eval()
    before = snapshot(model)
    chosen = canonizers_for(model)
    assert chosen == expected
    assert_unchanged(model, before)
    if chosen:
        x = input_for(model)
        assert_close(view_output(chosen[0], model, x), model(x))
        view, _ = chosen[0].apply(model)
        assert not any(isinstance(m, types.BatchNorm) for m in view.modules())


def test_canonizers_for_a_model_with_mismatched_registration_order():
    assert canonizers_for(DenseLike().eval()) == []


def test_canonizers_for_untraceable_model_uses_registration_order():
    class DataDependent(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(1, 1, 1)
            self.bn = nn.BatchNorm2d(1)

        def forward(self, x):
            return self.bn(self.conv(x)) if x.sum() > 0 else x

    assert canonizers_for(DataDependent().eval()) == [SequentialMergeBatchNorm()]


def test_canonizers_for_plain_models_does_not_import_torchvision():
    import subprocess
    import sys

    code = ("import sys, torch, funcattr\n"
            "from funcattr.canonizers import canonizers_for\n"
            "model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))\n"
            "print(canonizers_for(model), 'torchvision' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True)
    assert result.stdout.strip() == "[SequentialMergeBatchNorm()] False"


def test_register_canonizer():
    @register_canonizer("test_relu_copy", auto=True)
    @dataclasses.dataclass(frozen=True)
    class ReLUCopy(AttributeCanonizer):
        """Copies every ReLU (a canonizer that fits models with ReLUs)."""

        attribute_map: Any = lambda name, module: (
            {"inplace": False} if isinstance(module, nn.ReLU) else None)

        @classmethod
        def fits(cls, model):
            return any(isinstance(m, nn.ReLU) for m in model.modules())

    try:
        assert get_canonizer("test_relu_copy") == ReLUCopy()
        assert get_canonizer("TestReLUCopy") == ReLUCopy()  # read like the class name
        assert canonizers_for(nn.Sequential(nn.Linear(2, 2), nn.ReLU())) == [ReLUCopy()]
        assert canonizers_for(conv_bn_net()) == [ReLUCopy()]  # before the fallbacks
        with pytest.raises(ValueError, match=r"^register_canonizer\(name='Test_ReLU_Copy'\): "
                           r"expected a new name, got one that reads as the registered "
                           r"'test_relu_copy'\. Choose another name\.$"):
            register_canonizer("Test_ReLU_Copy")(ReLUCopy)
    finally:
        del CANONIZERS["test_relu_copy"]


@pytest.mark.parametrize(("call", "error", "match"), [
    (lambda: get_canonizer("vgggg"), ValueError,
     r"^get_canonizer\(name='vgggg'\): expected a registered canonizer name, got an unknown "
     r"one\. Use one of vgg, resnet, .*; did you mean 'vgg'\?$"),
    (lambda: get_canonizer("nothing_like_it"), ValueError,
     r"expected a registered canonizer name, got an unknown one\. Use one of .*named_merge_"
     r"batch_norm\.$"),
    (lambda: get_canonizer(3), TypeError,
     r"^get_canonizer\(name=3\): expected a canonizer name \(str\), got int\. Pass e\.g\. "
     r"'resnet'\.$"),
    (lambda: get_canonizer("named_merge_batch_norm"), TypeError,
     r"^get_canonizer\(name='named_merge_batch_norm'\): expected the argument\(s\) name_map, "
     r"got none\. Pass them, e\.g\. get_canonizer\('named_merge_batch_norm', "
     r"name_map=\.\.\.\)\.$"),
    (lambda: canonizers_for("resnet"), TypeError,
     r"^canonizers_for\(model=str\): expected a torch\.nn\.Module, got str\. Pass the model "
     r"itself\.$"),
    (lambda: register_canonizer("")(SequentialMergeBatchNorm), TypeError,
     r"^register_canonizer\(name=''\): expected a non-empty name \(str\), got str\. Pass "
     r"e\.g\. 'my_block'\.$"),
    (lambda: register_canonizer("test_not_a_canonizer")(int), TypeError,
     r"^register_canonizer\(name='test_not_a_canonizer'\): expected a Canonizer subclass, got "
     r"<class 'int'>\. Decorate a subclass of funcattr\.canonizers\.Canonizer\.$"),
    (lambda: AttributeCanonizer(3), TypeError,
     r"^AttributeCanonizer\(attribute_map=3\): expected a callable \(name, module\) -> dict \| "
     r"None, got int\. Pass e\.g\. AttributeCanonizer\(lambda name, module: "),
    (lambda: AttributeCanonizer(lambda name, module: 1).apply(nn.Linear(2, 2)), TypeError,
     r"^AttributeCanonizer\(attribute_map=\.\.\.\): expected a dict or None from "
     r"attribute_map\('', Linear\), got int\. Return the attributes to set on the view's copy "
     r"of the module as a dict, or None to leave it alone\.$"),
    (lambda: CompositeCanonizer([1]), TypeError,
     r"^CompositeCanonizer\(canonizers=\.\.\.\): expected Canonizer instances, got int\. Pass "
     r"e\.g\. canonizers=\[SequentialMergeBatchNorm\(\)\]\.$"),
], ids=["unknown_close", "unknown", "name_kind", "missing_argument", "model_kind",
        "register_empty", "register_class", "attribute_map_kind", "attribute_map_result",
        "composite_item"])
def test_registry_errors(call, error, match):
    with pytest.raises(error, match=match):
        call()
    assert "test_not_a_canonizer" not in CANONIZERS


# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------

def test_error_name_map_names_missing_module():
    model = conv_bn_net()
    with pytest.raises(ValueError, match=r"'feature\.0' is not a module of the model"):
        NamedMergeBatchNorm([(["feature.0"], "1")]).apply(model)
    before = snapshot(model)
    with pytest.raises(ValueError, match=r"'11' is not a module of the model \(did you mean "
                                         r".*'1'.*\)"):
        NamedMergeBatchNorm([(["0"], "11")]).apply(model)
    assert_unchanged(model, before)


def test_error_name_map_names_non_batch_norm_and_non_linear():
    model = conv_bn_net()
    with pytest.raises(ValueError, match=r"'2' is a ReLU, expected a batch norm"):
        NamedMergeBatchNorm([(["0"], "2")]).apply(model)
    with pytest.raises(ValueError, match=r"'1' is a BatchNorm2d, expected a linear layer; "
                                         r"'2' is a ReLU, expected a batch norm"):
        NamedMergeBatchNorm([(["1"], "2")]).apply(model)


def test_error_name_map_of_wrong_shape():
    with pytest.raises(TypeError, match=r"NamedMergeBatchNorm\(name_map=.*expected a sequence"):
        NamedMergeBatchNorm(["features.0"])
    with pytest.raises(TypeError, match="expected module names"):
        NamedMergeBatchNorm([([0], "features.1")])


@pytest.mark.parametrize("canonizer", [SequentialMergeBatchNorm(), TracedMergeBatchNorm(),
                                       NamedMergeBatchNorm([(["0"], "1")])])
def test_error_training_mode(canonizer):
    model = conv_bn_net().train()
    before = snapshot(model)
    with pytest.raises(ValueError, match=r"apply\(model=Sequential\): expected batch norms in "
                                         r"eval mode .* got '1'.* Call model\.eval\(\)"):
        funcattr.functionalize(model, fc.EpsilonPlus(), canonizer)
    assert_unchanged(model, before)


def test_error_training_mode_following_merge():
    model = nn.Sequential(nn.BatchNorm1d(3), nn.Linear(3, 2)).train()
    with pytest.raises(ValueError, match=r"got '0' in training mode"):
        TracedMergeBatchNorm().apply(model)


def test_error_no_running_statistics():
    model = nn.Sequential(nn.Conv2d(2, 2, 1), nn.BatchNorm2d(2, track_running_stats=False))
    with pytest.raises(ValueError, match=r"'1' keeps no running statistics"):
        SequentialMergeBatchNorm().apply(model.eval())


def test_error_no_running_statistics_following_merge():
    model = nn.Sequential(nn.BatchNorm1d(3, track_running_stats=False), nn.Linear(3, 2))
    with pytest.raises(ValueError, match=r"'0' keeps no running statistics.*"
                                         r"TracedMergeBatchNorm\(following=False\)"):
        TracedMergeBatchNorm().apply(model.eval())


def test_error_registration_order_pairs_mismatched_channels():
    model = DenseLike().eval()
    with pytest.raises(ValueError, match=r"'conv' \(Conv2d\) has 2 output channels but 'norm' "
                                         r"normalises 5.*use TracedMergeBatchNorm\(\)"):
        SequentialMergeBatchNorm().apply(model)
    x = torch.randn(1, 3, 4, 4)
    assert TracedMergeBatchNorm().pairs(model) == []
    assert_close(view_output(TracedMergeBatchNorm(), model, x), model(x))


def test_error_untraceable_model():
    class DataDependent(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(1, 1, 1)
            self.bn = nn.BatchNorm2d(1)

        def forward(self, x):
            if x.sum() > 0:
                return self.bn(self.conv(x))
            return x

    model = DataDependent().eval()
    before = snapshot(model)
    with pytest.raises(ValueError, match=r"TracedMergeBatchNorm\.apply\(model=DataDependent\): "
                                         r"expected a model that torch\.fx can trace.*"
                                         r"TraceError.*NamedMergeBatchNorm\(name_map\)"):
        funcattr.functionalize(model, None, TracedMergeBatchNorm())
    assert_unchanged(model, before)


def test_error_following_merge_channel_mismatch():
    class Odd(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bn = nn.BatchNorm1d(4)
            self.linear = nn.Linear(3, 2)

        def forward(self, x):  # (batch, 4, 3): the batch norm's channels are not features
            return self.linear(self.bn(x))

    model = Odd().eval()
    with pytest.raises(ValueError, match=r"'linear' has 3 input channels but 'bn' normalises 4"
                                         r".*TracedMergeBatchNorm\(following=False\)"):
        TracedMergeBatchNorm().apply(model)
    x = torch.randn(2, 4, 3)
    assert_close(view_output(TracedMergeBatchNorm(following=False), model, x), model(x))


def test_error_attribute_canonizer_arguments():
    with pytest.raises(TypeError, match=r"AttributeCanonizer\(attribute_map=None\): expected a "
                                        r"callable"):
        AttributeCanonizer(None)
    with pytest.raises(TypeError, match=r"expected a dict or None from attribute_map\('', "
                                        r"Linear\), got list"):
        AttributeCanonizer(lambda name, module: []).apply(nn.Linear(2, 2))


def test_error_composite_canonizer_and_functionalize_arguments():
    with pytest.raises(TypeError, match=r"CompositeCanonizer\(canonizers=\.\.\.\): expected "
                                        r"Canonizer instances, got str"):
        CompositeCanonizer(["SequentialMergeBatchNorm"])
    with pytest.raises(TypeError, match=r"functionalize\(canonizers=\.\.\.\): expected "
                                        r"Canonizer instances"):
        funcattr.functionalize(conv_bn_net(), None, [zcan.SequentialMergeBatchNorm()])


def test_error_view_builder_edit_after_replace():
    model = nn.Sequential(nn.Linear(2, 2))
    builder = ViewBuilder(model)
    builder.replace(model[0], nn.Identity())
    with pytest.raises(ValueError, match=r"ViewBuilder\.edit\(module=Linear\): the module was "
                                         r"replaced already"):
        builder.edit(model[0])
