"""Issue 4 benchmark: batched attributors vs their own lower bound, Zennit and Captum (CPU).

Run: ``.venv/bin/python benchmarks/bench_attributors.py [--repeats N] [--quick] [--only ...]``.

Everything is measured in one process, the cases of a section interleaved round by round (so
load on a shared machine hits them alike); the tables show the fastest and the median round
and ratios of the fastest. Sections:

- ``small``: small CNN, 1x1x28x28. SmoothGrad / IG with 32 samples against one plain
  gradient of the 32 inputs stacked; Occlusion with 49 windows (4x4, stride 4) against one
  batched forward of the 49 occluded inputs; Zennit and Captum; and the batching strategy
  (one stacked batch, which funcattr uses, vs. ``torch.func.vmap`` over per-copy pullbacks).
- ``resnet``: ResNet18, 1x3x224x224. The same with 16 samples and 49 windows (32x32,
  stride 32).
- ``vgg``: top-5 targets of VGG16 with EpsilonPlusFlat at batch 4 (``--quick``: 112x112):
  ``multi_target`` against five Zennit calls and five funcattr calls.
- ``memory``: peak resident memory (``VmHWM`` of a fresh subprocess per setting) of
  SmoothGrad on ResNet18 with 32 samples at ``chunk_size`` None / 8 / 2 / 1.
- ``classes``: the Zennit-style ``Gradient`` class on VGG16 (batch 4, EpsilonGammaBox,
  ``--quick``: 112x112): a call inside ``with``, a call outside it (which enters and leaves
  the attributor) and the pure ``gradient`` on the same ``(fn, params)``.

``chunk_size`` counts model inputs (images per model call); with the batch of 1 used here it
equals the number of samples, path points or windows per step.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from functools import partial

import torch
import torchvision
from torch import nn

import funcattr
from funcattr.allocator import warm_allocator
from funcattr.attribution import (
    gradient,
    integrated_gradients,
    multi_target,
    occlusion,
    one_hot,
    smooth_grad,
    top_k_targets,
)


def interleaved(cases: dict[str, Callable[[], object]], repeats: int) -> dict[str, tuple]:
    """``{name: (fastest wall, median wall, fastest CPU)}`` seconds; one warm-up, then
    ``repeats`` rounds. The process CPU time is less disturbed by other processes on a
    shared machine than the wall time."""
    for run in cases.values():
        run()
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in cases}
    for _ in range(repeats):
        for name, run in cases.items():
            wall, cpu = time.perf_counter(), time.process_time()
            run()
            times[name].append((time.perf_counter() - wall, time.process_time() - cpu))
    return {
        name: (min(w for w, _ in values), statistics.median(w for w, _ in values),
               min(c for _, c in values))
        for name, values in times.items()
    }


def report(title: str, results: dict[str, tuple], reference: str) -> None:
    base_wall, _, base_cpu = results[reference]
    print(f"\n{title}  (ratios to: {reference})")
    print(f"  {'case':<52} {'wall min':>9} {'median':>9} {'ratio':>6} {'CPU min':>9} "
          f"{'ratio':>6}")
    for name, (fastest, median, cpu) in results.items():
        print(f"  {name:<52} {fastest:>8.4f}s {median:>8.4f}s {fastest / base_wall:>5.2f}x "
              f"{cpu:>8.4f}s {cpu / base_cpu:>5.2f}x")


def frozen(model: nn.Module) -> nn.Module:
    for param in model.parameters():
        param.requires_grad_(False)
    return model.eval()


def small_cnn() -> nn.Module:
    torch.manual_seed(0)
    return frozen(nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(32 * 7 * 7, 64), nn.ReLU(), nn.Linear(64, 10),
    ))


def plain_gradient(model: nn.Module, stacked: torch.Tensor, target: int) -> Callable:
    """One ordinary input gradient of ``stacked`` (the lower bound of SmoothGrad / IG)."""
    def run():
        leaf = stacked.detach().requires_grad_(True)
        output = model(leaf)
        seed = torch.zeros_like(output)
        seed[:, target] = 1.0
        return torch.autograd.grad(output, leaf, seed)[0]
    return run


def batched_forward(model: nn.Module, occluded: torch.Tensor) -> Callable:
    """One forward of the occluded inputs (the lower bound of Occlusion)."""
    def run():
        with torch.no_grad():
            return model(occluded)
    return run


def occluded_inputs(x: torch.Tensor, window: int) -> torch.Tensor:
    _, _, height, width = x.shape
    inputs = []
    for top in range(0, height, window):
        for left in range(0, width, window):
            mask = torch.zeros_like(x, dtype=torch.bool)
            mask[..., top:top + window, left:left + window] = True
            inputs.append(x * mask)
    return torch.cat(inputs)


def vmap_smooth_grad(fn, params, x, seed, n_iter, generator_seed) -> torch.Tensor:
    """The alternative strategy: torch.func.vmap over one pullback per noisy copy."""
    copies = smooth_grad_copies(x, n_iter, generator_seed).reshape(n_iter, *x.shape)
    grads = torch.func.vmap(lambda copy: gradient(fn, params, copy, seed)[1])(copies)
    return grads.mean(0)


def zennit_cases(model, x, target, n_iter, window) -> dict[str, Callable]:
    from zennit.attribution import IntegratedGradients, Occlusion, SmoothGrad

    def seed(output):
        result = torch.zeros_like(output)
        result[:, target] = 1.0
        return result

    def score(output):
        return seed(output) * output

    def call(cls, attr, **kwargs):
        def run():
            with cls(model, **kwargs) as attributor:
                return attributor(x, attr)
        return run

    return {
        f"zennit SmoothGrad n_iter={n_iter}": call(SmoothGrad, seed, n_iter=n_iter),
        f"zennit IntegratedGradients n_iter={n_iter}": call(IntegratedGradients, seed,
                                                           n_iter=n_iter),
        "zennit Occlusion": call(Occlusion, score, window=(window, window),
                                 stride=(window, window)),
    }


def captum_cases(model, x, target, n_iter, window) -> dict[str, Callable]:
    import captum.attr

    saliency = captum.attr.NoiseTunnel(captum.attr.Saliency(model))
    ig = captum.attr.IntegratedGradients(model)
    occ = captum.attr.Occlusion(model)
    windows = (x.shape[2] // window) * (x.shape[3] // window)
    return {
        f"captum NoiseTunnel(Saliency) nt_samples={n_iter}": lambda: saliency.attribute(
            x, nt_type="smoothgrad", nt_samples=n_iter, nt_samples_batch_size=n_iter,
            stdevs=0.1, target=target, abs=False),
        f"captum IntegratedGradients n_steps={n_iter}": lambda: ig.attribute(
            x, target=target, n_steps=n_iter, method="riemann_right",
            internal_batch_size=n_iter),
        f"captum Occlusion perturbations_per_eval={windows}": lambda: occ.attribute(
            x, sliding_window_shapes=(x.shape[1], window, window),
            strides=(x.shape[1], window, window), target=target,
            perturbations_per_eval=windows),
    }


def smooth_grad_copies(x: torch.Tensor, n_iter: int, seed: int) -> torch.Tensor:
    """The copies ``smooth_grad(..., generator=seed)`` evaluates, stacked."""
    generator = torch.Generator().manual_seed(seed)
    noise = torch.stack([torch.randn(x.shape, generator=generator) for _ in range(n_iter - 1)])
    dims = tuple(range(1, x.ndim))
    std = 0.1 * (x.amax(dims, keepdim=True) - x.amin(dims, keepdim=True))
    return torch.cat([x + noise * std, x[None]]).reshape(-1, *x.shape[1:])


def path_points(x: torch.Tensor, n_iter: int) -> torch.Tensor:
    """The path points ``integrated_gradients(..., n_iter)`` evaluates (zero baseline)."""
    alphas = torch.linspace(1 / n_iter, 1, n_iter).reshape(-1, *(1,) * x.ndim)
    return (alphas * x).reshape(-1, *x.shape[1:])


def sample_section(title: str, model: nn.Module, x: torch.Tensor, n_iter: int, window: int,
                   repeats: int, strategies: bool) -> None:
    """The plain gradients run on exactly the inputs the attributors stack (the run time of
    convolutions depends on the data and on the batch size, so nothing else is a fair bound)."""
    target = 3
    fn, params = funcattr.functionalize(model)
    seed = one_hot(target)
    others = {**zennit_cases(model, x, target, n_iter, window),
              **captum_cases(model, x, target, n_iter, window)}

    reference = f"plain gradient of the {n_iter} SmoothGrad copies"
    cases = {
        reference: plain_gradient(model, smooth_grad_copies(x, n_iter, 0), target),
        f"funcattr smooth_grad n_iter={n_iter}": lambda: smooth_grad(
            fn, params, x, seed, n_iter=n_iter, generator=0),
    }
    if strategies:
        cases[f"  strategy: vmap over per-copy pullbacks, {n_iter}"] = partial(
            vmap_smooth_grad, fn, params, x, seed, n_iter, 0)
        cases[f"  strategy: stacked, chunk_size={n_iter // 4}"] = lambda: smooth_grad(
            fn, params, x, seed, n_iter=n_iter, generator=0, chunk_size=n_iter // 4)
    cases.update({name: run for name, run in others.items()
                  if "SmoothGrad" in name or "NoiseTunnel" in name})
    report(f"{title}: SmoothGrad", interleaved(cases, repeats), reference)

    reference = f"plain gradient of the {n_iter} IG path points"
    cases = {
        reference: plain_gradient(model, path_points(x, n_iter), target),
        f"funcattr integrated_gradients n_iter={n_iter}": lambda: integrated_gradients(
            fn, params, x, seed, n_iter=n_iter),
        f"funcattr integrated_gradients, chunk_size={n_iter // 4}": lambda: (
            integrated_gradients(fn, params, x, seed, n_iter=n_iter, chunk_size=n_iter // 4)),
    }
    cases.update({name: run for name, run in others.items() if "IntegratedGradients" in name})
    report(f"{title}: Integrated Gradients", interleaved(cases, repeats), reference)

    occluded = occluded_inputs(x, window)
    windows = occluded.shape[0]
    score = one_hot(target, times_output=True)
    cases = {
        f"one forward of the {windows} occluded inputs": batched_forward(model, occluded),
        f"funcattr occlusion {windows} windows {window}x{window}": lambda: occlusion(
            fn, params, x, score, window=(window, window), stride=(window, window)),
        f"funcattr occlusion, chunk_size={windows // 4 + 1}": lambda: occlusion(
            fn, params, x, score, window=(window, window), stride=(window, window),
            chunk_size=windows // 4 + 1),
    }
    cases.update({name: run for name, run in others.items() if "Occlusion" in name})
    report(f"{title}: Occlusion", interleaved(cases, repeats),
           f"one forward of the {windows} occluded inputs")


def vgg_section(quick: bool, repeats: int) -> None:
    import zennit.composites as zc
    from zennit.attribution import Gradient

    from funcattr import composites as fc

    torch.manual_seed(0)
    model = frozen(torchvision.models.vgg16(weights=None))
    size = 112 if quick else 224
    x = torch.randn(4, 3, size, size)
    fn, params = funcattr.functionalize(model, fc.EpsilonPlusFlat())
    with torch.no_grad():
        top5 = model(x).topk(5, dim=1).indices.T

    def zennit_five():
        with Gradient(model, zc.EpsilonPlusFlat()) as attributor:
            return [attributor(x, lambda out, t=t: out * nn.functional.one_hot(t, 1000))
                    for t in top5]

    def funcattr_five():
        return [gradient(fn, params, x, one_hot(t, times_output=True)) for t in top5]

    cases = {
        "funcattr multi_target top-5": lambda: multi_target(fn, params, x, top_k_targets(5),
                                                            times_output=True),
        "funcattr multi_target top-5, chunk_size=1": lambda: multi_target(
            fn, params, x, top_k_targets(5), times_output=True, chunk_size=1),
        "five funcattr gradient calls": funcattr_five,
        "five zennit Gradient calls": zennit_five,
    }
    report(f"VGG16 4x3x{size}x{size}, EpsilonPlusFlat, top-5 targets",
           interleaved(cases, repeats), "funcattr multi_target top-5")


def classes_section(quick: bool, repeats: int) -> None:
    """A call of the stateful class outside ``with`` costs what a call inside does: the
    attributor functionalizes once and keeps ``(fn, params)`` between calls."""
    from funcattr import composites as fc
    from funcattr.attribution import Gradient

    torch.manual_seed(0)
    model = frozen(torchvision.models.vgg16(weights=None))
    size = 112 if quick else 224
    x = torch.randn(4, 3, size, size)
    composite = fc.EpsilonGammaBox(low=-3.0, high=3.0)
    seed = one_hot(3, times_output=True)
    fn, params = funcattr.functionalize(model, composite)
    outside = Gradient(model, composite)
    inside = Gradient(model, composite)
    cases = {
        "Gradient call inside with": lambda: inside(x, seed),
        "Gradient call outside with": lambda: outside(x, seed),
        "pure gradient(fn, params, ...)": lambda: gradient(fn, params, x, seed),
    }
    with inside:
        results = interleaved(cases, repeats)
    report(f"VGG16 4x3x{size}x{size}, EpsilonGammaBox, Gradient class", results,
           "Gradient call inside with")


MEMORY_SETTINGS = [None, 8, 2, 1]


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def memory_child(chunk_size: int | None) -> None:
    """Run in a fresh process: SmoothGrad on ResNet18; print the resident memory after set-up
    and its peak during the attribution. ``ru_maxrss`` would carry the parent's high-water
    mark across fork/exec, so this reads ``VmHWM`` (reset after set-up via ``clear_refs``)."""
    torch.manual_seed(0)
    model = frozen(torchvision.models.resnet18(weights=None))
    fn, params = funcattr.functionalize(model)
    x = torch.randn(1, 3, 224, 224)
    smooth_grad(fn, params, x, one_hot(3), n_iter=2, generator=0)  # warm-up: lazy init
    before = _status_kib("VmRSS")
    with open("/proc/self/clear_refs", "w") as clear:  # reset the peak to the current RSS
        clear.write("5")
    start = time.perf_counter()
    smooth_grad(fn, params, x, one_hot(3), n_iter=32, generator=0, chunk_size=chunk_size)
    seconds = time.perf_counter() - start
    peak = _status_kib("VmHWM")
    print(json.dumps({"before_kib": before, "peak_kib": peak, "seconds": seconds,
                      "maxrss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))


def memory_section() -> None:
    print("\nResNet18 1x3x224x224, smooth_grad n_iter=32: peak resident memory (fresh process "
          "per setting, VmHWM)")
    print(f"  {'chunk_size':<12} {'after setup':>12} {'peak':>10} {'peak - setup':>13} "
          f"{'time':>8}")
    for chunk_size in MEMORY_SETTINGS:
        out = subprocess.run(
            [sys.executable, __file__, "--memory-child", str(chunk_size)],
            capture_output=True, text=True, check=True,
        ).stdout
        result = json.loads(out.strip().splitlines()[-1])
        before, peak = result["before_kib"] / 1024, result["peak_kib"] / 1024
        print(f"  {chunk_size!s:<12} {before:>10.0f}MiB {peak:>8.0f}MiB {peak - before:>11.0f}MiB "
              f"{result['seconds']:>7.2f}s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="VGG16 at 112x112")
    parser.add_argument("--only", nargs="*",
                        default=["small", "resnet", "vgg", "classes", "memory"],
                        choices=["small", "resnet", "vgg", "classes", "memory"])
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--memory-child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    warm_allocator()  # as an application would (see funcattr.allocator)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.memory_child is not None:
        memory_child(None if args.memory_child == "None" else int(args.memory_child))
        return

    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"repeats {args.repeats}, float32")
    if "small" in args.only:
        torch.manual_seed(0)
        sample_section("small CNN 1x1x28x28", small_cnn(), torch.randn(1, 1, 28, 28),
                       n_iter=32, window=4, repeats=max(args.repeats, 10), strategies=True)
    if "resnet" in args.only:
        torch.manual_seed(0)
        model = frozen(torchvision.models.resnet18(weights=None))
        sample_section("ResNet18 1x3x224x224", model, torch.randn(1, 3, 224, 224), n_iter=16,
                       window=32, repeats=args.repeats, strategies=True)
    if "vgg" in args.only:
        vgg_section(args.quick, args.repeats)
    if "classes" in args.only:
        classes_section(args.quick, args.repeats)
    if "memory" in args.only:
        memory_section()


if __name__ == "__main__":
    main()
