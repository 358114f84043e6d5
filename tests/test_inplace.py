"""In-place operations around ruled modules must not corrupt the rules (Zennit clones for this)."""

import pytest
import torch
from torch import nn

import funcattr
from funcattr.composites import DeconvNet, EpsilonGammaBox, EpsilonPlusFlat, LayerMapComposite
from funcattr.rules import Epsilon


def _stabilized(z):
    return z + 1e-6 * torch.where(z < 0, -1.0, 1.0)


class _DoubleInPlace(nn.Module):
    def __init__(self):
        super().__init__()
        self.l1 = nn.Linear(4, 4)
        self.l2 = nn.Linear(4, 3)

    def forward(self, x):
        y = self.l1(x)
        y.mul_(2.0)  # an unruled in-place op on a ruled layer's output
        return self.l2(y)


def test_inplace_op_on_ruled_output_keeps_the_rule_exact(rng):
    model = _DoubleInPlace()
    x = torch.randn(2, 4, generator=rng)
    fn, params = funcattr.functionalize(model, LayerMapComposite([(nn.Linear, Epsilon())]))
    _, relevance = funcattr.gradient(fn, params, x, torch.ones(2, 3))
    w1, b1, w2, b2 = model.l1.weight, model.l1.bias, model.l2.weight, model.l2.bias
    z1 = x @ w1.T + b1
    hidden = 2 * z1
    z2 = hidden @ w2.T + b2
    r_hidden = hidden * ((torch.ones(2, 3) / _stabilized(z2)) @ w2)
    expected = x * ((2 * r_hidden / _stabilized(z1)) @ w1)
    torch.testing.assert_close(relevance, expected, rtol=1e-10, atol=1e-12)


def _pair(rng):
    # the weights from rng, not from the global generator, whose state depends on the tests
    # that ran before (a draw whose explanation did not depend on the first layer's weight
    # once made the derivative test below see zeros)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(torch.randint(2**31, (1,), generator=rng)))
        inplace = nn.Sequential(nn.Conv2d(2, 4, 3), nn.ReLU(inplace=True), nn.Flatten(),
                                nn.Linear(4 * 4 * 4, 5), nn.ReLU(inplace=True), nn.Linear(5, 3))
    plain = nn.Sequential(nn.Conv2d(2, 4, 3), nn.ReLU(), nn.Flatten(),
                          nn.Linear(4 * 4 * 4, 5), nn.ReLU(), nn.Linear(5, 3))
    plain.load_state_dict(inplace.state_dict())
    return inplace.eval(), plain.eval(), torch.randn(3, 2, 6, 6, generator=rng)


def test_inplace_relu_gives_the_result_of_an_out_of_place_relu(rng):
    inplace, plain, x = _pair(rng)
    seed = torch.tensor([[1.0, -2.0, 0.5]]).expand(3, 3)
    for composite in (DeconvNet(), EpsilonPlusFlat(), EpsilonGammaBox(-3.0, 3.0)):
        fn_inplace, params = funcattr.functionalize(inplace, composite)
        fn_plain, _ = funcattr.functionalize(plain, composite)
        _, expected = funcattr.gradient(fn_plain, params, x, seed)
        _, relevance = funcattr.gradient(fn_inplace, params, x, seed)
        torch.testing.assert_close(relevance, expected, rtol=1e-12, atol=1e-12)


class _ResidualInPlace(nn.Module):
    """A ruled BatchNorm (Pass) whose output is then modified in place, as in ResNet blocks."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 2, 3, padding=1)
        self.bn = nn.BatchNorm2d(2)
        self.relu = nn.ReLU(inplace=True)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(2 * 5 * 5, 3))

    def forward(self, x):
        out = self.bn(self.conv(x))
        out += x
        return self.head(self.relu(out))


@pytest.mark.filterwarnings("ignore::funcattr.ModelCheckWarning")  # un-canonized on purpose
def test_inplace_add_on_a_pass_output_matches_the_out_of_place_model(rng):
    model = _ResidualInPlace().eval()
    x = torch.randn(2, 2, 5, 5, generator=rng)
    seed = torch.tensor([[1.0, 0.5, -1.0]]).expand(2, 3)
    fn, params = funcattr.functionalize(model, EpsilonPlusFlat())
    _, relevance = funcattr.gradient(fn, params, x, seed)

    class OutOfPlace(_ResidualInPlace):
        def forward(self, x):
            return self.head(torch.relu(self.bn(self.conv(x)) + x))

    reference = OutOfPlace().eval()
    reference.load_state_dict(model.state_dict())
    reference.relu = nn.ReLU()
    fn_ref, _ = funcattr.functionalize(reference, EpsilonPlusFlat())
    _, expected = funcattr.gradient(fn_ref, params, x, seed)
    torch.testing.assert_close(relevance, expected, rtol=1e-12, atol=1e-12)


def test_inplace_op_on_ruled_output_same_result_on_every_call(rng):
    """The first call computes the changed output anew; later calls copy it up front."""
    model = _DoubleInPlace()
    x = torch.randn(2, 4, generator=rng)
    fn, params = funcattr.functionalize(model, LayerMapComposite([(nn.Linear, Epsilon())]))
    results = [funcattr.gradient(fn, params, x, torch.ones(2, 3))[1] for _ in range(3)]
    for relevance in results[1:]:
        torch.testing.assert_close(relevance, results[0], rtol=0, atol=0)


def test_retained_graph_gives_the_same_relevance_twice(rng):
    inplace, _, x = _pair(rng)
    fn, params = funcattr.functionalize(inplace, EpsilonGammaBox(-3.0, 3.0))
    leaf = x.clone().requires_grad_(True)
    output = fn(params, leaf)
    first = torch.autograd.grad(output, leaf, torch.ones_like(output), retain_graph=True)[0]
    second = torch.autograd.grad(output, leaf, torch.ones_like(output))[0]
    torch.testing.assert_close(second, first, rtol=0, atol=0)
    _, expected = funcattr.gradient(fn, params, x, torch.ones_like(output))
    torch.testing.assert_close(first, expected, rtol=1e-12, atol=1e-12)


def test_create_graph_through_plain_autograd_matches_torch_func(rng):
    """Second derivatives taken with plain autograd (create_graph) see every layer output's
    dependence on the input and parameters, as nested torch.func transforms do (rules at
    every level in both: neither is inside ``rules_at_this_level``)."""
    inplace, _, x = _pair(rng)
    composite = LayerMapComposite([(nn.Linear, Epsilon()), (nn.Conv2d, Epsilon())])
    fn, params = funcattr.functionalize(inplace, composite)
    seed = torch.tensor([[1.0, -2.0, 0.5]]).expand(3, 3)

    def loss(u):
        relevance = torch.func.vjp(lambda v: fn(params, v), u)[1](seed)[0]
        return (relevance ** 2).sum()

    expected = torch.func.grad(loss)(x)
    leaf = x.clone().requires_grad_(True)
    (relevance,) = torch.autograd.grad(fn(params, leaf), leaf, seed, create_graph=True)
    (actual,) = torch.autograd.grad((relevance ** 2).sum(), leaf)
    torch.testing.assert_close(actual, expected, rtol=1e-10, atol=1e-12)
    assert expected.abs().sum() > 0



def test_derivative_of_an_explanation_through_an_inplace_relu(rng):
    """``funcattr.gradient`` differentiated by plain autograd and by ``torch.func.grad``: the
    outer derivative recomputes each activation's true derivative, which must not run an
    in-place ReLU on its saved input (it raised "a leaf Variable that requires grad is being
    used in an in-place operation"); the result is the out-of-place model's."""
    inplace, plain, x = _pair(rng)
    seed = torch.tensor([[1.0, -2.0, 0.5]]).expand(3, 3)
    name = "0.weight"
    results = []
    for model in (inplace, plain):
        fn, params = funcattr.functionalize(model, EpsilonPlusFlat())

        def loss(weight, fn=fn, params=params):
            relevance = funcattr.gradient(fn, {**params, name: weight}, x, seed)[1]
            return (relevance ** 2).sum()

        weight = params[name].clone().requires_grad_(True)
        (by_autograd,) = torch.autograd.grad(loss(weight), weight)
        by_func = torch.func.grad(loss)(params[name])
        torch.testing.assert_close(by_func, by_autograd, rtol=1e-10, atol=1e-12)
        results.append(by_autograd)
    torch.testing.assert_close(results[0], results[1], rtol=1e-12, atol=1e-12)
    assert results[0].abs().sum() > 0

def test_changed_params_are_seen_at_once(rng):
    """Nothing derived from the weights (W+, ...) outlives a call: new params, params changed
    in place and params changed through ``.data`` (no version bump) all count at once."""
    _, plain, x = _pair(rng)
    composite = EpsilonGammaBox(-3.0, 3.0)
    fn, params = funcattr.functionalize(plain, composite)
    seed = torch.ones(3, 3)
    funcattr.gradient(fn, params, x, seed)
    changed = {name: value + 0.1 * torch.randn(value.shape, generator=rng)
               for name, value in params.items()}
    fresh_fn, _ = funcattr.functionalize(plain, composite)
    _, expected = funcattr.gradient(fresh_fn, changed, x, seed)
    torch.testing.assert_close(funcattr.gradient(fn, changed, x, seed)[1], expected,
                               rtol=1e-12, atol=1e-12)
    funcattr.gradient(fn, params, x, seed)
    for name, value in params.items():  # shares storage with `plain`, a model of this test
        value.data.copy_(changed[name])
    torch.testing.assert_close(funcattr.gradient(fn, params, x, seed)[1], expected,
                               rtol=1e-12, atol=1e-12)
