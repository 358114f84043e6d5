"""Issue 6 benchmark: funcattr.metrics vs Quantus 0.6.0, one process, same inputs, CPU.

Run: ``.venv/bin/python benchmarks/bench_metrics.py [--batch N] [--repeats N] [--quick]``.

Workloads on the demo model (``funcattr.demo``, float32, 64x64 RGB), equal work on both sides:

* pixel flipping, MoRF: 48 steps, each removing 1/48 of the image (Quantus:
  ``features_in_step=256`` of its 12288 array elements; funcattr: 86 pixels, all channels);
* region perturbation, MoRF: 8x8 patches, all 64 regions;
* max-sensitivity: 10 noisy copies in the L-inf ball of radius 0.05, re-explained with the same
  LRP explainer (funcattr's ``epsilon_plus_flat``) on both sides;
* max-sensitivity with each library's own LRP: Quantus with ``quantus.explain`` (its Zennit
  back-end, ``epsilon_plus_flat``), funcattr with its explainer; the two give the same
  explanations (the largest difference is printed).

Prints the minimum and median seconds of ``--repeats`` alternating runs, the ratio of the
minima (Quantus / funcattr) and a *ceiling*: the largest speed-up any implementation could
reach at equal work on this machine, Quantus' time divided by the time the convolution and
matrix-product FLOPs of the workload take at the machine's measured float32 matrix-product
peak.
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings
from collections.abc import Callable

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry

from funcattr import functionalize
from funcattr.allocator import warm_allocator
from funcattr.demo import load_demo_model, load_demo_samples
from funcattr.metrics import explainer, max_sensitivity, pixel_flipping, region_perturbation


class CountFlops(TorchDispatchMode):
    """Adds up the FLOPs of every convolution and matrix product dispatched inside it.

    Unlike ``torch.utils.flop_counter.FlopCounterMode`` it installs no module hooks, so it also
    counts inside ``torch.autograd.grad`` calls on leaves.
    """

    def __init__(self) -> None:
        super().__init__()
        self.total = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        count = flop_registry.get(func._overloadpacket)
        if count is not None:
            self.total += count(*args, **kwargs, out_val=out)
        return out


def matmul_peak(size: int = 2048, repeats: int = 10) -> float:
    """Float32 FLOP/s of the fastest of ``repeats`` square matrix products on this machine."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best


def forward_flops(model: torch.nn.Module, images: torch.Tensor) -> int:
    """FLOPs of one forward pass of one image."""
    with CountFlops() as counter, torch.no_grad():
        model(images[:1])
    return counter.total


def race(first: Callable[[], object], second: Callable[[], object],
         repeats: int) -> tuple[list[float], list[float]]:
    """Seconds of ``repeats`` runs of each, alternating, after one warm-up run of each.

    Alternating keeps the two sides under the same background load; the minimum is the
    figure least disturbed by other processes on a shared machine.
    """
    first(), second()
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(repeats):
        for run, out in ((first, times[0]), (second, times[1])):
            start = time.perf_counter()
            run()
            out.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=12, help="samples (default: 12)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--chunk-size", type=int, default=32,
                        help="inputs per model call (default: 32, the metrics' default)")
    parser.add_argument("--quick", action="store_true", help="batch 4, one repeat")
    args = parser.parse_args()
    warm_allocator()  # as an application would (see funcattr.allocator)
    if args.quick:
        args.batch, args.repeats = 4, 1
    warnings.filterwarnings("ignore")
    import quantus

    torch.manual_seed(0)
    model = load_demo_model()
    images, labels, _, _ = load_demo_samples()
    if args.batch > len(images):
        from funcattr.demo import make_dataset

        images, labels, _ = make_dataset(args.batch, seed=0xBE7C)
    images, labels = images[: args.batch], labels[: args.batch]
    x_np, y_np = images.numpy(), labels.numpy()
    explain = explainer(model, "epsilon_plus_flat", times_output=True)
    attribution = explain(images, labels)
    heatmap = attribution.sum(1, keepdim=True)
    chunk = args.chunk_size

    def quantus_explain(model, inputs, targets, **kwargs):
        return explain(torch.as_tensor(inputs), torch.as_tensor(targets)).numpy()

    own_explain = explainer(model, "epsilon_plus_flat")  # one-hot seed, as quantus.explain
    zennit_options = {"xai_lib": "zennit", "composite": "epsilon_plus_flat", "reduce_axes": ()}
    own_attribution = own_explain(images, labels)
    zennit_attribution = quantus.explain(model, x_np, y_np, device="cpu", **zennit_options)
    difference = np.abs(zennit_attribution - own_attribution.numpy()).max() / np.abs(
        zennit_attribution).max()

    # name: (Quantus run, funcattr run of a model (nn.Module or pure fn with params), whether
    # the funcattr run only evaluates the model: its FLOPs are then counted as images x forward
    # FLOPs, because the metrics evaluate under torch.inference_mode, which CountFlops misses)
    cases: dict[str, tuple[Callable[[], object], Callable[..., object], bool]] = {
        "pixel flipping (48 steps)": (
            lambda: quantus.PixelFlipping(
                features_in_step=256, normalise=False, perturb_baseline=0.0,
                disable_warnings=True)(model=model, x_batch=x_np, y_batch=y_np,
                                       a_batch=heatmap.numpy(), softmax=False, device="cpu"),
            lambda m=model, p=None: pixel_flipping(
                m, images, labels, heatmap, params=p, regions_per_step=86, orders=("morf",),
                chunk_size=chunk),
            True,
        ),
        "region perturbation (8x8, 64 regions)": (
            lambda: quantus.RegionPerturbation(
                patch_size=8, regions_evaluation=64, normalise=False, perturb_baseline=0.0,
                disable_warnings=True)(model=model, x_batch=x_np, y_batch=y_np,
                                       a_batch=attribution.numpy(), softmax=False,
                                       device="cpu"),
            lambda m=model, p=None: region_perturbation(
                m, images, labels, attribution, params=p, patch_size=8, regions_per_step=1,
                orders=("morf",), chunk_size=chunk),
            True,
        ),
        "max-sensitivity (10 draws, same LRP)": (
            lambda: quantus.MaxSensitivity(
                nr_samples=10, lower_bound=0.05, disable_warnings=True)(
                model=model, x_batch=x_np, y_batch=y_np, a_batch=attribution.numpy(),
                explain_func=quantus_explain, device="cpu"),
            lambda: max_sensitivity(explain, images, labels, attribution=attribution,
                                    radius=0.05, n_samples=10, relative=True, generator=0,
                                    chunk_size=chunk),
            False,
        ),
        "max-sensitivity (10 draws, own LRP)": (
            lambda: quantus.MaxSensitivity(
                nr_samples=10, lower_bound=0.05, disable_warnings=True)(
                model=model, x_batch=x_np, y_batch=y_np, a_batch=own_attribution.numpy(),
                explain_func=quantus.explain, explain_func_kwargs=zennit_options,
                device="cpu"),
            lambda: max_sensitivity(own_explain, images, labels, attribution=own_attribution,
                                    radius=0.05, n_samples=10, relative=True, generator=0,
                                    chunk_size=chunk),
            False,
        ),
    }
    peak = matmul_peak()
    per_image = forward_flops(model, images)
    print(f"demo model, batch {args.batch}, chunk_size {chunk}, torch threads "
          f"{torch.get_num_threads()}, {args.repeats} alternating runs (min / median s)")
    print(f"float32 matrix-product peak {peak / 1e9:.0f} GFLOP/s; demo forward "
          f"{per_image / 1e6:.1f} MFLOP per image; LRP of quantus.explain (Zennit) vs funcattr: "
          f"max difference {difference:.1e} of the largest relevance")
    print(f"{'workload':<40}{'quantus':>16}{'funcattr':>16}{'speed-up':>10}{'GFLOP':>8}"
          f"{'funcattr GFLOP/s':>18}{'ceiling':>9}")
    for name, (theirs, ours, forward_only) in cases.items():
        if forward_only:
            fn, params = functionalize(model)
            seen: list[int] = []

            def counting(params, x, fn=fn, seen=seen):
                seen.append(x.shape[0])
                return fn(params, x)

            ours(counting, params)
            flops = sum(seen) * per_image
        else:
            with CountFlops() as counter:
                ours()
            flops = counter.total
        np.random.seed(0)
        t_quantus, t_ours = race(theirs, ours, args.repeats)
        low_q, low_o = min(t_quantus), min(t_ours)
        print(f"{name:<40}{low_q:>8.3f} / {statistics.median(t_quantus):<6.3f}"
              f"{low_o:>8.3f} / {statistics.median(t_ours):<6.3f}{low_q / low_o:>9.1f}x"
              f"{flops / 1e9:>8.1f}{flops / low_o / 1e9:>18.0f}"
              f"{low_q / (flops / peak):>8.1f}x")
    print("ceiling: Quantus' time / (the workload's FLOPs at the matrix-product peak), the "
          "largest speed-up possible at equal work on this machine")

if __name__ == "__main__":
    main()
