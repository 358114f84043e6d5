"""Deterministic training of the demo ViT (:func:`funcattr.demo.vit.build_demo_vit`).

Run as::

    python -m funcattr.demo.train_vit [--out PATH] [--epochs N] [--threads T]

The same training stream, test split, optimiser (AdamW, one-cycle schedule) and determinism
as the CNN's script (:mod:`funcattr.demo.train`), with a transformer's settings: more epochs,
a lower peak learning rate and more weight decay. It prints the test accuracy and saves the
``float32`` state dict to ``--out`` (by default the package's ``vit_weights.pt``) and the
training record beside it (``vit_weights.json``).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from funcattr.demo.data import make_dataset
from funcattr.demo.train import TEST_SEED, TEST_SIZE, TRAIN_SEED, deterministic, predict, train
from funcattr.demo.vit import VIT_CONFIG, VIT_STEM, VIT_WEIGHTS_FILE, build_demo_vit

__all__ = ["main"]

_PACKAGE_DIR = Path(__file__).resolve().parent


def main(argv: Sequence[str] | None = None) -> float:
    """Train the demo ViT, report its test accuracy, save the weights; return the accuracy."""
    parser = argparse.ArgumentParser(prog="python -m funcattr.demo.train_vit",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=_PACKAGE_DIR / VIT_WEIGHTS_FILE)
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--samples-per-epoch", type=int, default=10_000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--learning-rate", type=float, default=2e-3)
    parser.add_argument("--weight-decay", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0, help="seed of the model initialisation")
    parser.add_argument("--threads", type=int, default=1, help="number of CPU threads")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    with deterministic(args.threads):
        model, _ = train(epochs=args.epochs, samples_per_epoch=args.samples_per_epoch,
                         batch_size=args.batch_size, learning_rate=args.learning_rate,
                         weight_decay=args.weight_decay, seed=args.seed, build=build_demo_vit,
                         log=lambda line: print(line, flush=True))
        train_time = time.perf_counter() - start
        images, labels, _ = make_dataset(TEST_SIZE, TEST_SEED)
        accuracy = float((predict(model, images) == labels).double().mean())
    print(f"training time {train_time:.1f} s; test accuracy {accuracy:.4f} on {TEST_SIZE} "
          f"samples", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    torch.save({key: value.detach().clone() for key, value in model.state_dict().items()},
               args.out)
    record = {"command": "python -m funcattr.demo.train_vit", "config": VIT_CONFIG,
              "conv_stem": list(VIT_STEM),
              "epochs": args.epochs, "samples_per_epoch": args.samples_per_epoch,
              "batch_size": args.batch_size, "learning_rate": args.learning_rate,
              "weight_decay": args.weight_decay, "seed": args.seed, "train_seed": TRAIN_SEED,
              "threads": args.threads, "torch": torch.__version__, "test_size": TEST_SIZE,
              "test_accuracy": round(accuracy, 4), "training_seconds": round(train_time)}
    args.out.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n",
                                             encoding="utf-8")
    print(f"saved weights to {args.out}", flush=True)
    return accuracy


if __name__ == "__main__":
    main()
