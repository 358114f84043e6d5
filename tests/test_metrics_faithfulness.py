"""Faithfulness metrics: hand-computed cases, perturbation laws, oracles (Captum), errors."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from funcattr.metrics import (
    explainer,
    infidelity,
    pixel_flipping,
    region_perturbation,
    sensitivity_n,
)


def linear_fn(params, x):
    """f(x) = W x + b on flattened inputs: a (batch, classes) output."""
    return x.flatten(1) @ params["weight"].T + params["bias"]


def linear_params(features, classes=2, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return {"weight": torch.randn(classes, features, generator=generator),
            "bias": torch.randn(classes, generator=generator)}


class Recorder:
    """A model fn that records every input batch it sees (returns two 'class scores')."""

    def __init__(self):
        self.inputs = []

    def __call__(self, params, x):
        self.inputs.append(x.clone())
        flat = x.flatten(1)
        return torch.stack([flat.sum(1), flat[:, 0]], dim=1)

    def stacked(self):
        return torch.cat(self.inputs)


# ------------------------------------------------------------------------------------------
# pixel flipping / region perturbation: hand-computed
# ------------------------------------------------------------------------------------------

F64 = torch.float64
HAND_X = torch.tensor([[1.0, 2.0, 3.0, 4.0]], dtype=F64)
HAND_PARAMS = {"weight": torch.tensor([[1.0, -1.0, 2.0, 0.5], [0.0, 0.0, 0.0, 0.0]], dtype=F64),
               "bias": torch.zeros(2, dtype=F64)}
HAND_A = torch.tensor([[0.1, 0.4, 0.3, 0.2]], dtype=F64)


def test_pixel_flipping_hand_computed_curves_and_areas():
    # f = x1 - x2 + 2 x3 + 0.5 x4 = 7; MoRF removes features 1, 2, 3, 0; LeRF 0, 3, 2, 1
    result = pixel_flipping(linear_fn, HAND_X, 0, HAND_A, params=HAND_PARAMS, fill=0.0)
    torch.testing.assert_close(result.curves["morf"], torch.tensor([[7.0, 9.0, 3.0, 1.0, 0.0]]))
    torch.testing.assert_close(result.curves["lerf"], torch.tensor([[7.0, 6.0, 4.0, -2.0, 0.0]]))
    torch.testing.assert_close(result.fractions, torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0]))
    torch.testing.assert_close(result.auc("morf"), torch.tensor([4.125]))
    torch.testing.assert_close(result.auc("lerf"), torch.tensor([2.875]))
    torch.testing.assert_close(result.difference, torch.tensor([-1.25]))
    torch.testing.assert_close(result.aopc("morf"), torch.tensor([3.0]))  # mean(0,-2,4,6,7)
    assert result.mean()["difference"] == pytest.approx(-1.25)


def test_pixel_flipping_steps_and_fill():
    result = pixel_flipping(linear_fn, HAND_X, 0, HAND_A, params=HAND_PARAMS,
                            regions_per_step=3, orders=("morf",))
    assert result.counts.tolist() == [0, 3, 4]
    torch.testing.assert_close(result.curves["morf"], torch.tensor([[7.0, 1.0, 0.0]]))
    result = pixel_flipping(linear_fn, HAND_X, 0, HAND_A, params=HAND_PARAMS, n_steps=1,
                            orders=("morf",), fill=1.0)
    # removing feature 1 (x=2 -> 1) raises f by 1
    torch.testing.assert_close(result.curves["morf"], torch.tensor([[7.0, 8.0]]))
    assert tuple(result.curves) == ("morf",)


def test_pixel_flipping_softmax_and_per_sample_targets():
    x = torch.cat([HAND_X, HAND_X])
    result = pixel_flipping(linear_fn, x, torch.tensor([0, 1]), HAND_A.expand(2, -1),
                            params=HAND_PARAMS, softmax=True, orders=("morf",))
    logits = torch.tensor([7.0, 9.0, 3.0, 1.0, 0.0])
    torch.testing.assert_close(result.curves["morf"][0], torch.sigmoid(logits))
    torch.testing.assert_close(result.curves["morf"][1], torch.sigmoid(-logits))


@pytest.mark.parametrize("patch_size,regions_per_step", [(1, 5), (2, 3), (4, 1)])
def test_perturbation_touches_every_channel_and_exact_count(patch_size, regions_per_step):
    x = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    attribution = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    recorder = Recorder()
    result = pixel_flipping(recorder, x, 0, attribution, params={}, patch_size=patch_size,
                            regions_per_step=regions_per_step, fill=-1.0, orders=("morf",),
                            chunk_size=7)
    seen = recorder.stacked().view(len(result.counts), 2, 3, 8, 8)
    changed = seen != x[None]  # fill -1 differs from every value in [0, 1)
    per_location = changed.any(dim=2)
    assert torch.equal(changed.all(dim=2), per_location)  # all channels or none
    # exactly counts[k] whole patches per step
    located = per_location.sum(dim=(2, 3))
    expected = result.counts[:, None] * patch_size**2
    assert torch.equal(located, expected.expand_as(located))
    blocks = per_location.view(-1, 2, 8 // patch_size, patch_size, 8 // patch_size, patch_size)
    block_any = blocks.any(dim=(3, 5))
    assert torch.equal(blocks.all(dim=(3, 5)), block_any)  # whole patches only
    # MoRF removes the patches with the largest summed relevance first
    pooled = attribution.sum(1).view(2, 8 // patch_size, patch_size, 8 // patch_size,
                                      patch_size).sum(dim=(2, 4)).flatten(1)
    first = block_any[1].flatten(1)  # step 1
    top = pooled.topk(int(result.counts[1])).indices
    assert all(set(first[b].nonzero().flatten().tolist()) == set(top[b].tolist())
               for b in range(2))


def test_tabular_inputs_features_are_single_elements():
    x = torch.rand(3, 6)
    recorder = Recorder()
    attribution = torch.randn(3, 6)
    result = pixel_flipping(recorder, x, 0, attribution, params={}, fill=-1.0,
                            regions_per_step=2, orders=("lerf",))
    seen = recorder.stacked().view(len(result.counts), 3, 6)
    assert torch.equal((seen != x[None]).sum(-1), result.counts[:, None].expand(-1, 3))


def test_chunking_and_seed_repeatability():
    model = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(), nn.Flatten(),
                          nn.Linear(3 * 16, 4)).eval()
    x = torch.rand(3, 2, 4, 4)
    attribution = torch.randn(3, 2, 4, 4)
    options = {"orders": ("morf", "lerf", "random"), "fill": "uniform", "generator": 7}
    whole = pixel_flipping(model, x, [0, 1, 2], attribution, chunk_size=None, **options)
    chunked = pixel_flipping(model, x, [0, 1, 2], attribution, chunk_size=5, **options)
    for order in whole.curves:
        torch.testing.assert_close(whole.curves[order], chunked.curves[order], rtol=1e-12,
                                   atol=1e-12)
    other = pixel_flipping(model, x, [0, 1, 2], attribution, **{**options, "generator": 8})
    assert not torch.equal(other.curves["random"], whole.curves["random"])
    torch.testing.assert_close(whole.curves["morf"][:, 0], model(x)[torch.arange(3), [0, 1, 2]])


def test_shared_steps_are_computed_once():
    x = torch.rand(2, 3, 4, 4)
    attribution = torch.randn(2, 3, 4, 4)
    recorder = Recorder()
    result = pixel_flipping(recorder, x, 0, attribution, params={}, patch_size=2,
                            orders=("morf", "lerf", "random"))
    # unperturbed once, 3 inner steps per order, everything removed once: (1 + 9 + 1) x 2
    assert sum(len(batch) for batch in recorder.inputs) == 22
    for order in ("lerf", "random"):
        torch.testing.assert_close(result.curves[order][:, [0, -1]],
                                   result.curves["morf"][:, [0, -1]])
    assert not torch.equal(result.curves["lerf"], result.curves["morf"])


def test_region_perturbation_is_pixel_flipping_with_patches():
    x = torch.rand(2, 3, 8, 8)
    attribution = torch.randn(2, 3, 8, 8)
    params = linear_params(3 * 64)
    a = region_perturbation(linear_fn, x, 1, attribution, params=params, patch_size=4)
    b = pixel_flipping(linear_fn, x, 1, attribution, params=params, patch_size=4)
    assert a.regions == 4 and a.patch_size == 4
    torch.testing.assert_close(a.curves["morf"], b.curves["morf"])


def test_fill_mean_and_tensor():
    x = torch.rand(2, 3, 4, 4)
    attribution = torch.randn(2, 3, 4, 4)
    recorder = Recorder()
    pixel_flipping(recorder, x, 0, attribution, params={}, fill="mean", orders=("morf",))
    last = recorder.stacked()[-2:]  # everything removed
    torch.testing.assert_close(last, x.mean(dim=(2, 3), keepdim=True).expand_as(x))
    recorder = Recorder()
    blurred = torch.full_like(x, 0.25)
    pixel_flipping(recorder, x, 0, attribution, params={}, fill=blurred, orders=("morf",))
    torch.testing.assert_close(recorder.stacked()[-2:], blurred)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), features=st.integers(2, 12),
       regions_per_step=st.integers(1, 4))
def test_law_perfect_explanation_beats_random_on_linear_model(seed, features, regions_per_step):
    torch.set_default_dtype(torch.float64)
    generator = torch.Generator().manual_seed(seed)
    params = linear_params(features, classes=3, seed=seed)
    x = torch.randn(4, features, generator=generator)
    target = torch.randint(0, 3, (4,), generator=generator)
    perfect = params["weight"][target] * x  # the model's own input weights times the input
    rand = torch.randn(4, features, generator=generator)
    options = {"params": params, "regions_per_step": regions_per_step,
               "orders": ("morf", "lerf")}
    good = pixel_flipping(linear_fn, x, target, perfect, **options)
    bad = pixel_flipping(linear_fn, x, target, rand, **options)
    # MoRF of the exact contributions is the lowest curve pointwise, LeRF the highest
    assert bool((good.curves["morf"] <= bad.curves["morf"] + 1e-9).all())
    assert bool((good.curves["lerf"] >= bad.curves["lerf"] - 1e-9).all())
    assert bool((good.difference >= bad.difference - 1e-9).all())
    assert bool((good.auc("morf") <= bad.auc("morf") + 1e-9).all())


# ------------------------------------------------------------------------------------------
# Sensitivity-N
# ------------------------------------------------------------------------------------------

def test_sensitivity_n_exact_subset_sizes_every_channel():
    x = torch.rand(2, 3, 4, 4)
    attribution = torch.randn(2, 3, 4, 4)
    recorder = Recorder()
    ns, _ = sensitivity_n(recorder, x, 0, attribution, params={}, ns=[1, 3, 16],
                          n_subsets=5, fill=-1.0, chunk_size=4)
    assert ns.tolist() == [1, 3, 16]
    seen = recorder.stacked()[2:].view(3, 2, 5, 3, 4, 4)  # after the reference batch
    changed = seen != x[None, :, None]
    assert torch.equal(changed.all(dim=3), changed.any(dim=3))
    counts = changed.any(dim=3).sum(dim=(-1, -2))
    assert torch.equal(counts, torch.tensor([1, 3, 16])[:, None, None].expand(3, 2, 5))


def test_sensitivity_n_linear_model_exact_attribution_is_one():
    params = linear_params(2 * 16, classes=2)
    x = torch.rand(3, 2, 4, 4)
    fill = 0.3
    exact = params["weight"][1].view(2, 4, 4) * (x - fill)
    _, correlation = sensitivity_n(linear_fn, x, 1, exact, params=params, fill=fill,
                                    patch_size=2, ns=[1, 2], n_subsets=12, generator=3)
    torch.testing.assert_close(correlation, torch.ones(3, 2))
    noisy = exact + torch.randn(exact.shape, generator=torch.Generator().manual_seed(0))
    _, worse = sensitivity_n(linear_fn, x, 1, noisy, params=params, fill=fill, patch_size=2,
                             ns=[1, 2], n_subsets=12, generator=3)
    assert bool((worse < 1 - 1e-6).all())
    _, default = sensitivity_n(linear_fn, x, 1, exact, params=params, fill=fill, n_subsets=4)
    assert default.shape[0] == 3 and 1 <= default.shape[1] <= 10


# ------------------------------------------------------------------------------------------
# Infidelity
# ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("perturbation", ["gaussian", "square"])
@pytest.mark.parametrize("normalize", [True, False])
def test_infidelity_zero_for_exact_linear_attribution(perturbation, normalize):
    params = linear_params(3 * 16, classes=2)
    x = torch.rand(2, 3, 4, 4)
    gradient = params["weight"][0].view(1, 3, 4, 4).expand_as(x)
    value = infidelity(linear_fn, x, 0, gradient, params=params, perturbation=perturbation,
                       normalize=normalize, n_samples=16, patch_size=2)
    torch.testing.assert_close(value, torch.zeros(2), atol=1e-20, rtol=0)
    worse = infidelity(linear_fn, x, 0, gradient * 0.5, params=params, normalize=normalize,
                       perturbation=perturbation, n_samples=16, patch_size=2)
    # normalize=True finds the best scale, so a rescaled exact attribution is still exact
    assert bool((worse < 1e-20).all()) == normalize


def test_infidelity_matches_captum():
    from captum.metrics import infidelity as captum_infidelity

    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Tanh(), nn.Flatten(),
                          nn.Linear(4 * 16, 3)).eval()
    x = torch.rand(2, 3, 4, 4)
    attribution = torch.randn(2, 3, 4, 4)
    n = 6
    draws = torch.randn(n, 2, 3, 4, 4, generator=torch.Generator().manual_seed(5)) * 0.1
    feed = iter(draws)

    def perturbation(inputs, generator):
        return next(feed)

    ours = infidelity(model, x, [0, 2], attribution, perturbation=perturbation, n_samples=n)
    interleaved = draws.transpose(0, 1).reshape(2 * n, 3, 4, 4)  # captum: repeat_interleave

    def captum_perturb(inputs):
        return interleaved, inputs - interleaved

    theirs = captum_infidelity(model, captum_perturb, x, attribution, target=torch.tensor(
        [0, 2]), n_perturb_samples=n, max_examples_per_batch=2 * n, normalize=True)
    torch.testing.assert_close(ours, theirs)


# ------------------------------------------------------------------------------------------
# errors
# ------------------------------------------------------------------------------------------

def test_errors_patch_size_and_options():
    x = torch.rand(1, 3, 6, 6)
    a = torch.rand(1, 3, 6, 6)
    params = linear_params(108)
    with pytest.raises(ValueError, match=r"pixel_flipping\(patch_size=4\): expected a patch "
                                         r"size that divides.*Use one of \[1, 2, 3, 6\]"):
        pixel_flipping(linear_fn, x, 0, a, params=params, patch_size=4)
    with pytest.raises(ValueError, match=r"patch_size=0\): expected an int >= 1, got 0\. Pass "
                                         r"e\.g\. patch_size=8\.$"):
        pixel_flipping(linear_fn, x, 0, a, params=params, patch_size=0)
    with pytest.raises(ValueError, match=r"sensitivity_n\(patch_size=5\)"):
        sensitivity_n(linear_fn, x, 0, a, params=params, patch_size=5)
    with pytest.raises(ValueError, match=r"orders=\.\.\.\): expected orders from.*Pass e\.g\. "
                                         r"orders=\('morf', 'lerf'\)\.$"):
        pixel_flipping(linear_fn, x, 0, a, params=params, orders=("best",))
    with pytest.raises(ValueError, match=r"expected distinct orders.*Pass e\.g\. orders="):
        pixel_flipping(linear_fn, x, 0, a, params=params, orders=("morf", "morf"))
    with pytest.raises(ValueError, match=r"regions_per_step=0\): expected an int >= 1, got 0\. "
                                         r"Pass e\.g\. regions_per_step=8\.$"):
        pixel_flipping(linear_fn, x, 0, a, params=params, regions_per_step=0)
    # the same message (and exception type) as the attributors' chunk_size
    with pytest.raises(ValueError, match=r"pixel_flipping\(chunk_size=0\): expected an int >= 1, "
                                         r"got 0\. Pass e\.g\. chunk_size=32\.$"):
        pixel_flipping(linear_fn, x, 0, a, params=params, chunk_size=0)
    with pytest.raises(ValueError, match=r"fill='black'\): expected a number, 'mean'.*Pass e\.g\. "
                                         r"fill='mean'\.$"):
        pixel_flipping(linear_fn, x, 0, a, params=params, fill="black")
    with pytest.raises(TypeError, match=r"fill=True\): expected a number"):
        pixel_flipping(linear_fn, x, 0, a, params=params, fill=True)
    with pytest.raises(TypeError, match=r"fill=list\): expected a number.*got list\. Pass e\.g\. "
                                        r"fill=0\.0 or fill='mean'\.$"):
        pixel_flipping(linear_fn, x, 0, a, params=params, fill=[0.0])
    with pytest.raises(ValueError, match=r"fill=tensor of shape \(2, 3\)\): expected a tensor "
                                         r"broadcastable.*Pass e\.g\. a blurred copy"):
        pixel_flipping(linear_fn, x, 0, a, params=params, fill=torch.zeros(2, 3))
    with pytest.raises(ValueError, match=r"auc\(order='random'\): expected one of.*Pass "
                                         r"orders=\(\.\.\., 'random'\) to the metric\.$"):
        pixel_flipping(linear_fn, x, 0, a, params=params).auc("random")


def test_errors_inputs_targets_models():
    x = torch.rand(2, 3, 4, 4)
    a = torch.rand(2, 3, 4, 4)
    params = linear_params(48)
    with pytest.raises(ValueError, match=r"attribution=tensor of shape \(2, 4, 4, 4\)\): "
                                         r"expected the input's shape"):
        pixel_flipping(linear_fn, x, 0, torch.rand(2, 4, 4, 4), params=params)
    with pytest.raises(TypeError, match=r"attribution=ndarray\): expected a tensor, got ndarray\. "
                                        r"Pass torch\.as_tensor\(attribution\)\.$"):
        pixel_flipping(linear_fn, x, 0, a.numpy(), params=params)
    with pytest.raises(ValueError, match=r"target=tensor of shape \(3,\)\): expected one class.*"
                                         r"Pass one class per sample of the input\.$"):
        pixel_flipping(linear_fn, x, [0, 1, 0], a, params=params)
    with pytest.raises(TypeError, match=r"target=tensor of dtype torch.float64\).*Pass "
                                        r"target\.long\(\)\.$"):
        pixel_flipping(linear_fn, x, torch.tensor([0.0, 1.0]), a, params=params)
    with pytest.raises(TypeError, match=r"target=None\): expected an int"):
        pixel_flipping(linear_fn, x, None, a, params=params)
    with pytest.raises(TypeError, match=r"params=None\): a pure model fn\(params, x\) needs"):
        pixel_flipping(linear_fn, x, 0, a)
    with pytest.raises(TypeError, match=r"model=int\): expected a torch.nn.Module.*Pass the "
                                        r"model\.$"):
        pixel_flipping(3, x, 0, a)
    with pytest.raises(TypeError, match=r"params=list\): expected a dict.*Pass the params of "
                                        r"funcattr\.functionalize\.$"):
        pixel_flipping(linear_fn, x, 0, a, params=[1])
    with pytest.raises(ValueError, match=r"input=tensor of shape \(4,\)\): expected a batch.*"
                                         r"Add the batch dimension with input\[None\]\.$"):
        pixel_flipping(linear_fn, torch.rand(4), 0, a, params=params)
    with pytest.raises(ValueError, match=r"expected finite values"):
        pixel_flipping(linear_fn, x * torch.nan, 0, a, params=params)
    with pytest.raises(TypeError, match=r"input=tensor of dtype torch.int64\).*Pass "
                                        r"input\.float\(\)\.$"):
        pixel_flipping(linear_fn, torch.ones(2, 3, 4, 4, dtype=torch.long), 0, a, params=params)
    with pytest.raises(TypeError, match=r"input=list\): expected a torch.Tensor"):
        pixel_flipping(linear_fn, [1.0], 0, a, params=params)
    with pytest.raises(ValueError, match=r"expected a model output of shape \(batch, classes\)"):
        pixel_flipping(lambda p, v: v.sum(), x, 0, a, params={})
    module = nn.Linear(48, 2)
    with pytest.raises(ValueError, match=r"params=\.\.\.\): expected the keys of model"):
        pixel_flipping(nn.Sequential(nn.Flatten(), module), x, 0, a, params={"x": x})
    # the same message as the attributors' generator
    with pytest.raises(TypeError, match=r"generator='seed'\): expected None \(torch's global "
                                        r"generator\), an int seed or a torch\.Generator.*Pass "
                                        r"e\.g\. generator=0\.$"):
        pixel_flipping(linear_fn, x, 0, a, params=params, generator="seed")


def test_errors_sensitivity_n_and_infidelity():
    x = torch.rand(2, 3, 4, 4)
    a = torch.rand(2, 3, 4, 4)
    params = linear_params(48)
    with pytest.raises(ValueError, match=r"sensitivity_n\(ns=\[0, 3\]\): expected cardinalities "
                                         r"in \[1, 16\].*or ns=None"):
        sensitivity_n(linear_fn, x, 0, a, params=params, ns=[0, 3])
    with pytest.raises(ValueError, match=r"n_subsets=1\): expected an int >= 2, got 1\. Pass "
                                         r"e\.g\. n_subsets=100\.$"):
        sensitivity_n(linear_fn, x, 0, a, params=params, n_subsets=1)
    with pytest.raises(ValueError, match=r"infidelity\(attribution=\(2, 4, 4\)\): expected an "
                                         r"attribution of the input's shape.*Pass the "
                                         r"attribution before pooling over channels\.$"):
        infidelity(linear_fn, x, 0, a.sum(1), params=params)
    with pytest.raises(ValueError, match=r"perturbation='salt'\): expected 'gaussian'.*Pass "
                                         r"e\.g\. perturbation='gaussian'\.$"):
        infidelity(linear_fn, x, 0, a, params=params, perturbation="salt")
    with pytest.raises(ValueError, match=r"noise_level=0\): expected a positive std, got 0\. "
                                         r"Pass e\.g\. noise_level=0\.1\.$"):
        infidelity(linear_fn, x, 0, a, params=params, noise_level=0)
    with pytest.raises(ValueError, match=r"patch_size=9\): expected an int in \[1, 4\].*Pass a "
                                         r"smaller patch_size\.$"):
        infidelity(linear_fn, x, 0, a, params=params, perturbation="square", patch_size=9)
    with pytest.raises(ValueError, match=r"perturbation=\.\.\.\): expected perturbation\(input, "
                                         r"generator\) to return.*Return one perturbation"):
        infidelity(linear_fn, x, 0, a, params=params, perturbation=lambda v, g: v[0])


def test_model_is_not_changed_and_explainer_is_usable():
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 3)).eval()
    before = {k: (v.clone(), v.data_ptr()) for k, v in model.state_dict().items()}
    x = torch.rand(2, 3, 2, 2)
    explain = explainer(model, "epsilon_plus", times_output=True)
    attribution = explain(x, torch.tensor([0, 2]))
    pixel_flipping(model, x, [0, 2], attribution, fill="uniform")
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key][0]) and value.data_ptr() == before[key][1]
    assert not any(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks
                   for m in model.modules())


def test_bn_merged_model_gives_the_same_curves():
    """docs/metrics.md: a forward-only metric can evaluate the model with its batch norms
    merged into the convolutions (faster); the curves equal the module's up to rounding."""
    from funcattr import functionalize
    from funcattr.canonizers import SequentialMergeBatchNorm
    from funcattr.demo import load_demo_model, load_demo_samples

    model = load_demo_model()
    images, labels, _, _ = load_demo_samples()
    x, target = images[:3], labels[:3]
    attribution = torch.rand(3, 1, 64, 64, generator=torch.Generator().manual_seed(0))
    fn, params = functionalize(model, canonizers=SequentialMergeBatchNorm())
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fn.view.modules())  # merged
    merged = pixel_flipping(fn, x, target, attribution, params=params, patch_size=8)
    module = pixel_flipping(model, x, target, attribution, patch_size=8)
    for order in ("morf", "lerf"):
        torch.testing.assert_close(merged.curves[order], module.curves[order],
                                   rtol=1e-5, atol=1e-4)
