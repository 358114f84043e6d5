"""Deterministic training of the demo model :class:`~funcattr.demo.model.DemoNet`.

Run as::

    python -m funcattr.demo.train [--out PATH] [--epochs N] [--samples-dir DIR] [--threads T]

The model is trained on the procedural dataset of :mod:`funcattr.demo.data`. Training data is
an endless stream: epoch ``e`` uses samples ``e * samples_per_epoch`` to
``(e + 1) * samples_per_epoch - 1`` of the dataset with seed :data:`TRAIN_SEED`, so no sample is
seen twice and there is no need to shuffle (the samples are independent). The test split is the
first :data:`TEST_SIZE` samples of the dataset with seed :data:`TEST_SEED`.

Optimisation: AdamW with a one-cycle learning-rate schedule and cross-entropy loss. The script
seeds the model initialisation, turns on ``torch.use_deterministic_algorithms`` and fixes the
number of CPU threads, so a run is reproducible bit for bit on the same machine type, PyTorch
build and thread count (floating-point summation order may differ across them).

Afterwards the script prints the test accuracy, saves the ``float32`` state dict to ``--out``
(by default the package's ``weights.pt``), and writes sample images of the test split, the
first ``--per-class`` correctly classified ones of every class, as PNG files with PNG masks and
an ``index.json`` into ``--samples-dir`` (by default ``samples/`` next to ``--out``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from funcattr.demo.data import CLASSES, IMAGE_SIZE, NUM_CLASSES, make_dataset
from funcattr.demo.model import SAMPLES_DIR, WEIGHTS_FILE, DemoNet

__all__ = [
    "TEST_SEED",
    "TEST_SIZE",
    "TRAIN_SEED",
    "deterministic",
    "evaluate",
    "main",
    "predict",
    "select_samples",
    "train",
    "write_samples",
]

#: Dataset seed of the training stream.
TRAIN_SEED: int = 0
#: Dataset seed of the test split.
TEST_SEED: int = 1
#: Number of samples in the test split.
TEST_SIZE: int = 5000

_PACKAGE_DIR = Path(__file__).resolve().parent


@contextlib.contextmanager
def deterministic(threads: int | None = 2) -> Iterator[None]:
    """Turn on deterministic algorithms and fix the thread count, restoring both afterwards.

    Parameters
    ----------
    threads : int or None, optional
        Number of intra-op CPU threads; left unchanged if None.

    Yields
    ------
    None
    """
    previous_deterministic = torch.are_deterministic_algorithms_enabled()
    previous_warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    previous_threads = torch.get_num_threads()
    torch.use_deterministic_algorithms(True)
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous_deterministic, warn_only=previous_warn_only)
        torch.set_num_threads(previous_threads)


def train(
    *,
    epochs: int = 10,
    samples_per_epoch: int = 10_000,
    batch_size: int = 64,
    learning_rate: float = 3e-3,
    weight_decay: float = 1e-4,
    seed: int = 0,
    data_seed: int = TRAIN_SEED,
    log: Callable[[str], None] | None = None,
    build: Callable[[], torch.nn.Module] | None = None,
) -> tuple[DemoNet, list[float]]:
    """Train a fresh :class:`DemoNet` (or the model ``build()`` makes) on the procedural
    training stream.

    The model initialisation is seeded with ``seed`` inside :func:`torch.random.fork_rng`, so
    the global random state is left untouched; the result is fully determined by the arguments
    (for a fixed PyTorch build and thread count; see :func:`deterministic`).

    Parameters
    ----------
    epochs : int, optional
        Number of epochs, each on ``samples_per_epoch`` fresh samples.
    samples_per_epoch : int, optional
        Number of training samples per epoch.
    batch_size : int, optional
        Mini-batch size; a smaller last batch of an epoch is dropped.
    learning_rate : float, optional
        Peak learning rate of the one-cycle schedule.
    weight_decay : float, optional
        Decoupled weight decay of AdamW.
    seed : int, optional
        Seed of the model initialisation.
    data_seed : int, optional
        Dataset seed of the training stream.
    log : callable or None, optional
        Called with one progress line per epoch.
    build : callable or None, optional
        Makes the fresh ``float32`` model (under the seeded generator); default
        :class:`DemoNet` (the demo ViT: :func:`funcattr.demo.vit.build_demo_vit`).

    Returns
    -------
    model : DemoNet
        The trained ``float32`` model, in eval mode.
    losses : list of float
        The mean training loss of every epoch.
    """
    steps_per_epoch = samples_per_epoch // batch_size
    if epochs < 1 or steps_per_epoch < 1:
        raise ValueError("need at least one epoch with at least one full batch")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = DemoNet(dtype=torch.float32) if build is None else build()
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=weight_decay)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=learning_rate, total_steps=epochs * steps_per_epoch
    )
    losses: list[float] = []
    for epoch in range(epochs):
        start = time.perf_counter()
        images, labels, _ = make_dataset(
            steps_per_epoch * batch_size, data_seed, start=epoch * samples_per_epoch
        )
        model.train()
        total_loss, correct = 0.0, 0
        for step in range(steps_per_epoch):
            batch = slice(step * batch_size, (step + 1) * batch_size)
            logits = model(images[batch])
            loss = F.cross_entropy(logits, labels[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            total_loss += loss.item()
            correct += int((logits.argmax(dim=1) == labels[batch]).sum())
        losses.append(total_loss / steps_per_epoch)
        if log is not None:
            accuracy = correct / (steps_per_epoch * batch_size)
            log(
                f"epoch {epoch + 1:3d}/{epochs}: loss {losses[-1]:.4f}, "
                f"train accuracy {accuracy:.4f}, {time.perf_counter() - start:.1f} s"
            )
    return model.eval(), losses


@torch.no_grad()
def predict(model: torch.nn.Module, images: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    """Return the predicted labels of ``images`` in batches.

    Parameters
    ----------
    model : torch.nn.Module
        Classifier (used as is; put it into eval mode first).
    images : torch.Tensor
        Images of shape ``[N, 3, H, W]``; converted to the model's dtype.
    batch_size : int, optional
        Number of images per forward pass.

    Returns
    -------
    torch.Tensor
        ``int64`` predicted class indices, shape ``[N]``.
    """
    dtype = next(model.parameters()).dtype
    chunks = [
        model(images[i : i + batch_size].to(dtype)).argmax(dim=1)
        for i in range(0, images.shape[0], batch_size)
    ]
    return torch.cat(chunks) if chunks else torch.empty(0, dtype=torch.int64)


def evaluate(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    """Return the classification accuracy of ``model`` on ``images``.

    Parameters
    ----------
    model : torch.nn.Module
        Classifier in eval mode.
    images : torch.Tensor
        Images of shape ``[N, 3, H, W]``.
    labels : torch.Tensor
        True class indices, shape ``[N]``.

    Returns
    -------
    float
        Fraction of correctly classified images.
    """
    return float((predict(model, images) == labels).double().mean())


def select_samples(
    predictions: torch.Tensor, labels: torch.Tensor, per_class: int = 2
) -> list[int]:
    """Return the indices of the first ``per_class`` correctly classified samples of each class.

    Parameters
    ----------
    predictions : torch.Tensor
        Predicted class indices, shape ``[N]``.
    labels : torch.Tensor
        True class indices, shape ``[N]``.
    per_class : int, optional
        Number of samples per class.

    Returns
    -------
    list of int
        Sample indices, grouped by class in the order of :data:`CLASSES`, ascending within a
        class (a class may have fewer if there are not enough correct samples).
    """
    correct = predictions == labels
    selected: list[int] = []
    for label in range(NUM_CLASSES):
        candidates = ((labels == label) & correct).nonzero().flatten()
        selected += candidates[:per_class].tolist()
    return selected


def write_samples(
    directory: Path,
    images: torch.Tensor,
    labels: torch.Tensor,
    masks: torch.Tensor,
    indices: Sequence[int],
    *,
    seed: int,
    extra: dict | None = None,
) -> Path:
    """Write samples as PNG images and masks plus an ``index.json`` describing them.

    Parameters
    ----------
    directory : pathlib.Path
        Output folder; created if missing. PNG files in it are removed first.
    images, labels, masks : torch.Tensor
        A dataset split as returned by :func:`~funcattr.demo.data.make_dataset`.
    indices : sequence of int
        Indices into the split of the samples to write.
    seed : int
        Dataset seed of the split, recorded in the index.
    extra : dict or None, optional
        Further entries of the index (e.g. training information).

    Returns
    -------
    pathlib.Path
        Path of the written ``index.json``.
    """
    directory.mkdir(parents=True, exist_ok=True)
    for old in directory.glob("*.png"):
        old.unlink()
    records = []
    for index in indices:
        label = int(labels[index])
        name = f"{CLASSES[label]}_{index:04d}"
        pixels = torch.round(images[index].permute(1, 2, 0) * 255).to(torch.uint8).numpy()
        Image.fromarray(pixels).save(directory / f"{name}.png", optimize=True)
        mask = masks[index].numpy().astype(np.uint8) * 255
        Image.fromarray(mask).save(directory / f"{name}_mask.png", optimize=True)
        records.append(
            {
                "name": name,
                "index": int(index),
                "file": f"{name}.png",
                "mask": f"{name}_mask.png",
                "label": label,
                "class": CLASSES[label],
            }
        )
    index_data = {
        "classes": list(CLASSES),
        "seed": seed,
        "image_size": IMAGE_SIZE,
        "samples": records,
        **(extra or {}),
    }
    path = directory / "index.json"
    path.write_text(json.dumps(index_data, indent=2) + "\n", encoding="utf-8")
    return path


def main(argv: Sequence[str] | None = None) -> float:
    """Train the demo model, report its test accuracy, save the weights and samples.

    Parameters
    ----------
    argv : sequence of str or None, optional
        Command-line arguments; ``sys.argv[1:]`` if None.

    Returns
    -------
    float
        Test accuracy.
    """
    parser = argparse.ArgumentParser(
        prog="python -m funcattr.demo.train", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--out", type=Path, default=_PACKAGE_DIR / WEIGHTS_FILE, help="weights file to write"
    )
    parser.add_argument("--samples-dir", type=Path, default=None, help="sample folder to write")
    parser.add_argument("--epochs", type=int, default=10, help="number of epochs")
    parser.add_argument("--samples-per-epoch", type=int, default=10_000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--learning-rate", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0, help="seed of the model initialisation")
    parser.add_argument("--threads", type=int, default=2, help="number of CPU threads")
    parser.add_argument("--per-class", type=int, default=2, help="sample images per class")
    args = parser.parse_args(argv)
    samples_dir = args.samples_dir or args.out.parent / SAMPLES_DIR

    start = time.perf_counter()
    with deterministic(args.threads):
        model, _ = train(
            epochs=args.epochs,
            samples_per_epoch=args.samples_per_epoch,
            batch_size=args.batch_size,
            learning_rate=args.learning_rate,
            seed=args.seed,
            log=lambda line: print(line, flush=True),
        )
        train_time = time.perf_counter() - start
        images, labels, masks = make_dataset(TEST_SIZE, TEST_SEED)
        predictions = predict(model, images)
    accuracy = float((predictions == labels).double().mean())
    print(f"training time {train_time:.1f} s", flush=True)
    print(f"test accuracy {accuracy:.4f} on {TEST_SIZE} samples", flush=True)
    for label, name in enumerate(CLASSES):
        rows = labels == label
        class_accuracy = float((predictions[rows] == label).double().mean())
        print(f"  {name:10s} {class_accuracy:.4f} ({int(rows.sum())} samples)", flush=True)

    args.out.parent.mkdir(parents=True, exist_ok=True)
    state = {key: value.detach().clone() for key, value in model.state_dict().items()}
    torch.save(state, args.out)
    print(f"saved weights to {args.out} ({args.out.stat().st_size} bytes)", flush=True)

    extra = {
        "training": {
            "command": "python -m funcattr.demo.train",
            "epochs": args.epochs,
            "samples_per_epoch": args.samples_per_epoch,
            "batch_size": args.batch_size,
            "learning_rate": args.learning_rate,
            "seed": args.seed,
            "train_seed": TRAIN_SEED,
            "threads": args.threads,
            "torch": torch.__version__,
            "test_size": TEST_SIZE,
            "test_accuracy": round(accuracy, 4),
        }
    }
    indices = select_samples(predictions, labels, args.per_class)
    path = write_samples(samples_dir, images, labels, masks, indices, seed=TEST_SEED, extra=extra)
    print(f"wrote {len(indices)} samples and {path}", flush=True)
    return accuracy


if __name__ == "__main__":
    main()
