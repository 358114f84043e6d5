"""One test per user-facing error of the LRP core, matching on the message's distinctive parts:
``<callable>(<argument>=<value>): <expected>, got <what came>. <fix>``."""

from __future__ import annotations

import pytest
import torch
from helpers import assert_unchanged, small_cnn, small_mlp, snapshot
from torch import nn

import funcattr
from funcattr.canonizers import SequentialMergeBatchNorm
from funcattr.composites import (
    EpsilonPlus,
    EpsilonPlusFlat,
    LayerMapComposite,
    NameMapComposite,
    assign_rules,
    get_composite,
)
from funcattr.rules import (
    Epsilon,
    Flat,
    Pass,
    ReLUBetaSmooth,
    ReLUDeconvNet,
    ReLUGuidedBackprop,
    WSquare,
    ZBox,
    ZPlus,
)


def _cnn_fn(composite=None):
    return funcattr.functionalize(small_cnn(), EpsilonPlusFlat() if composite is None
                                  else composite)


# --------------------------------------------------------------------------------------------
# Inputs and targets
# --------------------------------------------------------------------------------------------

def test_wrong_input_shape_names_input() -> None:
    fn, params = _cnn_fn()
    with pytest.raises(ValueError, match=r"^gradient\(input=tensor of shape \(2, 3, 6, 6\)\): the "
                       r"model could not process an input of this shape; expected the shape it "
                       r"takes, got the error .*\. Pass an input shaped as the model expects, "
                       r"with the batch dimension first\.$"):
        funcattr.gradient(fn, params, torch.randn(2, 3, 6, 6), funcattr.one_hot(0))
    with pytest.raises(ValueError, match=r"^pullback\(input=tensor of shape \(2, 3, 6, 6\)\)"):
        funcattr.pullback(fn, params, torch.randn(2, 3, 6, 6))


def test_missing_batch_dimension_names_input() -> None:
    """BatchNorm's own ``ValueError('expected 4D input (got 3D input)')`` for an input without
    its batch dimension (the convolution before it accepts unbatched input) names ``input``."""
    fn, params = _cnn_fn()
    with pytest.raises(ValueError, match=r"^pullback\(input=tensor of shape \(3, 8, 8\)\)"):
        funcattr.pullback(fn, params, torch.randn(3, 8, 8))


def test_input_must_be_a_tensor() -> None:
    fn, params = _cnn_fn()
    with pytest.raises(TypeError, match=r"^gradient\(input=list\): expected a torch.Tensor, got "
                       r"list\. Pass e\.g\. torch\.as_tensor\(input\)\.$"):
        funcattr.gradient(fn, params, [[1.0, 2.0]])


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_input(bad: float) -> None:
    fn, params = _cnn_fn()
    x = torch.randn(2, 3, 8, 8)
    x[1, 2, 3, 4] = bad
    with pytest.raises(ValueError, match=r"^gradient\(input=tensor of shape \(2, 3, 8, 8\)\): "
                       r"expected finite values, got NaN or infinity\. Clean the input"):
        funcattr.gradient(fn, params, x, funcattr.one_hot(0))


@pytest.mark.parametrize(("target", "shown", "low", "high"), [
    (4, "4", 0, 3), (-1, "-1", 0, 3), ([0, 9], r"\[0, 9\]", 0, 3),
    (torch.tensor([1, 4]), r"tensor\(\[1, 4\]\)", 0, 3),
])
def test_target_out_of_range(target, shown: str, low: int, high: int) -> None:
    fn, params = _cnn_fn()
    with pytest.raises(ValueError, match=rf"^one_hot\(target={shown}\): target out of range for "
                       rf"an output with 4 classes; expected values in \[{low}, {high}\], got "
                       rf"\[.*\]\. Pass classes of this model\.$"):
        funcattr.gradient(fn, params, torch.randn(2, 3, 8, 8), funcattr.one_hot(target))


def test_target_count_must_match_the_batch() -> None:
    fn, params = _cnn_fn()
    with pytest.raises(ValueError, match=r"^one_hot\(target=\[0, 1, 2\]\): expected one target "
                       r"or one per sample \(2\), got \(3,\)\. Pass one class, or one per sample "
                       r"of the batch\.$"):
        funcattr.gradient(fn, params, torch.randn(2, 3, 8, 8), funcattr.one_hot([0, 1, 2]))


@pytest.mark.parametrize(("target", "match"), [
    (True, r"^one_hot\(target=True\): expected an int, a sequence of ints, an integer tensor"),
    ("3", r"^one_hot\(target='3'\): expected an int"),
    ([0.5], r"^one_hot\(target=\[0.5\]\): expected an int"),
    (torch.tensor([0.0, 1.0]), r"^one_hot\(target=tensor of dtype torch.float\d+, shape \(2,\)\): "
                               r"expected an integer tensor of shape \(batch,\), got dtype "
                               r"torch\.float\d+\. Pass class indices, e\.g\. target\.long\(\)\.$"),
])
def test_target_type(target, match: str) -> None:
    with pytest.raises(TypeError, match=match):
        funcattr.one_hot(target)


def test_one_hot_needs_a_two_dimensional_output() -> None:
    fn, params = funcattr.functionalize(nn.Sequential(nn.Conv2d(3, 2, 3)), EpsilonPlus())
    with pytest.raises(ValueError, match=r"^one_hot\(target=1\): expected a \(batch, classes\) "
                       r"output, got shape \(2, 2, 6, 6\)\. Pass a tensor or your own callable"):
        funcattr.gradient(fn, params, torch.randn(2, 3, 8, 8), funcattr.one_hot(1))


def test_output_gradient_of_the_wrong_shape() -> None:
    fn, params = _cnn_fn()
    with pytest.raises(ValueError, match=r"^gradient\(attr_output_fn=\.\.\.\): expected an output "
                       r"gradient of the output's shape \(2, 4\), got \(2, 5\)\. Return a tensor "
                       r"shaped like the output, e\.g\. from one_hot\(target\)\.$"):
        funcattr.gradient(fn, params, torch.randn(2, 3, 8, 8), torch.ones(2, 5))
    with pytest.raises(ValueError, match=r"got list"):
        funcattr.gradient(fn, params, torch.randn(2, 3, 8, 8), lambda output: [1.0])


def test_output_gradient_of_the_wrong_kind() -> None:
    fn, params = _cnn_fn()
    # the pure function's argument is attr_output_fn (the classes keep Zennit's attr_output)
    with pytest.raises(TypeError, match=r"^gradient\(attr_output_fn=int\): expected None, a "
                       r"tensor shaped like the output, or a callable output -> output gradient, "
                       r"got int\. Pass e\.g\. attr_output_fn=one_hot\(target\)\.$"):
        funcattr.gradient(fn, params, torch.randn(2, 3, 8, 8), 3)


def test_params_must_be_a_mapping() -> None:
    fn, params = _cnn_fn()
    with pytest.raises(TypeError, match=r"^fn\(params=list\): expected the dict of tensors "
                       r"returned by functionalize"):
        fn(list(params.values()), torch.randn(2, 3, 8, 8))


# --------------------------------------------------------------------------------------------
# Rules that cannot handle their layer: every offending module in one message
# --------------------------------------------------------------------------------------------

class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 6), nn.ReLU())
        self.pool = nn.AvgPool1d(2)
        self.head = nn.Linear(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(self.body(x)[:, None])[:, 0])


def test_rule_problems_are_reported_for_every_module_at_once() -> None:
    model = _Net()
    before = snapshot(model)
    composite = LayerMapComposite([(nn.ReLU, ZPlus()), (nn.Linear, Pass()),
                                   (nn.AvgPool1d, WSquare())])
    message = (
        r"^assign_rules\(composite=LayerMapComposite\): 5 module\(s\) cannot take their rule:\n"
        r"  body\.0  Linear  Pass\(\): changes the shape \(in_features=4, out_features=6\); Pass "
        r"needs the output shaped like the input\n"
        r"  body\.1  ReLU  ZPlus\(stabilizer=1e-06, zero_params=None\): is not linear in its "
        r"input; LRP rules of this kind need a linear layer\n"
        r"  body\.3  ReLU  ZPlus\(.*\): is not linear in its input.*\n"
        r"  pool  AvgPool1d  WSquare\(.*\): needs the parameter\(s\) weight, which the module "
        r"lacks\n"
        r"  head  Linear  Pass\(\): changes the shape \(in_features=3, out_features=2\).*\n"
        r"Give these modules another rule \(e.g. with a layer_map or name_map entry before the "
        r"preset's\)\.$"
    )
    with pytest.raises(ValueError, match=message):
        funcattr.functionalize(model, composite)
    with pytest.raises(ValueError, match=message):
        assign_rules(model, composite)
    assert_unchanged(model, before)
    # body.2 (6 -> 6) keeps its shape, so Pass is fine there
    assert dict(assign_rules(model, NameMapComposite([(("body.2",), Pass())]))) == {
        "body.2": Pass()}


@pytest.mark.parametrize("rule", [ReLUGuidedBackprop(), ReLUDeconvNet(), ReLUBetaSmooth()],
                         ids=repr)
def test_relu_rules_on_a_linear_layer(rule) -> None:
    line = (rf"  (\d)  Linear  {type(rule).__name__}\(.*\): is not an element-wise activation; "
            r"this rule modifies a ReLU's gradient\n")
    with pytest.raises(ValueError, match=r"3 module\(s\) cannot take their rule:\n"
                       + line.replace(r"(\d)", "0") + line.replace(r"(\d)", "2")
                       + line.replace(r"(\d)", "4")):
        funcattr.functionalize(small_mlp(), LayerMapComposite([(nn.Linear, rule)]))


@pytest.mark.parametrize("rule", [ZPlus(), Epsilon(), Flat()], ids=repr)
def test_lrp_rules_on_non_linear_modules(rule) -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.Softmax(dim=1), nn.MaxPool1d(2), nn.Dropout())
    with pytest.raises(ValueError, match=r"3 module\(s\) cannot take their rule:\n"
                       r"  1  Softmax  .*: is not linear in its input.*\n"
                       r"  2  MaxPool1d  .*: is not linear in its input.*\n"
                       r"  3  Dropout  .*: is not linear in its input"):
        funcattr.functionalize(model, LayerMapComposite(
            [((nn.Linear, nn.Softmax, nn.MaxPool1d, nn.Dropout), rule)]))


def test_pass_on_a_shape_changing_layer_without_static_sizes() -> None:
    """Pass on a pooling layer is caught when the layer runs (its sizes are not attributes)."""
    model = nn.Sequential(nn.Conv2d(3, 3, 3), nn.AvgPool2d(2), nn.Flatten(), nn.Linear(12, 2))
    fn, params = funcattr.functionalize(model, LayerMapComposite([(nn.AvgPool2d, Pass())]))
    with pytest.raises(ValueError, match=r"^Pass\(\) on AvgPool2d '1' called with \(Tensor\(2, 3, "
                       r"4, 4\)\): expected a module whose output "
                       r"has the shape of its input \(2, 3, 4, 4\), got \(2, 3, 2, 2\)\. Give "
                       r"this module another rule \(e\.g\. Epsilon\(\)\)\.$"):
        funcattr.gradient(fn, params, torch.randn(2, 3, 6, 6), funcattr.one_hot(0))


def test_lrp_rule_on_a_module_returning_a_tuple() -> None:
    class Pair(nn.Module):
        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return x, x

    fn, params = funcattr.functionalize(nn.Sequential(Pair()),
                                        NameMapComposite([(("0",), Epsilon())]))
    with pytest.raises(TypeError, match=r"^Epsilon\(epsilon=1e-06, zero_params=None\) on Pair '0' "
                       r"called with \(Tensor\(2, 3\)\): expected a module that returns one "
                       r"tensor, got tuple\. Give this module no rule, or a rule written for its "
                       r"outputs"):
        fn(params, torch.randn(2, 3))


def test_zbox_bounds_that_do_not_fit_the_input() -> None:
    model = nn.Sequential(nn.Conv2d(3, 2, 3))
    rule = ZBox(low=torch.zeros(1, 4, 1, 1), high=1.0)
    fn, params = funcattr.functionalize(model, NameMapComposite([(("0",), rule)]))
    with pytest.raises(ValueError, match=r"^ZBox\(low=Tensor\(1, 4, 1, 1\), high=1\.0, .*\) on "
                       r"Conv2d '0' called with \(Tensor\(2, 3, 5, 5\)\): expected low to "
                       r"broadcast to the input shape \(2, 3, 5, 5\), got a tensor of shape "
                       r"\(1, 4, 1, 1\)\. Give a scalar"):
        funcattr.gradient(fn, params, torch.randn(2, 3, 5, 5))


def test_map_returning_a_non_rule() -> None:
    composite = LayerMapComposite([(nn.Linear, "epsilon")])
    with pytest.raises(TypeError, match=r"^assign_rules\(composite=LayerMapComposite\): the map "
                       r"gave 'epsilon' for module '0'; expected a funcattr Rule"):
        funcattr.functionalize(small_mlp(), composite)


def test_zennit_rule_in_a_funcattr_composite() -> None:
    import zennit.rules as zr

    with pytest.raises(TypeError, match=r"the map gave <zennit\.rules\.Epsilon object .*> for "
                       r"module '0'; expected a funcattr Rule \(e\.g\. Epsilon\(\)\)"):
        funcattr.functionalize(small_mlp(), LayerMapComposite([(nn.Linear, zr.Epsilon())]))


def test_name_map_naming_missing_modules() -> None:
    composite = NameMapComposite([(("features.9", "classifer.3"), Epsilon())])
    with pytest.raises(ValueError, match=r"^assign_rules\(composite=NameMapComposite\): name_map "
                       r"names module\(s\) that the model does not have: 'features.9' \(did you "
                       r"mean 'features.6'.*\); 'classifer.3' \(did you mean 'classifier.3'"):
        funcattr.functionalize(small_cnn(), composite)


# --------------------------------------------------------------------------------------------
# functionalize's arguments
# --------------------------------------------------------------------------------------------

def test_unknown_composite_name_suggests_the_closest() -> None:
    with pytest.raises(ValueError, match=r"^functionalize\(composite='epsilon_pluss'\): expected "
                       r"a registered composite name, got an unknown one; registered names are "
                       r".*\. Did you mean 'epsilon_plus'"):
        funcattr.functionalize(small_cnn(), "epsilon_pluss")
    with pytest.raises(ValueError, match=r"^get_composite\(name='guided_backprob'\): unknown "
                       r"composite; .* Did you mean 'guided_backprop'"):
        get_composite("guided_backprob")


def test_composite_name_that_needs_arguments() -> None:
    model = small_cnn()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(TypeError, match=r"^functionalize\(composite='epsilon_gamma_box'\): this "
                       r"composite needs arguments \(low, high\), which a name cannot carry; "
                       r"pass an instance, e\.g\. composite=funcattr\.composites\.get_composite"
                       r"\('epsilon_gamma_box', low=\.\.\., high=\.\.\.\)\.$"):
        funcattr.functionalize(model, "epsilon_gamma_box")
    with pytest.raises(TypeError, match=r"^get_composite\(name='epsilon_gamma_box'\): this "
                       r"composite needs high; pass them, e\.g\. get_composite\("
                       r"'epsilon_gamma_box', high=\.\.\.\)\.$"):
        get_composite("epsilon_gamma_box", low=0.0)
    fn, params = funcattr.functionalize(model, get_composite("epsilon_gamma_box", low=-3.0,
                                                             high=3.0))
    assert fn is not None and params
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_composite_of_the_wrong_kind() -> None:
    with pytest.raises(TypeError, match=r"^functionalize\(composite=3\): expected a Composite, a "
                       r"registered name such as 'epsilon_plus', or None, got int\.$"):
        funcattr.functionalize(small_cnn(), 3)
    with pytest.raises(TypeError, match=r"^assign_rules\(composite=\[\]\): expected a funcattr "
                       r"Composite, got list\.$"):
        assign_rules(small_cnn(), [])


@pytest.mark.parametrize(("canonizers", "match", "error"), [
    ([1], r"^functionalize\(canonizers=\.\.\.\): expected Canonizer instances, got int\. "
          r"Pass e\.g\. canonizers=\[SequentialMergeBatchNorm\(\)\]\.$", TypeError),
    ([SequentialMergeBatchNorm(), "merge"], r"expected Canonizer instances, got str", TypeError),
    ("merge", r"^functionalize\(canonizers='merge'\): expected a Canonizer or a list of "
              r"Canonizers, got str\.$", TypeError),
    (3.0, r"^functionalize\(canonizers=3\.0\): expected a Canonizer or a list", TypeError),
])
def test_bad_canonizers_argument(canonizers, match: str, error: type) -> None:
    model = small_cnn()
    before = snapshot(model)
    with pytest.raises(error, match=match):
        funcattr.functionalize(model, EpsilonPlus(), canonizers)
    assert_unchanged(model, before)


@pytest.mark.parametrize(("model", "name"), [
    ("model", "str"), (lambda x: x, "function"), (torch.randn(3), "Tensor"), (None, "NoneType")])
def test_model_must_be_a_module(model, name: str) -> None:
    with pytest.raises(TypeError, match=rf"^functionalize\(model={name}\): expected a "
                       r"torch\.nn\.Module\.$"):
        funcattr.functionalize(model, EpsilonPlus())
    with pytest.raises(TypeError, match=rf"^Gradient\(model={name}\): expected a "
                       rf"torch\.nn\.Module, got {name}\. Pass the model itself"):
        funcattr.Gradient(model, EpsilonPlus())


def test_attributor_state_outside_its_context() -> None:
    attributor = funcattr.Gradient(small_cnn(), EpsilonPlus())
    with pytest.raises(RuntimeError, match=r"^Gradient: not active; use `with Gradient\(\.\.\.\) "
                       r"as attributor:` or call the attributor\.$"):
        _ = attributor.fn
