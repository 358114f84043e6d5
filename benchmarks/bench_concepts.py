"""Issue 15 benchmark: conditional relevance (CRP) for many conditions, funcattr vs zennit-crp.

Run: ``.venv/bin/python benchmarks/bench_concepts.py [--repeats N] [--models vgg16 resnet50]
[--counts 8 32 128] [--crp-counts 8 32] [--chunk-size 32] [--size 224]``.

One image (1x3xSxS, float32, random weights, seeded), EpsilonPlusFlat, ``K`` conditions on a
late layer (VGG16: ``features.28``, the last convolution; ResNet50 with its canonizer:
``layer4.1.conv2``), each the predicted class and one channel, as in CRP's "all channels of a
layer" loop: funcattr's :func:`funcattr.concepts.conditional_attribution` (one forward pass,
one backward pass down to the layer, the K masked pullbacks below it batched, ``--chunk-size``
conditions per step) against zennit-crp 0.6.0's ``CondAttribution`` called with the same K
conditions (it stacks K copies of the input and runs one forward and backward pass through all
of them), in one process, the two alternated round by round. The reference is one plain
gradient of the model (autograd, no rules), measured in the same rounds.

``--threads`` (default 1) sets torch's threads: with one thread the process CPU time is the
work done, while with several on a busy machine it includes the time threads spin waiting for
each other.

Times are process CPU seconds (less disturbed than wall time by other processes on a shared
machine; both are printed), the median of the rounds with the spread (min..max). The last
table gives the time of one extra condition, ``(t(K_max) - t(K_min)) / (K_max - K_min)``, as
a fraction of the plain gradient. zennit-crp is run only for ``--crp-counts`` (128 conditions
on VGG16 take minutes there).

``--relmax N`` (default 512; 0 skips it) also measures relevance maximisation over the demo
dataset (N items rendered once into memory, so that both read the same tensors): the demo
model, EpsilonPlusFlat with its batch-norm canonizer, the last two convolutions
(``features.10``, ``features.15``), each item's label, batches of 32, one process:
:func:`funcattr.datasets.relevance_maximization` (into a zarr store, top-40 tables at the end)
against zennit-crp's ``FeatureVisualization.run`` (its files, top-40 tables), in images per
second, and checks that both give the same top-40 samples (float32: the samples of near-ties
may swap, so the share of equal entries is printed).
"""

from __future__ import annotations

import argparse
import copy
import functools
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torchvision
import zennit.composites as zc
import zennit.torchvision as ztv
from crp.attribution import CondAttribution
from crp.concepts import ChannelConcept
from crp.helper import load_maximization
from crp.visualization import FeatureVisualization
from zennit.canonizers import SequentialMergeBatchNorm

import funcattr
from funcattr.allocator import warm_allocator
from funcattr.attribution import gradient, one_hot
from funcattr.concepts import conditional_attribution
from funcattr.datasets import DemoDataset, relevance_maximization
from funcattr.demo import load_demo_model
from funcattr.torchvision import ResNetCanonizer, VGGCanonizer

MODELS = {
    "vgg16": ("features.28", torchvision.models.vgg16, VGGCanonizer, ztv.VGGCanonizer),
    "resnet50": ("layer4.1.conv2", torchvision.models.resnet50, ResNetCanonizer,
                 ztv.ResNetCanonizer),
}


def measure(run: Callable[[], object]) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    run()
    return time.perf_counter() - wall, time.process_time() - cpu


def summary(values: list[tuple[float, float]]) -> tuple[float, float, float, float]:
    """``(median CPU, min CPU, max CPU, median wall)``."""
    cpu = [c for _, c in values]
    return (statistics.median(cpu), min(cpu), max(cpu),
            statistics.median(w for w, _ in values))


def bench_model(name: str, counts: list[int], crp_counts: list[int], repeats: int,
                chunk_size: int | None, size: int) -> None:
    layer, factory, canonizer, zennit_canonizer = MODELS[name]
    torch.manual_seed(0)
    model = factory(weights=None).eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    crp_model = copy.deepcopy(model)  # Zennit's canonizers leave traces in a model's registry
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        target = int(model(x).argmax(1))
    fn, params = funcattr.functionalize(model, funcattr.composites.EpsilonPlusFlat(
        canonizers=[canonizer()]))
    attribution = CondAttribution(crp_model, no_param_grad=True)

    def plain() -> torch.Tensor:
        leaf = x.detach().requires_grad_(True)
        output = model(leaf)
        return torch.autograd.grad(output, leaf, one_hot(target)(output.detach()))[0]

    def lrp() -> torch.Tensor:
        return gradient(fn, params, x, one_hot(target, times_output=True))[1]

    def ours(count: int) -> Callable[[], object]:
        conditions = [{"y": [target], layer: [c]} for c in range(count)]
        return lambda: conditional_attribution(fn, params, x, conditions, chunk_size=chunk_size)

    def theirs(count: int) -> Callable[[], object]:
        conditions = [{"y": [target], layer: [c]} for c in range(count)]
        return lambda: attribution(x.clone().requires_grad_(True), conditions,
                                   zc.EpsilonPlusFlat(canonizers=[zennit_canonizer()]))

    cases: dict[str, Callable[[], object]] = {"plain gradient": plain, "LRP gradient": lrp}
    for count in counts:
        cases[f"funcattr K={count}"] = ours(count)
        if count in crp_counts:
            cases[f"zennit-crp K={count}"] = theirs(count)
    check = conditional_attribution(fn, params, x, [{"y": [target], layer: [c]}
                                                    for c in range(4)]).attribution.sum(2)[:, 0]
    expected = attribution(x.clone().requires_grad_(True),
                           [{"y": [target], layer: [c]} for c in range(4)],
                           zc.EpsilonPlusFlat(canonizers=[zennit_canonizer()])).heatmap
    error = float((check - expected).abs().max() / expected.abs().max())
    for run in cases.values():  # warm-up
        run()
    times: dict[str, list[tuple[float, float]]] = {case: [] for case in cases}
    for _ in range(repeats):
        for case, run in cases.items():
            times[case].append(measure(run))
    results = {case: summary(values) for case, values in times.items()}
    base = results["plain gradient"][0]
    print(f"\n{name}, 1x3x{size}x{size}, EpsilonPlusFlat, conditions on {layer}, target "
          f"{target}, chunk_size {chunk_size}, {repeats} rounds (float32 check of 4 "
          f"conditions against zennit-crp: max relative difference {error:.1e})")
    print(f"  {'case':<22} {'CPU median':>11} {'(min..max)':>17} {'wall median':>12} "
          f"{'/ plain':>8}")
    for case, (median, low, high, wall) in results.items():
        print(f"  {case:<22} {median:>10.3f}s {f'({low:.3f}..{high:.3f})':>17} "
              f"{wall:>11.3f}s {median / base:>7.2f}x")
    print("  funcattr vs zennit-crp (CPU median, zennit-crp / funcattr):")
    for count in counts:
        if count in crp_counts:
            ratio = results[f"zennit-crp K={count}"][0] / results[f"funcattr K={count}"][0]
            print(f"    K={count:<4} {ratio:6.1f}x faster")
    low, high = min(counts), max(counts)
    if high > low:
        extra = (results[f"funcattr K={high}"][0] - results[f"funcattr K={low}"][0]) / (
            high - low)
        print(f"  funcattr, one extra condition: {extra:.4f}s CPU = {extra / base:.3f} of a "
              f"plain gradient ({results['LRP gradient'][0] / base:.2f} plain gradients for "
              f"one LRP gradient)")
    crp_low, crp_high = min(crp_counts, default=0), max(crp_counts, default=0)
    if crp_high > crp_low and crp_low in counts and crp_high in counts:
        extra = (results[f"zennit-crp K={crp_high}"][0]
                 - results[f"zennit-crp K={crp_low}"][0]) / (crp_high - crp_low)
        print(f"  zennit-crp, one extra condition: {extra:.4f}s CPU = {extra / base:.3f} of a "
              f"plain gradient")


class Rendered(torch.utils.data.Dataset):
    """Demo items rendered once: ``(image, label)`` pairs from memory."""

    def __init__(self, size: int) -> None:
        items = DemoDataset(size).__getitems__(list(range(size)))
        self.images = torch.stack([item.image for item in items])
        self.labels = [item.label for item in items]

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        return self.images[index], self.labels[index]

    def fingerprint(self) -> str:
        return f"rendered demo, {len(self)} items"


def bench_relmax(size: int, repeats: int) -> None:
    layers = ["features.10", "features.15"]
    dataset = Rendered(size)
    model = load_demo_model()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    times: dict[str, list[tuple[float, float]]] = {"funcattr": [], "zennit-crp": []}
    agreement = []
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder)
            times["funcattr"].append(measure(functools.partial(
                relevance_maximization, model, dataset, path / "ours", layers=layers,
                composite=funcattr.composites.EpsilonPlusFlat(),
                canonizers=funcattr.canonizers_for(model), batch_size=32, progress=False)))
            crp_model = copy.deepcopy(model)
            visualization = FeatureVisualization(
                CondAttribution(crp_model, no_param_grad=True), dataset,
                {name: ChannelConcept() for name in layers}, path=str(path / "crp"))
            composite = zc.EpsilonPlusFlat(canonizers=[SequentialMergeBatchNorm()])
            times["zennit-crp"].append(measure(
                functools.partial(visualization.run, composite, 0, size, batch_size=32)))
            run = funcattr.datasets.open_concept_store(path / "ours")
            for name in layers:
                for ranking, maximization in (("relevance", visualization.RelMax),
                                              ("activation", visualization.ActMax)):
                    samples = np.array(load_maximization(maximization.PATH, name)[0]).T
                    ours = run.top(name, ranking).samples.numpy()
                    agreement.append(float((ours == samples).mean()))
    results = {case: summary(values) for case, values in times.items()}
    print(f"\nrelevance maximisation, demo model, {size} demo items (64x64), layers "
          f"{', '.join(layers)}, EpsilonPlusFlat, labels, batch 32, top 40, {repeats} rounds")
    print(f"  {'case':<12} {'CPU median':>11} {'wall median':>12} {'images/s (CPU)':>15}")
    for case, (median, _, _, wall) in results.items():
        print(f"  {case:<12} {median:>10.2f}s {wall:>11.2f}s {size / median:>15.0f}")
    print(f"  funcattr / zennit-crp throughput: "
          f"{results['zennit-crp'][0] / results['funcattr'][0]:.1f}x; equal top-40 entries "
          f"(float32): {min(agreement):.1%} (worst table)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="*", choices=sorted(MODELS), default=sorted(MODELS,
                                                                                     reverse=True))
    parser.add_argument("--counts", nargs="+", type=int, default=[8, 32, 128])
    parser.add_argument("--crp-counts", nargs="+", type=int, default=[8, 32])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--chunk-size", type=int, default=32)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1: CPU time is work, not spinning on a busy "
                             "machine)")
    parser.add_argument("--relmax", type=int, default=512,
                        help="demo items for the relevance maximisation comparison (0: skip)")
    parser.add_argument("--relmax-repeats", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warm_allocator()  # as an application would (see funcattr.allocator)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    if args.relmax:
        bench_relmax(args.relmax, args.relmax_repeats)
    for name in args.models:
        bench_model(name, sorted(args.counts), sorted(args.crp_counts), args.repeats,
                    args.chunk_size, args.size)


if __name__ == "__main__":
    main()

