"""Issue 6 benchmark: funcattr.metrics vs Quantus 0.6.0, one process, same inputs, CPU.

Run: ``.venv/bin/python benchmarks/bench_metrics.py [--batch N] [--repeats N] [--quick]``.

Workloads on the demo model (``funcattr.demo``, float32, 64x64 RGB), equal work on both sides:

* pixel flipping, MoRF: 48 steps, each removing 1/48 of the image (Quantus:
  ``features_in_step=256`` of its 12288 array elements; funcattr: 86 pixels, all channels);
* region perturbation, MoRF: 8x8 patches, all 64 regions;
* max-sensitivity: 10 noisy copies in the L-inf ball of radius 0.05, re-explained with the same
  LRP explainer (``epsilon_plus_flat``) on both sides.

Prints the minimum and median seconds of ``--repeats`` alternating runs and the ratio of the
minima (Quantus / funcattr).
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings
from collections.abc import Callable

import numpy as np
import torch

from funcattr.demo import load_demo_model, load_demo_samples
from funcattr.metrics import explainer, max_sensitivity, pixel_flipping, region_perturbation


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
    parser.add_argument("--chunk-size", type=int, default=16)
    parser.add_argument("--quick", action="store_true", help="batch 4, one repeat")
    args = parser.parse_args()
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

    cases = {
        "pixel flipping (48 steps)": (
            lambda: quantus.PixelFlipping(
                features_in_step=256, normalise=False, perturb_baseline=0.0,
                disable_warnings=True)(model=model, x_batch=x_np, y_batch=y_np,
                                       a_batch=heatmap.numpy(), softmax=False, device="cpu"),
            lambda: pixel_flipping(model, images, labels, heatmap, regions_per_step=86,
                                   orders=("morf",), chunk_size=chunk),
        ),
        "region perturbation (8x8, 64 regions)": (
            lambda: quantus.RegionPerturbation(
                patch_size=8, regions_evaluation=64, normalise=False, perturb_baseline=0.0,
                disable_warnings=True)(model=model, x_batch=x_np, y_batch=y_np,
                                       a_batch=attribution.numpy(), softmax=False,
                                       device="cpu"),
            lambda: region_perturbation(model, images, labels, attribution, patch_size=8,
                                        orders=("morf",), chunk_size=chunk),
        ),
        "max-sensitivity (10 draws, LRP)": (
            lambda: quantus.MaxSensitivity(
                nr_samples=10, lower_bound=0.05, disable_warnings=True)(
                model=model, x_batch=x_np, y_batch=y_np, a_batch=attribution.numpy(),
                explain_func=quantus_explain, device="cpu"),
            lambda: max_sensitivity(explain, images, labels, attribution=attribution,
                                    radius=0.05, n_samples=10, relative=True, generator=0,
                                    chunk_size=chunk),
        ),
    }
    print(f"demo model, batch {args.batch}, chunk_size {chunk}, torch threads "
          f"{torch.get_num_threads()}, {args.repeats} alternating runs (min / median s)")
    print(f"{'workload':<40}{'quantus':>16}{'funcattr':>16}{'speed-up (min)':>16}")
    for name, (theirs, ours) in cases.items():
        np.random.seed(0)
        t_quantus, t_ours = race(theirs, ours, args.repeats)
        low_q, low_o = min(t_quantus), min(t_ours)
        print(f"{name:<40}{low_q:>8.3f} / {statistics.median(t_quantus):<6.3f}"
              f"{low_o:>8.3f} / {statistics.median(t_ours):<6.3f}{low_q / low_o:>13.1f}x")


if __name__ == "__main__":
    main()
