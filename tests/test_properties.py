"""``fn`` is ``torch.func.functional_call`` of the model, on random small models (hypothesis).

The models draw from what broke before or might break: tied weights (``b.weight = a.weight``),
a module called twice, in-place operations (``relu_``, ``ReLU(inplace=True)``, ``+=``), a batch
norm with its buffers, and tuple or dict outputs (explained through ``select_output``). For
random params ``p'``:

- ``fn(p', x)`` equals ``torch.func.functional_call(model, p', x)``, with and without a
  composite (rules change gradients, not values);
- without rules, gradients with respect to ``p'`` agree with ``functional_call``'s (a tied
  weight's gradient sums over its users);
- with rules, the relevance of ``fn(p', x)`` equals that of the model holding ``p'``.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import pytest
import torch
from helpers import assert_close, single_thread
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor, nn

import funcattr
from funcattr import composites as fc

pytestmark = pytest.mark.usefixtures(single_thread.__name__)

PROPERTY = settings(max_examples=25, deadline=None)
ACTIVATIONS = ("none", "relu", "relu_", "relu_module", "tanh")


@dataclass(frozen=True)
class Spec:
    """A random network on vectors of ``width``: ``steps`` of (layer, activation, residual)."""

    seed: int
    width: int
    layers: int
    ties: tuple[tuple[int, int], ...]  # (source, target): layers[target].weight = source's
    steps: tuple[tuple[int, str, bool], ...]
    batch_norm: bool
    bias: bool
    output: str  # 'tensor', 'tuple' or 'dict'
    classes: int = 3


class RandomNet(nn.Module):
    def __init__(self, spec: Spec) -> None:
        super().__init__()
        torch.manual_seed(spec.seed)
        self.spec = spec
        self.layers = nn.ModuleList(nn.Linear(spec.width, spec.width, bias=spec.bias)
                                    for _ in range(spec.layers))
        for source, target in spec.ties:
            self.layers[target].weight = self.layers[source].weight
        self.relu = nn.ReLU(inplace=True)
        self.norm = nn.BatchNorm1d(spec.width) if spec.batch_norm else None
        if self.norm is not None:
            with torch.no_grad():
                self.norm.running_mean.normal_()
                self.norm.running_var.uniform_(0.5, 2.0)
        self.head = nn.Linear(spec.width, spec.classes)

    def forward(self, x: Tensor):
        for index, activation, residual in self.spec.steps:
            y = self.layers[index](x)  # a layer index may repeat: a module called twice
            if activation == "relu":
                y = torch.relu(y)
            elif activation == "relu_":
                y = torch.relu_(y)
            elif activation == "relu_module":
                y = self.relu(y)
            elif activation == "tanh":
                y = torch.tanh(y)
            if residual and activation == "none":
                y += x  # in place (a Linear's output: nothing saved it for backward)
            elif residual:
                y = y + x  # relu and tanh save their output for backward
            x = y
        if self.norm is not None:
            x = self.norm(x)
        logits = self.head(x)
        if self.spec.output == "tuple":
            return logits, x
        if self.spec.output == "dict":
            return {"hidden": x, "logits": logits}
        return logits


@st.composite
def specs(draw) -> Spec:
    layers = draw(st.integers(1, 3))
    ties = tuple((source, target) for source in range(layers) for target in range(source + 1,
                 layers) if draw(st.booleans()))
    steps = tuple((draw(st.integers(0, layers - 1)), draw(st.sampled_from(ACTIVATIONS)),
                   draw(st.booleans())) for _ in range(draw(st.integers(1, 4))))
    return Spec(seed=draw(st.integers(0, 2**31 - 1)), width=draw(st.integers(2, 5)),
                layers=layers, ties=ties, steps=steps, batch_norm=draw(st.booleans()),
                bias=draw(st.booleans()), output=draw(st.sampled_from(["tensor", "tuple",
                                                                          "dict"])))


def _random_params(params: dict[str, Tensor], seed: int) -> dict[str, Tensor]:
    """New values for every entry (positive variances, the integer counter kept)."""
    generator = torch.Generator().manual_seed(seed)
    out = {}
    for name, value in params.items():
        if not value.is_floating_point():
            out[name] = value.clone()
        elif name.endswith("running_var"):
            out[name] = torch.rand(value.shape, generator=generator) + 0.5
        else:
            out[name] = torch.randn(value.shape, generator=generator)
    return out


def _flat(output) -> list[Tensor]:
    if isinstance(output, dict):
        return [output[key] for key in sorted(output)]
    return list(output) if isinstance(output, tuple) else [output]


def _key(spec: Spec):
    return {"tensor": lambda output: output, "tuple": 0, "dict": "logits"}[spec.output]


@PROPERTY
@given(spec=specs(), data=st.data())
def test_fn_is_functional_call_of_the_model(spec: Spec, data) -> None:
    model = RandomNet(spec).eval()
    x = torch.randn(3, spec.width, generator=torch.Generator().manual_seed(spec.seed % 1000))
    changed = _random_params(funcattr.functionalize(model)[1],
                             data.draw(st.integers(0, 1000), label="params seed"))
    expected = _flat(torch.func.functional_call(model, changed, (x,)))
    for composite in (None, fc.EpsilonPlus()):
        # values only, no relevance: an un-canonized batch norm model is fine here
        fn, _ = funcattr.functionalize(model, composite, check="ignore")
        for ours, theirs in zip(_flat(fn(changed, x)), expected, strict=True):
            assert_close(ours, theirs, rtol=1e-12)


@PROPERTY
@given(spec=specs(), data=st.data())
def test_gradients_with_respect_to_params_agree_with_functional_call(spec: Spec, data) -> None:
    model = RandomNet(spec).eval()
    x = torch.randn(3, spec.width, generator=torch.Generator().manual_seed(spec.seed % 1000))
    fn, params = funcattr.functionalize(model)
    changed = _random_params(params, data.draw(st.integers(0, 1000), label="params seed"))
    weights, buffers = fn.split_params(changed)

    def loss(call):
        return lambda w: sum((t * torch.linspace(-1, 1, t.numel()).reshape(t.shape)).sum()
                             for t in _flat(call({**w, **buffers})))

    ours = torch.func.grad(loss(lambda p: fn(p, x)))(weights)
    theirs = torch.func.grad(loss(lambda p: torch.func.functional_call(model, p, (x,))))(weights)
    assert ours.keys() == theirs.keys()
    for name in ours:
        assert_close(ours[name], theirs[name], rtol=1e-10, msg=name)


@PROPERTY
@given(spec=specs(), data=st.data())
def test_relevance_with_substituted_params_is_the_relevance_of_the_model_holding_them(
        spec: Spec, data) -> None:
    from funcattr.attribution import select_output

    model = RandomNet(spec).eval()
    x = torch.randn(3, spec.width, generator=torch.Generator().manual_seed(spec.seed % 1000))
    composite = fc.EpsilonPlus()
    # two relevances compared with each other: an un-canonized batch norm model is fine here
    fn, params = funcattr.functionalize(model, composite, check="ignore")
    changed = _random_params(params, data.draw(st.integers(0, 1000), label="params seed"))
    holding = copy.deepcopy(model)  # ties survive the copy; each key sets its tensor once
    with torch.no_grad():
        for name, value in changed.items():
            holding.get_parameter(name).copy_(value) if name in dict(
                holding.named_parameters()) else holding.get_buffer(name).copy_(value)
    seed = funcattr.one_hot([0, 1, 2])
    ours = funcattr.gradient(select_output(fn, _key(spec)), changed, x, seed)[1]
    fn_holding, params_holding = funcattr.functionalize(holding, composite, check="ignore")
    theirs = funcattr.gradient(select_output(fn_holding, _key(spec)), params_holding, x, seed)[1]
    assert_close(ours, theirs, rtol=1e-12)
