"""Per-layer conservation and completeness: a hand-computed LRP case, laws, no mutation."""

import itertools

import pytest
import torch
from torch import nn

import funcattr
from funcattr.metrics import completeness, conservation

EPS = 1e-6


def stabilize(z):
    return z + ((z == 0).to(z.dtype) + z.sign()) * EPS


def mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2)).eval()


def test_conservation_hand_computed_epsilon_mlp():
    model = mlp()
    x = torch.randn(2, 4)
    target = torch.tensor([1, 0])
    report = conservation(model, x, target, composite="epsilon_plus")
    w0, b0, w1, b1 = (p.detach() for p in model.parameters())
    # independent matrix-form LRP-epsilon
    z0 = x @ w0.T + b0
    a0 = z0.clamp_min(0)
    z1 = a0 @ w1.T + b1
    r2 = torch.nn.functional.one_hot(target, 2) * z1  # output relevance
    r1 = a0 * ((r2 / stabilize(z1)) @ w1)  # relevance at the hidden layer
    r0 = x * ((r1 / stabilize(z0)) @ w0)  # relevance at the input
    rows = {layer.name: layer for layer in report.layers}
    assert list(rows) == ["0", "1", "2"]
    torch.testing.assert_close(rows["2"].relevance_out, r2.sum(1))
    torch.testing.assert_close(rows["2"].relevance_in, r1.sum(1))
    torch.testing.assert_close(rows["1"].relevance_out, r1.sum(1))  # ReLU: Pass
    torch.testing.assert_close(rows["1"].relevance_in, r1.sum(1))
    torch.testing.assert_close(rows["0"].relevance_out, r1.sum(1))
    torch.testing.assert_close(rows["0"].relevance_in, r0.sum(1))
    torch.testing.assert_close(report.input_relevance, r0.sum(1))
    torch.testing.assert_close(report.output_relevance, r2.sum(1))
    # bias and stabilizer absorb exactly r_out * (b + eps sign z) / (z + eps sign z) per output
    absorbed = r2 * (b1 + stabilize(z1) - z1) / stabilize(z1)
    torch.testing.assert_close(rows["2"].created, -absorbed.sum(1))
    assert rows["2"].rule.startswith("Epsilon") and rows["1"].rule == "Pass()"
    assert rows["0"].module == "Linear"


def test_conservation_chain_input_and_table():
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2),
                          nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(), nn.Flatten(),
                          nn.Linear(4 * 16, 5)).eval()
    x = torch.rand(3, 3, 8, 8)
    target = torch.tensor([0, 4, 2])
    report = conservation(model, x, target, composite="epsilon_plus_flat")
    layers = report.layers
    for lower, upper in itertools.pairwise(layers):  # sequential: what a layer receives is
        torch.testing.assert_close(lower.relevance_out, upper.relevance_in)  # what the next sent
    fn, params = funcattr.functionalize(model, "epsilon_plus_flat")
    _, attribution = funcattr.gradient(fn, params, x, funcattr.one_hot(target,
                                                                       times_output=True))
    torch.testing.assert_close(report.input_relevance, attribution.flatten(1).sum(1))
    torch.testing.assert_close(layers[0].relevance_in, attribution.flatten(1).sum(1))
    text = str(report)
    assert text.splitlines()[0].split()[:3] == ["layer", "module", "rule"]
    assert "<output>" in text and "<input>" in text and "ZPlus" in text and "Flat" in text
    rows = report.rows(sample=1)
    assert rows[0][3] == pytest.approx(float(report.output_relevance[1]))
    # without leaves only ruled modules are reported
    ruled = conservation(model, x, target, composite="epsilon_plus_flat", leaves=False)
    assert [layer.name for layer in ruled.layers] == list(fn.rules)


def test_conservation_residual_add_creates_relevance_and_model_unchanged():
    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(2, 2, 3, padding=1)
            self.relu = nn.ReLU()
            self.head = nn.Sequential(nn.Flatten(), nn.Linear(2 * 16, 3))

        def forward(self, x):
            return self.head(self.relu(self.conv(x)) + x)  # the add has no module, no rule

    model = Block().eval()
    hook_calls = []
    model.conv.register_forward_hook(lambda *args: hook_calls.append(1))
    state = {k: (v.clone(), v.data_ptr()) for k, v in model.state_dict().items()}
    x = torch.rand(2, 2, 4, 4)
    report = conservation(model, x, 1, composite="epsilon_plus")
    names = [layer.name for layer in report.layers]
    assert names == ["conv", "relu", "head.0", "head.1"]
    rows = dict(zip(names, report.layers))
    # the plain gradient of the add hands the full relevance to both branches
    torch.testing.assert_close(rows["relu"].relevance_out, rows["head.0"].relevance_in)
    torch.testing.assert_close(report.input_relevance,
                               rows["conv"].relevance_in + rows["head.0"].relevance_in)
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key][0]) and value.data_ptr() == state[key][1]
    assert len(model.conv._forward_hooks) == 1  # only the user's own hook
    assert not any(m._forward_pre_hooks for m in model.modules())
    assert all(len(m._forward_hooks) == 0 for m in model.modules() if m is not model.conv)
    fn, params = funcattr.functionalize(model, "epsilon_plus")
    again = conservation(fn, x, 1, params=params)
    torch.testing.assert_close(again.input_relevance, report.input_relevance)


def test_completeness():
    model = nn.Linear(5, 3, bias=False)
    x = torch.randn(4, 5)
    attribution = model.weight.detach()[2] * x  # gradient x input is complete for linear f
    torch.testing.assert_close(completeness(model, x, 2, attribution), torch.zeros(4))
    torch.testing.assert_close(completeness(model, x, 2, attribution, baseline=None),
                               torch.zeros(4))
    residual = completeness(model, x, 2, 2 * attribution, baseline=None)
    torch.testing.assert_close(residual, (model.weight.detach()[2] * x).sum(1))


def test_conservation_errors():
    model = mlp()
    x = torch.randn(2, 4)
    with pytest.raises(TypeError, match=r"conservation\(model=function\): expected an nn.Module"):
        conservation(lambda p, v: v, x, 0)
    fn, params = funcattr.functionalize(model, "epsilon_plus")
    with pytest.raises(ValueError, match=r"conservation\(composite=\.\.\.\): the functionalized"):
        conservation(fn, x, 0, params=params, composite="epsilon_plus")
    with pytest.raises(TypeError, match=r"conservation\(params=None\): a functionalized fn"):
        conservation(fn, x, 0)
    with pytest.raises(ValueError, match=r"conservation\(target=tensor of shape \(3,\)\)"):
        conservation(model, x, [0, 1, 0], composite="epsilon_plus")
