"""One vocabulary across attributors, metrics and the command line: what ``generator`` and
``chunk_size`` mean, the same exception and message for the same mistake, and every message of
the library in the format ``<callable>(<argument>=<value>): expected ..., got .... <fix>.``"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import torch
from torch import nn

import funcattr
import funcattr.metrics as fm
from funcattr.attribution import (
    Gradient,
    integrated_gradients,
    multi_target,
    occlusion,
    one_hot,
    smooth_grad,
)

ROOT = Path(__file__).resolve().parent.parent


def small_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(),
                         nn.Linear(4 * 4 * 4, 5)).eval()


class Counting:
    """``fn(params, input)`` that records the batch size of every call."""

    def __init__(self, fn) -> None:
        self.fn, self.sizes = fn, []

    def __call__(self, params, input):
        self.sizes.append(input.shape[0])
        return self.fn(params, input)


# --------------------------------------------------------------------------------------------
# generator: None = torch's global generator, an int = the same draws on every call
# --------------------------------------------------------------------------------------------

def test_generator_means_the_same_in_attributors_and_metrics():
    model = small_model()
    fn, params = funcattr.functionalize(model)
    x = torch.rand(2, 3, 4, 4)
    attribution = torch.rand(2, 3, 4, 4)

    def attribute(generator):
        return smooth_grad(fn, params, x, one_hot(1), n_iter=3, generator=generator)[1]

    def metric(generator):
        return fm.pixel_flipping(model, x, [0, 1], attribution, orders=("random",),
                                 fill="uniform", generator=generator).curves["random"]

    def sensitivity(generator):
        return fm.max_sensitivity(fm.explainer(model), x, [0, 1], n_samples=3,
                                  generator=generator)

    for run in (attribute, metric, sensitivity):
        torch.manual_seed(7)
        first = run(None)
        torch.manual_seed(7)
        assert torch.equal(run(None), first)  # None: torch's global generator
        assert not torch.equal(run(None), first)  # ... which advances
        assert torch.equal(run(3), run(3))  # an int: the same draws on every call
        generator = torch.Generator().manual_seed(3)
        assert torch.equal(run(generator), run(3))  # a generator: used as it is
        assert not torch.equal(run(generator), run(3))  # ... and it advances


# --------------------------------------------------------------------------------------------
# chunk_size: model inputs per call (attributors take whole copies of the batch, at least one)
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("chunk_size", "sizes"), [
    (None, [12]), (8, [8, 4]), (5, [4, 4, 4]), (1, [2] * 6), (100, [12]),
])
def test_chunk_size_counts_model_inputs(chunk_size, sizes):
    fn, params = funcattr.functionalize(small_model())
    x = torch.rand(2, 3, 4, 4)
    counting = Counting(fn)
    expected = smooth_grad(fn, params, x, one_hot(1), n_iter=6, generator=0)[1]
    result = smooth_grad(counting, params, x, one_hot(1), n_iter=6, generator=0,
                         chunk_size=chunk_size)[1]
    assert counting.sizes == sizes  # 6 copies of a batch of 2
    torch.testing.assert_close(result, expected, rtol=1e-12, atol=1e-14)
    counting.sizes.clear()
    integrated_gradients(counting, params, x, one_hot(1), n_iter=6, chunk_size=chunk_size)
    assert counting.sizes == sizes
    counting.sizes.clear()
    occlusion(counting, params, x, one_hot(1), window=(1, 4, 2), stride=(1, 4, 2),
              chunk_size=chunk_size)  # 6 windows: 3 channels x 2 column blocks
    assert counting.sizes == [2, *sizes]  # the clean output first


def test_chunk_size_of_multi_target_and_metrics_counts_model_inputs():
    model = small_model()
    fn, params = funcattr.functionalize(model)
    x = torch.rand(2, 3, 4, 4)
    whole = multi_target(fn, params, x, [0, 1, 2, 3])[1]
    torch.testing.assert_close(multi_target(fn, params, x, [0, 1, 2, 3], chunk_size=5)[1],
                               whole, rtol=1e-12, atol=1e-14)  # 2 targets x batch 2 per step
    counting = Counting(fn)
    fm.pixel_flipping(counting, x, [0, 1], torch.rand(2, 3, 4, 4), params=params,
                      regions_per_step=8, chunk_size=3)  # 2 steps x 2 orders x 2 samples
    assert counting.sizes == [2, 3, 1, 2]  # the clean input, then morf in 3 + 1, lerf 2 (shared)


# --------------------------------------------------------------------------------------------
# the same mistake: the same exception type and message, attributors and metrics alike
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("keyword", "value", "error", "message"), [
    ("chunk_size", 2.0, TypeError, r"\(chunk_size=2\.0\): expected None or an int >= 1, got "
                                   r"float\. Pass e\.g\. chunk_size=32\.$"),
    ("chunk_size", 0, ValueError, r"\(chunk_size=0\): expected an int >= 1, got 0\. Pass e\.g\. "
                                  r"chunk_size=32\.$"),
    ("generator", "seed", TypeError, r"\(generator='seed'\): expected None \(torch's global "
                                     r"generator\), an int seed or a torch\.Generator, got str\. "
                                     r"Pass e\.g\. generator=0\.$"),
])
def test_same_mistake_same_error(keyword, value, error, message):
    model = small_model()
    fn, params = funcattr.functionalize(model)
    x = torch.rand(2, 3, 4, 4)
    calls = {
        "smooth_grad": lambda: smooth_grad(fn, params, x, **{keyword: value}),
        "pixel_flipping": lambda: fm.pixel_flipping(model, x, 0, x, **{keyword: value}),
        "max_sensitivity": lambda: fm.max_sensitivity(fm.explainer(model), x, 0,
                                                      **{keyword: value}),
    }
    if keyword == "chunk_size":
        calls["occlusion"] = lambda: occlusion(fn, params, x, chunk_size=value)
        calls["random_logit"] = lambda: fm.random_logit(fm.explainer(model), x, 0,
                                                        num_classes=5, chunk_size=value)
    for owner, call in calls.items():
        with pytest.raises(error, match=rf"^{owner}{message}"):
            call()


def test_target_and_input_are_named_alike():
    model = small_model()
    fn, params = funcattr.functionalize(model)
    x = torch.rand(2, 3, 4, 4)
    with pytest.raises(TypeError, match=r"^pixel_flipping\(input=list\)"):
        fm.pixel_flipping(model, [1.0], 0, x)
    with pytest.raises(TypeError, match=r"^smooth_grad\(input=list\)"):
        smooth_grad(fn, params, [1.0])
    with pytest.raises(ValueError, match=r"^evaluate\(target=tensor of shape \(3,\)\)"):
        fm.evaluate(model, x, [0, 1, 2], None, {"g": fm.explainer(model)}, ["pixel_flipping"])
    with pytest.raises(TypeError, match=r"^explainer\(method=3\): expected a callable attributor"):
        fm.explainer(model, method=3)


def _message(node: ast.AST) -> str | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        return "".join(v.value if isinstance(v, ast.Constant) else "{}" for v in node.values)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        left, right = _message(node.left), _message(node.right)
        return None if left is None or right is None else left + right
    return None


def test_every_library_message_says_what_was_expected_what_came_and_the_fix():
    """Each ``ValueError``/``TypeError`` raised in ``funcattr.attribution`` and
    ``funcattr.metrics``: ``<call>: expected ..., got .... <fix>.``"""
    files = sorted([*(ROOT / "funcattr" / "attribution").glob("*.py"),
                    *(ROOT / "funcattr" / "metrics").glob("*.py")])
    checked, wrong = 0, []
    for path in files:
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call)
                    and getattr(node.exc.func, "id", "") in ("ValueError", "TypeError")):
                continue
            text = _message(node.exc.args[0]) if node.exc.args else None
            checked += 1
            if text is None or not re.search(r"^[\w.{}]+(\[.*\])?\(.*\): .*expected .*got .*"
                                             r"[.;] \S.*\.$", text, re.S):
                wrong.append(f"{path.name}:{node.lineno}: {text}")
    assert checked > 90
    assert not wrong, "\n".join(wrong)


# --------------------------------------------------------------------------------------------
# Zennit-style classes: functionalize once; a call outside `with` reuses it
# --------------------------------------------------------------------------------------------

def test_attributor_functionalizes_once_and_rebuilds_only_when_the_model_changes(monkeypatch):
    import funcattr.attribution.classes as classes

    calls = []
    original = classes.functionalize

    def counting(*args, **kwargs):
        calls.append(args)
        return original(*args, **kwargs)

    monkeypatch.setattr(classes, "functionalize", counting)
    model = small_model()
    x = torch.rand(2, 3, 4, 4)
    attributor = Gradient(model, funcattr.composites.EpsilonPlus())
    first = attributor(x, one_hot(1))[1]
    with attributor:
        inside = attributor(x, one_hot(1))[1]
        assert attributor.model(x).shape == (2, 5)  # the rule-applied view, from the same fn
    again = attributor(x, one_hot(1))[1]
    assert len(calls) == 1  # one functionalize for every call, inside `with` or not
    assert torch.equal(first, inside) and torch.equal(first, again)
    with torch.no_grad():
        model[0].weight.mul_(2)  # in place: the same tensors, no rebuild needed
    doubled = attributor(x, one_hot(1))[1]
    assert len(calls) == 1 and not torch.equal(doubled, first)
    model[0].weight = nn.Parameter(model[0].weight.detach() / 2)  # a new tensor: rebuilt
    assert torch.equal(attributor(x, one_hot(1))[1], first) and len(calls) == 2
    model.train()  # a new mode: rebuilt
    attributor(x, one_hot(1))
    assert len(calls) == 3
    attributor.composite = None  # a new composite: rebuilt
    plain = attributor(x, one_hot(1))[1]
    assert len(calls) == 4
    assert torch.equal(plain, funcattr.gradient(*funcattr.functionalize(model), x,
                                                one_hot(1))[1])
