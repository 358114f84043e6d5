"""Robustness (max/avg-sensitivity) and randomisation (MPRT, random logit) metrics."""

import pytest
import torch
from helpers import ViewsItsInput
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from funcattr.metrics import (
    avg_sensitivity,
    explainer,
    max_sensitivity,
    model_parameter_randomisation,
    parameter_layers,
    random_logit,
    randomise_params,
    sensitivities,
)
from funcattr.metrics.similarity import pearson, spearman, ssim


def small_cnn(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1),
                         nn.ReLU(), nn.Flatten(), nn.Linear(4 * 64, 5)).eval()


# ------------------------------------------------------------------------------------------
# robustness
# ------------------------------------------------------------------------------------------

def test_sensitivity_hand_computed():
    def explain(x, target):  # Phi(x) = 2 x  ->  ||Phi(x + d) - Phi(x)|| = 2 ||d||
        return 2 * x

    x = torch.ones(2, 4)
    deltas = iter([torch.full((2, 4), 0.1), torch.tensor([[0.3, 0.0, 0.0, 0.0]] * 2)])
    values = sensitivities(explain, x, 0, n_samples=2,
                           perturbation=lambda v, g: next(deltas))
    torch.testing.assert_close(values, torch.tensor([[0.4, 0.6], [0.4, 0.6]]))
    deltas = iter([torch.full((2, 4), 0.1), torch.tensor([[0.3, 0.0, 0.0, 0.0]] * 2)])
    relative = sensitivities(explain, x, 0, n_samples=2, relative=True,
                             perturbation=lambda v, g: next(deltas))
    torch.testing.assert_close(relative, torch.tensor([[0.1, 0.15], [0.1, 0.15]]))


def test_uniform_ball_and_max_avg(rng):
    recorded = []

    def explain(x, target):
        recorded.append(x)
        return x.clone()

    x = torch.zeros(3, 2, 5)
    maxed = max_sensitivity(explain, x, 0, radius=0.25, n_samples=40, generator=rng)
    noisy = torch.cat(recorded[1:])
    assert noisy.abs().max() <= 0.25 and noisy.abs().max() > 0.2
    assert bool((maxed <= 0.25 * 10**0.5 + 1e-12).all())  # ||d||_2 <= r sqrt(n)
    mean = avg_sensitivity(explain, x, 0, radius=0.25, n_samples=40,
                           generator=torch.Generator().manual_seed(rng.initial_seed()))
    assert bool((mean <= maxed).all()) and bool((mean > 0).all())


def test_sensitivity_chunked_equals_whole_and_batched_explain():
    model = small_cnn()
    explain = explainer(model, "epsilon_plus")
    x = torch.rand(3, 3, 8, 8)
    calls = []

    def counted(inputs, target):
        calls.append(inputs.shape[0])
        return explain(inputs, target)

    whole = max_sensitivity(counted, x, [0, 1, 2], n_samples=6, generator=1, chunk_size=None)
    assert calls == [3, 18]  # the original batch, then all noisy copies in one call
    calls.clear()
    chunked = max_sensitivity(counted, x, [0, 1, 2], n_samples=6, generator=1, chunk_size=4)
    assert calls == [3, 4, 4, 4, 4, 2]
    torch.testing.assert_close(whole, chunked)


@pytest.mark.parametrize("make", [small_cnn, lambda: ViewsItsInput((3, 8, 8))],
                         ids=["cnn", "views-input"])
def test_explainer_result_is_the_attributors_and_contiguous(make):
    """The explainer runs float32 images channels-last (faster CPU convolutions): the values
    are the attributor's on the input as given, the result is contiguous, and a model that
    ``.view``s its input still works."""
    from funcattr import functionalize, gradient
    from funcattr.attribution import one_hot

    torch.manual_seed(0)
    model = make().eval()
    x = torch.rand(3, 3, 8, 8)
    target = torch.tensor([0, 2, 4])
    explained = explainer(model, "epsilon_plus", times_output=True)(x, target)
    fn, params = functionalize(model, "epsilon_plus")
    _, expected = gradient(fn, params, x, one_hot(target, times_output=True))
    assert explained.is_contiguous() and not explained.requires_grad
    torch.testing.assert_close(explained, expected, rtol=1e-5, atol=1e-7)


def test_sensitivity_matches_captum():
    from captum.metrics import sensitivity_max

    model = small_cnn()
    explain = explainer(model)
    x = torch.rand(2, 3, 8, 8)
    target = torch.tensor([1, 3])
    n = 5
    deltas = torch.rand(n, 2, 3, 8, 8, generator=torch.Generator().manual_seed(2)) * 0.1
    feed = iter(deltas)
    ours = max_sensitivity(explain, x, target, n_samples=n, relative=True,
                           perturbation=lambda v, g: next(feed))
    interleaved = deltas.transpose(0, 1).reshape(2 * n, 3, 8, 8)

    def perturb(inputs, radius):
        return inputs + interleaved

    def explanation(inputs, target):  # captum passes a tuple of inputs
        inputs = inputs[0] if isinstance(inputs, tuple) else inputs
        return (explain(inputs, target),)

    theirs = sensitivity_max(explanation, x, perturb_func=perturb, n_perturb_samples=n,
                             max_examples_per_batch=2 * n, target=target)
    torch.testing.assert_close(ours, theirs.to(ours.dtype))


def test_robustness_errors():
    def explain(x, target):
        return x

    x = torch.rand(2, 4)
    with pytest.raises(ValueError, match=r"max_sensitivity\(radius=0\): expected a positive "
                                         r"number, got 0\. Pass e\.g\. radius=0\.1\.$"):
        max_sensitivity(explain, x, 0, radius=0)
    with pytest.raises(ValueError, match=r"avg_sensitivity\(n_samples=0\): expected an int >= "
                                         r"1, got 0\. Pass e\.g\. n_samples=20\.$"):
        avg_sensitivity(explain, x, 0, n_samples=0)
    with pytest.raises(ValueError, match=r"max_sensitivity\(perturbation=\.\.\.\): expected "
                                         r"perturbation\(input, generator\) to return a "
                                         r"tensor.*Return one perturbation per element"):
        max_sensitivity(explain, x, 0, perturbation=lambda v, g: v[:1])
    with pytest.raises(ValueError, match=r"max_sensitivity\(explain=\.\.\.\): expected "
                                         r"explain\(input, target\) to return an attribution"
                                         r".*Return one attribution per sample"):
        max_sensitivity(lambda v, t: v[0], x, 0)
    with pytest.raises(ValueError, match=r"max_sensitivity\(attribution=\.\.\.\): expected one "
                                         r"attribution per sample \(2\), got \(1, 4\)\. Pass "
                                         r"explain\(input, target\), or None"):
        max_sensitivity(explain, x, 0, attribution=x[:1])


# ------------------------------------------------------------------------------------------
# model parameter randomisation
# ------------------------------------------------------------------------------------------

def test_parameter_layers_and_randomise_params_do_not_mutate():
    model = nn.Sequential(nn.Conv2d(3, 2, 3), nn.BatchNorm2d(2), nn.ReLU(), nn.Flatten(),
                          nn.Linear(8, 2)).eval()  # batch statistics in training mode: warned
    explain = explainer(model)
    params = explain.params
    assert parameter_layers(params) == {"0": ["0.weight", "0.bias"], "1": ["1.weight", "1.bias"],
                                        "4": ["4.weight", "4.bias"]}
    before = {k: (v.clone(), v.data_ptr()) for k, v in params.items()}
    new = randomise_params(params, ["0.weight", "1.weight"], torch.Generator().manual_seed(0))
    for key, (value, pointer) in before.items():
        assert torch.equal(params[key], value) and params[key].data_ptr() == pointer
    assert not torch.equal(new["0.weight"], params["0.weight"])
    assert new["0.bias"] is params["0.bias"]
    # truncated at two standard deviations of the original scale
    scale = params["0.weight"].square().mean().sqrt()
    assert new["0.weight"].abs().max() <= 2 * scale + 1e-12
    assert not torch.equal(new["1.weight"], torch.ones(2))  # constant tensors are redrawn


def test_mprt_cascading_and_model_unchanged():
    model = small_cnn()
    state = {k: (v.clone(), v.data_ptr()) for k, v in model.state_dict().items()}
    explain = explainer(model, "epsilon_plus", times_output=True)
    x = torch.rand(3, 3, 8, 8)
    result = model_parameter_randomisation(explain, x, [0, 1, 2], generator=0)
    assert result.layers == ("5", "2", "0")  # output first
    assert result.similarity.shape == (3, 3)
    assert bool((result.similarity < 0.99).all())
    assert set(result.mean()) == {"5", "2", "0"}
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key][0]) and value.data_ptr() == state[key][1]
    again = model_parameter_randomisation(explain, x, [0, 1, 2], generator=0)
    torch.testing.assert_close(again.similarity, result.similarity)
    independent = model_parameter_randomisation(explain, x, [0, 1, 2], generator=0,
                                                cascading=False, layers=["0"],
                                                similarity_measure="ssim")
    assert independent.similarity.shape == (1, 3)


def test_mprt_sees_the_randomised_params():
    """Cascading randomisation of every layer equals explaining with the fully random params."""
    model = small_cnn()
    explain = explainer(model)
    x = torch.rand(2, 3, 8, 8)
    seen = []

    def spy(inputs, target, params=None):
        seen.append(params)
        return explain(inputs, target, params=params)

    model_parameter_randomisation(spy, x, [0, 1], params=explain.params, generator=3)
    first, *stages = seen
    assert first is explain.params
    changed = [{k for k in stage if stage[k] is not explain.params[k]} for stage in stages]
    assert changed == [{"5.weight", "5.bias"}, {"5.weight", "5.bias", "2.weight", "2.bias"},
                       {"5.weight", "5.bias", "2.weight", "2.bias", "0.weight", "0.bias"}]


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 2**31 - 1))
def test_law_randomising_params_changes_the_explanation(seed):
    torch.set_default_dtype(torch.float64)
    generator = torch.Generator().manual_seed(seed)
    # 16 unsaturated hidden units (weights scaled by fan-in): with one live tanh unit the
    # gradient's direction would not depend on the last layer, and the law would not hold
    model = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 3)).eval()
    with torch.no_grad():
        for p in model.parameters():
            fan_in = p.shape[-1] if p.ndim > 1 else 1
            p.copy_(torch.randn(p.shape, generator=generator) / fan_in**0.5)
    explain = explainer(model)
    x = torch.randn(4, 6, generator=generator)
    result = model_parameter_randomisation(explain, x, [0, 1, 2, 0], generator=seed,
                                           similarity_measure="cosine")
    assert bool((result.similarity < 1 - 1e-6).all())
    unchanged = model_parameter_randomisation(explain, x, [0, 1, 2, 0], generator=seed,
                                              similarity_measure="cosine",
                                              layers=["0"], params={
                                                  **explain.params,
                                                  "0.weight": explain.params["0.weight"]})
    assert unchanged.similarity.shape == (1, 4)


def test_mprt_errors():
    model = small_cnn()
    x = torch.rand(1, 3, 8, 8)

    def plain(inputs, target):
        return inputs

    with pytest.raises(TypeError, match=r"expected explain\(input, target, params=\.\.\.\).*"
                                        r"Build it with funcattr\.metrics\.explainer"):
        model_parameter_randomisation(plain, x, 0)
    with pytest.raises(TypeError, match=r"params=None\): expected the parameter dict.*Pass "
                                        r"params=\.\.\.$"):
        model_parameter_randomisation(lambda v, t, params=None: v, x, 0)
    with pytest.raises(ValueError, match=r"layers=\['fc'\]\): expected names of modules.*Pass "
                                         r"names from that list, or layers=None"):
        model_parameter_randomisation(explainer(model), x, 0, layers=["fc"])
    # the argument is similarity_measure (the message used to call it similarity)
    with pytest.raises(ValueError, match=r"similarity_measure=.hog.\): expected one of.*Pass "
                                         r"e\.g\. similarity_measure='spearman'\.$"):
        model_parameter_randomisation(explainer(model), x, 0, similarity_measure="hog")
    with pytest.raises(ValueError, match=r"similarity_measure='ssim'\): SSIM needs 2-D maps.*"
                                         r"Use similarity_measure='spearman'\.$"):
        random_logit(explainer(nn.Linear(4, 3)), torch.rand(2, 4), 0, num_classes=3)


# ------------------------------------------------------------------------------------------
# random logit and similarity functions
# ------------------------------------------------------------------------------------------

def test_random_logit_hand_computed_linear_model():
    # the gradient of a linear model is its weight row: sim(w_c, w_c') is known
    model = nn.Linear(4, 3, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, 0.0, 0.0, 0.0], [1.0, 1.0, 0.0, 0.0],
                                         [0.0, 0.0, 0.0, 1.0]]))
    explain = explainer(model)
    x = torch.rand(2, 4)
    value = random_logit(explain, x, [0, 0], num_classes=3, off_target=[1, 2],
                         similarity_measure="cosine")
    torch.testing.assert_close(value, torch.tensor([2**-0.5, 0.0]))
    drawn = random_logit(explain, torch.rand(200, 4), 1, num_classes=3, generator=0,
                         similarity_measure="cosine")
    assert set(drawn.round(decimals=6).tolist()) == {round(2**-0.5, 6), 0.0}  # never itself


def test_random_logit_errors():
    explain = explainer(nn.Linear(4, 3))
    x = torch.rand(2, 4)
    with pytest.raises(ValueError, match=r"random_logit\(num_classes=1\): expected an int >= 2, "
                                         r"got 1\. Pass e\.g\. num_classes=10\.$"):
        random_logit(explain, x, 0, num_classes=1)
    with pytest.raises(ValueError, match=r"random_logit\(target=\.\.\.\): expected classes in "
                                         r"\[0, 2\].*Pass the model's number of classes"):
        random_logit(explain, x, 3, num_classes=3)
    with pytest.raises(ValueError, match=r"off_target=\.\.\.\): expected classes other than.*"
                                         r"Pass off_target=None to draw them\.$"):
        random_logit(explain, x, 0, num_classes=3, off_target=[0, 1])


def test_similarities_match_scipy_and_skimage(rng):
    from scipy.stats import pearsonr, spearmanr
    from skimage.metrics import structural_similarity

    a = torch.randn(3, 10, 12, generator=rng)
    b = a + torch.randn(3, 10, 12, generator=rng)
    b[0, :2] = 0.0  # ties for the ranks
    a[0, :3] = 1.0
    for i in range(3):
        flat_a, flat_b = a[i].flatten().numpy(), b[i].flatten().numpy()
        assert float(spearman(a.flatten(1), b.flatten(1))[i]) == pytest.approx(
            spearmanr(flat_a, flat_b).statistic, abs=1e-12)
        assert float(pearson(a.flatten(1), b.flatten(1))[i]) == pytest.approx(
            pearsonr(flat_a, flat_b).statistic, abs=1e-12)
        data_range = float(max(a[i].max(), b[i].max()) - min(a[i].min(), b[i].min()))
        expected = structural_similarity(a[i].numpy(), b[i].numpy(), data_range=data_range)
        assert float(ssim(a, b)[i]) == pytest.approx(expected, abs=1e-12)
    assert float(pearson(torch.ones(1, 4), torch.rand(1, 4))[0]) == 0.0
