"""Issue 2 benchmark: funcattr vs Zennit vs a plain input gradient, one process, CPU.

Run: ``.venv/bin/python benchmarks/bench_core.py [--repeats N] [--quick] [--no-zennit]
[--reference]``. Prints seconds (median of repeats) and ratios to the plain gradient measured in
the same run; ``--reference`` times funcattr's reference rule (``FUNCATTR_REFERENCE=1``) instead
of its fast path. The allocator is warmed first (:func:`funcattr.allocator.warm_allocator`), as
an application would.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from collections.abc import Callable

import torch
import torchvision
from torch import nn

import funcattr
from funcattr import composites as fc
from funcattr.allocator import warm_allocator
from funcattr.core import reference_path


def timeit(run: Callable[[], object], repeats: int) -> float:
    """Median seconds per call over ``repeats`` measurements; a measurement loops the call
    for at least 0.2 s, so that sub-millisecond calls are not dominated by timer noise."""
    start = time.perf_counter()
    run()  # warm-up
    loops = max(1, int(0.2 / max(time.perf_counter() - start, 1e-6)))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(loops):
            run()
        times.append((time.perf_counter() - start) / loops)
    return statistics.median(times)


def plain_gradient(model: nn.Module, x: torch.Tensor, seed: torch.Tensor) -> Callable[[], object]:
    for p in model.parameters():
        p.requires_grad_(False)

    def run():
        inp = x.detach().requires_grad_(True)
        out = model(inp)
        (grad,) = torch.autograd.grad(out, inp, seed)
        return grad

    return run


def funcattr_run(model, composite, x, seed, reference: bool = False) -> Callable[[], object]:
    fn, params = funcattr.functionalize(model, composite)

    def run():
        with reference_path() if reference else contextlib.nullcontext():
            return funcattr.gradient(fn, params, x, seed)

    return run


def zennit_run(model, composite, x, seed) -> Callable[[], object]:
    from zennit.attribution import Gradient

    def run():
        with Gradient(model, composite) as attributor:
            return attributor(x, seed)

    return run


def small_cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(32 * 7 * 7, 64), nn.ReLU(), nn.Linear(64, 10),
    )


def main() -> None:
    import zennit.composites as zc

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="VGG16 at batch 1, 112x112")
    parser.add_argument("--no-zennit", action="store_true", help="time funcattr only")
    parser.add_argument("--reference", action="store_true",
                        help="funcattr on the reference path (the fast path switched off)")
    args = parser.parse_args()
    warm_allocator()
    torch.manual_seed(0)

    cases = []
    vgg = torchvision.models.vgg16(weights=None).eval()
    shape = (1, 3, 112, 112) if args.quick else (4, 3, 224, 224)
    cases.append(("VGG16 " + "x".join(map(str, shape)), vgg, torch.randn(*shape), [
        ("EpsilonPlusFlat", fc.EpsilonPlusFlat(), zc.EpsilonPlusFlat()),
        ("EpsilonGammaBox", fc.EpsilonGammaBox(-3.0, 3.0), zc.EpsilonGammaBox(-3.0, 3.0)),
        ("EpsilonAlpha2Beta1", fc.EpsilonAlpha2Beta1(), zc.EpsilonAlpha2Beta1()),
        ("all-Epsilon", fc.LayerMapComposite([(funcattr.types.Linear, funcattr.rules.Epsilon()),
                                              (funcattr.types.Activation, funcattr.rules.Pass())]),
         None),
    ]))
    cases.append(("small CNN 1x1x28x28", small_cnn().eval(), torch.randn(1, 1, 28, 28), [
        ("EpsilonPlusFlat", fc.EpsilonPlusFlat(), zc.EpsilonPlusFlat()),
    ]))

    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, repeats {args.repeats}")
    for title, model, x, composites in cases:
        with torch.no_grad():
            classes = model(x).shape[1]
        seed = torch.eye(classes)[[i % classes for i in range(x.shape[0])]]
        plain = timeit(plain_gradient(model, x, seed), args.repeats)
        print(f"\n{title}: plain gradient {plain:.4f} s")
        print(f"  {'composite':<20} {'funcattr':>10} {'ratio':>7} {'zennit':>10} {'ratio':>7} "
              f"{'zennit/funcattr':>16}")
        for name, ours, theirs in composites:
            t_ours = timeit(funcattr_run(model, ours, x, seed, args.reference), args.repeats)
            line = f"  {name:<20} {t_ours:>9.4f}s {t_ours / plain:>6.2f}x"
            if theirs is not None and not args.no_zennit:
                t_theirs = timeit(zennit_run(model, theirs, x, seed), args.repeats)
                line += f" {t_theirs:>9.4f}s {t_theirs / plain:>6.2f}x {t_theirs / t_ours:>15.2f}x"
            print(line)


if __name__ == "__main__":
    main()
