"""Laws of LRP on random architectures (hypothesis): LRP-0 is input times gradient, relevance
is conserved, ``vmap`` over per-sample targets equals the batch, and ``vmap`` of one pullback
over stacked output gradients equals separate gradient calls."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from helpers import assert_close, single_thread
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from torch import Tensor, nn

import funcattr
from funcattr import types
from funcattr.composites import EpsilonGammaBox, EpsilonPlusFlat, LayerMapComposite
from funcattr.rules import AlphaBeta, Epsilon, Pass, ZPlus

pytestmark = pytest.mark.usefixtures(single_thread.__name__)

LAW = settings(max_examples=15, deadline=None)
TINY = 1e-100  # a stabilizer that leaves every non-zero float64 denominator unchanged


@dataclass(frozen=True)
class Architecture:
    """A bias-free ReLU network: an MLP or a CNN (conv layers, then one dense layer)."""

    kind: str
    seed: int
    widths: tuple[int, ...]  # MLP: layer widths; CNN: channels
    kernels: tuple[int, ...] = ()
    strides: tuple[int, ...] = ()
    size: int = 0  # CNN: input height and width
    classes: int = 3
    batch: int = 2
    bias: bool = False

    def model(self) -> nn.Sequential:
        torch.manual_seed(self.seed)
        layers: list[nn.Module] = []
        if self.kind == "mlp":
            for a, b in zip(self.widths[:-1], self.widths[1:], strict=True):
                layers += [nn.Linear(a, b, bias=self.bias), nn.ReLU()]
            layers.append(nn.Linear(self.widths[-1], self.classes, bias=self.bias))
            return nn.Sequential(*layers).eval()
        for a, b, k, s in zip(self.widths[:-1], self.widths[1:], self.kernels, self.strides,
                              strict=True):
            layers += [nn.Conv2d(a, b, k, stride=s, bias=self.bias), nn.ReLU()]
        features = nn.Sequential(*layers, nn.Flatten())
        flat = features(torch.zeros(1, *self.input_shape)).shape[1]
        return nn.Sequential(*layers, nn.Flatten(),
                             nn.Linear(flat, self.classes, bias=self.bias)).eval()

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (self.widths[0],) if self.kind == "mlp" else (self.widths[0], self.size, self.size)

    def input(self, nonnegative: bool = False) -> Tensor:
        generator = torch.Generator().manual_seed(self.seed + 1)
        x = torch.randn((self.batch, *self.input_shape), generator=generator)
        return x.abs() if nonnegative else x


@st.composite
def architectures(draw, bias: bool = False) -> Architecture:
    kind = draw(st.sampled_from(["mlp", "cnn"]))
    depth = draw(st.integers(1, 3))
    seed = draw(st.integers(0, 2**31 - 1))
    classes = draw(st.integers(2, 4))
    batch = draw(st.integers(1, 3))
    if kind == "mlp":
        widths = tuple(draw(st.lists(st.integers(2, 6), min_size=depth + 1, max_size=depth + 1)))
        return Architecture(kind, seed, widths, classes=classes, batch=batch, bias=bias)
    widths = tuple(draw(st.lists(st.integers(1, 3), min_size=depth + 1, max_size=depth + 1)))
    kernels = tuple(draw(st.lists(st.integers(1, 3), min_size=depth, max_size=depth)))
    strides = tuple(draw(st.lists(st.integers(1, 2), min_size=depth, max_size=depth)))
    size = draw(st.integers(1, 3))  # the last conv's output size; walk back to the input's
    for k, s in zip(reversed(kernels), reversed(strides), strict=True):
        size = (size - 1) * s + k
    return Architecture(kind, seed, widths, kernels, strides, size, classes, batch, bias)


def _targets(arch: Architecture, data) -> list[int]:
    return data.draw(st.lists(st.integers(0, arch.classes - 1), min_size=arch.batch,
                              max_size=arch.batch), label="targets")


def _ruled(rule) -> LayerMapComposite:
    return LayerMapComposite([(types.Linear, rule), (nn.ReLU, Pass())])


# --------------------------------------------------------------------------------------------
# LRP-0 is input times gradient
# --------------------------------------------------------------------------------------------

@LAW
@given(arch=architectures(), data=st.data())
def test_lrp0_is_input_times_gradient(arch: Architecture, data) -> None:
    model = arch.model()
    x = arch.input()
    targets = _targets(arch, data)
    fn, params = funcattr.functionalize(model, _ruled(Epsilon(epsilon=0.0)))
    _, relevance = funcattr.gradient(fn, params, x, funcattr.one_hot(targets, times_output=True))
    # also where a whole layer is zero: 0 / 0 = 0 (it was NaN, and these examples were skipped)
    leaf = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(model(leaf), leaf, funcattr.one_hot(targets)(model(x)))
    assert_close(relevance, x * grad, rtol=1e-8)


# --------------------------------------------------------------------------------------------
# Conservation: the input relevance of each sample sums to its output relevance
# --------------------------------------------------------------------------------------------

def _assert_conserved(relevance: Tensor, seed: Tensor) -> None:
    total_in = relevance.flatten(1).sum(1)
    total_out = seed.flatten(1).sum(1)
    scale = relevance.flatten(1).abs().sum(1) + total_out.abs()
    assert bool(((total_in - total_out).abs() <= 1e-9 * scale + 1e-300).all()), (
        f"input relevance {total_in.tolist()} != output relevance {total_out.tolist()}")


@pytest.mark.parametrize("rule", [
    Epsilon(epsilon=TINY), ZPlus(stabilizer=TINY), AlphaBeta(alpha=1.0, beta=0.0, stabilizer=TINY),
], ids=["epsilon", "zplus", "alphabeta-1-0"])
@LAW
@given(arch=architectures(), data=st.data(), nonnegative=st.booleans())
def test_conservation_on_bias_free_nets(rule, arch: Architecture, data, nonnegative: bool) -> None:
    """Exact where every denominator is non-zero. A zero denominator of these rules means the
    ReLU after it outputs 0, so no relevance arrives there; only the last layer's is checked:
    the output relevance is ``one_hot * relu(output)``, zero where that can happen."""
    model = arch.model()
    x = arch.input(nonnegative)
    fn, params = funcattr.functionalize(model, _ruled(rule))
    targets = _targets(arch, data)
    seed = funcattr.one_hot(targets)(model(x)) * model(x).detach().clamp(min=0)
    _, relevance = funcattr.gradient(fn, params, x, seed)
    assert bool(torch.isfinite(relevance).all())
    _assert_conserved(relevance, seed)


def _mixed_sign_rows(weight: Tensor) -> Tensor:
    """Every output row gets one positive and one negative weight (AlphaBeta's two
    denominators are then non-zero for positive inputs)."""
    weight = weight.clone()
    rows = weight.reshape(weight.shape[0], -1)
    rows[:, 0] = rows[:, 0].abs() + 0.1
    rows[:, -1] = -rows[:, -1].abs() - 0.1
    return rows.reshape(weight.shape)


@LAW
@given(arch=architectures(), data=st.data(), alpha=st.sampled_from([1.0, 2.0, 3.5]),
       bias=st.booleans())
def test_alphabeta_conserves_on_each_layer(arch: Architecture, data, alpha: float,
                                           bias: bool) -> None:
    """AlphaBeta is conservative on a layer whose positive and negative parts both reach every
    output (in a ReLU net a hidden unit can see only positive weights): here the first layer,
    with positive inputs and mixed-sign weight rows; a bias joins ``z`` as its own share."""
    layer = arch.model()[0]
    assume(layer.weight[0].numel() >= 2)  # room for both signs in a row
    if bias:
        layer = type(layer)(*_sizes(layer), bias=True)
    with torch.no_grad():
        layer.weight.copy_(_mixed_sign_rows(layer.weight))
    model = nn.Sequential(layer)
    x = arch.input(nonnegative=True) + 0.1
    seed = torch.randn(model(x).shape, generator=torch.Generator().manual_seed(arch.seed))
    rule = AlphaBeta(alpha=alpha, beta=alpha - 1.0, stabilizer=TINY, zero_params="bias")
    _, relevance = funcattr.gradient(*funcattr.functionalize(model, _ruled(rule)), x, seed)
    _assert_conserved(relevance, seed)


def _sizes(layer: nn.Module) -> tuple:
    if isinstance(layer, nn.Linear):
        return layer.in_features, layer.out_features
    return (layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride)


# --------------------------------------------------------------------------------------------
# Batched equals per sample; vmap over output gradients equals separate calls
# --------------------------------------------------------------------------------------------

COMPOSITES = [EpsilonPlusFlat(), EpsilonGammaBox(low=-3.0, high=3.0)]


@pytest.mark.parametrize("composite", COMPOSITES, ids=lambda c: type(c).__name__)
@LAW
@given(arch=architectures(bias=True), data=st.data())
def test_vmap_over_per_sample_targets_equals_the_batch(composite, arch: Architecture,
                                                       data) -> None:
    model = arch.model()
    x = arch.input()
    targets = torch.tensor(_targets(arch, data))
    fn, params = funcattr.functionalize(model, composite)
    _, batched = funcattr.gradient(fn, params, x, funcattr.one_hot(targets, times_output=True))

    def one(sample: Tensor, target: Tensor) -> Tensor:
        attr_output_fn = funcattr.one_hot(target, times_output=True)
        return funcattr.gradient(fn, params, sample[None], attr_output_fn)[1][0]

    assert_close(torch.func.vmap(one)(x, targets), batched, rtol=1e-9)


@pytest.mark.parametrize("composite", COMPOSITES, ids=lambda c: type(c).__name__)
@LAW
@given(arch=architectures(bias=True))
def test_vmap_of_pullback_equals_separate_gradients(composite, arch: Architecture) -> None:
    model = arch.model()
    x = arch.input()
    fn, params = funcattr.functionalize(model, composite)
    output, pull = funcattr.pullback(fn, params, x)
    stacked = torch.eye(arch.classes)[:, None, :].expand(-1, arch.batch, -1) * output
    relevances = torch.func.vmap(pull)(stacked)
    assert relevances.shape == (arch.classes, *x.shape)
    for k in range(arch.classes):
        _, expected = funcattr.gradient(fn, params, x, stacked[k])
        assert_close(relevances[k], expected, rtol=1e-12)
