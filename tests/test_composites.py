"""Composites: resolved rule maps (literal dicts), precedence, the printed table, the registry,
and every preset against Zennit on small CNNs and MLPs (and, marked slow, VGG11)."""

from __future__ import annotations

import textwrap
from copy import deepcopy
from typing import Any

import pytest
import torch
import zennit.composites as zc
import zennit.rules as zr
from helpers import assert_close, single_thread, small_cnn, small_mlp, zennit_gradient
from torch import nn

import funcattr
from funcattr import types
from funcattr.composites import (
    COMPOSITES,
    BetaSmooth,
    Composite,
    DeconvNet,
    EpsilonAlpha2Beta1,
    EpsilonAlpha2Beta1Flat,
    EpsilonGammaBox,
    EpsilonPlus,
    EpsilonPlusFlat,
    ExcitationBackprop,
    GuidedBackprop,
    LayerMapComposite,
    MixedComposite,
    NameLayerMapComposite,
    NameMapComposite,
    SpecialFirstLayerMapComposite,
    assign_rules,
    get_composite,
    register_composite,
)
from funcattr.rules import (
    AlphaBeta,
    Epsilon,
    Flat,
    Gamma,
    Norm,
    Pass,
    ReLUBetaSmooth,
    ReLUDeconvNet,
    ReLUGuidedBackprop,
    WSquare,
    ZBox,
    ZPlus,
)

pytestmark = pytest.mark.usefixtures(single_thread.__name__)

RTOL = 1e-9  # relative to the largest relevance; observed differences are <= 1e-13

# --------------------------------------------------------------------------------------------
# Resolution: every preset on a small CNN and an MLP, as literal dicts
# --------------------------------------------------------------------------------------------

# small_cnn: features = Conv, ReLU, BatchNorm, AvgPool, Conv, ReLU, MaxPool;
#            classifier = Flatten, Linear, ReLU, Linear
CNN_BASE = {"features.1": Pass(), "features.2": Pass(), "features.3": Norm(),
            "features.5": Pass(), "classifier.2": Pass()}
EXPECTED_CNN: dict[str, dict[str, Any]] = {
    "epsilon_gamma_box": {
        "features.0": ZBox(low=-3.0, high=3.0), **CNN_BASE, "features.4": Gamma(gamma=0.25),
        "classifier.1": Epsilon(), "classifier.3": Epsilon()},
    "epsilon_plus": {
        "features.0": ZPlus(), **CNN_BASE, "features.4": ZPlus(),
        "classifier.1": Epsilon(), "classifier.3": Epsilon()},
    "epsilon_alpha2_beta1": {
        "features.0": AlphaBeta(2.0, 1.0), **CNN_BASE, "features.4": AlphaBeta(2.0, 1.0),
        "classifier.1": Epsilon(), "classifier.3": Epsilon()},
    "epsilon_plus_flat": {
        "features.0": Flat(), **CNN_BASE, "features.4": ZPlus(),
        "classifier.1": Epsilon(), "classifier.3": Epsilon()},
    "epsilon_alpha2_beta1_flat": {
        "features.0": Flat(), **CNN_BASE, "features.4": AlphaBeta(2.0, 1.0),
        "classifier.1": Epsilon(), "classifier.3": Epsilon()},
    "deconvnet": {name: ReLUDeconvNet() for name in ("features.1", "features.5", "classifier.2")},
    "guided_backprop": {
        name: ReLUGuidedBackprop() for name in ("features.1", "features.5", "classifier.2")},
    "excitation_backprop": {  # no Pass: activations and BatchNorm keep their gradient
        "features.0": ZPlus(), "features.3": Norm(), "features.4": ZPlus(),
        "classifier.1": ZPlus(), "classifier.3": ZPlus()},
    "beta_smooth": {
        name: ReLUBetaSmooth(10.0) for name in ("features.1", "features.5", "classifier.2")},
}
# small_mlp: Linear, ReLU, Linear, ReLU, Linear
MLP_RELU = {"1": Pass(), "3": Pass()}
EXPECTED_MLP: dict[str, dict[str, Any]] = {
    "epsilon_gamma_box": {"0": Epsilon(), **MLP_RELU, "2": Epsilon(), "4": Epsilon()},  # no ZBox
    "epsilon_plus": {"0": Epsilon(), **MLP_RELU, "2": Epsilon(), "4": Epsilon()},
    "epsilon_alpha2_beta1": {"0": Epsilon(), **MLP_RELU, "2": Epsilon(), "4": Epsilon()},
    "epsilon_plus_flat": {"0": Flat(), **MLP_RELU, "2": Epsilon(), "4": Epsilon()},
    "epsilon_alpha2_beta1_flat": {"0": Flat(), **MLP_RELU, "2": Epsilon(), "4": Epsilon()},
    "deconvnet": {"1": ReLUDeconvNet(), "3": ReLUDeconvNet()},
    "guided_backprop": {"1": ReLUGuidedBackprop(), "3": ReLUGuidedBackprop()},
    "excitation_backprop": {"0": ZPlus(), "2": ZPlus(), "4": ZPlus()},
    "beta_smooth": {"1": ReLUBetaSmooth(10.0), "3": ReLUBetaSmooth(10.0)},
}
NAMES = list(EXPECTED_CNN)


def _preset(name: str, **kwargs: Any) -> Composite:
    if name == "epsilon_gamma_box":
        kwargs = {"low": -3.0, "high": 3.0, **kwargs}
    return COMPOSITES[name](**kwargs)


def _in_order(model: nn.Module, rules: dict[str, Any]) -> list[str]:
    return [name for name, _ in model.named_modules() if name in rules]


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize(("make", "expected"), [(small_cnn, EXPECTED_CNN),
                                                (small_mlp, EXPECTED_MLP)], ids=["cnn", "mlp"])
def test_preset_resolves_to_literal_dict(name: str, make, expected) -> None:
    model = make()
    rules = assign_rules(model, _preset(name))
    assert dict(rules) == expected[name]
    assert list(rules) == _in_order(model, expected[name])  # named_modules order
    assert all(rules.modules[n] is dict(model.named_modules())[n] for n in rules)


def test_presets_pass_their_arguments_on() -> None:
    rules = assign_rules(small_cnn(), EpsilonGammaBox(-1.0, 2.0, epsilon=0.5, gamma=1.0,
                                                      stabilizer=1e-3, zero_params="bias"))
    assert rules["features.0"] == ZBox(low=-1.0, high=2.0, stabilizer=1e-3, zero_params="bias")
    assert rules["features.3"] == Norm(stabilizer=1e-3)
    assert rules["features.4"] == Gamma(gamma=1.0, stabilizer=1e-3, zero_params="bias")
    assert rules["classifier.3"] == Epsilon(epsilon=0.5, zero_params="bias")
    assert assign_rules(small_mlp(), BetaSmooth(beta_smooth=2.0))["1"] == ReLUBetaSmooth(2.0)


def test_no_composite_resolves_to_no_rules() -> None:
    rules = assign_rules(small_cnn(), None)
    assert dict(rules) == {}
    assert repr(rules) == "RuleMap(no rules)"
    assert dict(assign_rules(small_cnn(), Composite())) == {}


# --------------------------------------------------------------------------------------------
# Precedence
# --------------------------------------------------------------------------------------------

def test_user_layer_map_comes_before_the_preset() -> None:
    composite = EpsilonPlus(layer_map=[(nn.ReLU, ReLUGuidedBackprop()),
                                       (nn.Linear, Epsilon(epsilon=0.25))])
    rules = assign_rules(small_cnn(), composite)
    assert rules["features.1"] == ReLUGuidedBackprop()
    assert rules["classifier.1"] == Epsilon(epsilon=0.25)
    assert rules["features.0"] == ZPlus() and rules["features.2"] == Pass()


def test_user_first_map_comes_before_the_preset() -> None:
    rules = assign_rules(small_cnn(), EpsilonPlusFlat(first_map=[(nn.Conv2d, WSquare())]))
    assert rules["features.0"] == WSquare()
    assert rules["features.4"] == ZPlus()
    # a user first_map entry that matches a later module first claims that one
    rules = assign_rules(small_cnn(), EpsilonPlusFlat(first_map=[(nn.Linear, WSquare())]))
    assert rules["features.0"] == Flat()  # the preset's entry matched first
    assert rules["classifier.1"] == Epsilon()


def test_names_come_before_types() -> None:
    composite = NameLayerMapComposite(
        name_map=[(("features.4", "classifier.3"), Epsilon(epsilon=0.5))],
        layer_map=[(types.Convolution, ZPlus()), (nn.Linear, Epsilon())],
    )
    rules = assign_rules(small_cnn(), composite)
    assert dict(rules) == {"features.0": ZPlus(), "features.4": Epsilon(epsilon=0.5),
                           "classifier.1": Epsilon(), "classifier.3": Epsilon(epsilon=0.5)}


def test_name_map_first_entry_wins() -> None:
    composite = NameMapComposite([(("features.0",), ZPlus()), (("features.0", "features.4"),
                                                              Flat())])
    assert dict(assign_rules(small_cnn(), composite)) == {"features.0": ZPlus(),
                                                          "features.4": Flat()}


def test_first_map_applies_to_the_first_match_only() -> None:
    composite = SpecialFirstLayerMapComposite(layer_map=[(types.Linear, Epsilon())],
                                              first_map=[(types.Linear, Flat())])
    rules = assign_rules(small_cnn(), composite)
    assert [name for name, rule in rules.items() if rule == Flat()] == ["features.0"]
    assert len(rules) == 4


class _RegisteredOutOfOrder(nn.Module):
    """``head`` is registered first but runs last: "first" means named_modules order."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(4, 2)
        self.body = nn.Linear(3, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.body(x)))


def _zennit_rule_types(model: nn.Module, composite: Any) -> dict[str, str]:
    """Which Zennit rule class each module gets (read off its registered forward hooks)."""
    result = {}
    with composite.context(model):
        for name, module in model.named_modules():
            owners = {type(hook.__self__).__name__ for hook in module._forward_hooks.values()
                      if hasattr(hook, "__self__")}
            if owners:
                (result[name],) = owners
    return result


def _rule_types(rules: dict[str, Any]) -> dict[str, str]:
    return {name: type(rule).__name__ for name, rule in rules.items()}


def test_first_layer_is_first_in_registration_order_like_zennit() -> None:
    model = _RegisteredOutOfOrder()
    rules = assign_rules(model, EpsilonPlusFlat())
    assert dict(rules) == {"head": Flat(), "body": Epsilon()}
    assert _rule_types(rules) == _zennit_rule_types(model, zc.EpsilonPlusFlat())


def test_mixed_composite_consumes_the_first_layer_like_zennit() -> None:
    """Every sub-composite is asked for every module: the SpecialFirst one "sees" features.0
    even though the name map claims it, so its Flat never applies (Zennit §3.2)."""
    ours = MixedComposite([
        NameMapComposite([(("features.0",), Epsilon())]),
        SpecialFirstLayerMapComposite(layer_map=[(types.Convolution, ZPlus())],
                                      first_map=[(types.Convolution, Flat())]),
    ])
    theirs = zc.MixedComposite([
        zc.NameMapComposite([(("features.0",), zr.Epsilon())]),
        zc.SpecialFirstLayerMapComposite(layer_map=[(zc.Convolution, zr.ZPlus())],
                                         first_map=[(zc.Convolution, zr.Flat())]),
    ])
    model = small_cnn()
    rules = assign_rules(model, ours)
    assert dict(rules) == {"features.0": Epsilon(), "features.4": ZPlus()}
    assert _rule_types(rules) == _zennit_rule_types(model, theirs)


@pytest.mark.parametrize("name", NAMES)
def test_resolution_matches_zennits_registration(name: str) -> None:
    model = small_cnn()
    kwargs = {"low": -3.0, "high": 3.0} if name == "epsilon_gamma_box" else {}
    theirs = _zennit_rule_types(model, zc.COMPOSITES[name](**kwargs))
    assert _rule_types(assign_rules(model, _preset(name))) == theirs


def test_shared_module_is_resolved_once() -> None:
    shared = nn.Linear(3, 3)
    model = nn.Sequential(shared, nn.ReLU(), shared)
    rules = assign_rules(model, EpsilonPlusFlat())
    assert dict(rules) == {"0": Flat(), "1": Pass()}  # "2" is the same module as "0"


def test_root_module_can_take_a_rule() -> None:
    model = nn.Linear(3, 2)
    assert dict(assign_rules(model, LayerMapComposite([(nn.Linear, Epsilon())]))) == {
        "": Epsilon()}


# --------------------------------------------------------------------------------------------
# The printed table; the registry; name errors
# --------------------------------------------------------------------------------------------

def test_rule_map_table_snapshot() -> None:
    expected = textwrap.dedent("""\
        features.0    Conv2d       ZBox(low=-3.0, high=3.0, stabilizer=1e-06, zero_params=None)
        features.1    ReLU         Pass()
        features.2    BatchNorm2d  Pass()
        features.3    AvgPool2d    Norm(stabilizer=1e-06)
        features.4    Conv2d       Gamma(gamma=0.25, stabilizer=1e-06, zero_params=None)
        features.5    ReLU         Pass()
        classifier.1  Linear       Epsilon(epsilon=1e-06, zero_params=None)
        classifier.2  ReLU         Pass()
        classifier.3  Linear       Epsilon(epsilon=1e-06, zero_params=None)""")
    assert repr(assign_rules(small_cnn(), EpsilonGammaBox(-3.0, 3.0))) == expected
    fn, _ = funcattr.functionalize(small_cnn(), EpsilonGammaBox(-3.0, 3.0))
    assert repr(fn) == f"FunctionalModel(rules=\n{expected})"


def test_root_row_is_named_root() -> None:
    rules = assign_rules(nn.Linear(3, 2), LayerMapComposite([(nn.Linear, Epsilon())]))
    assert repr(rules) == "<root>  Linear  Epsilon(epsilon=1e-06, zero_params=None)"


def test_registry_has_the_nine_zennit_names() -> None:
    nine = {"epsilon_gamma_box", "epsilon_plus", "epsilon_alpha2_beta1", "epsilon_plus_flat",
            "epsilon_alpha2_beta1_flat", "deconvnet", "guided_backprop", "excitation_backprop",
            "beta_smooth"}
    assert nine <= set(COMPOSITES)
    assert nine == set(zc.COMPOSITES)
    assert COMPOSITES["epsilon_plus_flat"] is EpsilonPlusFlat
    assert all(isinstance(cls, type) and issubclass(cls, Composite) for cls in COMPOSITES.values())
    classes = {EpsilonGammaBox, EpsilonPlus, EpsilonAlpha2Beta1, EpsilonPlusFlat,
               EpsilonAlpha2Beta1Flat, DeconvNet, GuidedBackprop, ExcitationBackprop, BetaSmooth}
    assert {COMPOSITES[name] for name in nine} == classes


def test_get_composite_by_name() -> None:
    assert get_composite("epsilon_plus") == EpsilonPlus()
    assert get_composite("epsilon_plus", epsilon=0.5) == EpsilonPlus(epsilon=0.5)
    assert get_composite("epsilon_plus") != EpsilonPlus(epsilon=0.5)
    assert get_composite("epsilon_gamma_box", low=-1.0, high=1.0) == EpsilonGammaBox(-1.0, 1.0)


def test_register_composite() -> None:
    @register_composite("test_all_epsilon")
    class AllEpsilon(LayerMapComposite):
        def __init__(self, epsilon: float = 0.1, canonizers=None) -> None:
            super().__init__([(types.Linear, Epsilon(epsilon=epsilon))], canonizers)

    try:
        assert COMPOSITES["test_all_epsilon"] is AllEpsilon
        fn, _ = funcattr.functionalize(small_mlp(), "test_all_epsilon")
        assert dict(fn.rules) == {"0": Epsilon(0.1), "2": Epsilon(0.1), "4": Epsilon(0.1)}
        assert get_composite("test_all_epsilon", epsilon=0.2).layer_map[0][1] == Epsilon(0.2)
    finally:
        del COMPOSITES["test_all_epsilon"]


def test_name_map_naming_a_missing_module_suggests_close_names() -> None:
    composite = NameMapComposite([(("classifer.1", "features.4"), Epsilon())])
    with pytest.raises(ValueError, match=r"assign_rules\(composite=NameMapComposite\): name_map "
                       r"names module\(s\) that the model does not have: 'classifer.1' \(did you "
                       r"mean 'classifier.1'.*\)\. Use names from model.named_modules\(\)"):
        assign_rules(small_cnn(), composite)
    with pytest.raises(ValueError, match=r"'nothing_like_it'\. Use names"):  # no suggestion
        assign_rules(small_cnn(), NameLayerMapComposite([(("nothing_like_it",), Epsilon())]))


def test_composite_reprs() -> None:
    assert repr(EpsilonPlus()) == "EpsilonPlus(epsilon=1e-06, stabilizer=1e-06, zero_params=None)"
    assert repr(EpsilonGammaBox(-3.0, 3.0)) == (
        "EpsilonGammaBox(low=-3.0, high=3.0, epsilon=1e-06, gamma=0.25, stabilizer=1e-06, "
        "zero_params=None)")
    assert repr(DeconvNet()) == "DeconvNet()"
    assert EpsilonPlus() == EpsilonPlus() and hash(EpsilonPlus()) == hash(EpsilonPlus())


# --------------------------------------------------------------------------------------------
# Every preset equals Zennit (float64, one-hot times output)
# --------------------------------------------------------------------------------------------

def _zennit_preset(name: str, **kwargs: Any) -> Any:
    if name == "epsilon_gamma_box":
        kwargs = {"low": -3.0, "high": 3.0, **kwargs}
    return zc.COMPOSITES[name](**kwargs)


def _target(output: torch.Tensor, targets: list[int]) -> torch.Tensor:
    return torch.eye(output.shape[1])[targets] * output


def _compare(model: nn.Module, name: str, x: torch.Tensor, targets: list[int],
             **kwargs: Any) -> None:
    _, expected = zennit_gradient(model, _zennit_preset(name, **kwargs), x,
                                  lambda out: _target(out, targets))
    fn, params = funcattr.functionalize(model, _preset(name, **kwargs))
    output, actual = funcattr.gradient(fn, params, x,
                                       funcattr.one_hot(targets, times_output=True))
    assert_close(output, model(x).detach(), rtol=1e-14)
    assert_close(actual, expected, rtol=RTOL)


@pytest.mark.filterwarnings("ignore::funcattr.ModelCheckWarning")  # un-canonized on purpose
@pytest.mark.parametrize("name", NAMES)
def test_preset_equals_zennit_on_a_small_cnn(name: str, seed: int) -> None:
    model = small_cnn(seed)
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(seed))
    _compare(model, name, x, [1, 3])


@pytest.mark.parametrize("name", NAMES)
def test_preset_equals_zennit_on_an_mlp(name: str, seed: int) -> None:
    model = small_mlp(seed)
    x = torch.randn(3, 6, generator=torch.Generator().manual_seed(seed))
    _compare(model, name, x, [0, 2, 1])


@pytest.mark.filterwarnings("ignore::funcattr.ModelCheckWarning")  # un-canonized on purpose
@pytest.mark.parametrize("name", [n for n in NAMES if n not in (
    "deconvnet", "guided_backprop", "beta_smooth")])  # these take no zero_params
def test_preset_with_zero_params_equals_zennit(name: str, seed: int) -> None:
    model = small_cnn(seed)
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(seed))
    _compare(model, name, x, [2, 0], zero_params="bias")


def test_beta_smooth_on_an_inplace_relu_uses_the_relus_input() -> None:
    """``sigmoid(beta x)`` of the ReLU's *input*, also for ``ReLU(inplace=True)``. Zennit reads
    the input after the in-place ReLU overwrote it (``sigmoid(beta relu(x))``), so VGG's
    in-place ReLUs are compared below against Zennit on an out-of-place copy."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 5), nn.ReLU(inplace=True), nn.Linear(5, 2))
    x, grad = torch.randn(3, 4), torch.randn(3, 2)
    _, actual = funcattr.gradient(*funcattr.functionalize(model, BetaSmooth()), x, grad)
    hidden = model[0](x).detach()
    expected = ((grad @ model[2].weight) * torch.sigmoid(10.0 * hidden)) @ model[0].weight
    assert_close(actual, expected.detach(), rtol=1e-12)
    _, zennit = zennit_gradient(model, zc.BetaSmooth(), x, grad)
    assert not torch.allclose(zennit, expected)


def _out_of_place(model: nn.Module) -> nn.Module:
    copy = deepcopy(model)
    for module in copy.modules():
        if isinstance(module, nn.ReLU):
            module.inplace = False
    return copy


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_preset_equals_zennit_on_vgg11(name: str) -> None:
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.vgg11(weights=None).eval()
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    _, expected = zennit_gradient(_out_of_place(model), _zennit_preset(name), x,
                                  lambda out: _target(out, [7]))
    fn, params = funcattr.functionalize(model, _preset(name))
    _, actual = funcattr.gradient(fn, params, x, funcattr.one_hot(7, times_output=True))
    assert_close(actual, expected, rtol=RTOL)


# --------------------------------------------------------------------------------------------
# Composites are values: frozen, equal and hashed by their maps, printed as tables
# --------------------------------------------------------------------------------------------

def test_composites_are_frozen() -> None:
    import dataclasses

    composite = EpsilonPlus()
    with pytest.raises(dataclasses.FrozenInstanceError):
        composite.layer_map = ()  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        composite.canonizers = ()  # type: ignore[misc]
    assert isinstance(composite.layer_map, tuple) and isinstance(composite.canonizers, tuple)


def test_composites_compare_and_hash_by_value() -> None:
    from funcattr.canonizers import SequentialMergeBatchNorm

    a = LayerMapComposite([(nn.Linear, Epsilon()), [(nn.ReLU, nn.Tanh), Pass()]])
    b = LayerMapComposite(((nn.Linear, Epsilon()), ((nn.ReLU, nn.Tanh), Pass())))
    assert a == b and hash(a) == hash(b) and len({a, b}) == 1
    assert a != LayerMapComposite([(nn.Linear, Epsilon(epsilon=0.5))])
    assert EpsilonPlus() != LayerMapComposite(EpsilonPlus().layer_map)  # another class
    assert EpsilonPlus(canonizers=[SequentialMergeBatchNorm()]) != EpsilonPlus()
    assert (EpsilonPlus(canonizers=SequentialMergeBatchNorm())
            == EpsilonPlus(canonizers=[SequentialMergeBatchNorm()]))
    names = NameMapComposite([("features.0", Flat())])
    assert names == NameMapComposite([(["features.0"], Flat())])
    mixed = MixedComposite([names, EpsilonPlus(canonizers=[SequentialMergeBatchNorm()])])
    assert mixed == MixedComposite([names, EpsilonPlus(canonizers=[SequentialMergeBatchNorm()])])
    assert mixed.canonizers == (SequentialMergeBatchNorm(),)
    assert {EpsilonPlusFlat(): "cached"}[EpsilonPlusFlat()] == "cached"


def test_presets_with_tensor_bounds_compare_by_value() -> None:
    low, high = torch.full((1, 3, 1, 1), -2.0), torch.full((1, 3, 1, 1), 2.0)
    box = EpsilonGammaBox(low=low, high=high)
    assert box == EpsilonGammaBox(low=low.clone(), high=high.clone())
    assert hash(box) == hash(box)
    assert box != EpsilonGammaBox(low=low, high=high + 1)


def test_preset_repr_shows_user_entries() -> None:
    composite = EpsilonPlus(layer_map=[(nn.ReLU, Pass())])
    assert repr(composite) == ("EpsilonPlus(epsilon=1e-06, stabilizer=1e-06, zero_params=None, "
                               f"layer_map=[({nn.ReLU!r}, Pass())])")
    assert composite.layer_map[0] == (nn.ReLU, Pass())  # the user's entries come first
    assert repr(LayerMapComposite([(nn.Linear, Epsilon())])) == (
        f"LayerMapComposite(layer_map=[({nn.Linear!r}, Epsilon(epsilon=1e-06, "
        f"zero_params=None))])")


def test_preset_docstring_tables_are_current() -> None:
    """Each preset's docstring shows its rule table as a doctest; run them all."""
    import doctest

    import funcattr.composites.presets

    result = doctest.testmod(funcattr.composites.presets,
                             optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0
    assert result.attempted >= len(NAMES)
    for name in NAMES:
        assert ".table())" in (COMPOSITES[name].__doc__ or ""), name


def test_table_of_a_mixed_composite() -> None:
    composite = NameLayerMapComposite(name_map=[(("features.0",), Flat())],
                                      layer_map=[(types.Convolution, ZPlus())])
    assert composite.table() == textwrap.dedent("""\
        composites[0].name_map   features.0                  Flat(stabilizer=1e-06, zero_params=None)
        composites[1].layer_map  funcattr.types.Convolution  ZPlus(stabilizer=1e-06, zero_params=None)""")  # noqa: E501
    assert Composite().table() == "Composite: no entries"


# --------------------------------------------------------------------------------------------
# Constructor and registry errors: call, expected, got, fix
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("make", "error", "match"), [
    (lambda: LayerMapComposite([nn.Linear]), TypeError,
     r"^LayerMapComposite\(layer_map=\.\.\.\): expected \(key, rule\) pairs, got <class .*>\. "
     r"Write e\.g\. layer_map=\[\(torch\.nn\.Linear, Epsilon\(\)\)\]\.$"),
    (lambda: LayerMapComposite(3), TypeError,
     r"^LayerMapComposite\(layer_map=3\): expected a sequence of \(key, rule\) pairs, got int\. "
     r"Write e\.g\."),
    (lambda: LayerMapComposite([("Linear", Epsilon())]), TypeError,
     r"^LayerMapComposite\(layer_map=\.\.\.\): expected module types \(a class or a tuple of "
     r"classes\) as keys, got 'Linear'\. Write e\.g\. layer_map=\[\(torch\.nn\.Linear"),
    (lambda: EpsilonPlusFlat(first_map=[(nn.Linear,)]), TypeError,
     r"^EpsilonPlusFlat\(first_map=\.\.\.\): expected \(key, rule\) pairs, got .*\. Write e\.g\. "
     r"layer_map=\[\(torch\.nn\.Linear, Epsilon\(\)\)\]\.$"),
    (lambda: EpsilonPlus(layer_map=[nn.Linear]), TypeError,
     r"^EpsilonPlus\(layer_map=\.\.\.\): expected \(key, rule\) pairs"),
    (lambda: NameMapComposite([((1,), Epsilon())]), TypeError,
     r"^NameMapComposite\(name_map=\.\.\.\): expected module names \(str\) as keys, got \(1,\)\. "
     r"Write e\.g\. name_map=\[\(\['features\.0'\], Epsilon\(\)\)\]\.$"),
    (lambda: Composite(module_map=3), TypeError,
     r"^Composite\(module_map=3\): expected a callable \(ctx, name, module\) -> Rule \| None, "
     r"got int\. Pass a function, or use LayerMapComposite / NameMapComposite for tables\.$"),
    (lambda: EpsilonPlus(canonizers=["merge"]), TypeError,
     r"^EpsilonPlus\(canonizers=\.\.\.\): expected Canonizer instances, got str\. Pass e\.g\. "
     r"canonizers=\[SequentialMergeBatchNorm\(\)\]\.$"),
    (lambda: EpsilonPlus(canonizers=3), TypeError,
     r"^EpsilonPlus\(canonizers=3\): expected a Canonizer or a list of Canonizers, got int\. "
     r"Pass e\.g\. canonizers=\[SequentialMergeBatchNorm\(\)\]\.$"),
    (lambda: MixedComposite([EpsilonPlus(), 3]), TypeError,
     r"^MixedComposite\(composites=\.\.\.\): expected Composite instances, got int\. Pass e\.g\. "
     r"MixedComposite\(\[NameMapComposite\(\.\.\.\), EpsilonPlus\(\)\]\)\.$"),
    (lambda: register_composite(3), TypeError,
     r"^register_composite\(name=3\): expected a non-empty name \(str\), got int\. Write e\.g\. "
     r"@register_composite\('my_composite'\)\.$"),
    (lambda: register_composite("not_a_composite")(int), TypeError,
     r"^register_composite\(name='not_a_composite'\): expected a Composite subclass, got "
     r"<class 'int'>\. Decorate a subclass of funcattr\.composites\.Composite"),
    (lambda: get_composite(3), TypeError,
     r"^get_composite\(name=3\): expected a registered composite name \(str\), got int\. Pass "
     r"e\.g\. 'epsilon_plus'\.$"),
], ids=["not_a_pair", "not_a_sequence", "key_not_a_type", "first_map", "preset_layer_map",
        "name_not_str", "module_map", "canonizer_item", "canonizers_kind", "mixed_item",
        "register_name", "register_class", "get_name_kind"])
def test_constructor_errors(make, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        make()
    assert "not_a_composite" not in COMPOSITES


def test_resolution_and_registry_errors_say_the_fix() -> None:
    with pytest.raises(TypeError, match=r"^assign_rules\(composite=LayerMapComposite\): the map "
                       r"gave 'epsilon' for module '0'; expected a funcattr Rule \(e\.g\. "
                       r"Epsilon\(\)\)\. Map modules to rules from funcattr\.rules \(Zennit's "
                       r"rule objects do not work here\)\.$"):
        assign_rules(small_mlp(), LayerMapComposite([(nn.Linear, "epsilon")]))
    with pytest.raises(ValueError, match=r"^get_composite\(name='epsilon_pluss'\): unknown "
                       r"composite; expected a registered name, got 'epsilon_pluss'\. Use one of "
                       r"attn_lrp, beta_smooth, .*\. Did you mean 'epsilon_plus'.*\?$"):
        get_composite("epsilon_pluss")
