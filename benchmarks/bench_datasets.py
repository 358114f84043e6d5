"""Issue 13 benchmark: explaining a whole dataset into a store, against the bare loop (CPU).

Run: ``.venv/bin/python benchmarks/bench_datasets.py [--items 1000] [--resnet-items 128]
[--repeats 3] [--models demo,resnet18] [--attributors gradient,smooth_grad]``.

For each model (the demo CNN on 64x64 demo images; torchvision's ResNet18, random weights,
on the demo images upsampled to 224x224, with its canonizer) and attributor (EpsilonPlusFlat
gradient; SmoothGrad with ``--n-iter`` copies over the same composite) it measures images per
second of

- ``bare``: the attribution loop on preloaded tensors, batch by batch, nothing stored: the
  lower bound;
- ``memory``: :func:`funcattr.datasets.explain_dataset` on the same preloaded tensors (a
  ``TensorDataset``): the cost of the ``DataLoader``, the store (zarr writes, the summary read
  back) and the per-item noise;
- ``demo w0`` / ``demo w1``: on the procedural dataset itself, loading in the main process or
  in one ``DataLoader`` worker (rendering the images is part of the cost);
- ``torchrun 2x1``: ``demo w0`` under ``torchrun --nproc-per-node 2``, one thread per rank.
- ``floor``: the bare loop plus the work any store of the relevance must add per batch:
  stacking the items into a batch, converting the relevance to float16, compressing it with
  the store's compressor and summing it into the class means;
- ``fixed``: what a run costs once, whatever its size: ``explain_dataset`` on one batch less
  that batch's bare attribution (creating the store's arrays and header, the probe item, the
  summary's arrays, CSV and PNG), shown in milliseconds and per image of the dataset.
  ``floor`` plus ``fixed`` per image, over ``bare``, is the *ceiling*: the lowest ratio a
  store of this layout (a zarr array per column; zarr's metadata operations cost about 2.5 ms
  each) could reach on this machine, as ``bench_metrics.py`` states its ceiling.

Every case runs in a fresh subprocess with ``OMP_NUM_THREADS`` set (1 for everything except
the ``bare 2t`` reference, which uses 2 threads in one process), timed inside the process
after imports and model loading (for torchrun: the slowest rank). Cases are interleaved round
by round so that load on a shared machine hits them alike; the table shows the median and the
spread (min-max) of images per second and of CPU milliseconds per image (the process and its
``DataLoader`` workers; for torchrun all ranks), each with the ratio of the medians to
``bare``. On a machine shared with other jobs the CPU time is the steadier measure of the
work the pipeline adds; the wall time is what a user waits on an idle machine.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]


class Upsampled(torch.utils.data.Dataset):
    """The demo images upsampled (bilinear; masks nearest) to ``size`` pixels, in batches."""

    def __init__(self, items: int, size: int) -> None:
        from funcattr.datasets import DemoDataset

        self.dataset, self.size = DemoDataset(items), size
        self.classes = self.dataset.classes

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitems__(self, indices):
        items = self.dataset.__getitems__(indices)
        images = torch.stack([item.image for item in items])
        images = F.interpolate(images, size=(self.size, self.size), mode="bilinear",
                               align_corners=False)
        masks = torch.stack([item.mask for item in items])[:, None].float()
        masks = F.interpolate(masks, size=(self.size, self.size), mode="nearest")[:, 0] > 0.5
        for item, image, mask in zip(items, images, masks):
            item.image, item.mask = image, mask
        return items

    def __getitem__(self, index):
        return self.__getitems__([index])[0]

    def fingerprint(self) -> str:
        return f"Upsampled({self.dataset.fingerprint()}, {self.size})"


def _setup(spec: dict):
    """Model, composite, canonizers, dataset of a case."""
    import torchvision

    from funcattr import canonizers_for
    from funcattr.composites import EpsilonPlusFlat
    from funcattr.datasets import DemoDataset
    from funcattr.demo import load_demo_model

    if spec["model"] == "demo":
        model = load_demo_model()
        canonizers = canonizers_for(model)  # its batch norms merged, as funcattr explain does
        dataset = DemoDataset(spec["items"])
    else:
        from funcattr.torchvision import ResNetCanonizer

        torch.manual_seed(0)
        model = torchvision.models.resnet18(weights=None).eval()
        canonizers = [ResNetCanonizer()]
        dataset = Upsampled(spec["items"], 224)
    return model, EpsilonPlusFlat(), canonizers, dataset


def _preload(dataset) -> tuple[torch.Tensor, torch.Tensor]:
    items = dataset.__getitems__(list(range(len(dataset))))
    return torch.stack([i.image for i in items]), torch.tensor([i.label for i in items])


def _options(spec: dict) -> dict:
    return {"n_iter": spec["n_iter"]} if spec["attributor"] == "smooth_grad" else {}


def _bare_attribution(spec: dict, model, composite, canonizers):
    """``x -> (output, relevance)``: the case's attributor called directly (the bare loop's
    step; SmoothGrad's noise from one seeded generator)."""
    import funcattr

    fn, params = funcattr.functionalize(model, composite, canonizers)
    function = getattr(funcattr, spec["attributor"])
    options = _options(spec)
    if spec["attributor"] == "smooth_grad":
        options["generator"] = torch.Generator().manual_seed(0)
    return lambda x: function(fn, params, x, funcattr.one_hot(None), **options)


def _cpu() -> float:
    """CPU seconds of this process and its finished children (DataLoader workers)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def child(spec: dict) -> dict:
    """Run one case in this process; return its wall and CPU seconds."""
    from funcattr.datasets import explain_dataset

    model, composite, canonizers, dataset = _setup(spec)
    batch = spec["batch_size"]
    if spec["case"] in ("floor", "fixed"):
        measure = _floor if spec["case"] == "floor" else _fixed
        return measure(spec, model, composite, canonizers, dataset)
    if spec["case"].startswith("bare"):
        images, _ = _preload(dataset)
        attribute = _bare_attribution(spec, model, composite, canonizers)
        start, cpu = time.perf_counter(), _cpu()
        for first in range(0, len(images), batch):
            attribute(images[first:first + batch])
        return {"seconds": time.perf_counter() - start, "cpu": _cpu() - cpu}
    if spec["case"] == "memory":
        images, labels = _preload(dataset)
        dataset = torch.utils.data.TensorDataset(images, labels)
    start, cpu = time.perf_counter(), _cpu()
    explain_dataset(model, dataset, Path(spec["folder"]) / "run", composite=composite,
                    canonizers=canonizers, attributor=spec["attributor"],
                    options=_options(spec), batch_size=batch,
                    num_workers=spec.get("workers", 0), progress=False)
    return {"seconds": time.perf_counter() - start, "cpu": _cpu() - cpu}


def _floor(spec: dict, model, composite, canonizers, dataset) -> dict:
    """The bare loop with the unavoidable work of a store per item (see the module docstring)."""
    import numcodecs
    import numpy as np

    from funcattr.datasets.store import COMPRESSOR
    from funcattr.datasets.summary import ClassSums

    codec = numcodecs.Blosc(cname=COMPRESSOR.cname.name, clevel=COMPRESSOR.clevel,
                            shuffle=numcodecs.Blosc.BITSHUFFLE)  # what the store's codec runs
    images, labels = _preload(dataset)
    rows = list(images)
    attribute = _bare_attribution(spec, model, composite, canonizers)
    batch = spec["batch_size"]
    sums = ClassSums(0)
    start, cpu = time.perf_counter(), _cpu()
    for first in range(0, len(images), batch):
        x = torch.stack(rows[first:first + batch])
        _, relevance = attribute(x)
        stored = relevance.to(torch.float16)
        codec.encode(stored.numpy())
        sums.add(labels[first:first + len(x)], stored.float(), relevance.abs().sum((1, 2, 3)),
                 np.arange(first, first + len(x)))
    return {"seconds": time.perf_counter() - start, "cpu": _cpu() - cpu}


def _fixed(spec: dict, model, composite, canonizers, dataset) -> dict:
    """What a run costs once: ``explain_dataset`` on the first batch, less that batch's bare
    attribution (timed in the same process after it)."""
    from funcattr.datasets import explain_dataset

    images, labels = _preload(dataset)
    batch = spec["batch_size"]
    one = torch.utils.data.TensorDataset(images[:batch], labels[:batch])
    attribute = _bare_attribution(spec, model, composite, canonizers)
    attribute(images[:batch])  # warm
    start, cpu = time.perf_counter(), _cpu()
    explain_dataset(model, one, Path(spec["folder"]) / "run", composite=composite,
                    canonizers=canonizers, attributor=spec["attributor"],
                    options=_options(spec), batch_size=batch, progress=False)
    run_seconds, run_cpu = time.perf_counter() - start, _cpu() - cpu
    start, cpu = time.perf_counter(), _cpu()
    attribute(images[:batch])
    return {"seconds": run_seconds - (time.perf_counter() - start),
            "cpu": run_cpu - (_cpu() - cpu)}


def _run_case(spec: dict) -> tuple[float, float]:
    """Wall seconds (torchrun: the slowest rank) and CPU seconds (all ranks) of one case, in
    a fresh subprocess."""
    environment = dict(os.environ)
    environment["OMP_NUM_THREADS"] = str(spec.get("threads", 1))
    environment["PYTHONPATH"] = os.pathsep.join(
        [str(ROOT), *filter(None, [environment.get("PYTHONPATH")])])
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "result"
        command = [sys.executable]
        if spec.get("ranks", 1) > 1:
            environment["MASTER_ADDR"] = "127.0.0.1"
            command += ["-m", "torch.distributed.run", f"--nproc-per-node={spec['ranks']}",
                        "--rdzv-backend=c10d", "--rdzv-endpoint=127.0.0.1:0"]
        spec = {**spec, "folder": folder}
        command += [__file__, "--child", json.dumps(spec), "--out", str(out)]
        done = subprocess.run(command, env=environment, capture_output=True, text=True)
        if done.returncode:
            raise RuntimeError(f"{spec}: failed\n{done.stderr[-3000:]}")
        results = [json.loads(p.read_text()) for p in Path(folder).glob("result.*")]
    return max(r["seconds"] for r in results), sum(r["cpu"] for r in results)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--items", type=int, default=1000, help="demo CNN items")
    parser.add_argument("--resnet-items", type=int, default=128, help="ResNet18 items")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--n-iter", type=int, default=8, help="SmoothGrad copies")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--models", default="demo,resnet18")
    parser.add_argument("--attributors", default="gradient,smooth_grad")
    parser.add_argument("--cases",
                        default="bare,floor,fixed,bare 2t,memory,demo w0,demo w1,torchrun 2x1")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--out", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        result = child(json.loads(args.child))
        Path(f"{args.out}.{os.environ.get('RANK', '0')}").write_text(json.dumps(result))
        return

    cases = {
        "bare": {"case": "bare"},
        "floor": {"case": "floor"},
        "fixed": {"case": "fixed"},
        "bare 2t": {"case": "bare", "threads": 2},
        "memory": {"case": "memory"},
        "demo w0": {"case": "demo"},
        "demo w1": {"case": "demo", "workers": 1},
        "torchrun 2x1": {"case": "demo", "ranks": 2},
    }
    chosen = [c.strip() for c in args.cases.split(",")]
    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs, batch {args.batch_size}, "
          f"SmoothGrad n_iter {args.n_iter}, {args.repeats} rounds, load average "
          f"{os.getloadavg()[0]:.1f}")
    for model in args.models.split(","):
        items = args.items if model == "demo" else args.resnet_items
        for attributor in args.attributors.split(","):
            base = {"model": model, "attributor": attributor, "items": items,
                    "batch_size": args.batch_size, "n_iter": args.n_iter}
            rates: dict[str, list[float]] = {name: [] for name in chosen}
            cpus: dict[str, list[float]] = {name: [] for name in chosen}
            fixed: list[tuple[float, float]] = []
            for _ in range(args.repeats):
                for name in chosen:
                    wall, cpu = _run_case({**base, **cases[name]})
                    if name == "fixed":
                        fixed.append((wall, cpu))
                        continue
                    rates[name].append(items / wall)
                    cpus[name].append(1e3 * cpu / items)
            print(f"\n{model}, {attributor}, {items} items: images/s median (min-max), "
                  f"ratio; CPU ms per image median (min-max), ratio")
            bare = statistics.median(rates["bare"]) if "bare" in rates else None
            bare_cpu = statistics.median(cpus["bare"]) if "bare" in cpus else None
            for name in [n for n in chosen if n != "fixed"]:
                median, cpu = statistics.median(rates[name]), statistics.median(cpus[name])
                ratio = f" {median / bare:5.2f}x" if bare else ""
                cpu_ratio = f" {cpu / bare_cpu:5.2f}x" if bare_cpu else ""
                print(f"  {name:14s} {median:7.1f} ({min(rates[name]):6.1f}-"
                      f"{max(rates[name]):6.1f}){ratio}   {cpu:7.2f} ({min(cpus[name]):.2f}-"
                      f"{max(cpus[name]):.2f}){cpu_ratio}")
            if fixed:
                wall = statistics.median(w for w, _ in fixed)
                cpu = statistics.median(c for _, c in fixed)
                line = (f"  fixed per run  {1e3 * wall:.0f} ms wall, {1e3 * cpu:.0f} ms CPU: "
                        f"{1e3 * wall / items:.3f} / {1e3 * cpu / items:.3f} ms per image")
                if bare and "floor" in rates:
                    floor_wall = 1 / statistics.median(rates["floor"]) + wall / items
                    floor_cpu = statistics.median(cpus["floor"]) + 1e3 * cpu / items
                    line += (f"; ceiling (floor + fixed) {bare * floor_wall:.2f}x wall, "
                             f"{floor_cpu / bare_cpu:.2f}x CPU")
                print(line)


if __name__ == "__main__":
    main()
