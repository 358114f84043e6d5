"""Relevance maximisation over a whole dataset: the concepts' reference samples, in the store.

For each channel of chosen layers, :func:`relevance_maximization` finds the samples of a
dataset in which the channel is most relevant for the explained class, and those in which it
is most active, with the position in the channel's map where it peaks (CRP's
``FeatureVisualization``, relevance and activation maximisation). It is one job of
:func:`~funcattr.datasets.run_job`, so it streams, resumes and splits over the processes of
``torchrun`` like :func:`~funcattr.datasets.explain_dataset`, into its own group of the same
store:

- per item and per layer, each channel's relevance and activation score and where its map
  peaks (:func:`funcattr.concepts.concept_statistics`, one forward and one backward pass per
  batch for all layers), under ``layers/<layer>/`` in the group;
- at the end (rank 0), the ``n_top`` best items per channel by relevance and by activation,
  merged chunk by chunk with :func:`funcattr.concepts.merge_top_samples` (an associative
  reduction, so the table does not depend on batches, ranks or sessions), under
  ``summary/<layer>/<relevance|activation>/`` (``values``, ``samples``, ``positions``, each
  ``(C, n_top)``).

:class:`ConceptStore` reads it back: the top-N of a channel, and the reference patch of each
of its samples (the part of the image where that one neuron draws its value, as
``FeatureVisualization.get_max_reference(..., rf=True)`` with ``vis_opaque_img`` crops it).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
import zarr
from torch import Tensor, nn

from funcattr.concepts import (
    MAX_TARGETS,
    ReferenceBox,
    TopSamples,
    concept_statistics,
    merge_top_samples,
    neuron_heatmaps,
    reference_box,
    top_samples,
)
from funcattr.concepts.conditions import check_layer_names
from funcattr.datasets.explain import batch_input, params_on, rules_settings
from funcattr.datasets.items import Batch, ItemReader
from funcattr.datasets.reader import DatasetStore
from funcattr.datasets.run import run_job
from funcattr.datasets.store import DONE, open_node
from funcattr.functional import functionalize

__all__ = ["CONCEPT_GROUP", "ConceptStore", "ReferencePatch", "RelevanceMaximizationJob",
           "open_concept_store", "relevance_maximization"]

#: The store group relevance maximisation writes into by default.
CONCEPT_GROUP = "concepts"
#: What the samples of a channel are ranked by.
RANKINGS = ("relevance", "activation")
_STATISTICS = ("relevance", "relevance_position", "activation", "activation_position")


def _column(layer: str, statistic: str) -> str:
    return f"layers/{layer}/{statistic}"


class RelevanceMaximizationJob:
    """The per-batch statistics of relevance maximisation: the job
    :func:`relevance_maximization` maps over a dataset (see it for the parameters)."""

    def __init__(self, model: nn.Module, layers: tuple[str, ...], *, composite: Any,
                 canonizers: Any, target: str | int, n_top: int, max_target: str,
                 abs_norm: bool, owner: str) -> None:
        self.model, self.layers = model, layers
        self.composite, self.canonizers = composite, canonizers
        self.target, self.n_top = target, n_top
        self.max_target, self.abs_norm = max_target, abs_norm
        self.owner = owner
        self.label = f"{owner} on {', '.join(layers)}"
        self.fn, self.params = functionalize(model, composite, canonizers)
        check_layer_names(self.fn, list(layers), "layers", owner)
        self.device = torch.device("cpu")

    def settings(self) -> dict[str, Any]:
        """Everything that determines the stored values (compared on resume)."""
        return {
            "job": "relevance_maximization",
            **rules_settings(self.model, self.composite, self.canonizers, self.fn),
            "layers": list(self.layers),
            "target": self.target,
            "max_target": self.max_target,
            "abs_norm": self.abs_norm,
        }

    def setup(self, device: torch.device) -> None:
        """Move the parameters (new tensors; the model is not changed) to ``device``."""
        self.device = device
        self.params = params_on(self.params, device)

    def dims(self, name: str, shape: tuple[int, ...]) -> tuple[str, ...] | None:
        if name.startswith("layers/") and len(shape) == 1:
            return (f"{name.split('/')[1]}_channel",)
        return None

    def __call__(self, batch: Batch) -> dict[str, Any]:
        x = batch_input(batch, self.params, self.device)
        count = x.shape[0]
        errors = [""] * count
        if self.target == "label":
            labels = batch.labels[batch.ok]
            for row in (labels < 0).nonzero().flatten().tolist():
                errors[row] = "no label, but target='label'"
            targets: Any = labels.clamp(min=0).to(self.device)
        elif self.target == "prediction":
            targets = None
        else:
            targets = torch.full((count,), int(self.target), dtype=torch.long,
                                 device=self.device)
        statistics = concept_statistics(self.fn, self.params, x, self.layers, targets,
                                        max_target=self.max_target, abs_norm=self.abs_norm)
        values: dict[str, Any] = {}
        for layer, found in statistics.items():
            for name, tensor in zip(_STATISTICS, found):
                values[_column(layer, name)] = tensor.detach()
        if any(errors):
            values["error"] = np.array(errors, dtype=object)
        return values

    def summarize(self, folder: Path, group: str, dataset: Any) -> dict[str, Any]:
        """The top-N table per layer and ranking, merged chunk by chunk (rank 0)."""
        node = open_node(folder, group)
        status = node["items/status"][:]
        chunk = int(node["items/status"].chunks[0])
        summary_group = node.require_group("summary")
        layers = {}
        for layer in self.layers:
            for ranking in RANKINGS:
                scores, positions = node[_column(layer, ranking)], node[
                    _column(layer, f"{ranking}_position")]
                best: TopSamples | None = None
                for start in range(0, status.size, chunk):
                    stop = min(start + chunk, status.size)
                    done = np.flatnonzero(status[start:stop] == DONE)
                    if not done.size:
                        continue
                    table = top_samples(torch.from_numpy(scores[start:stop][done]),
                                        torch.from_numpy(positions[start:stop][done]),
                                        torch.from_numpy(done + start), self.n_top)
                    best = table if best is None else merge_top_samples(best, table)
                if best is None:  # no item is done
                    channels = scores.shape[1]
                    best = TopSamples(torch.full((channels, self.n_top), float("-inf")),
                                      torch.full((channels, self.n_top), -1),
                                      torch.full((channels, self.n_top), -1))
                target = summary_group.require_group(f"{layer}/{ranking}")
                for name, tensor in zip(TopSamples._fields, best):
                    target.create_array(name, data=tensor.numpy(), overwrite=True)
            layers[layer] = {"channels": int(node[_column(layer, "relevance")].shape[1])}
        return {"layers": layers, "n_top": self.n_top, "items": int(status.size),
                "done": int((status == DONE).sum())}


class ReferencePatch(NamedTuple):
    """One reference sample of a concept.

    Attributes
    ----------
    sample : int
        Its index in the dataset.
    value : float
        Its score (relevance or activation) for the channel.
    position : int
        Where the channel's map peaks in it (flat index).
    box : ReferenceBox
        The part of the image where that neuron's heatmap is large.
    image : Tensor
        The sample cropped to ``box`` (``(C, h, w)``).
    heatmap : Tensor
        The neuron's heatmap (summed over the input channels), cropped to ``box``.
    """

    sample: int
    value: float
    position: int
    box: ReferenceBox
    image: Tensor
    heatmap: Tensor


class ConceptStore:
    """A relevance maximisation run's group of a store, read lazily.

    Attributes
    ----------
    store : DatasetStore
        The group as a dataset store (``table``, ``counts()``, ``failures()``, ``settings``).
    """

    def __init__(self, path: str | os.PathLike, group: str = CONCEPT_GROUP) -> None:
        self.store = DatasetStore(path, group)
        if self.store.settings.get("job") != "relevance_maximization":
            raise ValueError(
                f"open_concept_store(path={str(path)!r}, group={group!r}): expected the group "
                f"of a relevance_maximization run, got one of a "
                f"{self.store.settings.get('job', 'explain')!r} job. Pass the group given to "
                f"relevance_maximization."
            )

    @property
    def layers(self) -> list[str]:
        """The analysed layers."""
        return list(self.store.settings["layers"])

    @property
    def n_top(self) -> int:
        """Samples kept per channel (0 until a run has finished its summary)."""
        summary = self.store.summary
        return int(summary["n_top"]) if summary else 0

    def _layer(self, layer: str, ranking: str, owner: str) -> None:
        if layer not in self.layers:
            raise ValueError(f"ConceptStore.{owner}(layer={layer!r}): expected one of the "
                             f"analysed layers {self.layers}, got {layer!r}.")
        if ranking not in RANKINGS:
            raise ValueError(f"ConceptStore.{owner}(by={ranking!r}): expected one of "
                             f"{RANKINGS}, got {ranking!r}.")

    def scores(self, layer: str, by: str = "relevance") -> zarr.Array:
        """``(items, C)``: each item's score per channel (NaN where an item is not done)."""
        self._layer(layer, by, "scores")
        return self.store.group[_column(layer, by)]

    def positions(self, layer: str, by: str = "relevance") -> zarr.Array:
        """``(items, C)``: where each item's channel map peaks (flat index)."""
        self._layer(layer, by, "positions")
        return self.store.group[_column(layer, f"{by}_position")]

    def top(self, layer: str, by: str = "relevance") -> TopSamples:
        """The ``n_top`` best items per channel (``(C, n_top)`` tables, best first)."""
        self._layer(layer, by, "top")
        if not self.store.summary or "summary" not in self.store.group:
            raise KeyError(f"ConceptStore.top(layer={layer!r}): the run has no summary yet; "
                           f"run relevance_maximization again to finish it.")
        node = self.store.group[f"summary/{layer}/{by}"]
        return TopSamples(*(torch.from_numpy(node[name][:]) for name in TopSamples._fields))

    def reference_samples(self, layer: str, channel: int, by: str = "relevance",
                          n: int | None = None) -> list[int]:
        """The dataset indices of the channel's best items, best first (at most ``n``)."""
        table = self.top(layer, by)
        samples = table.samples[self._channel(table, layer, channel)]
        return [int(s) for s in samples[samples >= 0][:n].tolist()]

    @staticmethod
    def _channel(table: TopSamples, layer: str, channel: int) -> int:
        channels = table.values.shape[0]
        if isinstance(channel, bool) or not isinstance(channel, int) or \
                not 0 <= channel < channels:
            raise ValueError(f"ConceptStore: channel {channel!r} out of range for layer "
                             f"{layer!r} with {channels} channels; expected an int in [0, "
                             f"{channels - 1}].")
        return channel

    def reference_patches(self, fn: Any, params: Any, dataset: Any, layer: str, channel: int,
                          *, by: str = "relevance", n: int | None = 8, crop_th: float = 0.1,
                          kernel_size: int = 19) -> list[ReferencePatch]:
        """The channel's best items with the part of each where its peak neuron draws its
        value: the neuron's heatmap (:func:`funcattr.concepts.neuron_heatmaps`, from its
        activation down to the input) and the box where it is large
        (:func:`funcattr.concepts.reference_box`).

        Parameters
        ----------
        fn, params
            The model with the rules, from :func:`funcattr.functionalize` (the same model and
            composite as the run, for CRP's reference heatmaps).
        dataset
            The dataset the run went over.
        layer, channel
            The concept.
        by : {'relevance', 'activation'}
            Relevance or activation maximisation.
        n : int, optional
            How many of the ``n_top`` items (None: all).
        crop_th, kernel_size
            As in :func:`funcattr.concepts.reference_box`.
        """
        table = self.top(layer, by)
        row = self._channel(table, layer, channel)
        keep = table.samples[row] >= 0
        samples = table.samples[row][keep][:n].tolist()
        values = table.values[row][keep][:n].tolist()
        positions = table.positions[row][keep][:n].tolist()
        if not samples:
            return []
        reader = ItemReader(dataset)
        images = []
        for index in samples:
            loaded = reader[int(index)]
            if loaded.error:
                raise ValueError(f"ConceptStore.reference_patches(dataset=...): item {index} "
                                 f"does not load now: {loaded.error}. Pass the dataset of the "
                                 f"run.")
            images.append(loaded.image)
        x = torch.stack(images)
        first = next(iter(params.values()), None)
        if first is not None:
            x = x.to(device=first.device,
                     dtype=first.dtype if x.is_floating_point() else x.dtype)
        heatmaps = neuron_heatmaps(fn, params, x, layer, [channel] * len(samples), positions)
        heatmaps = heatmaps.detach().sum(1)
        patches = []
        for k, index in enumerate(samples):
            box = reference_box(heatmaps[k], crop_th=crop_th, kernel_size=kernel_size)
            patches.append(ReferencePatch(int(index), float(values[k]), int(positions[k]), box,
                                          box.crop(images[k]), box.crop(heatmaps[k].cpu())))
        return patches

    def __repr__(self) -> str:
        counts = self.store.counts()
        return (f"ConceptStore({str(self.store.path)!r}, layers={self.layers}, "
                f"items={len(self.store)}, done={counts['done']}, n_top={self.n_top})")


def open_concept_store(path: str | os.PathLike, group: str = CONCEPT_GROUP) -> ConceptStore:
    """Open a relevance maximisation run's group for reading (lazily)."""
    return ConceptStore(path, group)


def _check(model: Any, layers: Any, target: Any, n_top: Any, max_target: Any, abs_norm: Any,
           owner: str) -> tuple[str, ...]:
    if not isinstance(model, nn.Module):
        raise TypeError(f"{owner}(model={type(model).__name__}): expected a torch.nn.Module, "
                        f"got {type(model).__name__}. Pass the classifier.")
    training = [name or type(model).__name__ for name, m in model.named_modules() if m.training]
    if training:
        raise ValueError(
            f"{owner}(model=...): expected a model in eval mode, got training mode in "
            f"{training[:3]}; BatchNorm and Dropout would make each result depend on its "
            f"batch. Call model.eval() first."
        )
    if isinstance(layers, str):
        layers = (layers,)
    if not isinstance(layers, Sequence) or not layers or not all(
            isinstance(name, str) for name in layers):
        raise ValueError(f"{owner}(layers={layers!r}): expected layer names (a str or a "
                         f"non-empty sequence of str), got {layers!r}. Pass e.g. "
                         f"layers=['features.28'].")
    if not (target in ("label", "prediction") or (
            isinstance(target, int) and not isinstance(target, bool) and target >= 0)):
        raise ValueError(f"{owner}(target={target!r}): expected 'label' (CRP's), 'prediction' "
                         f"or a class index >= 0, got {target!r}.")
    if isinstance(n_top, bool) or not isinstance(n_top, int) or n_top < 1:
        raise ValueError(f"{owner}(n_top={n_top!r}): expected an int >= 1, got {n_top!r}. "
                         f"Pass e.g. n_top=40 (CRP's).")
    if max_target not in MAX_TARGETS:
        raise ValueError(f"{owner}(max_target={max_target!r}): expected one of "
                         f"{', '.join(MAX_TARGETS)}, got {max_target!r}.")
    if not isinstance(abs_norm, bool):
        raise TypeError(f"{owner}(abs_norm={abs_norm!r}): expected a bool, got "
                        f"{type(abs_norm).__name__}.")
    return tuple(dict.fromkeys(layers))


def relevance_maximization(
    model: nn.Module,
    dataset: Any,
    path: str | os.PathLike,
    *,
    layers: str | Sequence[str],
    composite: Any = None,
    canonizers: Any = None,
    target: str | int = "label",
    n_top: int = 40,
    max_target: str = "sum",
    abs_norm: bool = True,
    group: str = CONCEPT_GROUP,
    batch_size: int = 32,
    num_workers: int = 0,
    device: str | torch.device | None = None,
    mode: str = "resume",
    retry_failed: bool = False,
    progress: bool | None = None,
) -> ConceptStore:
    """Relevance (and activation) maximisation of the channels of ``layers`` over a dataset.

    Streamed in batches, resumable (rerun the same call after a crash) and split over the
    processes of ``torchrun`` (the tables equal a one-process run's), into the group ``group``
    of the store ``<path>/store.zarr`` (beside an explanation run, if there is one).

    Parameters
    ----------
    model : torch.nn.Module
        The classifier, in eval mode; never changed.
    dataset : Dataset
        Items as for :func:`~funcattr.datasets.explain_dataset`.
    path : str or os.PathLike
        The run folder.
    layers : str or sequence of str
        The layers whose channels are the concepts (the model's own names).
    composite, canonizers
        The rules, as for :func:`funcattr.functionalize`.
    target : 'label', 'prediction' or int
        The class whose relevance is followed: each item's label (CRP's
        ``FeatureVisualization``), the model's prediction, or one class.
    n_top : int
        Items kept per channel (CRP keeps 40).
    max_target : {'sum', 'max'}
        A channel's score per item: the sum over its map or its largest value.
    abs_norm : bool
        Divide each item's scores by their total absolute value over the channels (CRP's
        default).
    group : str
        The store group of this run.
    batch_size, num_workers, device, mode, retry_failed, progress
        As in :func:`~funcattr.datasets.explain_dataset`.

    Returns
    -------
    ConceptStore
        The run, opened for reading.

    Examples
    --------
    >>> run = relevance_maximization(model, DemoDataset(1000), "runs/demo",
    ...                              layers=["features.15"],
    ...                              composite="epsilon_plus_flat")   # doctest: +SKIP
    >>> run.reference_samples("features.15", 7, n=8)                   # doctest: +SKIP
    """
    owner = "relevance_maximization"
    layers = _check(model, layers, target, n_top, max_target, abs_norm, owner)
    job = RelevanceMaximizationJob(model, layers, composite=composite, canonizers=canonizers,
                                   target=target, n_top=n_top, max_target=max_target,
                                   abs_norm=abs_norm, owner=owner)
    run_job(job, dataset, Path(path), group=group, batch_size=batch_size,
            num_workers=num_workers, device=device, mode=mode, retry_failed=retry_failed,
            progress=progress)
    return ConceptStore(path, group)
