"""Attributors: Zennit and Captum as oracles, the laws (hypothesis), derivatives, errors.

Oracles run in float64: Zennit 1.0.0's SmoothGrad (the same noise: torch's global generator
seeded alike), IntegratedGradients (the same path points) and Occlusion, with and without
composites; Captum's IntegratedGradients (``riemann_right``) and FeatureAblation / Occlusion
on non-overlapping windows. Laws: SmoothGrad with one sample or no noise is the gradient, IG
completeness on smooth models, disjoint occlusion windows reconstruct a linear model,
chunked == unchunked, multi-target rows == single-target calls, vmapped per-sample ==
batched. Derivatives of attributions are checked against central finite differences.
"""

from __future__ import annotations

import re
from functools import partial
from pathlib import Path

import captum.attr
import pytest
import torch
import zennit.attribution as za
import zennit.composites as zc
from helpers import ViewsItsInput
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor, nn

import funcattr
from funcattr import composites as fc
from funcattr.attribution import (
    Gradient,
    IntegratedGradients,
    Occlusion,
    SmoothGrad,
    constant,
    gradient,
    identity,
    integrated_gradients,
    multi_target,
    occlude_independent,
    occlusion,
    one_hot,
    smooth_grad,
    top_k_targets,
)

DOCS = Path(__file__).resolve().parent.parent / "docs" / "attributors.md"

# Relative tolerance (on the result's scale) against the oracles. Observed: exactly 0 against
# Zennit without composites; <= 1e-15 with composites (stacked vs. looped convolutions).
RTOL = 1e-10


def assert_close(actual: Tensor, expected: Tensor, rtol: float = RTOL) -> None:
    """``|actual - expected| <= rtol * max|expected|`` elementwise, shapes and dtypes equal."""
    assert actual.shape == expected.shape, f"{tuple(actual.shape)} != {tuple(expected.shape)}"
    assert actual.dtype == expected.dtype, f"{actual.dtype} != {expected.dtype}"
    scale = max(expected.abs().max().item(), 1e-300) if expected.numel() else 1.0
    torch.testing.assert_close(actual, expected, rtol=0.0, atol=rtol * scale)


# --------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------

def cnn(seed: int = 0) -> nn.Module:
    """Conv-BN-ReLU-Conv-ReLU-AvgPool-Linear for inputs (batch, 3, 6, 6), 5 classes, eval."""
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
        nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2),
        nn.Flatten(), nn.Linear(4 * 3 * 3, 5),
    )
    bn = model[1]
    with torch.no_grad():
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.5, 0.5)
    return model.eval()


def lean_cnn(seed: int = 0) -> nn.Module:
    """Conv-ReLU-MaxPool-Linear: LRP rules only on layers of the fast linear path.

    funcattr.core's generic rule path (BatchNorm, average pooling with a rule) raises a
    PyTorch INTERNAL ASSERT when the attribution itself runs under ``torch.func.vmap`` or
    ``torch.func.grad`` (it calls ``torch.func.vjp`` inside an autograd.Function backward);
    the vmapped tests with rules use this model.
    """
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(),
        nn.MaxPool2d(2), nn.Flatten(), nn.Linear(4 * 3 * 3, 5),
    ).eval()


def smooth_mlp(seed: int = 0) -> nn.Module:
    """A smooth (Softplus/Tanh) MLP 4 -> 3, for completeness and finite differences."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 8), nn.Softplus(), nn.Linear(8, 8), nn.Tanh(),
                         nn.Linear(8, 3)).eval()


def relu_mlp(seed: int = 0) -> nn.Module:
    """A ReLU MLP 4 -> 3 (LRP rules and BetaSmooth act on it)."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 5), nn.ReLU(),
                         nn.Linear(5, 3)).eval()


def data(seed: int, shape: tuple[int, ...] = (3, 3, 6, 6)) -> Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


TARGETS = [1, 4, 0]

# (id, funcattr composite factory, Zennit composite factory)
COMPOSITES = [
    ("none", lambda: None, lambda: None),
    ("epsilon_plus_flat", fc.EpsilonPlusFlat, zc.EpsilonPlusFlat),
    ("epsilon_alpha2_beta1", fc.EpsilonAlpha2Beta1, zc.EpsilonAlpha2Beta1),
    ("epsilon_gamma_box", lambda: fc.EpsilonGammaBox(low=-3.0, high=3.0),
     lambda: zc.EpsilonGammaBox(low=-3.0, high=3.0)),
]
COMPOSITE_IDS = [name for name, _, _ in COMPOSITES]


def zennit_seed(targets: list[int], classes: int = 5):
    """Zennit's relevance start ``output * one_hot`` for per-sample targets."""
    eye = torch.eye(classes)[targets]
    return lambda output: output * eye


def noise_like_zennit(input: Tensor, n_iter: int, seed: int) -> Tensor:
    """The standard-normal noise Zennit's SmoothGrad draws after ``torch.manual_seed(seed)``."""
    torch.manual_seed(seed)
    return torch.stack([torch.randn_like(input) for _ in range(n_iter - 1)])


# --------------------------------------------------------------------------------------------
# Zennit as the oracle
# --------------------------------------------------------------------------------------------

@pytest.mark.filterwarnings("ignore::funcattr.ModelCheckWarning")  # un-canonized on purpose
@pytest.mark.parametrize(("name", "ours", "theirs"), COMPOSITES, ids=COMPOSITE_IDS)
def test_smooth_grad_matches_zennit(name, ours, theirs):
    model, x = cnn(), data(1)
    torch.manual_seed(7)
    with za.SmoothGrad(model, theirs(), noise_level=0.2, n_iter=6) as attributor:
        expected_output, expected = attributor(x, zennit_seed(TARGETS))

    fn, params = funcattr.functionalize(model, ours())
    noise = noise_like_zennit(x, 6, seed=7)
    output, attribution = smooth_grad(fn, params, x, one_hot(TARGETS, times_output=True),
                                      noise_level=0.2, n_iter=6, noise=noise)
    assert_close(output, expected_output)
    assert_close(attribution, expected)

    torch.manual_seed(7)  # the class draws from the global generator, as Zennit does
    with SmoothGrad(model, ours(), noise_level=0.2, n_iter=6) as attributor:
        output, attribution = attributor(x, one_hot(TARGETS, times_output=True))
    assert_close(output, expected_output)
    assert_close(attribution, expected)


def test_smooth_grad_global_generator_draws_zennits_noise():
    model, x = cnn(), data(2)
    fn, params = funcattr.functionalize(model)
    torch.manual_seed(3)
    with za.SmoothGrad(model, n_iter=5) as attributor:
        _, expected = attributor(x, zennit_seed(TARGETS))
    torch.manual_seed(3)
    _, attribution = smooth_grad(fn, params, x, one_hot(TARGETS, times_output=True), n_iter=5)
    # the same noise draws; the batched sum over samples may round differently per CPU
    assert_close(attribution, expected)


@pytest.mark.filterwarnings("ignore::funcattr.ModelCheckWarning")  # un-canonized on purpose
@pytest.mark.parametrize(("name", "ours", "theirs"), COMPOSITES, ids=COMPOSITE_IDS)
@pytest.mark.parametrize("baseline", ["zeros", "random"])
def test_integrated_gradients_matches_zennit(name, ours, theirs, baseline):
    model, x = cnn(), data(3)
    baseline_fn = None if baseline == "zeros" else constant(data(4))
    with za.IntegratedGradients(model, theirs(), baseline_fn=baseline_fn, n_iter=7) as attributor:
        expected_output, expected = attributor(x, zennit_seed(TARGETS))

    with IntegratedGradients(model, ours(), baseline_fn=baseline_fn, n_iter=7) as attributor:
        output, attribution = attributor(x, one_hot(TARGETS, times_output=True))
    assert_close(output, expected_output)
    assert_close(attribution, expected)

    fn, params = funcattr.functionalize(model, ours())
    output, attribution = integrated_gradients(fn, params, x, one_hot(TARGETS, times_output=True),
                                               baseline_fn=baseline_fn, n_iter=7)
    assert_close(attribution, expected)


def test_integrated_gradients_zennit_float32_alphas():
    """Zennit's alphas live in the default dtype (float32 here); alpha_dtype reproduces them."""
    model, x = cnn(), data(5)
    fn, params = funcattr.functionalize(model)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float32)
    try:
        with za.IntegratedGradients(model, n_iter=3) as attributor:
            _, expected = attributor(x, zennit_seed(TARGETS))
        with IntegratedGradients(model, n_iter=3) as attributor:
            _, from_class = attributor(x, zennit_seed(TARGETS))
    finally:
        torch.set_default_dtype(previous)
    _, exact = integrated_gradients(fn, params, x, zennit_seed(TARGETS), n_iter=3,
                                    alpha_dtype=torch.float32)
    _, precise = integrated_gradients(fn, params, x, zennit_seed(TARGETS), n_iter=3)
    # equal up to float64 summation order (which differs between CPUs), far below the
    # float32 rounding of the alphas that float64 alphas 1/3, 2/3 show
    assert_close(from_class, expected, rtol=1e-13)
    assert_close(exact, expected, rtol=1e-13)
    scale = expected.abs().max()
    assert (precise - expected).abs().max() > 1e-10 * scale
    assert_close(precise, expected, rtol=1e-6)


OCCLUSION_CASES = [
    ((3, 3), (3, 3), None),
    ((4, 4), (4, 4), None),  # wraps around: the second window covers rows 4, 5, 0, 1
    ((3, 2), (2, 1), None),
    (2, 2, None),  # ints: every non-batch dimension (clipped), channels too
    ((1, 3, 3), (1, 2, 3), partial(occlude_independent, invert=True)),
    ((6, 6), (6, 6), partial(occlude_independent, fill_fn=torch.ones_like)),
]


@pytest.mark.filterwarnings("ignore::funcattr.ModelCheckWarning")  # un-canonized on purpose
@pytest.mark.parametrize(("window", "stride", "occlusion_fn"), OCCLUSION_CASES)
@pytest.mark.parametrize(("name", "ours", "theirs"), COMPOSITES[:2], ids=COMPOSITE_IDS[:2])
def test_occlusion_matches_zennit(window, stride, occlusion_fn, name, ours, theirs):
    model, x = cnn(), data(6)
    with za.Occlusion(model, theirs(), occlusion_fn=occlusion_fn, window=window,
                      stride=stride) as attributor:
        expected_output, expected = attributor(x, zennit_seed(TARGETS))
    with Occlusion(model, ours(), occlusion_fn=occlusion_fn, window=window,
                   stride=stride) as attributor:
        output, attribution = attributor(x, one_hot(TARGETS, times_output=True))
    assert_close(output, expected_output)
    assert_close(attribution, expected)


def test_occlusion_constant_attr_output_is_a_constant_score_as_in_zennit():
    model, x = cnn(), data(7)
    seed = torch.eye(5)[TARGETS]
    with za.Occlusion(model, window=(3, 3), stride=(3, 3)) as attributor:
        _, expected = attributor(x, seed)
    fn, params = funcattr.functionalize(model)
    _, attribution = occlusion(fn, params, x, seed, window=(3, 3), stride=(3, 3))
    assert torch.equal(attribution, expected)
    assert torch.equal(attribution, torch.ones_like(x))  # each pixel in one window, score 1


# --------------------------------------------------------------------------------------------
# Captum as the oracle where the methods coincide
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("n_iter", "rtol"), [(2, RTOL), (8, RTOL), (9, 1e-7)])
def test_integrated_gradients_matches_captum_riemann_right(n_iter, rtol):
    """Captum multiplies by its step sizes 1/n cast to float32 (integrated_gradients.py,
    ``torch.tensor(step_sizes).float()``): exact for powers of two, ~1e-8 off otherwise."""
    model, x, baseline = cnn(), data(8), data(9)
    expected = captum.attr.IntegratedGradients(model).attribute(
        x, baselines=baseline, target=TARGETS, n_steps=n_iter, method="riemann_right",
        internal_batch_size=4,
    )
    fn, params = funcattr.functionalize(model)
    _, attribution = integrated_gradients(fn, params, x, one_hot(TARGETS), n_iter=n_iter,
                                          baseline_fn=baseline, chunk_size=3)
    assert_close(attribution, expected, rtol=rtol)


@pytest.mark.parametrize("make", [lambda: cnn().float(), lambda: ViewsItsInput().float()],
                         ids=["cnn", "views-input"])
def test_float32_occlusion_equals_one_forward_per_window(make):
    """float32 image batches are evaluated channels-last (faster CPU convolutions): the same
    values as a contiguous forward per window, and models that ``.view`` their input work."""
    torch.manual_seed(0)
    model = make().eval()
    x = torch.rand(2, 3, 6, 6, dtype=torch.float32)
    fn, params = funcattr.functionalize(model)
    output, attribution = occlusion(fn, params, x, one_hot([1, 3], times_output=True),
                                    window=(3, 3), stride=(3, 3))
    expected = torch.zeros_like(x)
    for top in (0, 3):
        for left in (0, 3):
            mask = torch.zeros_like(x, dtype=torch.bool)
            mask[..., top:top + 3, left:left + 3] = True
            with torch.no_grad():
                score = model(x * mask)[torch.arange(2), torch.tensor([1, 3])]
            expected += mask * score.reshape(2, 1, 1, 1)
    torch.testing.assert_close(attribution, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(output, model(x), rtol=1e-6, atol=1e-7)


def test_occlusion_matches_captum_on_non_overlapping_windows():
    """Captum scores f(x) - f(x with the window ablated); with the window zeroed
    (``invert=True``) and the class score, funcattr gives f(x with the window ablated)."""
    model, x = cnn(), data(10)
    target = torch.tensor(TARGETS)
    fn, params = funcattr.functionalize(model)
    output, ablated = occlusion(fn, params, x, one_hot(TARGETS, times_output=True),
                                occlusion_fn=partial(occlude_independent, invert=True),
                                window=(2, 3), stride=(2, 3))
    clean = output[torch.arange(3), target].reshape(3, 1, 1, 1)

    windows = torch.arange(6).reshape(3, 2).repeat_interleave(2, 0).repeat_interleave(3, 1)
    expected = captum.attr.FeatureAblation(model).attribute(
        x, baselines=0.0, target=target, feature_mask=windows[None, None]
    )
    assert_close(clean - ablated, expected)
    # Captum's Occlusion divides by its window counts after ``attribution.float()``
    # (feature_ablation.py), so it keeps float32 precision only
    expected = captum.attr.Occlusion(model).attribute(
        x, sliding_window_shapes=(3, 2, 3), strides=(3, 2, 3), baselines=0.0, target=target,
        perturbations_per_eval=4,
    )
    assert_close(clean - ablated, expected, rtol=1e-7)


# --------------------------------------------------------------------------------------------
# Laws
# --------------------------------------------------------------------------------------------

law_settings = settings(max_examples=10, deadline=None)
heavy_law_settings = settings(max_examples=5, deadline=None)


@pytest.mark.filterwarnings("ignore::funcattr.ModelCheckWarning")  # un-canonized on purpose
@law_settings
@given(seed=st.integers(0, 2**16), noise_level=st.floats(0.0, 2.0),
       composite=st.sampled_from([None, fc.EpsilonPlusFlat(), fc.EpsilonAlpha2Beta1()]))
def test_smooth_grad_with_one_sample_is_the_gradient(seed, noise_level, composite):
    fn, params = funcattr.functionalize(cnn(), composite)
    x = data(seed)
    expected_output, expected = gradient(fn, params, x, one_hot(TARGETS, times_output=True))
    output, attribution = smooth_grad(fn, params, x, one_hot(TARGETS, times_output=True),
                                      n_iter=1, noise_level=noise_level, generator=seed)
    assert torch.equal(output, expected_output)
    assert torch.equal(attribution, expected)


@pytest.mark.filterwarnings("ignore::funcattr.ModelCheckWarning")  # un-canonized on purpose
@law_settings
@given(seed=st.integers(0, 2**16), n_iter=st.integers(2, 9))
def test_smooth_grad_without_noise_is_the_gradient(seed, n_iter):
    fn, params = funcattr.functionalize(cnn(), fc.EpsilonPlusFlat())
    x = data(seed)
    _, expected = gradient(fn, params, x, one_hot(TARGETS))
    _, attribution = smooth_grad(fn, params, x, one_hot(TARGETS), n_iter=n_iter,
                                 noise_level=0.0, generator=seed)
    assert_close(attribution, expected, rtol=1e-13)


def test_smooth_grad_noise_scale_is_relative_to_each_samples_range():
    """A linear model's SmoothGrad is its gradient whatever the noise; the copies it sees are
    ``x + noise * 0.5 * (max - min)`` per sample: check through the outputs of the copies."""
    x = torch.stack([torch.linspace(0, 1, 8), torch.linspace(-10, 10, 8)]).reshape(2, 2, 4)
    seen = []

    def fn(params, input):
        seen.append(input.detach())
        return input.flatten(1).sum(1, keepdim=True)

    noise = torch.randn(3, 2, 2, 4, generator=torch.Generator().manual_seed(0))
    smooth_grad(fn, {}, x, n_iter=4, noise_level=0.5, noise=noise)
    copies = seen[0].reshape(4, 2, 2, 4)
    std = torch.tensor([0.5, 10.0]).reshape(2, 1, 1)
    assert torch.equal(copies[:3], x + noise * std)
    assert torch.equal(copies[3], x)  # the last copy is noise-free


@law_settings
@given(seed=st.integers(0, 2**16), baseline_seed=st.one_of(st.none(), st.integers(0, 2**16)))
def test_integrated_gradients_completeness(seed, baseline_seed):
    """sum(attribution) -> f(x) - f(baseline) for smooth models, the error shrinking with n."""
    model = smooth_mlp(seed % 7)
    fn, params = funcattr.functionalize(model)
    x = data(seed, (3, 4))
    baseline = torch.zeros_like(x) if baseline_seed is None else data(baseline_seed, (3, 4))
    index = torch.arange(3), torch.tensor([1, 2, 0])
    expected = model(x)[index] - model(baseline)[index]
    errors = []
    for n_iter in (4, 64, 1024):
        _, attribution = integrated_gradients(fn, params, x, one_hot([1, 2, 0]),
                                              baseline_fn=baseline, n_iter=n_iter)
        errors.append((attribution.sum(1) - expected).abs().max().item())
    # the right Riemann sum's error decays like 1/n (measured against the coarse errors, not
    # |f(x) - f(b)|, which may nearly cancel): 256x / 16x the steps, far less error
    assert errors[2] <= max(errors[0] / 50, errors[1] / 4) + 1e-12


def linear_model(shape: tuple[int, ...], seed: int) -> tuple[nn.Module, Tensor]:
    weight = torch.randn(1, int(torch.tensor(shape[1:]).prod()),
                         generator=torch.Generator().manual_seed(seed))
    linear = nn.Linear(weight.shape[1], 1, bias=False)
    with torch.no_grad():
        linear.weight.copy_(weight)
    return nn.Sequential(nn.Flatten(), linear).eval(), weight.reshape(shape[1:])


@law_settings
@given(seed=st.integers(0, 2**16), grid=st.tuples(st.integers(1, 3), st.integers(1, 3)),
       window=st.tuples(st.integers(1, 3), st.integers(1, 3)))
def test_disjoint_occlusion_windows_reconstruct_a_linear_model(seed, grid, window):
    """Windows tiling the input: each window's score is its share of f(x) = w.x, so summing
    the attribution over each window (divided by the window's size) gives f(x); with
    one-pixel windows the attribution is w * x itself."""
    shape = (2, 2, grid[0] * window[0], grid[1] * window[1])
    model, weight = linear_model(shape, seed)
    fn, params = funcattr.functionalize(model)
    x = data(seed, shape)
    output, attribution = occlusion(fn, params, x, window=window, stride=window)
    area = 2 * window[0] * window[1]  # windows span the channels (an int-free tuple window)
    assert_close((attribution / area).flatten(1).sum(1, keepdim=True), output, rtol=1e-12)
    _, pixels = occlusion(fn, params, x, window=(1, 1, 1), stride=(1, 1, 1))
    assert_close(pixels, weight * x, rtol=1e-12)


@pytest.mark.filterwarnings("ignore::funcattr.ModelCheckWarning")  # un-canonized on purpose
@heavy_law_settings
@given(seed=st.integers(0, 2**16), chunk_size=st.integers(1, 8),
       composite=st.sampled_from([None, fc.EpsilonPlusFlat()]))
def test_chunked_equals_unchunked(seed, chunk_size, composite):
    fn, params = funcattr.functionalize(cnn(), composite)
    x = data(seed)
    attr = one_hot(TARGETS, times_output=True)
    calls = [
        partial(smooth_grad, n_iter=6, generator=seed),
        partial(integrated_gradients, n_iter=6, baseline_fn=torch.ones_like),
        partial(occlusion, window=(3, 3), stride=(2, 2)),
    ]
    for call in calls:
        expected_output, expected = call(fn, params, x, attr)
        output, attribution = call(fn, params, x, attr, chunk_size=chunk_size)
        assert_close(output, expected_output, rtol=1e-13)
        assert_close(attribution, expected, rtol=1e-13)
    expected_output, expected = multi_target(fn, params, x, [0, 1, 2, 3, 4])
    output, attribution = multi_target(fn, params, x, [0, 1, 2, 3, 4], chunk_size=chunk_size)
    assert_close(attribution, expected, rtol=1e-13)


@pytest.mark.filterwarnings("ignore::funcattr.ModelCheckWarning")  # un-canonized on purpose
@heavy_law_settings
@given(seed=st.integers(0, 2**16), times_output=st.booleans(),
       composite=st.sampled_from([None, fc.EpsilonPlusFlat(), fc.EpsilonGammaBox(-3.0, 3.0)]))
def test_multi_target_rows_equal_single_target_calls(seed, times_output, composite):
    fn, params = funcattr.functionalize(cnn(), composite)
    x = data(seed)
    per_sample = torch.randint(0, 5, (4, 3), generator=torch.Generator().manual_seed(seed))
    for targets in ([3, 0], per_sample, top_k_targets(3)):
        output, attribution = multi_target(fn, params, x, targets, times_output=times_output)
        index = targets(output) if callable(targets) else torch.as_tensor(targets)
        assert attribution.shape == (len(index), *x.shape)
        for k, target in enumerate(index):
            expected_output, expected = gradient(fn, params, x,
                                                 one_hot(target, times_output=times_output))
            assert_close(output, expected_output, rtol=1e-13)
            assert_close(attribution[k], expected, rtol=1e-12)


def test_top_k_targets_orders_by_score():
    output = torch.tensor([[0.1, 3.0, -1.0, 2.0], [5.0, 0.0, 1.0, -2.0]])
    assert torch.equal(top_k_targets(2)(output), torch.tensor([[1, 0], [3, 2]]))


@pytest.mark.parametrize("composite", [None, fc.EpsilonPlusFlat()], ids=["none", "lrp"])
def test_vmapped_per_sample_equals_batched(composite):
    """Per-sample targets (and noise) through torch.func.vmap over the pure functions."""
    fn, params = funcattr.functionalize(cnn() if composite is None else lean_cnn(), composite)
    x, targets = data(11), torch.tensor(TARGETS)
    noise = torch.randn(4, *x.shape, generator=torch.Generator().manual_seed(0))
    cases = {
        "gradient": (
            lambda xi, ti, ni: gradient(fn, params, xi[None], one_hot(ti[None]))[1][0],
            gradient(fn, params, x, one_hot(targets))[1],
        ),
        "smooth_grad": (
            lambda xi, ti, ni: smooth_grad(fn, params, xi[None], one_hot(ti[None]), n_iter=5,
                                           noise=ni[:, None])[1][0],
            smooth_grad(fn, params, x, one_hot(targets), n_iter=5, noise=noise)[1],
        ),
        "integrated_gradients": (
            lambda xi, ti, ni: integrated_gradients(fn, params, xi[None], one_hot(ti[None]),
                                                    n_iter=5, chunk_size=2)[1][0],
            integrated_gradients(fn, params, x, one_hot(targets), n_iter=5)[1],
        ),
        "occlusion": (
            lambda xi, ti, ni: occlusion(fn, params, xi[None],
                                         one_hot(ti[None], times_output=True),
                                         window=(3, 3), stride=(2, 2))[1][0],
            occlusion(fn, params, x, one_hot(targets, times_output=True), window=(3, 3),
                      stride=(2, 2))[1],
        ),
    }
    for per_sample, expected in cases.values():
        attribution = torch.func.vmap(per_sample, in_dims=(0, 0, 1))(x, targets, noise)
        assert_close(attribution, expected, rtol=1e-12)


def test_smooth_grad_under_vmap_draws_with_randomness_flag():
    fn, params = funcattr.functionalize(cnn())
    x = data(12)
    with pytest.raises(RuntimeError, match=r"cannot draw noise inside torch\.func\.vmap"):
        torch.func.vmap(lambda xi: smooth_grad(fn, params, xi[None], n_iter=3)[1])(x)
    attribution = torch.func.vmap(lambda xi: smooth_grad(fn, params, xi[None], n_iter=3)[1],
                                  randomness="different")(x)
    assert attribution.shape == (3, 1, *x.shape[1:])


def test_generator_and_seed_repeat_and_differ():
    fn, params = funcattr.functionalize(cnn())
    x = data(13)
    first = smooth_grad(fn, params, x, n_iter=4, generator=5)[1]
    assert torch.equal(first, smooth_grad(fn, params, x, n_iter=4, generator=5)[1])
    assert not torch.equal(first, smooth_grad(fn, params, x, n_iter=4, generator=6)[1])
    generator = torch.Generator().manual_seed(5)
    assert torch.equal(first, smooth_grad(fn, params, x, n_iter=4, generator=generator)[1])
    assert not torch.equal(first, smooth_grad(fn, params, x, n_iter=4, generator=generator)[1])


def test_attr_output_fn_that_cannot_be_vmapped_falls_back_to_a_loop():
    fn, params = funcattr.functionalize(cnn())
    x = data(14)

    def argmax_by_item(output):  # .item() is refused under vmap
        seed = torch.zeros_like(output)
        for row in range(output.shape[0]):
            seed[row, int(output[row].argmax().item())] = 1.0
        return seed

    expected = smooth_grad(fn, params, x, one_hot(None), n_iter=3, generator=0)
    result = smooth_grad(fn, params, x, argmax_by_item, n_iter=3, generator=0)
    assert_close(result[1], expected[1], rtol=1e-14)


# --------------------------------------------------------------------------------------------
# Derivatives of attributions
# --------------------------------------------------------------------------------------------

def finite_difference(loss, value: Tensor, step: float = 1e-5) -> Tensor:
    """Fourth-order central differences of a scalar function of ``value`` (float64)."""
    result = torch.zeros_like(value)
    for index in range(value.numel()):
        delta = torch.zeros(value.numel())
        delta[index] = step
        delta = delta.reshape(value.shape)
        near = loss(value + delta) - loss(value - delta)
        far = loss(value + 2 * delta) - loss(value - 2 * delta)
        result.view(-1)[index] = (8 * near - far) / (12 * step)
    return result


def explanation_losses(fn, params):
    seed = one_hot([0, 2], times_output=True)
    noise = torch.randn(3, 2, 4, generator=torch.Generator().manual_seed(1))
    return {
        "gradient": lambda p, x: gradient(fn, p, x, seed)[1],
        "smooth_grad": lambda p, x: smooth_grad(fn, p, x, seed, n_iter=4, noise=noise,
                                                noise_level=0.3)[1],
        "integrated_gradients": lambda p, x: integrated_gradients(fn, p, x, seed, n_iter=4,
                                                                  chunk_size=3)[1],
    }


@pytest.mark.parametrize(("model", "composite"), [
    (smooth_mlp, None), (relu_mlp, fc.BetaSmooth()), (relu_mlp, fc.EpsilonPlus()),
], ids=["plain-softplus", "beta_smooth", "epsilon_plus"])
def test_derivatives_of_attributions_match_finite_differences(model, composite):
    """torch.func.grad of an explanation loss, w.r.t. the input and the params; for LRP rules
    this is the derivative of the rule's backward formula, so finite differences of the
    attribution function itself are the oracle."""
    fn, params = funcattr.functionalize(model(), composite)
    x = data(15, (2, 4))
    weight = next(name for name in params if name.endswith("weight"))
    for attribute in explanation_losses(fn, params).values():
        def loss_x(x, attribute=attribute):
            return (attribute(params, x) ** 2).sum()

        def loss_w(w, attribute=attribute):
            return (attribute({**params, weight: w}, x) ** 2).sum()

        assert_close(torch.func.grad(loss_x)(x), finite_difference(loss_x, x), rtol=1e-5)
        assert_close(torch.func.grad(loss_w)(params[weight]),
                     finite_difference(loss_w, params[weight]), rtol=1e-5)


def test_jacobian_of_attribution_and_create_graph_agree():
    fn, params = funcattr.functionalize(relu_mlp(), fc.BetaSmooth())
    x = data(16, (2, 4))
    noise = torch.randn(2, 2, 4, generator=torch.Generator().manual_seed(2))

    def attribute(x):
        return smooth_grad(fn, params, x, one_hot([1, 2]), n_iter=3, noise=noise)[1]

    jacobian = torch.func.jacrev(attribute)(x)
    expected = torch.stack([
        finite_difference(lambda x, i=i: attribute(x).reshape(-1)[i], x) for i in range(8)
    ]).reshape(2, 4, 2, 4)
    assert_close(jacobian, expected, rtol=1e-6)

    # Zennit's create_graph idiom through the class: autograd gives the same derivative
    leaf = x.clone().requires_grad_(True)
    with SmoothGrad(relu_mlp(), fc.BetaSmooth(), create_graph=True, n_iter=1) as attributor:
        _, relevance = attributor(leaf, one_hot([1, 2]))
    (second,) = torch.autograd.grad(relevance.pow(2).sum(), leaf)
    expected = torch.func.grad(
        lambda x: gradient(fn, params, x, one_hot([1, 2]))[1].pow(2).sum()
    )(x)
    assert_close(second, expected, rtol=1e-12)


def test_softplus_second_derivative_is_analytic():
    """d/dx of SmoothGrad(n_iter=1) = the gradient of softplus(w.x): w w^T sigmoid'(w.x)."""
    linear = nn.Linear(4, 1, bias=False)
    model = nn.Sequential(linear, nn.Softplus()).eval()
    fn, params = funcattr.functionalize(model)
    x = data(17, (1, 4))
    jacobian = torch.func.jacrev(lambda x: smooth_grad(fn, params, x, n_iter=1,
                                                       attr_output_fn=torch.ones(1, 1))[1])(x)
    w = linear.weight.detach()[0]
    s = torch.sigmoid(x[0] @ w)
    assert_close(jacobian.reshape(4, 4), torch.outer(w, w) * s * (1 - s), rtol=1e-12)


# --------------------------------------------------------------------------------------------
# Stateful classes and custom attributors
# --------------------------------------------------------------------------------------------

@pytest.mark.filterwarnings("ignore::funcattr.ModelCheckWarning")  # un-canonized on purpose
def test_classes_delegate_to_the_pure_functions_and_leave_the_model_alone():
    model, x = cnn(), data(18)
    before = {name: (value.clone(), value.data_ptr()) for name, value in
              model.state_dict().items()}
    fn, params = funcattr.functionalize(model, fc.EpsilonPlusFlat())
    attr = one_hot(TARGETS, times_output=True)
    # chunk_size counts model inputs: 6 = two copies of the batch of 3 per step
    with SmoothGrad(model, fc.EpsilonPlusFlat(), n_iter=3, generator=4, chunk_size=6) as a:
        assert torch.equal(a(x, attr)[1], smooth_grad(fn, params, x, attr, n_iter=3,
                                                      generator=4)[1])
        assert torch.equal(a(x, attr)[1], a(x, attr)[1])  # an int seed repeats
    with IntegratedGradients(model, fc.EpsilonPlusFlat(), n_iter=3, chunk_size=3) as a:
        assert torch.equal(a(x, attr)[1], integrated_gradients(fn, params, x, attr, n_iter=3)[1])
    with Occlusion(model, window=(3, 3), stride=(2, 2), chunk_size=15) as a:
        assert torch.equal(a(x, attr)[1], occlusion(fn, params, x, attr, window=(3, 3),
                                                    stride=(2, 2))[1])
    with Gradient(model, fc.EpsilonPlusFlat(), attr_output=attr) as a:
        assert torch.equal(a(x)[1], gradient(fn, params, x, attr)[1])
    for name, (value, pointer) in before.items():
        assert torch.equal(model.state_dict()[name], value) and pointer == model.state_dict()[
            name].data_ptr()
    assert all(not m._forward_hooks and not m._forward_pre_hooks and not m._backward_hooks
               for m in model.modules())


def test_helpers_match_zennit():
    x = data(19, (2, 3))
    mask = torch.tensor([[True, False, True], [False, False, True]])
    for invert in (False, True):
        assert torch.equal(occlude_independent(x, mask, invert=invert),
                           za.occlude_independent(x, mask, invert=invert))
    assert constant(x)(1, 2, key=3) is x
    assert identity(x) is x


def doc_example(marker: str) -> tuple[str, str]:
    """The code block after ``<!-- example: marker -->`` in docs/attributors.md, split into
    the definitions and the part that runs on vgg11."""
    text = DOCS.read_text()
    match = re.search(rf"<!-- example: {marker} -->\n```python\n(.*?)```", text, re.S)
    assert match, marker
    code = match.group(1)
    definitions, run = code.split("model = vgg11()")
    return definitions, "model = vgg11()" + run


@pytest.mark.filterwarnings("ignore::funcattr.ModelCheckWarning")  # un-canonized on purpose
@pytest.mark.parametrize("composite", [None, fc.EpsilonPlusFlat(), fc.EpsilonAlpha2Beta1()],
                         ids=["none", "epsilon_plus_flat", "epsilon_alpha2_beta1"])
def test_zennit_custom_attributor_examples_give_rule_modified_gradients(composite):
    namespace: dict = {}
    exec(doc_example("gradient-times-input")[0], namespace)
    exec(doc_example("sensitivity-analysis")[0], namespace)
    assert "from funcattr.attribution import Attributor" in doc_example("gradient-times-input")[0]
    model, x = cnn(), data(20)
    fn, params = funcattr.functionalize(model, composite)
    attr = one_hot(TARGETS, times_output=True)
    _, expected = gradient(fn, params, x, attr)
    with namespace["GradientTimesInput"](model, composite=composite) as attributor:
        _, relevance = attributor(x, attr)
    assert_close(relevance, expected * x, rtol=1e-13)
    with namespace["SensitivityAnalysis"](model, sum_channels=True, composite=composite,
                                          attr_output=attr) as attributor:
        _, relevance = attributor(x)
    assert_close(relevance, expected.abs().sum(1), rtol=1e-13)
    if composite is not None:  # the rules really act
        _, plain = gradient(*funcattr.functionalize(model), x, attr)
        assert not torch.allclose(expected, plain)


@pytest.mark.filterwarnings("ignore::funcattr.ModelCheckWarning")  # un-canonized on purpose
def test_pure_function_custom_attributor_example():
    namespace = {"fn": None, "params": None}
    text = DOCS.read_text()
    code = text.split("### The same as a pure function")[1].split("```python\n")[1].split("```")[0]
    definitions = code.split("# gradient times input is")[0]
    exec(definitions, namespace)
    fn, params = funcattr.functionalize(cnn(), fc.EpsilonPlusFlat())
    x = data(21)
    _, a = namespace["gradient_times_input"](fn, params, x, one_hot(3))
    _, b = integrated_gradients(fn, params, x, one_hot(3), n_iter=1)
    assert torch.equal(a, b)
    _, s = namespace["sensitivity"](fn, params, x, one_hot(3), sum_channels=True)
    assert torch.equal(s, gradient(fn, params, x, one_hot(3))[1].abs().sum(1))


# --------------------------------------------------------------------------------------------
# Errors: one per message
# --------------------------------------------------------------------------------------------

@pytest.fixture
def setup():
    fn, params = funcattr.functionalize(cnn())
    return fn, params, data(22)


def test_error_n_iter(setup):
    fn, params, x = setup
    with pytest.raises(ValueError, match=r"smooth_grad\(n_iter=0\): expected an int >= 1, got 0\. "
                                         r"Pass e\.g\. n_iter=20\.$"):
        smooth_grad(fn, params, x, n_iter=0)
    with pytest.raises(ValueError, match=r"integrated_gradients\(n_iter=-2\): expected an int"):
        integrated_gradients(fn, params, x, n_iter=-2)
    with pytest.raises(TypeError, match=r"smooth_grad\(n_iter=2.5\): expected an int >= 1"):
        smooth_grad(fn, params, x, n_iter=2.5)
    with pytest.raises(ValueError, match=r"SmoothGrad\(n_iter=0\)"):
        SmoothGrad(cnn(), n_iter=0)
    with pytest.raises(ValueError, match=r"IntegratedGradients\(n_iter=0\)"):
        IntegratedGradients(cnn(), n_iter=0)


def test_error_noise(setup):
    fn, params, x = setup
    with pytest.raises(ValueError, match=r"noise_level=-0.1\): expected a finite noise level"):
        smooth_grad(fn, params, x, noise_level=-0.1)
    with pytest.raises(ValueError, match=r"SmoothGrad\(noise_level=-1"):
        SmoothGrad(cnn(), noise_level=-1.0)
    with pytest.raises(TypeError, match=r"noise_level='0.1'\): expected a float >= 0"):
        smooth_grad(fn, params, x, noise_level="0.1")
    with pytest.raises(ValueError, match=r"noise=tensor of shape \(3, 3, 3, 6, 6\)\): expected "
                                         r"shape \(2, 3, 3, 6, 6\)"):
        smooth_grad(fn, params, x, n_iter=3, noise=torch.randn(3, *x.shape))
    with pytest.raises(TypeError, match=r"noise=list\): expected a tensor of shape"):
        smooth_grad(fn, params, x, n_iter=3, noise=[0.0])
    with pytest.raises(ValueError, match=r"pass either the noise or a generator"):
        smooth_grad(fn, params, x, n_iter=2, noise=torch.randn(1, *x.shape), generator=1)
    with pytest.raises(TypeError, match=r"generator='seed'\): expected None"):
        smooth_grad(fn, params, x, generator="seed")


def test_error_chunk_size(setup):
    fn, params, x = setup
    with pytest.raises(TypeError, match=r"smooth_grad\(chunk_size=2.0\): expected None or an "
                                        r"int >= 1"):
        smooth_grad(fn, params, x, chunk_size=2.0)
    with pytest.raises(ValueError, match=r"occlusion\(chunk_size=0\): expected an int >= 1, "
                                         r"got 0\. Pass e\.g\. chunk_size=32\.$"):
        occlusion(fn, params, x, chunk_size=0)
    with pytest.raises(TypeError, match=r"integrated_gradients\(chunk_size=True\)"):
        integrated_gradients(fn, params, x, chunk_size=True)
    with pytest.raises(TypeError, match=r"multi_target\(chunk_size='4'\)"):
        multi_target(fn, params, x, [0], chunk_size="4")
    with pytest.raises(TypeError, match=r"Occlusion\(chunk_size=1.5\)"):
        Occlusion(cnn(), chunk_size=1.5)


def test_error_baseline(setup):
    fn, params, x = setup
    with pytest.raises(ValueError, match=r"integrated_gradients\(baseline_fn=...\): expected a "
                                         r"baseline shaped like the input \(3, 3, 6, 6\).*got "
                                         r"\(3, 3, 5, 5\)"):
        integrated_gradients(fn, params, x, baseline_fn=lambda x: torch.zeros(3, 3, 5, 5))
    with pytest.raises(ValueError, match=r"got \(3, 3, 6, 6, 1\)"):
        integrated_gradients(fn, params, x, baseline_fn=torch.zeros(3, 3, 6, 6, 1))
    with pytest.raises(ValueError, match=r"got float"):
        integrated_gradients(fn, params, x, baseline_fn=lambda x: 0.0)
    with pytest.raises(TypeError, match=r"baseline_fn=float\): expected None \(zeros\)"):
        integrated_gradients(fn, params, x, baseline_fn=0.5)
    with pytest.raises(TypeError, match=r"alpha_dtype='float32'\): expected a torch.dtype"):
        integrated_gradients(fn, params, x, alpha_dtype="float32")
    # a per-channel baseline broadcasts
    _, per_channel = integrated_gradients(fn, params, x, baseline_fn=torch.ones(1, 3, 1, 1),
                                          n_iter=2)
    _, full = integrated_gradients(fn, params, x, baseline_fn=torch.ones_like, n_iter=2)
    assert torch.equal(per_channel, full)


def test_error_window(setup):
    fn, params, x = setup
    with pytest.raises(ValueError, match=r"occlusion\(window=\(7, 7\)\): the window is larger "
                                         r"than the input of shape \(3, 3, 6, 6\)"):
        occlusion(fn, params, x, window=(7, 7))
    with pytest.raises(ValueError, match=r"occlusion\(window=\(1, 2, 3, 4, 5\)\): expected at "
                                         r"most 4 sizes"):
        occlusion(fn, params, x, window=(1, 2, 3, 4, 5))
    with pytest.raises(ValueError, match=r"occlusion\(stride=\(0, 1\)\): expected sizes >= "
                                         r"1, got \(0, 1\)\. Pass e\.g\. stride=8"):
        occlusion(fn, params, x, stride=(0, 1))
    with pytest.raises(TypeError, match=r"occlusion\(window=\[8, 8\]\): expected an int or a "
                                        r"tuple of ints, got list"):
        occlusion(fn, params, x, window=[8, 8])
    with pytest.raises(TypeError, match=r"Occlusion\(window=\[8, 8\]\): expected an int or a "
                                        r"tuple of ints"):
        Occlusion(cnn(), window=[8, 8])
    with pytest.raises(TypeError, match=r"Occlusion\(stride=4.0\)"):
        Occlusion(cnn(), stride=4.0)
    with pytest.raises(TypeError, match=r"occlusion_fn=int\): expected a callable"):
        occlusion(fn, params, x, occlusion_fn=3)
    with pytest.raises(ValueError, match=r"occlusion\(occlusion_fn=...\): expected an occluded "
                                         r"input of the input's shape"):
        occlusion(fn, params, x, occlusion_fn=lambda input, mask: input[:, :2])
    # an int window larger than the input is clipped to its size, as in Zennit
    assert occlusion(fn, params, x, window=100, stride=100)[1].shape == x.shape


def test_error_targets(setup):
    fn, params, x = setup
    with pytest.raises(TypeError, match=r"multi_target\(targets=3\): expected a sequence of "
                                        r"ints"):
        multi_target(fn, params, x, 3)
    with pytest.raises(ValueError, match=r"target out of range for an output with 5 classes"):
        multi_target(fn, params, x, [0, 5])
    with pytest.raises(ValueError, match=r"expected K >= 1 targets.*got shape \(2, 2\)"):
        multi_target(fn, params, x, torch.zeros(2, 2, dtype=torch.long))
    with pytest.raises(TypeError, match=r"expected integer class indices, got torch.float64"):
        multi_target(fn, params, x, torch.tensor([1.0]))
    with pytest.raises(ValueError, match=r"top_k_targets\(k=6\): expected a \(batch, classes\) "
                                         r"output with at least 6 classes"):
        multi_target(fn, params, x, top_k_targets(6))
    with pytest.raises(ValueError, match=r"top_k_targets\(k=0\): expected an int >= 1, got 0\. "
                                         r"Pass e\.g\. k=5\.$"):
        top_k_targets(0)
    image_fn, image_params = funcattr.functionalize(nn.Conv2d(3, 2, 1))
    with pytest.raises(ValueError, match=r"multi_target\(targets=...\): expected a \(batch, "
                                         r"classes\) output"):
        multi_target(image_fn, image_params, x, [0])


def test_error_input_and_outputs(setup):
    fn, params, x = setup
    with pytest.raises(ValueError, match=r"smooth_grad\(input=tensor of shape \(\)\): expected "
                                         r"a batch dimension first"):
        smooth_grad(lambda p, v: v, {}, torch.tensor(1.0))
    with pytest.raises(ValueError, match=r"occlusion\(input=.*expected finite values"):
        occlusion(fn, params, x * float("nan"))
    with pytest.raises(ValueError, match=r"integrated_gradients\(fn=...\): expected an output "
                                         r"with the batch dimension first \(6 rows"):
        integrated_gradients(lambda p, v: v.sum(), {}, torch.ones(3, 2), n_iter=2)
    with pytest.raises(ValueError, match=r"smooth_grad\(attr_output_fn=...\): expected an "
                                         r"output gradient of the output's shape \(3, 5\)"):
        smooth_grad(fn, params, x, torch.ones(5), n_iter=3, generator=0)
    with pytest.raises(TypeError, match=r"SmoothGrad\(generator=1.5\)"):
        SmoothGrad(cnn(), generator=1.5)


# --------------------------------------------------------------------------------------------
# Model scale (slow)
# --------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_multi_target_on_vgg_matches_zennit_per_target():
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.vgg11(num_classes=20).eval()
    x = torch.randn(2, 3, 64, 64)
    fn, params = funcattr.functionalize(model, fc.EpsilonPlusFlat())
    output, relevance = multi_target(fn, params, x, top_k_targets(3), times_output=True)
    for k, target in enumerate(output.topk(3, dim=1).indices.T):
        with za.Gradient(model, zc.EpsilonPlusFlat()) as attributor:
            _, expected = attributor(x, zennit_seed(target.tolist(), 20))
        assert_close(relevance[k], expected, rtol=1e-9)


@pytest.mark.slow
@pytest.mark.parametrize("marker", ["gradient-times-input", "sensitivity-analysis"])
def test_zennit_custom_attributor_examples_run_unchanged_on_vgg11(marker):
    definitions, run = doc_example(marker)
    namespace: dict = {}
    exec(definitions + run, namespace)
    assert namespace["output"].shape == (1, 1000)
    expected = (1, 3, 224, 224) if marker == "gradient-times-input" else (1, 224, 224)
    assert namespace["relevance"].shape == expected
