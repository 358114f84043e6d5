"""funcattr.layer's registry: the closed-form input VJPs of layers, against autograd."""

import pytest
import torch
from torch import nn

from funcattr.layer import GatedSum, Sum, find_input_vjp


def _bn(cls, features, affine=True):
    module = cls(features, affine=affine).double().eval()
    generator = torch.Generator().manual_seed(3)
    module.running_mean.copy_(torch.randn(features, generator=generator, dtype=torch.float64))
    module.running_var.copy_(torch.rand(features, generator=generator, dtype=torch.float64) + .5)
    if affine:
        module.weight.data.normal_(generator=generator)
        module.bias.data.normal_(generator=generator)
    return module


CASES = [
    (lambda: _bn(nn.BatchNorm1d, 3), (4, 3)),
    (lambda: _bn(nn.BatchNorm1d, 3), (4, 3, 5)),
    (lambda: _bn(nn.BatchNorm2d, 3), (2, 3, 5, 6)),
    (lambda: _bn(nn.BatchNorm2d, 3, affine=False), (2, 3, 5, 6)),
    (lambda: _bn(nn.BatchNorm3d, 2), (2, 2, 3, 4, 5)),
    (lambda: nn.AvgPool1d(3, stride=2, padding=1), (2, 3, 9)),
    (lambda: nn.AvgPool1d(2, ceil_mode=True, count_include_pad=False), (2, 3, 7)),
    (lambda: nn.AvgPool2d(2), (2, 3, 6, 6)),
    (lambda: nn.AvgPool2d(2), (3, 6, 6)),  # unbatched
    (lambda: nn.AvgPool2d((3, 2), stride=(1, 2), padding=(1, 0), ceil_mode=True), (2, 3, 7, 7)),
    (lambda: nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False), (2, 3, 5, 5)),
    (lambda: nn.AvgPool2d(2, divisor_override=3), (2, 3, 6, 6)),
    (lambda: nn.AvgPool3d(2, stride=1, padding=1, divisor_override=5), (2, 2, 4, 4, 4)),
    (lambda: nn.AdaptiveAvgPool1d(4), (2, 3, 10)),
    (lambda: nn.AdaptiveAvgPool2d((3, 2)), (2, 3, 7, 5)),
    (lambda: nn.AdaptiveAvgPool2d(1), (3, 7, 5)),
    (lambda: nn.AdaptiveAvgPool3d(2), (2, 2, 5, 4, 3)),
    (lambda: Sum(), (2, 3, 4, 2)),
    (lambda: Sum(dim=1), (2, 3, 4)),
    (lambda: nn.Linear(4, 3).double(), (2, 5, 4)),
    (lambda: nn.Conv1d(2, 3, 3, stride=2, padding=1).double(), (2, 2, 9)),
    (lambda: nn.Conv1d(2, 3, 3, stride=2, padding=1).double(), (2, 9)),  # unbatched
    (lambda: nn.Conv2d(4, 4, 3, padding=1, groups=4).double(), (2, 4, 5, 5)),
    (lambda: nn.Conv2d(2, 3, 3, padding=1, padding_mode="reflect").double(), (2, 2, 5, 4)),
    (lambda: nn.Conv2d(2, 3, 3, padding=(2, 1), padding_mode="replicate").double(),
     (2, 2, 5, 4)),
    (lambda: nn.Conv2d(2, 3, 3, padding=(1, 2), padding_mode="circular").double(),
     (2, 2, 5, 4)),
    (lambda: nn.Conv2d(2, 3, (3, 2), dilation=2, padding="same").double(), (2, 2, 6, 5)),
    (lambda: nn.Conv2d(2, 3, (2, 3), padding="same", padding_mode="reflect").double(),
     (2, 2, 5, 5)),
    (lambda: nn.Conv3d(2, 2, 2, stride=2, padding="valid").double(), (2, 2, 4, 4, 4)),
    (lambda: nn.ConvTranspose1d(3, 2, 3, stride=2, padding=1, output_padding=1).double(),
     (2, 3, 4)),
    (lambda: nn.ConvTranspose2d(4, 4, 3, stride=2, groups=2, dilation=2).double(),
     (2, 4, 3, 3)),
    (lambda: nn.ConvTranspose3d(2, 2, 2, stride=2).double(), (2, 2, 2, 2, 2)),
]


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel lengths")
@pytest.mark.parametrize(("make", "shape"), CASES, ids=lambda v: None)
def test_closed_form_equals_autograd(make, shape):
    module = make()
    vjp = find_input_vjp(module, (), {})
    assert vjp is not None
    generator = torch.Generator().manual_seed(0)
    u = torch.randn(shape, generator=generator, dtype=torch.float64)
    output, pullback = torch.func.vjp(module, u)
    grad = torch.randn(output.shape, generator=generator, dtype=torch.float64)
    state = {**dict(module.named_parameters()), **dict(module.named_buffers())}
    expected = pullback(grad)[0]
    torch.testing.assert_close(vjp(module, state, grad, u), expected, rtol=1e-12, atol=1e-12)


def test_batch_norm_vjp_uses_the_given_weight():
    """The rules modify the parameters (ZPlus: the positive weight): the VJP must use the
    weight it is given, not the module's."""
    module = _bn(nn.BatchNorm2d, 3)
    vjp = find_input_vjp(module, (), {})
    u = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    grad = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    positive = {"weight": module.weight.clamp(min=0), "bias": torch.zeros(3, dtype=torch.float64)}
    buffers = dict(module.named_buffers())

    def modified(v):
        return torch.func.functional_call(module, {**positive, **buffers}, (v,))

    expected = torch.func.vjp(modified, u)[1](grad)[0]
    torch.testing.assert_close(vjp(module, {**positive, **buffers}, grad, u), expected)


class _OwnAvgPool(nn.AvgPool2d):
    def forward(self, x):
        return super().forward(x) * 2


@pytest.mark.parametrize(("module", "args"), [
    (nn.BatchNorm2d(3).train(), ()),  # batch statistics: not affine in the input
    (nn.BatchNorm2d(3, track_running_stats=False).eval(), ()),
    (_OwnAvgPool(2), ()),  # an overridden forward
    (nn.AvgPool2d(2), (torch.zeros(1),)),  # more arguments than the input
    (nn.LayerNorm(3), ()),
    (nn.Identity(), ()),
])
def test_other_layers_have_no_closed_form(module, args):
    assert find_input_vjp(module, args, {}) is None


def test_conv_transpose_with_output_size():
    module = nn.ConvTranspose2d(2, 3, 3, stride=2).double()
    u = torch.randn(2, 2, 4, 4, dtype=torch.float64)
    output, pullback = torch.func.vjp(lambda v: module(v, output_size=(10, 10)), u)
    grad = torch.randn(output.shape, dtype=torch.float64)
    vjp = find_input_vjp(module, (), {"output_size": (10, 10)})
    state = dict(module.named_parameters())
    torch.testing.assert_close(vjp(module, state, grad, u, output_size=(10, 10)),
                               pullback(grad)[0], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("gate_shape", [(2, 3, 4, 1), (2, 3, 1, 1), (2, 3, 4, 5)])
def test_gated_sum_vjp_with_respect_to_the_input(gate_shape):
    """The gate is a constant of the call (it gets no relevance); it may broadcast either way."""
    module = GatedSum()
    generator = torch.Generator().manual_seed(0)
    u = torch.randn(2, 3, 4, 1, generator=generator, dtype=torch.float64)
    gate = torch.randn(gate_shape, generator=generator, dtype=torch.float64)
    output, pullback = torch.func.vjp(lambda v: module(v, gate), u)
    grad = torch.randn(output.shape, generator=generator, dtype=torch.float64)
    vjp = find_input_vjp(module, (gate,), {})
    torch.testing.assert_close(vjp(module, {}, grad, u, gate), pullback(grad)[0], rtol=1e-12,
                               atol=1e-12)
    assert find_input_vjp(module, (), {}) is None  # a call without its gate
