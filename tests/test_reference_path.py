"""The rule core as a rule author sees it: the reference-path switch, the public rule bases
(``ElementwiseRule``, ``Rule`` for modules with several inputs or a tuple output), the layer
VJP registry, rules as values that nothing is written onto, and the errors raised while a
model runs.

Everything here holds on both paths, so it runs in the reference leg of ``./dev test`` too.
"""

from __future__ import annotations

import gc
import threading
import weakref
from dataclasses import dataclass, fields
from typing import Any, ClassVar

import pytest
import torch
from helpers import assert_close, single_thread
from torch import Tensor, nn

import funcattr
from funcattr import rules as fr
from funcattr.composites import LayerMapComposite, NameMapComposite
from funcattr.core import (
    ElementwiseRule,
    ModuleCall,
    Rule,
    elementwise_rule,
    reference_path,
    uses_reference,
)
from funcattr.core.switch import ENVIRONMENT_VARIABLE
from funcattr.layer import find_input_vjp, register_input_vjp

pytestmark = pytest.mark.usefixtures(single_thread.__name__)


# --------------------------------------------------------------------------------------------
# The switch
# --------------------------------------------------------------------------------------------

def test_reference_path_block_sets_and_restores(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENVIRONMENT_VARIABLE, raising=False)
    assert not uses_reference()
    with reference_path():
        assert uses_reference()
        with reference_path(enabled=False):
            assert not uses_reference()
        assert uses_reference()
    assert not uses_reference()


@pytest.mark.parametrize(("value", "expected"), [("1", True), ("true", True), ("0", False),
                                                 ("", False), (" Off ", False)])
def test_environment_variable(monkeypatch: pytest.MonkeyPatch, value: str, expected: bool) -> None:
    monkeypatch.setenv(ENVIRONMENT_VARIABLE, value)
    assert uses_reference() is expected
    with reference_path(not expected):  # the block wins over the variable
        assert uses_reference() is not expected


def test_environment_variable_with_an_unknown_value(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENVIRONMENT_VARIABLE, "maybe")
    with pytest.raises(ValueError, match=r"^FUNCATTR_REFERENCE='maybe': expected 1 or 0, got "
                       r"'maybe'\. Set FUNCATTR_REFERENCE=1 to run every rule on the reference"):
        uses_reference()


def test_reference_path_checks_its_argument() -> None:
    with pytest.raises(TypeError, match=r"^reference_path\(enabled='yes'\): expected a bool, got "
                       r"str\. Use reference_path\(\) or reference_path\(enabled=False\)\.$"):
        with reference_path("yes"):  # type: ignore[arg-type]
            pass


def test_reference_path_holds_for_its_own_thread_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENVIRONMENT_VARIABLE, raising=False)
    barrier = threading.Barrier(2)
    seen: dict[str, list[bool]] = {}

    def work(name: str, enabled: bool) -> None:
        with reference_path(enabled):
            observations = []
            for _ in range(3):
                barrier.wait(timeout=30)
                observations.append(uses_reference())
            seen[name] = observations

    threads = [threading.Thread(target=work, args=(name, enabled))
               for name, enabled in (("reference", True), ("default", False))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert seen == {"reference": [True] * 3, "default": [False] * 3}


def test_both_paths_give_the_same_relevance(rng: torch.Generator) -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(64, 3)).eval()
    fn, params = funcattr.functionalize(model, funcattr.composites.EpsilonGammaBox(-3.0, 3.0))
    x = torch.randn(2, 3, 6, 6, generator=rng)
    _, default = funcattr.gradient(fn, params, x, funcattr.one_hot(1))
    with reference_path():
        _, reference = funcattr.gradient(fn, params, x, funcattr.one_hot(1))
    assert_close(default, reference, rtol=1e-10)


# --------------------------------------------------------------------------------------------
# ElementwiseRule: the public base of rules that map the output gradient directly
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class HalfPass(ElementwiseRule):
    """``R_in = R_out / 2``; never reads its input."""

    reads_input: ClassVar[bool] = False

    def backward(self, input: Tensor | None, grad_output: Tensor) -> Tensor:
        assert input is None
        return 0.5 * grad_output


@dataclass(frozen=True)
class RatioRule(ElementwiseRule):
    """AttnLRP's identity rule in gradient form: ``grad * f(x) / x`` (here for a GELU)."""

    def backward(self, input: Tensor | None, grad_output: Tensor) -> Tensor:
        return grad_output * torch.nn.functional.gelu(input) / (input + 1e-10)


@pytest.mark.parametrize("inplace", [False, True])
def test_a_user_elementwise_rule(rng: torch.Generator, inplace: bool) -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(inplace=inplace), nn.Linear(4, 2)).eval()
    x = torch.randn(3, 4, generator=rng)
    fn, params = funcattr.functionalize(model, LayerMapComposite([(nn.ReLU, HalfPass())]))
    _, relevance = funcattr.gradient(fn, params, x, torch.ones(3, 2))
    expected = 0.5 * (torch.ones(3, 2) @ model[2].weight) @ model[0].weight
    assert_close(relevance, expected)
    assert_close(_per_sample(fn, params, x, torch.ones(3, 2)), expected)


def test_an_elementwise_rule_that_reads_its_input(rng: torch.Generator) -> None:
    model = nn.Sequential(nn.GELU())
    x = torch.randn(3, 5, generator=rng)
    grad = torch.randn(3, 5, generator=rng)
    fn, params = funcattr.functionalize(model, LayerMapComposite([(nn.GELU, RatioRule())]))
    output, relevance = funcattr.gradient(fn, params, x, grad)
    assert_close(output, nn.functional.gelu(x))
    assert_close(relevance, grad * nn.functional.gelu(x) / (x + 1e-10))
    assert_close(_per_sample(fn, params, x, grad), relevance)


def _per_sample(fn, params, x: Tensor, grad: Tensor) -> Tensor:
    def one(xi: Tensor, gi: Tensor) -> Tensor:
        return funcattr.gradient(fn, params, xi[None], gi[None])[1][0]

    return torch.func.vmap(one)(x, grad)


class Pair(nn.Module):
    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return x, 2 * x


class First(nn.Module):
    def forward(self, pair: tuple[Tensor, Tensor]) -> Tensor:
        return pair[0] + pair[1]


def test_elementwise_rule_on_a_module_returning_a_tuple_names_the_module() -> None:
    """It crashed with "'tuple' object has no attribute '_base'"."""
    model = nn.Sequential(nn.Linear(3, 3), nn.Sequential(Pair(), First()))
    fn, params = funcattr.functionalize(model, NameMapComposite([(("1.0",), fr.Pass())]))
    with pytest.raises(TypeError, match=r"^Pass\(\) on Pair '1\.0' called with \(Tensor\(2, 3\)\): "
                       r"expected a module that returns one tensor shaped like its input, got "
                       r"tuple\. Give this module no rule, or a rule written for its outputs"):
        fn(params, torch.randn(2, 3))


def test_rule_on_a_call_without_a_tensor_input_names_the_module() -> None:
    class Keyword(nn.Module):
        def forward(self, *, x: Tensor) -> Tensor:
            return x

    class Caller(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = Keyword()

        def forward(self, x: Tensor) -> Tensor:
            return self.inner(x=x)

    fn, params = funcattr.functionalize(Caller(), NameMapComposite([(("inner",), fr.Pass())]))
    with pytest.raises(TypeError, match=r"^Pass\(\) on Keyword 'inner' called with "
                       r"\(x=Tensor\(2, 3\)\): expected a tensor as the first positional argument, "
                       r"got no positional arguments\. Call the module with its input tensor"):
        fn(params, torch.randn(2, 3))


def test_linear_rule_outside_functionalize() -> None:
    layer = nn.Linear(3, 2)
    with pytest.raises(TypeError, match=r"^Epsilon\(epsilon=1e-06, zero_params=None\)\.apply\("
                       r"forward=method\): expected the call site that funcattr\.functionalize "
                       r"passes, got method\. Apply rules through functionalize"):
        fr.Epsilon().apply(layer, layer.forward, torch.randn(1, 3))


# --------------------------------------------------------------------------------------------
# Rule: modules with several tensor inputs and a tuple output (e.g. multi-head attention)
# --------------------------------------------------------------------------------------------

def _scale_gradient(x: Tensor, factor: float) -> Tensor:
    """``x`` whose gradient is multiplied by ``factor`` (transform-safe)."""
    return elementwise_rule(x, torch.clone, lambda _, grad: factor * grad, reads_input=False)


@dataclass(frozen=True)
class UniformAttention(Rule):
    """AttnLRP's uniform rule on torch's MultiheadAttention, as LXT applies it: the gradients
    of query and key times 1/4, of value times 1/2; the module's tuple output unchanged."""

    def apply(self, module: nn.Module, forward: Any, query: Tensor, key: Tensor, value: Tensor,
              *args: Any, **kwargs: Any) -> Any:
        return forward(_scale_gradient(query, 0.25), _scale_gradient(key, 0.25),
                       _scale_gradient(value, 0.5), *args, **kwargs)


class Attend(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attention = nn.MultiheadAttention(4, 2, batch_first=True)
        self.head = nn.Linear(4, 2)

    def forward(self, x: Tensor) -> Tensor:
        output, _weights = self.attention(x, 2 * x, 3 * x, need_weights=True)
        return self.head(output.mean(1))


def test_a_rule_for_a_module_with_three_inputs_and_a_tuple_output(rng: torch.Generator) -> None:
    torch.manual_seed(0)
    model = Attend().eval()
    x = torch.randn(2, 5, 4, generator=rng)
    grad = torch.randn(2, 2, generator=rng)
    fn, params = funcattr.functionalize(model, NameMapComposite([(("attention",),
                                                                  UniformAttention())]))
    output, relevance = funcattr.gradient(fn, params, x, grad)
    assert_close(output, model(x))

    def rest(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        return model.head(model.attention(q, k, v)[0].mean(1))

    _, pullback = torch.func.vjp(rest, x, 2 * x, 3 * x)
    dq, dk, dv = pullback(grad)
    assert_close(relevance, 0.25 * dq + 0.25 * 2 * dk + 0.5 * 3 * dv)
    assert_close(_per_sample(fn, params, x, grad), relevance)


# --------------------------------------------------------------------------------------------
# The layer VJP registry
# --------------------------------------------------------------------------------------------

class Scale(nn.Module):
    """A user layer: ``x * scale`` per channel (affine in the input)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.linspace(-1.0, 2.0, channels))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.scale


@register_input_vjp(Scale)
def _scale_vjp(module: Scale, state: dict, grad: Tensor, input: Tensor) -> Tensor:
    return grad * state["scale"]


class Shift(Scale):
    def forward(self, x: Tensor) -> Tensor:  # its own forward: the registration stops here
        return x * self.scale + 1.0


def test_registry_lookup() -> None:
    assert find_input_vjp(Scale(3)) is _scale_vjp
    assert find_input_vjp(Shift(3)) is None
    assert find_input_vjp(nn.LayerNorm(3)) is None
    with pytest.raises(TypeError, match=r"^register_input_vjp\(kinds='Scale'\): expected "
                       r"torch\.nn\.Module subclasses, got str\. Pass the layer class"):
        register_input_vjp("Scale")  # type: ignore[arg-type]


@pytest.mark.parametrize("rule", [fr.Epsilon(), fr.ZPlus(), fr.AlphaBeta()], ids=repr)
def test_a_registered_user_layer_works_under_torch_func_grad(rule: Rule) -> None:
    """A user layer with a registered closed-form VJP: the derivative of an explanation by
    ``torch.func.grad`` equals autograd's (``torch.func.vjp`` inside a Function's backward
    cannot be differentiated by ``torch.func.grad`` in torch 2.14)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 3), Scale(3), nn.Linear(3, 2)).eval()
    x = torch.randn(4, 3)
    fn, params = funcattr.functionalize(model, NameMapComposite([(("1",), rule)]))

    def loss(weight: Tensor) -> Tensor:
        relevance = funcattr.gradient(fn, {**params, "0.weight": weight}, x, torch.ones(4, 2))[1]
        return (relevance**2).sum()

    weight = params["0.weight"].clone().requires_grad_(True)
    (expected,) = torch.autograd.grad(loss(weight), weight)
    assert_close(torch.func.grad(loss)(params["0.weight"]), expected, rtol=1e-10)


# --------------------------------------------------------------------------------------------
# Rules are values; functionalize's result owns the state it derives
# --------------------------------------------------------------------------------------------

def test_nothing_is_written_onto_rules(rng: torch.Generator) -> None:
    rules = [fr.Epsilon(), fr.ZPlus(), fr.Gamma(), fr.Flat(), fr.Pass(),
             fr.ZBox(torch.zeros(1, 3, 1, 1) - 3.0, 3.0)]
    before = [dict(vars(rule)) for rule in rules]
    model = nn.Sequential(nn.Conv2d(3, 3, 3), nn.ReLU(), nn.Conv2d(3, 3, 3), nn.ReLU(),
                          nn.Conv2d(3, 3, 3), nn.Flatten(), nn.Linear(3, 2)).eval()
    composite = NameMapComposite([(("0",), rules[5]), (("1", "3"), rules[4]),
                                  (("2",), rules[2]), (("4",), rules[1]), (("6",), rules[0])])
    fn, params = funcattr.functionalize(model, composite)
    funcattr.gradient(fn, params, torch.randn(2, 3, 7, 7, generator=rng), funcattr.one_hot(0))
    for rule, state in zip(rules, before, strict=True):
        assert vars(rule).keys() == state.keys() == {field.name for field in fields(rule)}


def test_state_derived_for_a_model_goes_with_it(rng: torch.Generator) -> None:
    """Nothing module-level keeps a rule (or its tensor bounds) alive after the functionalized
    model is gone."""
    model = nn.Sequential(nn.Conv2d(3, 3, 3), nn.Flatten(), nn.Linear(75, 2)).eval()
    rule = fr.ZBox(torch.full((1, 3, 1, 1), -3.0), torch.full((1, 3, 1, 1), 3.0))
    alive = weakref.ref(rule)
    bound = weakref.ref(rule.low)
    fn, params = funcattr.functionalize(model, NameMapComposite([(("0",), rule)]))
    funcattr.gradient(fn, params, torch.randn(2, 3, 7, 7, generator=rng), funcattr.one_hot(0))
    del fn, rule
    gc.collect()
    assert alive() is None and bound() is None


def test_the_call_site_is_a_module_call(rng: torch.Generator) -> None:
    """What ``apply`` receives: the call site, with the module's path in the model."""
    seen: list[tuple[str, str]] = []

    @dataclass(frozen=True)
    class Spy(Rule):
        def apply(self, module: nn.Module, forward: Any, *args: Any, **kwargs: Any) -> Any:
            assert isinstance(forward, ModuleCall)
            seen.append((forward.path, forward.where()))
            return forward(*args, **kwargs)

    model = nn.Sequential(nn.Linear(3, 3), nn.Sequential(nn.ReLU(), nn.Linear(3, 2)))
    fn, params = funcattr.functionalize(model, LayerMapComposite([(nn.Linear, Spy())]))
    fn(params, torch.randn(2, 3, generator=rng))
    assert seen == [("0", "Linear '0'"), ("1.1", "Linear '1.1'")]


# --------------------------------------------------------------------------------------------
# The reference rule under transforms: jacrev and torch.compile
# --------------------------------------------------------------------------------------------

def _small(rng: torch.Generator) -> tuple[Any, dict, Tensor]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv1d(2, 3, 3), nn.ReLU(), nn.BatchNorm1d(3), nn.Flatten(),
                          nn.Linear(12, 2)).eval()
    composite = LayerMapComposite([(nn.Conv1d, fr.Gamma()), (nn.ReLU, fr.Pass()),
                                   (nn.BatchNorm1d, fr.ZPlus()), (nn.Linear, fr.Epsilon())])
    fn, params = funcattr.functionalize(model, composite)
    return fn, params, torch.randn(2, 2, 6, generator=rng)


@pytest.mark.parametrize("reference", [True, False], ids=["reference", "default"])
def test_jacrev_of_an_explanation_equals_its_gradients(rng: torch.Generator,
                                                       reference: bool) -> None:
    fn, params, x = _small(rng)

    def relevance(u: Tensor) -> Tensor:
        return funcattr.gradient(fn, params, u, funcattr.one_hot(1))[1]

    with reference_path(reference):
        jacobian = torch.func.jacrev(relevance)(x)
        for index in [(0, 0, 0), (1, 1, 3), (0, 1, 5)]:
            row = torch.func.grad(lambda u, index=index: relevance(u)[index])(x)
            assert_close(jacobian[index], row, rtol=1e-10)


def test_compiled_model_on_the_reference_path(rng: torch.Generator) -> None:
    torch._dynamo.reset()
    fn, params, x = _small(rng)
    with reference_path():
        _, expected = funcattr.gradient(fn, params, x, funcattr.one_hot(1))
        _, compiled = funcattr.gradient(torch.compile(fn, backend="aot_eager"), params, x,
                                        funcattr.one_hot(1))
    assert_close(compiled, expected, rtol=1e-12)


def test_a_torch_func_failure_in_a_layer_without_a_closed_form_vjp_says_the_fix() -> None:
    """torch 2.14 cannot run ``torch.func.vjp`` inside a rule's backward under
    ``torch.func.grad`` (the strict xfail in test_rules); the error says how to lift it."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 3, 1), nn.GroupNorm(1, 3), nn.Flatten(),
                          nn.Linear(48, 2)).eval()
    x = torch.randn(2, 3, 4, 4)
    fn, params = funcattr.functionalize(model, NameMapComposite([(("1",), fr.Epsilon())]))

    def loss(weight: Tensor) -> Tensor:
        relevance = funcattr.gradient(fn, {**params, "0.weight": weight}, x, torch.ones(2, 2))[1]
        return (relevance**2).sum()

    with pytest.raises(RuntimeError) as info:
        torch.func.grad(loss)(params["0.weight"])
    notes = getattr(info.value, "__notes__", [])
    assert any("GroupNorm '1'" in note and "register_input_vjp(GroupNorm)" in note
               for note in notes)
