"""Agreement with Quantus 0.6.0 where it implements the same definition (demo model, float32).

Agree: pixel flipping (one-channel inputs), region perturbation, max-sensitivity, relevance
mass accuracy, relevance rank accuracy, pointing game, random logit. Where Quantus differs by
definition (pixel flipping on multi-channel inputs, Sensitivity-N, infidelity, parameter
randomisation draws, random-logit SSIM) docs/metrics.md says why; the first is pinned below.
"""

import numpy as np
import pytest
import quantus  # test-only oracle: quantus==0.6.0 (the test extra)
import torch
from torch import nn

from funcattr.demo import load_demo_model, load_demo_samples
from funcattr.metrics import (
    explainer,
    max_sensitivity,
    pixel_flipping,
    pointing_game,
    random_logit,
    region_perturbation,
    relevance_mass_accuracy,
    relevance_rank_accuracy,
)

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning",
                                        "ignore::FutureWarning")

F32 = torch.float32


@pytest.fixture(autouse=True)
def _float32_default():
    """Quantus builds its inputs with torch.Tensor(...) in the default dtype: float32 here."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(F32)
    yield
    torch.set_default_dtype(previous)


@pytest.fixture(scope="module")
def demo():
    model = load_demo_model()
    images, labels, masks, _ = load_demo_samples()
    keep = torch.tensor([0, 9])
    return model, images[keep], labels[keep], masks[keep]


def attribution_of(shape, seed):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=F32)


def test_pixel_flipping_agrees_on_one_channel_inputs():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Flatten(), nn.Linear(4 * 64, 3)).to(F32).eval()
    x = torch.rand(3, 1, 16, 16, dtype=F32)
    y = torch.tensor([0, 2, 1])
    a = attribution_of((3, 1, 16, 16), 1)
    metric = quantus.PixelFlipping(features_in_step=8, normalise=False, abs=False,
                                   perturb_baseline=0.0, disable_warnings=True)
    theirs = np.array(metric(model=model, x_batch=x.numpy(), y_batch=y.numpy(), a_batch=a.numpy(),
                             softmax=True, device="cpu"))
    ours = pixel_flipping(model, x, y, a, regions_per_step=8, softmax=True, orders=("morf",))
    assert theirs.shape == (3, 32)
    np.testing.assert_allclose(ours.curves["morf"][:, 1:].numpy(), theirs, rtol=1e-5, atol=1e-6)


def test_quantus_pixel_flipping_leaves_channels_untouched_on_rgb(demo):
    """The definitional difference: Quantus flips array elements, funcattr whole pixels."""
    model, images, labels, _ = demo
    seen = []

    class Spy(nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, x):
            seen.append(x.detach().clone())
            return self.model(x)

    a = attribution_of((1, 1, 64, 64), 2)
    metric = quantus.PixelFlipping(features_in_step=4096, normalise=False,
                                   perturb_baseline=-1.0, disable_warnings=True)
    metric(model=Spy().eval(), x_batch=images[:1].numpy(), y_batch=labels[:1].numpy(),
           a_batch=a.numpy(), softmax=False, device="cpu")
    first = (seen[0] != images[:1]).any(dim=1)[0]  # pixels touched after the first step
    complete = (seen[0] != images[:1]).all(dim=1)[0]
    # a "4096-feature" step is 4096 array elements: 1365 whole pixels and one pixel with a
    # single channel replaced (4096 = 3 * 1365 + 1)
    assert int(first.sum()) == 1366 and int(complete.sum()) == 1365
    # funcattr: one step of 4096 / 4 = 1024 pixels changes exactly 1024 pixels in all channels
    seen.clear()
    pixel_flipping(Spy(), images[:1], labels[:1], a, regions_per_step=1024, n_steps=1,
                   fill=-1.0, orders=("morf",))
    changed = seen[1] != images[:1]  # seen[0] is the unperturbed input
    assert int(changed.all(dim=1).sum()) == int(changed.any(dim=1).sum()) == 1024


def test_region_perturbation_agrees(demo):
    model, images, labels, _ = demo
    a = attribution_of(images.shape, 3)
    metric = quantus.RegionPerturbation(patch_size=8, regions_evaluation=12, normalise=False,
                                        perturb_baseline=0.0, disable_warnings=True)
    theirs = np.array(metric(model=model, x_batch=images.numpy(), y_batch=labels.numpy(),
                             a_batch=a.numpy(), softmax=False, device="cpu"))
    ours = region_perturbation(model, images, labels, a, patch_size=8, regions_per_step=1,
                               n_steps=12, orders=("morf",))
    drop = ours.curves["morf"][:, :1] - ours.curves["morf"][:, 1:]
    np.testing.assert_allclose(drop.numpy(), theirs, rtol=1e-4, atol=1e-5)


def test_max_sensitivity_agrees(demo):
    model, images, labels, _ = demo
    explain = explainer(model, "epsilon_plus_flat", times_output=True)
    n = 2
    noise = torch.rand(n, *images.shape, generator=torch.Generator().manual_seed(4),
                       dtype=F32) * 0.04 - 0.02
    feed_quantus, feed_ours = iter(noise), iter(noise)

    def quantus_perturb(arr, indices=None, **kwargs):
        return arr + next(feed_quantus).reshape(arr.shape).numpy()

    def quantus_explain(model, inputs, targets, **kwargs):
        return explain(torch.as_tensor(inputs), torch.as_tensor(targets)).numpy()

    a = explain(images, labels)
    metric = quantus.MaxSensitivity(nr_samples=n, perturb_func=quantus_perturb,
                                    disable_warnings=True)
    theirs = np.array(metric(model=model, x_batch=images.numpy(), y_batch=labels.numpy(),
                             a_batch=a.numpy(), explain_func=quantus_explain, device="cpu"))
    ours = max_sensitivity(explain, images, labels, attribution=a, n_samples=n, relative=True,
                           perturbation=lambda x, g: next(feed_ours))
    np.testing.assert_allclose(ours.numpy(), theirs, rtol=1e-4)


def test_localisation_agrees(demo):
    model, images, labels, masks = demo
    explain = explainer(model, "epsilon_plus_flat", times_output=True)
    a = explain(images, labels)
    positive = a.sum(1, keepdim=True).clamp_min(0)  # Arras et al.: positive relevance
    s = masks[:, None].numpy().astype(np.float32)
    common = {"model": model, "x_batch": images.numpy(), "y_batch": labels.numpy(),
              "s_batch": s, "device": "cpu"}
    pairs = [
        (quantus.RelevanceMassAccuracy, relevance_mass_accuracy(a, masks), positive),
        (quantus.RelevanceRankAccuracy, relevance_rank_accuracy(a.sum(1), masks), a.sum(1, True)),
        (quantus.PointingGame, pointing_game(a, masks), a.sum(1, True)),
    ]
    for metric, ours, heatmap in pairs:
        theirs = metric(normalise=False, abs=False, disable_warnings=True)(
            a_batch=heatmap.numpy(), **common)
        np.testing.assert_allclose(ours.numpy(), np.array(theirs, dtype=np.float64), rtol=1e-5)


def test_random_logit_agrees(demo):
    model, images, labels, _ = demo
    explain = explainer(model, "epsilon_plus_flat", times_output=True)
    a = explain(images, labels)
    # Quantus draws the other class with np.random.seed(42); replicate its draw
    np.random.seed(42)
    index = np.random.randint(0, 5, len(labels))
    others = np.stack([np.delete(np.arange(6), int(t)) for t in labels])
    off = torch.as_tensor(others[np.arange(len(labels)), index])

    def quantus_explain(model, inputs, targets, **kwargs):
        return explain(torch.as_tensor(inputs), torch.as_tensor(targets)).sum(1, True).numpy()

    metric = quantus.RandomLogit(num_classes=6, normalise=False, disable_warnings=True,
                                 similarity_func=quantus.similarity_func.correlation_pearson)
    theirs = metric(model=model, x_batch=images.numpy(), y_batch=labels.numpy(),
                    a_batch=a.sum(1, True).numpy(), explain_func=quantus_explain, device="cpu")
    ours = random_logit(explain, images, labels, num_classes=6, off_target=off,
                        similarity_measure="pearson")
    np.testing.assert_allclose(ours.numpy(), np.array(theirs, dtype=np.float64), rtol=1e-4)
