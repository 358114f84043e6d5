"""What every public function does with each kind of bad argument: one table.

``KINDS`` lists the kinds of bad argument (a list where a tensor belongs, NaN, a meta tensor,
the wrong dtype, params that are not a dict or have a misspelt key, a bad target, chunk size or
generator, a model that returns a tuple or is in training mode, a non-finite attribution, an
empty batch) with the exception (or warning) and the message every function gives for it,
written for a function called ``{owner}``. ``FUNCTIONS`` lists the public functions with the
arguments they take. The test runs every function with every kind of bad value of every
argument it takes and checks the exception type and message; ``EXCEPTIONS`` lists, with a
reason, the few cells where a function answers differently from the rest of its column (for
example, every attributor returns an empty result for an empty batch, where a metric refuses
one). The model is checked unchanged after every call.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
import torch
from helpers import assert_unchanged, small_cnn, snapshot
from torch import Tensor, nn

import funcattr
import funcattr.composites as fc
import funcattr.metrics as fm
from funcattr import attribution as fa
from funcattr.rules import Epsilon

MODEL = small_cnn().double()
X = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
ATTRIBUTION = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(1),
                         dtype=torch.float64)
MASKS = torch.rand(2, 8, 8, generator=torch.Generator().manual_seed(2)) > 0.3
TRAINING = small_cnn().double().train()  # batch statistics: reported, never changed


class TupleModel(nn.Module):
    """The small CNN returning ``(logits, features)``."""

    def __init__(self) -> None:
        super().__init__()
        self.body = small_cnn().double()

    def forward(self, x: Tensor):
        return self.body(x), x.mean(1)


def _nan(tensor: Tensor) -> Tensor:
    bad = tensor.clone()
    bad[1, 0, 2, 3] = float("nan")
    return bad


def _typo(params: dict) -> dict:
    bad = dict(params)
    bad["features.0.weigth"] = bad.pop("features.0.weight")
    return bad


@dataclass(frozen=True)
class Kind:
    """A kind of bad value for ``argument`` and what a function called ``owner`` raises."""

    argument: str
    value: Callable[[dict], Any]  # the base arguments -> the bad value
    error: type | None  # None: no exception
    message: str  # a regular expression with {owner}; for error None: what happens instead
    also: tuple[tuple[str, Any], ...] = ()  # other arguments that go with the bad value


KINDS: dict[str, Kind] = {
    "input a list": Kind("input", lambda a: [[1.0, 2.0]], TypeError,
                         r"^{owner}\(input=list\): expected a torch\.Tensor, got list\. Pass "
                         r"e\.g\. torch\.as_tensor\(input\)\.$"),
    "input with NaN": Kind("input", lambda a: _nan(a["input"]), ValueError,
                           r"^{owner}\(input=tensor of shape \(2, 3, 8, 8\)\): expected finite "
                           r"values, got NaN or infinity\. Clean the input"),
    "input on meta": Kind("input", lambda a: torch.empty(2, 3, 8, 8, device="meta"), ValueError,
                          r"^{owner}\(input=tensor of shape \(2, 3, 8, 8\) on the meta device\): "
                          r"expected a tensor with values, got a meta tensor"),
    "input without batch": Kind("input", lambda a: torch.tensor(1.0), ValueError,
                                r"^{owner}\(input=tensor of shape \(\)\): expected a batch"),
    "input float32 for a float64 model": Kind(
        "input", lambda a: a["input"].float(), TypeError,
        r"^{owner}\(input=tensor of dtype torch\.float32\): expected the dtype of the model's "
        r"parameters, torch\.float64, got torch\.float32\. Pass input\.to\(torch\.float64\)"),
    "input an empty batch": Kind("input", lambda a: a["input"][:0], ValueError,
                                 r"^{owner}\(input=tensor of shape \(0, 3, 8, 8\)\): expected at "
                                 r"least one sample, got an empty batch\.",
                                 also=(("target", None),)),
    "params a list": Kind("params", lambda a: list(resolve(a).params.values()), TypeError,
                          r"^{owner}\(params=list\): expected a dict of str to Tensor"),
    "params with a misspelt key": Kind(
        "params", lambda a: _typo(resolve(a).params), ValueError,
        r"^fn\(params=\.\.\.\): expected the keys of model\.named_parameters\(\) and "
        r"named_buffers\(\) \(\d+ keys\), got unknown key\(s\) 'features\.0\.weigth' \(did you "
        r"mean 'features\.0\.weight'\?\) and no value for 'features\.0\.weight'\."),
    "target a float": Kind("target", lambda a: 0.5, TypeError,
                           r"^{owner}\(target=0\.5\): expected an int, a sequence of ints"),
    "target out of range": Kind("target", lambda a: [0, 9], ValueError,
                                r"^{owner}\(target=.*\): target out of range for an output with 4 "
                                r"classes; expected values in \[0, 3\], got \[.*9.*\]\. Pass "
                                r"classes of this model\.$"),
    "chunk_size 0": Kind("chunk_size", lambda a: 0, ValueError,
                         r"^{owner}\(chunk_size=0\): expected an int >= 1, got 0\. Pass e\.g\. "
                         r"chunk_size=32\.$"),
    "chunk_size a str": Kind("chunk_size", lambda a: "8", TypeError,
                             r"^{owner}\(chunk_size='8'\): expected None or an int >= 1, got "
                             r"str\."),
    "generator a str": Kind("generator", lambda a: "seed", TypeError,
                            r"^{owner}\(generator='seed'\): expected None \(torch's global "
                            r"generator\), an int seed or a torch\.Generator, got str\."),
    "model returning a tuple": Kind(
        "model", lambda a: "tuple", TypeError,
        r"^{owner}\((fn|model)=\.\.\.\): expected a model that returns one tensor, got a tuple "
        r"of 2 \(.*\)\. Pick the output to explain with fn = "
        r"funcattr\.attribution\.select_output\(fn, 0\)"),
    "model in training mode": Kind(  # a warning: the call goes on (issue 14 item 6)
        "model", lambda a: "train", funcattr.ModelCheckWarning,
        r"^functionalize\(model=SmallCNN, composite=\w+\): 1 module\(s\) would make the "
        r"\w+ quietly wrong:\n- BatchNorm2d features\.2: in training mode, batch statistics "
        r"make a sample's explanation depend on the rest of its batch\. Fix: call "
        r"model\.eval\(\) before explaining the model\."),
    "attribution with NaN": Kind("attribution", lambda a: _nan(a["attribution"]), ValueError,
                                 r"^{owner}\(attribution=tensor of shape \(2, 3, 8, 8\)\): "
                                 r"expected finite values, got NaN or infinity"),
    "attribution a list": Kind("attribution", lambda a: [[1.0]], TypeError,
                               r"^{owner}\(attribution=list\): expected a tensor, got list\."),
}


@dataclass(frozen=True)
class Resolved:
    """The model of one call: the module, its ``fn`` and the params given (or its own)."""

    module: nn.Module
    fn: Any
    params: Any
    own: bool  # the params are the model's own (then metrics take the module itself)


_FUNCTIONALIZED: dict[str, tuple] = {}


def resolve(args: dict) -> Resolved:
    if args["model"] == "train":  # functionalized by every call: each call is checked
        module = TRAINING
        return Resolved(module, *funcattr.functionalize(module, fc.EpsilonPlus()), True)
    if args["model"] not in _FUNCTIONALIZED:
        module = TupleModel().eval() if args["model"] == "tuple" else MODEL
        _FUNCTIONALIZED[args["model"]] = (module, *funcattr.functionalize(module, fc.EpsilonPlus()))
    module, fn, own = _FUNCTIONALIZED[args["model"]]
    given = args["params"]
    return Resolved(module, fn, own if given is None else given, given is None)


def _attributor(function: Callable, **options: Any) -> Callable[[dict], Any]:
    def run(a: dict) -> Any:
        m = resolve(a)
        return function(m.fn, m.params, a["input"], fa.one_hot(a["target"]),
                        chunk_size=a["chunk_size"], **options)
    return run


def _metric(function: Callable, **options: Any) -> Callable[[dict], Any]:
    def run(a: dict) -> Any:
        m = resolve(a)
        return function(m.module if m.own else m.fn, a["input"], a["target"], a["attribution"],
                        params=None if m.own else m.params, **options)
    return run


def _on_explain(function: Callable, **options: Any) -> Callable[[dict], Any]:
    def run(a: dict) -> Any:
        m = resolve(a)
        return function(fm.explainer(m.fn, params=m.params), a["input"], a["target"],
                        chunk_size=a["chunk_size"], generator=a["generator"], **options)
    return run


def _class(cls: type, **options: Any) -> Callable[[dict], Any]:
    def run(a: dict) -> Any:
        with cls(resolve(a).module, fc.EpsilonPlus(), **options) as attributor:
            return attributor(a["input"], fa.one_hot(a["target"]))
    return run


@dataclass(frozen=True)
class Function:
    """A public function: how to call it from the arguments, which arguments it takes, and
    the name its messages give the call (a class's are its pure function's)."""

    run: Callable[[dict], Any]
    takes: tuple[str, ...]
    owner: str | None = None


_ATTRIBUTOR = ("model", "params", "input", "target", "chunk_size")
_CLASS = ("model", "input", "target")
_METRIC = ("model", "params", "input", "target", "attribution", "chunk_size", "generator")
_EXPLAIN = ("model", "input", "target", "chunk_size", "generator")
_LOCALISATION = ("attribution",)


def _gen(a: dict) -> dict:
    return {"chunk_size": a["chunk_size"], "generator": a["generator"]}


FUNCTIONS: dict[str, Function] = {
    "gradient": Function(lambda a: fa.gradient(resolve(a).fn, resolve(a).params, a["input"],
                                               fa.one_hot(a["target"])),
                         ("model", "params", "input", "target")),
    "pullback": Function(lambda a: fa.pullback(resolve(a).fn, resolve(a).params, a["input"]),
                         ("model", "params", "input")),
    "smooth_grad": Function(lambda a: fa.smooth_grad(
        resolve(a).fn, resolve(a).params, a["input"], fa.one_hot(a["target"]), n_iter=2,
        **_gen(a)), (*_ATTRIBUTOR, "generator")),
    "integrated_gradients": Function(_attributor(fa.integrated_gradients, n_iter=2), _ATTRIBUTOR),
    "occlusion": Function(_attributor(fa.occlusion, window=4, stride=4), _ATTRIBUTOR),
    "multi_target": Function(lambda a: fa.multi_target(  # targets: K classes ([0] for None)
        resolve(a).fn, resolve(a).params, a["input"], [0] if a["target"] is None else a["target"],
        chunk_size=a["chunk_size"]), _ATTRIBUTOR),
    "inputxgrad": Function(lambda a: fa.ATTRIBUTORS["inputxgrad"].function(
        resolve(a).fn, resolve(a).params, a["input"], fa.one_hot(a["target"])),
        ("model", "params", "input", "target"), owner="gradient"),
    "Gradient": Function(_class(fa.Gradient), _CLASS, owner="gradient"),
    "SmoothGrad": Function(_class(fa.SmoothGrad, n_iter=2, generator=0), _CLASS,
                           owner="smooth_grad"),
    "IntegratedGradients": Function(_class(fa.IntegratedGradients, n_iter=2), _CLASS,
                                    owner="integrated_gradients"),
    "Occlusion": Function(_class(fa.Occlusion, window=4, stride=4), _CLASS, owner="occlusion"),
    "pixel_flipping": Function(lambda a: _metric(fm.pixel_flipping, **_gen(a))(a), _METRIC),
    "region_perturbation": Function(
        lambda a: _metric(fm.region_perturbation, patch_size=4, **_gen(a))(a), _METRIC),
    "sensitivity_n": Function(lambda a: _metric(fm.sensitivity_n, n_subsets=3, **_gen(a))(a),
                              _METRIC),
    "infidelity": Function(lambda a: _metric(fm.infidelity, n_samples=3, **_gen(a))(a), _METRIC),
    "completeness": Function(_metric(fm.completeness),
                             ("model", "params", "input", "target", "attribution")),
    "max_sensitivity": Function(_on_explain(fm.max_sensitivity, n_samples=2), _EXPLAIN),
    "avg_sensitivity": Function(_on_explain(fm.avg_sensitivity, n_samples=2), _EXPLAIN),
    "random_logit": Function(_on_explain(fm.random_logit, num_classes=4), _EXPLAIN),
    "model_parameter_randomisation": Function(
        _on_explain(fm.model_parameter_randomisation), _EXPLAIN),
    "relevance_mass_accuracy": Function(
        lambda a: fm.relevance_mass_accuracy(a["attribution"], MASKS), _LOCALISATION),
    "relevance_rank_accuracy": Function(
        lambda a: fm.relevance_rank_accuracy(a["attribution"], MASKS), _LOCALISATION),
    "pointing_game": Function(lambda a: fm.pointing_game(a["attribution"], MASKS),
                              _LOCALISATION),
    "evaluate": Function(lambda a: fm.evaluate(
        resolve(a).module, a["input"], a["target"], None,
        {"g": fm.explainer(resolve(a).module)}, ["pixel_flipping"], chunk_size=a["chunk_size"]),
        ("model", "input", "target", "chunk_size")),
    "fn": Function(lambda a: resolve(a).fn(resolve(a).params, a["input"]), ("params",)),
    "one_hot": Function(lambda a: fa.one_hot(a["target"])(MODEL(X)), ("target",)),
}

#: Cells that differ from their column, with the reason.
EXCEPTIONS: dict[tuple[str, str], tuple[type | None, str]] = {
    # an attributor of an empty batch returns an empty result (one behaviour for all of them)
    **{(name, "input an empty batch"): (None, "an empty result") for name in (
        "gradient", "pullback", "smooth_grad", "integrated_gradients", "occlusion",
        "multi_target", "inputxgrad", "Gradient", "SmoothGrad", "IntegratedGradients",
        "Occlusion")},
    # gradient and pullback take any input the model takes (Zennit's Gradient too): a 0-dim
    # one reaches the model, whose shape error names the input
    **{(name, "input without batch"): (ValueError, r"^{owner}\(input=tensor of shape \(\)\): "
                                                   r"the model could not process an input of "
                                                   r"this shape")
       for name in ("gradient", "pullback", "inputxgrad", "Gradient")},
    # the attributors take a target through one_hot(target), which checks it
    **{(name, kind): (error, message.replace("{owner}", "one_hot")) for name in (
        "gradient", "smooth_grad", "integrated_gradients", "occlusion", "inputxgrad",
        "Gradient", "SmoothGrad", "IntegratedGradients", "Occlusion")
       for kind, error, message in (
           ("target a float", TypeError, KINDS["target a float"].message),
           ("target out of range", ValueError, KINDS["target out of range"].message))},
    # multi_target's targets are K classes
    ("multi_target", "target a float"): (TypeError, r"^multi_target\(targets=0\.5\): expected a "
                                                    r"sequence of ints"),
    ("multi_target", "target out of range"): (ValueError, r"^multi_target\(targets=\[0, 9\]\): "
                                                          r"target out of range for an output "
                                                          r"with 4 classes"),
    # the explain-based metrics (and evaluate, which explains first) meet the model and the
    # target inside explain: gradient(...) and one_hot(target) name them
    **{(name, kind): (error, message.replace("{owner}", owner)) for name in (
        "max_sensitivity", "avg_sensitivity", "random_logit", "model_parameter_randomisation",
        "evaluate")
       for kind, error, message, owner in (
           ("input float32 for a float64 model", TypeError,
            KINDS["input float32 for a float64 model"].message, "gradient"),
           ("model returning a tuple", TypeError, KINDS["model returning a tuple"].message,
            "gradient"),
           ("target out of range", ValueError, KINDS["target out of range"].message,
            "one_hot"))},
    ("random_logit", "target out of range"): (ValueError, r"^random_logit\(target=\.\.\.\): "
                                                          r"expected classes in \[0, 3\] for "
                                                          r"num_classes=4, got \[0, 9\]"),
    # metrics need (batch, features) or (batch, channels, *spatial)
    **{(name, "input without batch"): (ValueError, rf"^{name}\(input=tensor of shape \(\)\): "
                                                   r"expected a batch, \(batch, features\) or "
                                                   r"\(batch, channels, \*spatial\), got a 0-dim")
       for name in ("pixel_flipping", "region_perturbation", "sensitivity_n", "infidelity",
                    "completeness", "max_sensitivity", "avg_sensitivity", "random_logit",
                    "model_parameter_randomisation", "evaluate")},
    # a localisation metric takes the attribution as it is (no input to compare shapes with)
    **{(name, "attribution a list"): (ValueError, rf"^{name}\(attribution=list\): expected a "
                                                  r"batch of attributions")
       for name in ("relevance_mass_accuracy", "relevance_rank_accuracy", "pointing_game")},
    ("infidelity", "attribution a list"): (ValueError, r"^infidelity\(attribution=list\): "
                                                       r"expected an attribution of the input's "
                                                       r"shape"),
    # fn's own check names it; a bad target never reaches fn
    ("fn", "params a list"): (TypeError, r"^fn\(params=list\): expected the dict of tensors "
                                         r"returned by functionalize"),
}

BASE: dict[str, Any] = {"model": "cnn", "params": None, "input": X, "target": [0, 1],
                        "attribution": ATTRIBUTION, "chunk_size": 4, "generator": 0}


def _cells() -> list:
    cells = []
    for name, function in FUNCTIONS.items():
        for kind_name, kind in KINDS.items():
            if kind.argument in function.takes:
                cells.append(pytest.param(name, kind_name, id=f"{name}-{kind_name}"))
    return cells


@pytest.mark.parametrize(("name", "kind_name"), _cells())
def test_bad_argument(name: str, kind_name: str) -> None:
    kind = KINDS[kind_name]
    error, message = EXCEPTIONS.get((name, kind_name), (kind.error, kind.message))
    args = dict(BASE, **dict(kind.also), **{kind.argument: kind.value(BASE)})
    before, before_training = snapshot(MODEL), snapshot(TRAINING)
    if error is None:  # an empty result: the output of no samples
        output = FUNCTIONS[name].run(args)[0]
        assert output.shape[0] == 0
    elif issubclass(error, Warning):  # warned, then computed
        with pytest.warns(error, match=message):
            FUNCTIONS[name].run(args)
    else:
        owner = FUNCTIONS[name].owner or name
        with pytest.raises(error, match=message.replace("{owner}", owner)):
            FUNCTIONS[name].run(args)
    assert_unchanged(MODEL, before)
    assert_unchanged(TRAINING, before_training)


def test_the_table_covers_every_public_function_and_kind() -> None:
    """Every attributor of the registry, every metric of the registry and every public
    attributor function is a row; every kind of bad value is used by some row."""
    from funcattr.metrics.registry import METRIC_SPECS

    assert set(fa.ATTRIBUTORS) <= set(FUNCTIONS)
    assert set(METRIC_SPECS) - {"conservation"} <= set(FUNCTIONS)
    assert {"Gradient", "SmoothGrad", "IntegratedGradients", "Occlusion", "multi_target",
            "pullback", "fn", "one_hot", "evaluate"} <= set(FUNCTIONS)
    used = {kind for _, kind in (cell.values for cell in _cells())}
    assert used == set(KINDS)
    assert all(key[0] in FUNCTIONS and key[1] in KINDS for key in EXCEPTIONS)


# --------------------------------------------------------------------------------------------
# Constructors and the remaining functions: one row each
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("call", "error", "match"), [
    (lambda: funcattr.functionalize([1]), TypeError,
     r"^functionalize\(model=list\): expected a torch\.nn\.Module\.$"),
    (lambda: funcattr.functionalize(MODEL, "epsilon"), ValueError,
     r"^functionalize\(composite='epsilon'\): expected a registered composite name"),
    (lambda: funcattr.functionalize(MODEL, 3), TypeError,
     r"^functionalize\(composite=3\): expected a Composite"),
    (lambda: funcattr.functionalize(MODEL, canonizers="merge"), TypeError,
     r"^functionalize\(canonizers='merge'\): expected a Canonizer or a list"),
    (lambda: funcattr.functionalize(MODEL)[0].split_params([1]), TypeError,
     r"^split_params\(params=list\): expected the dict of tensors returned by functionalize"),
    (lambda: fa.select_output(3, 0), TypeError,
     r"^select_output\(fn=int\): expected a callable fn\(params, input\), got int\."),
    (lambda: fa.select_output(funcattr.functionalize(MODEL)[0], 1.5), TypeError,
     r"^select_output\(key=1\.5\): expected an int, a str or a callable output -> tensor, got "
     r"float\."),
    (lambda: fa.top_k_targets(0), ValueError, r"^top_k_targets\(k=0\): expected an int >= 1"),
    (lambda: fa.top_k_targets("5"), TypeError, r"^top_k_targets\(k='5'\): expected an int >= 1"),
    (lambda: fm.explainer(3), TypeError, r"^explainer\(model=int\): expected an nn\.Module or "
                                         r"fn\(params, input\)"),
    (lambda: fm.conservation(lambda p, x: x, X, [0, 1]), TypeError,
     r"^conservation\(model=function\): expected an nn\.Module"),
    (lambda: fm.conservation(MODEL, [[1.0]], [0, 1], composite="epsilon_plus"), TypeError,
     r"^conservation\(input=list\): expected a torch\.Tensor"),
    (lambda: fm.conservation(MODEL, _nan(X), [0, 1], composite="epsilon_plus"), ValueError,
     r"^conservation\(input=tensor of shape \(2, 3, 8, 8\)\): expected finite values"),
    (lambda: Epsilon(epsilon="1e-6"), TypeError, r"^Epsilon\(epsilon='1e-6'\): expected a float "
                                                 r"or a callable"),
])
def test_bad_argument_of_the_other_public_functions(call, error, match) -> None:
    with pytest.raises(error, match=match):
        call()
