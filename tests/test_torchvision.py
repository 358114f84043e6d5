"""torchvision canonizers: VGG and ResNet against Zennit, DenseNet and MobileNet beyond it.

The fast suite uses small members of each family (ResNet with one block per stage, a
two-block DenseNet, MobileNets at width 0.25); the full-size torchvision models (random
weights, randomised BatchNorm statistics, eval mode, float64) are marked slow.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torchvision
import zennit.composites as zc
import zennit.torchvision as ztv
from test_canonizers import (  # noqa: F401  (_one_thread: an autouse fixture)
    _one_thread,
    assert_close,
    assert_unchanged,
    funcattr_relevance,
    randomise,
    snapshot,
    view_output,
    zennit_relevance,
)
from torch import Tensor, nn
from torchvision.models.densenet import DenseNet
from torchvision.models.mobilenetv2 import MobileNetV2
from torchvision.models.mobilenetv3 import MobileNetV3, _mobilenet_v3_conf
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet
from torchvision.models.vgg import VGG, make_layers

import funcattr
from funcattr import composites as fc
from funcattr import types
from funcattr.canonizers import (
    CANONIZERS,
    SequentialMergeBatchNorm,
    TracedMergeBatchNorm,
    canonizers_for,
    get_canonizer,
)
from funcattr.functional import model_params
from funcattr.layer import Sum
from funcattr.rules import Epsilon, Norm, Pass
from funcattr.torchvision import (
    DenseNetCanonizer,
    DenseNetMergeBatchNorm,
    GatedSum,
    MobileNetV2Canonizer,
    MobileNetV3Canonizer,
    ResNetBasicBlockCanonizer,
    ResNetBottleneckCanonizer,
    ResNetCanonizer,
    SqueezeExcitationCanonizer,
    VGGCanonizer,
)

ZENNIT_RTOL = 1e-10
COMPOSITES = {
    "EpsilonPlusFlat": ({}, zc.EpsilonPlusFlat, fc.EpsilonPlusFlat),
    "EpsilonGammaBox": ({"low": -3.0, "high": 3.0}, zc.EpsilonGammaBox, fc.EpsilonGammaBox),
    "EpsilonAlpha2Beta1": ({}, zc.EpsilonAlpha2Beta1, fc.EpsilonAlpha2Beta1),
}


def _input(shape: tuple[int, ...], seed: int = 1) -> Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


# --------------------------------------------------------------------------------------------
# Small family members
# --------------------------------------------------------------------------------------------

def small_resnet(block: type, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return randomise(ResNet(block, [1, 1, 1, 1], num_classes=5), seed)


def small_densenet(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return randomise(DenseNet(growth_rate=4, block_config=(2, 2), num_init_features=8,
                              bn_size=2, num_classes=5), seed)


def small_mobilenet_v2(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return randomise(MobileNetV2(num_classes=5, width_mult=0.25), seed)


def small_mobilenet_v3(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    setting, last = _mobilenet_v3_conf("mobilenet_v3_small", width_mult=0.25)
    return randomise(MobileNetV3(setting, last, num_classes=5), seed)


SMALL = {
    "resnet_basic": (lambda: small_resnet(BasicBlock), ResNetCanonizer),
    "resnet_bottleneck": (lambda: small_resnet(Bottleneck), ResNetCanonizer),
    "densenet": (small_densenet, DenseNetCanonizer),
    "mobilenet_v2": (small_mobilenet_v2, MobileNetV2Canonizer),
    "mobilenet_v3": (small_mobilenet_v3, MobileNetV3Canonizer),
}


@pytest.mark.parametrize("name", sorted(SMALL))
def test_small_models_output_unchanged_model_untouched_idempotent(name):
    make, canonizer_cls = SMALL[name]
    model, canonizer = make(), canonizer_cls()
    x = _input((2, 3, 32, 32))
    expected = model(x)
    before = snapshot(model)
    view, params = canonizer(model, model_params(model))
    assert_close(torch.func.functional_call(view, params, (x,)), expected)
    assert_close(view(x), expected)
    assert_unchanged(model, before)
    view2, params2 = canonizer(view, params)
    assert params2.keys() == params.keys()
    assert all(torch.equal(params2[k], v) for k, v in params.items())
    assert [type(m) for m in view2.modules()] == [type(m) for m in view.modules()]
    fn, fparams = funcattr.functionalize(model, fc.EpsilonPlusFlat(canonizers=[canonizer]))
    output, relevance = funcattr.gradient(fn, fparams, x, funcattr.one_hot(1))
    assert_close(output, expected)
    assert torch.isfinite(relevance).all() and relevance.abs().sum() > 0
    assert_unchanged(model, before)


@pytest.mark.parametrize("block", [BasicBlock, Bottleneck], ids=["basic", "bottleneck"])
@pytest.mark.parametrize("name", sorted(COMPOSITES))
def test_small_resnet_relevance_equals_zennit(name, block):
    kwargs, zennit_cls, funcattr_cls = COMPOSITES[name]
    model = small_resnet(block, seed=2)
    x = _input((2, 3, 32, 32))
    grad = torch.eye(5)[[0, 3]]
    expected = zennit_relevance(
        model, zennit_cls(canonizers=[ztv.ResNetCanonizer()], **kwargs), x, grad)
    actual = funcattr_relevance(model, funcattr_cls(canonizers=[ResNetCanonizer()], **kwargs),
                                x, grad)
    assert_close(actual, expected, ZENNIT_RTOL)


def test_resnet_view_structure_and_rules():
    model = small_resnet(Bottleneck)
    view, _ = ResNetCanonizer().apply(model)
    block = view.layer1[0]
    assert list(block._modules)[-1] == "canonizer_sum" and isinstance(block.canonizer_sum, Sum)
    assert block.forward.__self__ is block and "forward" not in model.layer1[0].__dict__
    assert isinstance(block.bn1, nn.Identity) and isinstance(block.downsample[1], nn.Identity)
    fn, _ = funcattr.functionalize(model, fc.EpsilonPlusFlat(canonizers=[ResNetCanonizer()]))
    assert fn.rules["layer1.0.canonizer_sum"] == Norm()
    assert "layer1.0.bn1" not in fn.rules
    # each block canonizer alone touches only its kind
    assert ResNetBasicBlockCanonizer().apply(model)[0] is model
    assert isinstance(ResNetBottleneckCanonizer().apply(model)[0].layer4[0].canonizer_sum, Sum)


def test_vgg_canonizer_is_sequential_merge():
    assert isinstance(VGGCanonizer(), SequentialMergeBatchNorm)
    assert repr(VGGCanonizer()) == "VGGCanonizer()"
    assert repr(ResNetCanonizer()) == "ResNetCanonizer()" and ResNetCanonizer() == ResNetCanonizer()
    model = randomise(make_layers([4, "M", 8, 8, "M"], batch_norm=True))
    x = _input((1, 3, 16, 16))
    assert_close(view_output(VGGCanonizer(), model, x), model(x))


def small_vgg(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    features = make_layers([4, "M", 8, "M"], batch_norm=True)
    return randomise(VGG(features, num_classes=5, init_weights=False), seed)


@pytest.mark.parametrize(("make", "expected"), [
    (small_vgg, VGGCanonizer()),
    *((SMALL[name][0], SMALL[name][1]()) for name in sorted(SMALL)),
], ids=["vgg", *sorted(SMALL)])
@pytest.mark.parametrize("wrapped", [False, True], ids=["bare", "wrapped"])
def test_canonizers_for_torchvision_models(make, expected, wrapped):
    """The architecture's own canonizer, also for a model inside a wrapper (as the CLI puts a
    normalisation in front), and never a generic batch-norm merge."""
    model = make()
    if wrapped:
        model = nn.Sequential(nn.Identity(), model)
    before = snapshot(model)
    assert canonizers_for(model) == [expected]
    assert_unchanged(model, before)


def test_registry_finds_torchvision_canonizers_by_name():
    assert get_canonizer("resnet") == ResNetCanonizer()
    assert get_canonizer("ResNetCanonizer") == ResNetCanonizer()
    assert get_canonizer("mobilenet_v3") == get_canonizer("MobileNetV3Canonizer")
    assert type(get_canonizer("densenet_merge_batch_norm")) is DenseNetMergeBatchNorm
    assert type(get_canonizer("squeeze_excitation")) is SqueezeExcitationCanonizer
    assert {name for name, spec in CANONIZERS.items() if spec.library == "torchvision"} == {
        "vgg", "resnet", "densenet", "mobilenet_v2", "mobilenet_v3"}
    assert ResNetBottleneckCanonizer.fits(small_resnet(Bottleneck))
    assert not ResNetBottleneckCanonizer.fits(small_resnet(BasicBlock))
    assert SqueezeExcitationCanonizer.fits(small_mobilenet_v3())
    assert DenseNetMergeBatchNorm.fits(small_densenet())


def test_resnet_canonizer_requires_eval_mode():
    model = small_resnet(BasicBlock).train()
    with pytest.raises(ValueError, match=r"SequentialMergeBatchNorm\.apply\(model=ResNet\): "
                                         r"expected batch norms in eval mode.*'bn1'.*"
                                         r"Call model\.eval\(\)"):
        funcattr.functionalize(model, fc.EpsilonPlusFlat(canonizers=[ResNetCanonizer()]))


# --------------------------------------------------------------------------------------------
# DenseNet
# --------------------------------------------------------------------------------------------

def test_densenet_merges_by_structure_not_order():
    model = small_densenet()
    pairs = DenseNetMergeBatchNorm().pairs(model)
    assert pairs[0] == (("features.conv0",), "features.norm0")
    assert (("features.denseblock1.denselayer1.conv1",),
            "features.denseblock1.denselayer1.norm2") in pairs
    assert len(pairs) == 1 + 4
    # data flow finds the same pairs; registration order pairs a conv2 with the next norm1
    assert sorted(TracedMergeBatchNorm(following=False).pairs(model)) == sorted(pairs)
    with pytest.raises(ValueError, match=r"'features\.denseblock1\.denselayer1\.conv2' \(Conv2d\) "
                                         r"has 4 output channels but "
                                         r"'features\.denseblock1\.denselayer2\.norm1'"):
        SequentialMergeBatchNorm().apply(model)
    view, _ = DenseNetCanonizer().apply(model)
    assert isinstance(view.canonizer_relu, nn.ReLU) and not view.canonizer_relu.inplace
    assert isinstance(view.canonizer_avgpool, nn.AdaptiveAvgPool2d)
    assert isinstance(view.features.denseblock1.denselayer1.norm1, nn.BatchNorm2d)


# --------------------------------------------------------------------------------------------
# MobileNet
# --------------------------------------------------------------------------------------------

def test_mobilenet_views_route_residuals_and_gates_through_modules():
    v2, _ = MobileNetV2Canonizer().apply(small_mobilenet_v2())
    residual = [m for m in v2.modules() if getattr(m, "use_res_connect", False)]
    assert residual and all(isinstance(m.canonizer_sum, Sum) for m in residual)
    plain = [m for m in v2.features if hasattr(m, "use_res_connect") and not m.use_res_connect]
    assert plain and all("canonizer_sum" not in m._modules for m in plain)
    assert isinstance(v2.canonizer_avgpool, nn.AdaptiveAvgPool2d)
    v3, _ = MobileNetV3Canonizer().apply(small_mobilenet_v3())
    gates = [m for m in v3.modules() if isinstance(m, torchvision.ops.SqueezeExcitation)]
    assert gates and all(isinstance(m.canonizer_gate, GatedSum) for m in gates)
    assert not any(isinstance(m, types.BatchNorm) for m in v3.modules())
    assert repr(SqueezeExcitationCanonizer()) == "SqueezeExcitationCanonizer()"


def test_gated_sum_gives_relevance_to_input_only():
    gate = GatedSum()
    x, g = _input((2, 3, 1)), torch.rand(2, 3, 1)
    composite = fc.LayerMapComposite([(Sum, Norm(stabilizer=1e-12))])
    fn, params = funcattr.functionalize(gate, composite)
    torch.testing.assert_close(fn(params, x, g), (x * g).sum(-1))
    relevance = torch.func.grad(lambda u: fn.plain(params, u, g).sum())(x)  # plain: g
    torch.testing.assert_close(relevance, g)

    def ruled(u, w):
        with funcattr.core.rules_at_this_level():
            return fn(params, u, w)

    _, vjp = torch.func.vjp(ruled, x, g)
    out_grad = _input((2, 3), seed=3)
    to_input, to_gate = vjp(out_grad)
    torch.testing.assert_close(to_input, out_grad[..., None], rtol=1e-5, atol=1e-5)
    assert torch.equal(to_gate, torch.zeros_like(g))


# --------------------------------------------------------------------------------------------
# Conservation: with biases zero, relevance in = relevance out (as far as the rules allow)
# --------------------------------------------------------------------------------------------

def _zero_biases(model: nn.Module) -> nn.Module:
    """Zero every bias that would end up in a forward linear layer after merging."""
    gates = {id(m) for s in model.modules() if isinstance(s, torchvision.ops.SqueezeExcitation)
             for m in (s.fc1, s.fc2)}
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, types.BatchNorm):
                module.running_mean.zero_()
                if module.bias is not None:
                    module.bias.zero_()
            elif (isinstance(module, types.Linear) and module.bias is not None
                  and id(module) not in gates):
                module.bias.zero_()
    return model


CONSERVING = fc.LayerMapComposite([
    (types.Activation, Pass()), (Sum, Norm(stabilizer=1e-30)),
    (types.AvgPool, Norm(stabilizer=1e-30)), (types.BatchNorm, Pass()),
    (types.Linear, Epsilon(epsilon=1e-30)),
])


@pytest.mark.parametrize("name", ["densenet", "mobilenet_v2", "mobilenet_v3", "resnet_basic"])
def test_small_models_conserve_relevance(name):
    make, canonizer_cls = SMALL[name]
    model = _zero_biases(make())
    x = _input((2, 3, 32, 32))
    fn, params = funcattr.functionalize(model, CONSERVING, canonizer_cls())
    output, relevance = funcattr.gradient(fn, params, x, funcattr.one_hot(2, times_output=True))
    total = relevance.flatten(1).sum(1)
    torch.testing.assert_close(total, output[:, 2], rtol=1e-6, atol=1e-9)
    if name == "mobilenet_v2":  # without the canonizer a residual sends relevance down twice
        with pytest.warns(funcattr.ModelCheckWarning, match=r"MobileNetV2Canonizer\(\)"):
            plain, _ = funcattr.functionalize(model, CONSERVING)
        _, relevance = funcattr.gradient(plain, params, x, funcattr.one_hot(2, times_output=True))
        assert not torch.allclose(relevance.flatten(1).sum(1), output[:, 2], rtol=1e-3)


@pytest.mark.parametrize("name", sorted(COMPOSITES))
@pytest.mark.parametrize("model_name", ["densenet", "mobilenet_v2", "mobilenet_v3"])
def test_small_models_give_finite_heatmaps_with_presets(name, model_name):
    kwargs, _, funcattr_cls = COMPOSITES[name]
    make, canonizer_cls = SMALL[model_name]
    model = make()
    x = _input((2, 3, 32, 32))
    fn, params = funcattr.functionalize(model, funcattr_cls(canonizers=[canonizer_cls()],
                                                            **kwargs))
    _, relevance = funcattr.gradient(fn, params, x, funcattr.one_hot(0, times_output=True))
    assert torch.isfinite(relevance).all() and relevance.abs().sum() > 0


# --------------------------------------------------------------------------------------------
# Full-size torchvision models (slow)
# --------------------------------------------------------------------------------------------

FULL = {
    "vgg11_bn": VGGCanonizer,
    "vgg16_bn": VGGCanonizer,
    "resnet18": ResNetCanonizer,
    "resnet50": ResNetCanonizer,
    "densenet121": DenseNetCanonizer,
    "mobilenet_v2": MobileNetV2Canonizer,
    "mobilenet_v3_small": MobileNetV3Canonizer,
}
_MODELS: dict[str, nn.Module] = {}


def full_model(name: str) -> nn.Module:
    if name not in _MODELS:
        previous = torch.get_default_dtype()
        torch.set_default_dtype(torch.float64)
        try:
            torch.manual_seed(0)
            _MODELS[name] = randomise(getattr(torchvision.models, name)(weights=None), 0)
        finally:
            torch.set_default_dtype(previous)
    return _MODELS[name]


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(FULL))
def test_full_models_output_unchanged(name):
    model, canonizer = full_model(name), FULL[name]()
    x = _input((1, 3, 64, 64))
    before = snapshot(model)
    expected = model(x)
    assert_close(view_output(canonizer, model, x), expected)
    assert_unchanged(model, before)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["densenet121", "mobilenet_v2", "mobilenet_v3_small"])
def test_full_models_beyond_zennit_give_finite_conserving_heatmaps(name):
    model = full_model(name)
    x = _input((1, 3, 64, 64))
    fn, params = funcattr.functionalize(model, fc.EpsilonPlusFlat(canonizers=[FULL[name]()]))
    _, relevance = funcattr.gradient(fn, params, x, funcattr.one_hot(0, times_output=True))
    assert torch.isfinite(relevance).all()
    zeroed = _zero_biases(randomise(getattr(torchvision.models, name)(weights=None), 1))
    fn, params = funcattr.functionalize(zeroed, CONSERVING, FULL[name]())
    output, relevance = funcattr.gradient(fn, params, x, funcattr.one_hot(0, times_output=True))
    torch.testing.assert_close(relevance.sum(), output[0, 0], rtol=1e-6, atol=1e-9)


ZENNIT_FULL: dict[str, Any] = {
    "vgg16_bn": ztv.VGGCanonizer,
    "resnet18": ztv.ResNetCanonizer,
    "resnet50": ztv.ResNetCanonizer,
}


@pytest.mark.slow
@pytest.mark.parametrize("composite", sorted(COMPOSITES))
@pytest.mark.parametrize("name", sorted(ZENNIT_FULL))
def test_full_models_relevance_equals_zennit(name, composite):
    kwargs, zennit_cls, funcattr_cls = COMPOSITES[composite]
    model = full_model(name)
    x = _input((1, 3, 64, 64))
    grad = torch.eye(1000)[[7]]
    expected = zennit_relevance(model, zennit_cls(canonizers=[ZENNIT_FULL[name]()], **kwargs),
                                x, grad)
    actual = funcattr_relevance(model, funcattr_cls(canonizers=[FULL[name]()], **kwargs),
                                x, grad)
    assert_close(actual, expected, ZENNIT_RTOL)


@pytest.mark.filterwarnings("ignore::funcattr.ModelCheckWarning")  # un-canonized on purpose
@pytest.mark.parametrize("canonize", [False, True], ids=["batchnorm-generic", "canonized"])
def test_small_resnet_composes_with_vmap_and_grad(canonize):
    """Per-sample ``vmap`` of an attribution equals the batched one, and ``torch.func.grad``
    of an explanation loss equals autograd's, through a ResNet whose BatchNorms (without a
    canonizer), residual ``Sum`` layers (with one) and adaptive pooling take the generic rule
    path."""
    model = small_resnet(BasicBlock, seed=3)
    canonizers = None if canonize else ()
    composite = fc.EpsilonPlusFlat() if canonize else fc.EpsilonPlusFlat(canonizers=[])
    fn, params = funcattr.functionalize(model, composite, canonizers)
    x = _input((3, 3, 32, 32))
    seeds = torch.eye(5, dtype=x.dtype)[[1, 4, 2]]

    _, batched = funcattr.gradient(fn, params, x, seeds)

    def one(sample: Tensor, seed: Tensor) -> Tensor:
        return funcattr.gradient(fn, params, sample[None], seed[None])[1][0]

    torch.testing.assert_close(torch.vmap(one)(x, seeds), batched, rtol=1e-9, atol=1e-12)

    name = "conv1.weight"

    def loss(weight: Tensor) -> Tensor:
        relevance = funcattr.gradient(fn, {**params, name: weight}, x, seeds)[1]
        return (relevance**2).sum()

    weight = params[name].clone().requires_grad_(True)
    (expected,) = torch.autograd.grad(loss(weight), weight)
    torch.testing.assert_close(torch.func.grad(loss)(params[name]), expected, rtol=1e-8,
                               atol=1e-12)
