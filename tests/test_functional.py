"""``functionalize``: the user's model is never changed, modules called twice get their rule at
every call, threads do not interfere, Zennit's ``composite.context`` idiom works, and
``torch.compile`` gives the eager relevance."""

from __future__ import annotations

import copy
import threading
from collections.abc import Callable

import pytest
import torch
from helpers import (
    assert_close,
    assert_unchanged,
    single_thread,
    small_cnn,
    snapshot,
    zennit_gradient,
)
from torch import Tensor, nn

import funcattr
from funcattr.canonizers import SequentialMergeBatchNorm
from funcattr.composites import (
    BetaSmooth,
    EpsilonGammaBox,
    EpsilonPlus,
    EpsilonPlusFlat,
    GuidedBackprop,
    LayerMapComposite,
)
from funcattr.rules import Gamma, Pass

pytestmark = pytest.mark.usefixtures(single_thread.__name__)


def _input(seed: int, batch: int = 2) -> Tensor:
    return torch.randn(batch, 3, 8, 8, generator=torch.Generator().manual_seed(seed))


def _hooked_cnn(seed: int) -> tuple[nn.Module, list[str]]:
    """The small CNN with the user's own hooks on some submodules (they must stay)."""
    model = small_cnn(seed)
    calls: list[str] = []
    model.features[0].register_forward_hook(lambda m, i, o: calls.append("forward"))
    model.features[4].register_forward_pre_hook(lambda m, i: calls.append("pre"))
    model.classifier[3].register_full_backward_hook(lambda m, gi, go: calls.append("backward"))
    return model, calls


# --------------------------------------------------------------------------------------------
# The model is never changed
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("composite", [EpsilonGammaBox(-3.0, 3.0), EpsilonPlusFlat(),
                                       GuidedBackprop(), BetaSmooth(), None],
                         ids=lambda c: type(c).__name__)
@pytest.mark.parametrize("canonizers", [None, [SequentialMergeBatchNorm()]],
                         ids=["plain", "merge-batchnorm"])
def test_model_is_unchanged(composite, canonizers, seed: int) -> None:
    model, calls = _hooked_cnn(seed)
    before = snapshot(model)
    x = _input(seed)
    expected = model(x).detach()
    calls.clear()
    fn, params = funcattr.functionalize(model, composite, canonizers)
    output, relevance = funcattr.gradient(fn, params, x, funcattr.one_hot(1))
    output, relevance = funcattr.gradient(fn, params, x, funcattr.one_hot(2))  # twice
    assert_close(output, expected, rtol=1e-12)
    assert relevance.shape == x.shape and bool(torch.isfinite(relevance).all())
    assert_unchanged(model, before)
    assert all(p.grad is None for p in model.parameters())
    # the user's hooks are still in place and still run on the model
    calls.clear()
    model(x.requires_grad_(True)).sum().backward()
    assert calls == ["forward", "pre", "backward"]


def test_model_is_unchanged_after_an_error_midway(seed: int) -> None:
    model, _ = _hooked_cnn(seed)
    before = snapshot(model)
    fn, params = funcattr.functionalize(model, EpsilonPlusFlat())
    with pytest.raises(ValueError, match=r"gradient\(input=tensor of shape \(2, 3, 5, 5\)\)"):
        funcattr.gradient(fn, params, torch.randn(2, 3, 5, 5), funcattr.one_hot(0))
    assert_unchanged(model, before)
    # a rule that fails inside the forward pass (Pass on a shape-changing layer)
    fn, params = funcattr.functionalize(model, LayerMapComposite([(nn.AvgPool2d, Pass())]))
    with pytest.raises(ValueError, match=r"Pass\(\) on AvgPool2d"):
        funcattr.gradient(fn, params, _input(seed), funcattr.one_hot(0))
    assert_unchanged(model, before)
    # after the errors the same fn still works and gives the fresh result
    fn, params = funcattr.functionalize(model, EpsilonPlusFlat())
    _, fresh = funcattr.gradient(fn, params, _input(seed), funcattr.one_hot(0))
    _, again = funcattr.gradient(*funcattr.functionalize(model, EpsilonPlusFlat()), _input(seed),
                                 funcattr.one_hot(0))
    assert_close(fresh, again, rtol=0.0, atol=0.0)


def test_model_in_training_mode_keeps_its_running_stats(seed: int) -> None:
    model = small_cnn(seed).train()
    before = snapshot(model)
    reference = copy.deepcopy(model)
    x = _input(seed, batch=4)
    # training mode on purpose (the model check says so; issue 14 item 6)
    with pytest.warns(funcattr.ModelCheckWarning, match=r"BatchNorm2d features\.2: in training"):
        fn, params = funcattr.functionalize(model, EpsilonPlusFlat())
    output, relevance = funcattr.gradient(fn, params, x, funcattr.one_hot(0))
    funcattr.gradient(fn, params, x, funcattr.one_hot(1))
    assert_unchanged(model, before)  # running_mean, running_var, num_batches_tracked
    assert model.training and model.features[2].training
    # the output is the training-mode output (batch statistics)
    assert_close(output, reference(x).detach(), rtol=1e-12)
    assert not torch.equal(reference.features[2].running_mean, model.features[2].running_mean)
    assert bool(torch.isfinite(relevance).all())


def test_params_share_the_models_storage(seed: int) -> None:
    model = small_cnn(seed)
    _, params = funcattr.functionalize(model, EpsilonPlusFlat())
    state = model.state_dict(keep_vars=True)
    assert params.keys() == state.keys()
    assert all(params[k].data_ptr() == state[k].data_ptr() for k in state)
    assert not any(p.requires_grad for p in params.values())


def test_explicit_params_are_used(seed: int) -> None:
    """``fn`` computes with the params it is given, not with the model's own tensors."""
    model = small_cnn(seed)
    fn, params = funcattr.functionalize(model, EpsilonPlusFlat())
    other = small_cnn(seed + 1)
    _, other_params = funcattr.functionalize(other, EpsilonPlusFlat())
    x = _input(seed)
    assert_close(fn(other_params, x), other(x).detach(), rtol=1e-12)
    _, relevance = funcattr.gradient(fn, other_params, x, funcattr.one_hot(1))
    _, expected = funcattr.gradient(*funcattr.functionalize(other, EpsilonPlusFlat()), x,
                                    funcattr.one_hot(1))
    assert_close(relevance, expected, rtol=1e-12)
    assert_close(fn(params, x), model(x).detach(), rtol=1e-12)


def test_plain_is_the_ordinary_gradient(seed: int) -> None:
    model = small_cnn(seed)
    fn, params = funcattr.functionalize(model, EpsilonPlusFlat())
    x = _input(seed)
    _, plain = funcattr.gradient(fn.plain, params, x, funcattr.one_hot(1))
    leaf = x.clone().requires_grad_(True)
    (expected,) = torch.autograd.grad(model(leaf)[:, 1].sum(), leaf)
    assert_close(plain, expected, rtol=1e-12)
    _, ruled = funcattr.gradient(fn, params, x, funcattr.one_hot(1))
    assert not torch.allclose(ruled, plain)


# --------------------------------------------------------------------------------------------
# Zennit's composite.context(model) idiom
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("composite", [EpsilonGammaBox(-3.0, 3.0), EpsilonPlusFlat(),
                                       GuidedBackprop()], ids=lambda c: type(c).__name__)
def test_composite_context_idiom(composite, seed: int) -> None:
    model = small_cnn(seed)
    before = snapshot(model)
    x = _input(seed).requires_grad_(True)
    target = torch.eye(4)[[1, 3]]
    with composite.context(model) as modified:
        output = modified(x)
        (relevance,) = torch.autograd.grad(output, x, target)
    assert_unchanged(model, before)
    fn, params = funcattr.functionalize(model, composite)
    expected_output, expected = funcattr.gradient(fn, params, x.detach(), target)
    assert_close(output.detach(), expected_output, rtol=1e-12)
    assert_close(relevance, expected, rtol=1e-12)


def test_composite_context_is_a_live_view_of_the_model(seed: int) -> None:
    """As with Zennit's hooks, the modified model computes with the model's current tensors."""
    model = small_cnn(seed)
    x = _input(seed)
    with EpsilonPlus().context(model) as modified:
        before = modified(x).detach()
        with torch.no_grad():
            model.classifier[3].bias.add_(1.0)
        after = modified(x).detach()
        with torch.no_grad():
            model.classifier[3].bias.sub_(1.0)
    assert_close(after - before, torch.ones_like(before), rtol=1e-12)


def test_composite_context_equals_zennit(seed: int) -> None:
    import zennit.composites as zc

    model = small_cnn(seed)
    x = _input(seed)
    target = torch.eye(4)[[0, 2]]
    _, expected = zennit_gradient(model, zc.EpsilonPlusFlat(), x, target)
    leaf = x.clone().requires_grad_(True)
    with EpsilonPlusFlat().context(model) as modified:
        (relevance,) = torch.autograd.grad(modified(leaf), leaf, target)
    assert_close(relevance, expected, rtol=1e-9)


# --------------------------------------------------------------------------------------------
# Modules called more than once in one forward
# --------------------------------------------------------------------------------------------

class SharedLinear(nn.Module):
    """One ``nn.Linear`` called twice; ``separate()`` gives the same model with two copies."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = nn.Linear(5, 5)
        self.inner2: nn.Module = self.inner
        self.out = nn.Linear(5, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.out(torch.relu(self.inner2(torch.relu(self.inner(x)))))

    def separate(self) -> SharedLinear:
        twin = copy.deepcopy(self)
        twin.inner2 = copy.deepcopy(self.inner)
        return twin


class SharedReLUBlock(nn.Module):
    """A torchvision-ResNet-style basic block: one ``self.relu`` used twice."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 3, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(3)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(3, 3, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(3)
        self.relu2: nn.Module = self.relu
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 4))

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out = self.relu2(out + x)
        return self.head(out)

    def separate(self) -> SharedReLUBlock:
        twin = copy.deepcopy(self)
        twin.relu2 = nn.ReLU(inplace=True)
        return twin


def _shared_cases() -> list:
    gamma = LayerMapComposite([(nn.Linear, Gamma(gamma=0.5))])
    return [
        pytest.param(SharedLinear, gamma, id="linear-twice-gamma"),
        pytest.param(SharedLinear, EpsilonPlus(), id="linear-twice-epsilon"),
        pytest.param(SharedReLUBlock, BetaSmooth(), id="relu-twice-betasmooth"),
        pytest.param(SharedReLUBlock, BetaSmooth(beta_smooth=1.0), id="relu-twice-betasmooth-1"),
        pytest.param(SharedReLUBlock, GuidedBackprop(), id="relu-twice-guided"),
        pytest.param(SharedReLUBlock, EpsilonPlus(), id="relu-twice-epsilon-plus"),
    ]


@pytest.mark.filterwarnings("ignore::funcattr.ModelCheckWarning")  # un-canonized on purpose
@pytest.mark.parametrize(("make", "composite"), _shared_cases())
def test_module_called_twice_gets_its_rule_at_every_call(make: Callable, composite,
                                                         seed: int) -> None:
    torch.manual_seed(seed)
    shared = make().eval()
    with torch.no_grad():
        for module in shared.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
    separate = shared.separate()
    x = torch.randn(3, *((5,) if make is SharedLinear else (3, 8, 8)),
                    generator=torch.Generator().manual_seed(seed))
    target = funcattr.one_hot([0, 1, 2], times_output=True)
    out_shared, rel_shared = funcattr.gradient(*funcattr.functionalize(shared, composite), x,
                                               target)
    out_separate, rel_separate = funcattr.gradient(*funcattr.functionalize(separate, composite),
                                                   x, target)
    assert_close(out_shared, out_separate, rtol=1e-13)
    assert_close(rel_shared, rel_separate, rtol=1e-12)
    _, plain = funcattr.gradient(*funcattr.functionalize(shared, None), x, target)
    assert not torch.allclose(rel_shared, plain)  # the rules did act


# --------------------------------------------------------------------------------------------
# Threads
# --------------------------------------------------------------------------------------------

def _run_threads(work: Callable[[int], Tensor], count: int = 4) -> list[Tensor]:
    barrier = threading.Barrier(count)
    results: list[Tensor | BaseException | None] = [None] * count

    def run(index: int) -> None:
        try:
            barrier.wait()
            results[index] = work(index)
        except BaseException as error:  # reported below, in the main thread
            results[index] = error

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return results  # type: ignore[return-value]


def test_threads_sharing_one_fn_give_the_sequential_result(seed: int) -> None:
    model = small_cnn(seed)
    fn, params = funcattr.functionalize(model, EpsilonGammaBox(-3.0, 3.0))
    inputs = [_input(seed + i) for i in range(4)]

    def work(index: int) -> Tensor:
        results = [funcattr.gradient(fn, params, inputs[index], funcattr.one_hot(index))[1]
                   for _ in range(5)]
        assert all(torch.equal(r, results[0]) for r in results)
        return results[0]

    expected = [work(i) for i in range(4)]
    for actual, wanted in zip(_run_threads(work), expected, strict=True):
        assert_close(actual, wanted, rtol=0.0, atol=0.0)


def test_threads_with_separate_gradient_objects_give_the_sequential_result(seed: int) -> None:
    model = small_cnn(seed)
    composite = EpsilonPlusFlat()
    inputs = [_input(seed + i) for i in range(4)]

    def work(index: int) -> Tensor:
        results = []
        for _ in range(3):
            with funcattr.Gradient(model, composite) as attributor:
                results.append(attributor(inputs[index], funcattr.one_hot(index))[1])
        return results[-1]

    expected = [work(i) for i in range(4)]
    before = snapshot(model)
    for actual, wanted in zip(_run_threads(work), expected, strict=True):
        assert_close(actual, wanted, rtol=0.0, atol=0.0)
    assert_unchanged(model, before)


# --------------------------------------------------------------------------------------------
# torch.compile
# --------------------------------------------------------------------------------------------

def test_compiled_fn_gives_the_eager_relevance() -> None:
    """``torch.compile(fn)`` with an eager ``gradient``; aot_eager keeps the default suite fast
    (the slow test below uses inductor). One seed: compiling dominates the cost."""
    torch._dynamo.reset()
    model = small_cnn(0)
    fn, params = funcattr.functionalize(model, EpsilonGammaBox(-3.0, 3.0))
    x = _input(0)
    eager_out, eager = funcattr.gradient(fn, params, x, funcattr.one_hot([1, 2]))
    compiled = torch.compile(fn, backend="aot_eager")
    for target in ([1, 2], [1, 2], [3, 0]):  # the second call reuses the compiled graph
        out, relevance = funcattr.gradient(compiled, params, x, funcattr.one_hot(target))
        _, expected = funcattr.gradient(fn, params, x, funcattr.one_hot(target))
        assert_close(out, eager_out, rtol=1e-13)
        assert_close(relevance, expected, rtol=1e-12)
    _, plain = funcattr.gradient(fn.plain, params, x, funcattr.one_hot([1, 2]))
    assert not torch.allclose(eager, plain)


@pytest.mark.slow
def test_compiled_fn_with_inductor_gives_the_eager_relevance(seed: int) -> None:
    torch._dynamo.reset()
    model = small_cnn(seed)
    fn, params = funcattr.functionalize(model, EpsilonPlusFlat())
    x = _input(seed)
    _, expected = funcattr.gradient(fn, params, x, funcattr.one_hot(2))
    _, relevance = funcattr.gradient(torch.compile(fn), params, x, funcattr.one_hot(2))
    assert_close(relevance, expected, rtol=1e-10)


_DYNAMO_NOISE = [
    "ignore:Dynamo does not know how to trace the builtin",
    "ignore:The .grad attribute of a Tensor that is not a leaf Tensor",
]


def _whole(kind: str) -> tuple[Callable[[Tensor], Tensor], Tensor, Tensor]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 3)).eval()
    fn, params = funcattr.functionalize(model, EpsilonPlusFlat())
    x = torch.randn(2, 4)
    _, expected = funcattr.gradient(fn, params, x, funcattr.one_hot(1))
    _, plain = funcattr.gradient(fn.plain, params, x, funcattr.one_hot(1))
    assert not torch.allclose(expected, plain)

    def attribution(u: Tensor) -> Tensor:
        return funcattr.gradient(fn, params, u, funcattr.one_hot(1))[1]

    def vjp_of_fn(u: Tensor) -> Tensor:
        output, pull = torch.func.vjp(lambda v: fn(params, v), u)
        return pull(torch.eye(3)[[1, 1]].to(output))[0]

    return (attribution if kind == "gradient" else vjp_of_fn), x, expected


@pytest.mark.slow
@pytest.mark.filterwarnings(*_DYNAMO_NOISE)
def test_compiling_the_whole_gradient_gives_the_rules_result() -> None:
    """Compiling the *whole* attribution (forward and VJP in one ``torch.compile``): Dynamo
    cannot trace funcattr's functorch checks, breaks the graph there, and the rule's
    ``autograd.Function`` runs eagerly, so its backward is not lost (a custom Function's
    backward traced into a compiled VJP is silently ignored in torch 2.14)."""
    torch._dynamo.reset()
    whole, x, expected = _whole("gradient")
    assert_close(torch.compile(whole, backend="aot_eager")(x), expected, rtol=1e-12)


@pytest.mark.slow
@pytest.mark.filterwarnings(*_DYNAMO_NOISE)
def test_compiling_a_vjp_of_fn_gives_the_rules_result() -> None:
    torch._dynamo.reset()
    whole, x, expected = _whole("vjp")
    assert_close(torch.compile(whole, backend="aot_eager")(x), expected, rtol=1e-12)
