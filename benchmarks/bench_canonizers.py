"""Issue 3 benchmark: EpsilonPlusFlat + ResNetCanonizer on ResNet50, funcattr vs Zennit vs plain.

Run: ``.venv/bin/python benchmarks/bench_canonizers.py [--repeats N] [--quick] [--threads T]``.
Everything runs in one process on the CPU, float32, random weights with randomised batch-norm
statistics, eval mode. Prints seconds (median of repeats) and ratios to the plain input
gradient measured in the same run:

- ``plain gradient``: ``torch.autograd.grad`` of the unmodified model;
- ``funcattr``: ``functionalize`` once, then ``gradient`` per call (the canonizer's parameter
  transform, i.e. the batch-norm merge, runs on every call);
- ``funcattr + setup``: ``functionalize`` (canonizing, rule resolution) inside every call;
- ``Zennit``: ``Gradient(model, composite)`` entered once, the attributor called per call
  (Zennit merges once, at registration);
- ``Zennit + setup``: the context entered and left inside every call.

Zennit runs on a deep copy of the model: its canonizers leave merged parameters behind.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from collections.abc import Callable

import torch
import torchvision
from torch import nn

import funcattr
from funcattr import composites as fc
from funcattr.allocator import warm_allocator
from funcattr.torchvision import ResNetCanonizer


def timeit(run: Callable[[], object], repeats: int) -> float:
    run()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def randomised_resnet50() -> nn.Module:
    torch.manual_seed(0)
    model = torchvision.models.resnet50(weights=None)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.normal_(0.0, 0.5, generator=generator)
                module.running_var.uniform_(0.5, 2.0, generator=generator)
                module.weight.normal_(1.0, 0.3, generator=generator)
                module.bias.normal_(0.0, 0.3, generator=generator)
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return model.eval()


def main() -> None:
    import zennit.composites as zc
    import zennit.torchvision as ztv
    from zennit.attribution import Gradient

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="batch 1, 112x112")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    args = parser.parse_args()
    warm_allocator()  # as an application would (see funcattr.allocator)
    if args.threads:
        torch.set_num_threads(args.threads)

    model = randomised_resnet50()
    zennit_model = copy.deepcopy(model)
    shape = (1, 3, 112, 112) if args.quick else (4, 3, 224, 224)
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(1))
    seed = torch.eye(1000)[[3] * shape[0]]

    def plain():
        leaf = x.detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(model(leaf), leaf, seed)
        return grad

    composite = fc.EpsilonPlusFlat(canonizers=[ResNetCanonizer()])
    fn, params = funcattr.functionalize(model, composite)

    def funcattr_run():
        return funcattr.gradient(fn, params, x, seed)

    def funcattr_setup_run():
        fn_, params_ = funcattr.functionalize(model, composite)
        return funcattr.gradient(fn_, params_, x, seed)

    zennit_composite = zc.EpsilonPlusFlat(canonizers=[ztv.ResNetCanonizer()])

    def zennit_setup_run():
        with Gradient(zennit_model, zennit_composite) as attributor:
            return attributor(x, seed)

    # agreement check (float32: compare loosely)
    with Gradient(zennit_model, zennit_composite) as attributor:
        _, zennit_relevance = attributor(x, seed)
    _, relevance = funcattr_run()
    scale = zennit_relevance.abs().max().item()
    difference = (relevance - zennit_relevance).abs().max().item() / scale

    results = {"plain gradient": timeit(plain, args.repeats)}
    results["funcattr"] = timeit(funcattr_run, args.repeats)
    results["funcattr + setup"] = timeit(funcattr_setup_run, args.repeats)
    with Gradient(zennit_model, zennit_composite) as attributor:
        results["Zennit"] = timeit(lambda: attributor(x, seed), args.repeats)
    results["Zennit + setup"] = timeit(zennit_setup_run, args.repeats)
    transform_time = timeit(lambda: fn.transform(params), args.repeats)

    print(f"ResNet50 {'x'.join(map(str, shape))}, EpsilonPlusFlat + ResNetCanonizer, "
          f"float32, {torch.get_num_threads()} thread(s), median of {args.repeats}")
    print(f"relative max difference funcattr vs Zennit: {difference:.2e}")
    base = results["plain gradient"]
    for name, seconds in results.items():
        print(f"  {name:18s} {seconds:8.3f} s   {seconds / base:6.2f}x plain")
    label = "(param transform)"
    print(f"  {label:18s} {transform_time:8.3f} s   {transform_time / base:6.2f}x plain")
    print(f"funcattr is {results['Zennit'] / results['funcattr']:.2f}x faster than Zennit "
          f"(with setup: {results['Zennit + setup'] / results['funcattr + setup']:.2f}x)")


if __name__ == "__main__":
    main()
