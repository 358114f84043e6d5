"""Relevance maximisation as a script, for the tests that need processes (``torchrun``).

Run as ``python tests/concepts_worker.py PATH --size N`` (or under ``torchrun``).
"""

from __future__ import annotations

import argparse

import torch

import funcattr
from funcattr.composites import EpsilonPlusFlat
from funcattr.datasets import DemoDataset, relevance_maximization
from funcattr.demo import load_demo_model


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("path")
    parser.add_argument("--size", type=int, default=18)
    parser.add_argument("--batch-size", type=int, default=4)
    args = parser.parse_args()
    torch.set_num_threads(1)
    model = load_demo_model()
    relevance_maximization(model, DemoDataset(args.size), args.path,
                           layers=["features.15", "features.10"], composite=EpsilonPlusFlat(),
                           canonizers=funcattr.canonizers_for(model),
                           batch_size=args.batch_size, n_top=6, progress=False)


if __name__ == "__main__":
    main()
