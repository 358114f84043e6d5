"""A dataset run as a script, for the tests that need processes: ``torchrun``, SIGKILL, memory
(and the store comparison the dataset tests share).

Run as ``python tests/datasets_worker.py PATH --size N`` (or under ``torchrun``). With
``--kill-at K`` the process (with ``--kill-rank R``: only rank R) sends itself SIGKILL when it
loads item K, as a crash would. With ``--report FILE`` it writes its peak resident memory.
"""

from __future__ import annotations

import argparse
import json
import os
import signal

import numpy as np
import torch

from funcattr.datasets import DemoDataset, explain_dataset
from funcattr.demo import load_demo_model


class KillAt(torch.utils.data.Dataset):
    """The demo dataset, killing this process when it loads item ``index``."""

    def __init__(self, dataset, index: int) -> None:
        self.dataset, self.index = dataset, index
        self.classes = dataset.classes

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        if index == self.index:
            os.kill(os.getpid(), signal.SIGKILL)
        return self.dataset[index]

    def fingerprint(self) -> str:
        return self.dataset.fingerprint()


def assert_same_store(a, b) -> None:
    """Two stores hold the same items, values and table, bit for bit, and the same class means."""
    assert a.counts() == b.counts()
    for name in ("relevance", "output"):
        np.testing.assert_array_equal(getattr(a, name)[:], getattr(b, name)[:])
    table_a, table_b = a.read_table(), b.read_table()
    assert sorted(table_a) == sorted(table_b)
    for column in table_a:
        np.testing.assert_array_equal(table_a[column], table_b[column], err_msg=column)
    if a.summary is not None and b.summary is not None and "relevance" in a.group:
        # summed while running and read back (after a resume) in another order, in float64
        for normalized in (True, False):
            means_a, means_b = a.class_means(normalized), b.class_means(normalized)
            assert sorted(means_a) == sorted(means_b)
            for k in means_a:
                np.testing.assert_allclose(means_a[k], means_b[k], rtol=1e-6, atol=1e-12)


def peak_memory_kib() -> int:
    """Peak resident memory of this process (VmHWM; ru_maxrss would carry the parent's)."""
    with open("/proc/self/status", encoding="ascii") as file:
        for line in file:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise RuntimeError("no VmHWM in /proc/self/status")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("path")
    parser.add_argument("--size", type=int, default=24)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--attributor", default="gradient")
    parser.add_argument("--composite", default="epsilon_plus_flat")
    parser.add_argument("--n-iter", type=int, default=3)
    parser.add_argument("--kill-at", type=int, default=None)
    parser.add_argument("--kill-rank", type=int, default=None)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--metrics", default="")
    parser.add_argument("--report", default=None)
    args = parser.parse_args()

    torch.set_num_threads(1)
    dataset = DemoDataset(args.size)
    rank = int(os.environ.get("RANK", 0))
    if args.kill_at is not None and args.kill_rank in (None, rank):
        dataset = KillAt(dataset, args.kill_at)
    options = {"n_iter": args.n_iter} if args.attributor == "smooth_grad" else {}
    explain_dataset(
        load_demo_model(), dataset, args.path, composite=args.composite or None,
        attributor=args.attributor, options=options, batch_size=args.batch_size,
        num_workers=args.workers, metrics=tuple(m for m in args.metrics.split(",") if m),
        dtype="float32", progress=False, seed=7,
    )
    if args.report:
        with open(f"{args.report}.{rank}", "w", encoding="utf-8") as file:
            json.dump({"peak_kib": peak_memory_kib()}, file)


if __name__ == "__main__":
    main()
