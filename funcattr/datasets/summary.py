"""Dataset-level outputs of an explanation run, written by rank 0 from the finished store.

* ``summary/`` in the store, for the K classes that have items: ``class_index`` ``(K,)`` (the
  classes), ``class_count`` ``(K,)``, ``class_mean`` ``(K, H, W)`` (the mean relevance of each
  class's items, channels summed), ``class_mean_normalized`` (the mean of each item's relevance
  divided by its absolute sum, so every item weighs the same) and the mean metric curves (for
  items that are no images, the item's whole shape);
* ``class_means.png``: the normalised class means, one tile per class (the first 64 classes
  with items), in class order;
* ``class_stats.csv``: per class (and for all items) the counts, accuracy, score, relevance
  statistics and metric means;
* ``metrics.csv``: per metric column the mean, standard deviation and count over the dataset.

Items are grouped by their label where the dataset has labels, else by their prediction.
The class means are summed while the items are explained (:class:`ClassSums`, one per process,
merged by rank 0); only items done in earlier sessions are read back, chunk by chunk.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from funcattr.datasets.evaluation import higher_is_better
from funcattr.datasets.store import DONE, FAILED, PENDING, open_node
from funcattr.image import imsave

__all__ = ["ClassSums", "summarize_explanation"]

_PICTURE_CLASSES = 64  # classes shown in class_means.png (the arrays hold every class)
_ITEM_STATS = ("prediction", "target", "score", "relevance_sum", "relevance_abs_sum")


def _mean(values: np.ndarray) -> float:
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if finite.size else math.nan


def _std(values: np.ndarray) -> float:
    finite = values[np.isfinite(values)]
    return float(finite.std()) if finite.size else math.nan


class ClassSums:
    """Per-class sums of relevance maps (channels summed), plain and divided by each item's
    absolute sum, in float64, and the items they hold.

    The explanation job adds each batch's stored relevance as it computes it, so that rank 0
    merges every process's sums instead of reading the relevance back (0.11 ms per image, 5% of
    the demo CNN's attribution); the summary reads back only the items that no process of the
    last session added (those done in earlier sessions).

    Parameters
    ----------
    channel_axis : int or None
        The axis of an item's relevance that is summed (None: nothing summed).
    """

    def __init__(self, channel_axis: int | None) -> None:
        self.channel_axis = channel_axis
        self.sums: dict[int, torch.Tensor] = {}
        self.normalized: dict[int, torch.Tensor] = {}
        self.indices: list[np.ndarray] = []

    @property
    def nbytes(self) -> int:
        """Bytes held by the sums."""
        return sum(t.numel() * t.element_size() for t in (*self.sums.values(),
                                                          *self.normalized.values()))

    def add(self, keys: torch.Tensor, relevance: torch.Tensor, abs_sum: torch.Tensor,
            indices: np.ndarray) -> None:
        """Add the items ``indices`` of classes ``keys`` with their relevance (as stored) and
        absolute sums."""
        if not len(keys):
            return
        maps = relevance
        if self.channel_axis is not None:
            summed = torch.promote_types(relevance.dtype, torch.float32)
            maps = maps.to(summed).sum(dim=1 + self.channel_axis)
        maps = maps.to(torch.float64)
        scale = abs_sum.to(device=maps.device, dtype=torch.float64)
        scale = torch.where(scale > 0, scale, 1.0).reshape(-1, *([1] * (maps.ndim - 1)))
        classes, inverse = torch.unique(keys.to(maps.device), return_inverse=True)
        plain = maps.new_zeros((len(classes), *maps.shape[1:])).index_add_(0, inverse, maps)
        divided = maps.new_zeros(plain.shape).index_add_(0, inverse, maps / scale)
        for row, k in enumerate(classes.tolist()):
            self._accumulate(k, plain[row].cpu(), divided[row].cpu())
        self.indices.append(np.asarray(indices, dtype=np.int64))

    def _accumulate(self, k: int, plain: torch.Tensor, divided: torch.Tensor) -> None:
        if k in self.sums:
            self.sums[k] += plain
            self.normalized[k] += divided
        else:
            self.sums[k], self.normalized[k] = plain.clone(), divided.clone()

    def merge(self, other: ClassSums) -> None:
        """Add another process's sums."""
        for k in other.sums:
            self._accumulate(k, other.sums[k], other.normalized[k])
        self.indices += other.indices

    def held(self) -> np.ndarray:
        """The indices of the items added."""
        return np.concatenate(self.indices) if self.indices else np.zeros(0, dtype=np.int64)


def _class_means(relevance: Any, chunk: int, groups: np.ndarray, done: np.ndarray,
                 abs_sum: np.ndarray, present: list[int], channel_axis: int | None,
                 partials: Sequence[ClassSums | None]) -> tuple[np.ndarray, np.ndarray]:
    """Mean relevance (channels summed) of each class in ``present``, plain and normalised per
    item, ``(len(present), *spatial)`` each.

    The processes' ``partials`` are merged where they hold only items that are done, each once
    (anything else, e.g. a process that stopped adding, is read back instead); the other done
    items are read back chunk by chunk, in float32 (numpy's float16 conversion was 12x slower
    than torch's), so memory stays bounded by one chunk and the sums.
    """
    total = ClassSums(channel_axis)
    counted = np.zeros(done.shape, dtype=bool)
    for partial in partials:
        if partial is None:
            continue
        held = partial.held()
        if (held.size and (held.min() < 0 or held.max() >= done.size)) or (
                np.unique(held).size != held.size):
            continue
        if not (done[held].all() and not counted[held].any()):
            continue
        total.merge(partial)
        counted[held] = True
    todo = done & ~counted
    for start in range(0, relevance.shape[0], chunk):
        stop = min(start + chunk, relevance.shape[0])
        rows = todo[start:stop]
        if not rows.any():
            continue
        block = torch.from_numpy(relevance[start:stop][rows])
        if block.dtype == torch.float16:
            block = block.to(torch.float32)
        total.add(torch.from_numpy(groups[start:stop][rows]), block,
                  torch.from_numpy(abs_sum[start:stop][rows]),
                  np.flatnonzero(rows) + start)
    counts = np.bincount(groups[done], minlength=max(present) + 1)[present]
    shape = next(iter(total.sums.values())).shape
    plain = torch.stack([total.sums.get(k, torch.zeros(shape, dtype=torch.float64))
                         for k in present])
    divided = torch.stack([total.normalized.get(k, torch.zeros(shape, dtype=torch.float64))
                           for k in present])
    divisor = torch.from_numpy(counts.astype(np.float64)).reshape(-1, *([1] * len(shape)))
    return ((plain / divisor).to(torch.float32).numpy(),
            (divided / divisor).to(torch.float32).numpy())


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as file:
        writer = csv.DictWriter(file, fieldnames=list(rows[0]))
        writer.writeheader()
        for row in rows:
            writer.writerow({k: (f"{v:.10g}" if isinstance(v, float) else v)
                             for k, v in row.items()})


def _class_row(key: Any, name: str, members: np.ndarray, done: np.ndarray,
               status: np.ndarray, items: dict[str, np.ndarray], labels: np.ndarray | None,
               metrics: dict[str, np.ndarray]) -> dict[str, Any]:
    ok = members & done
    row: dict[str, Any] = {
        "class": key, "name": name, "items": int(ok.sum()),
        "failed": int((members & (status == FAILED)).sum()),
    }
    if labels is not None:
        row["accuracy"] = (float((items["prediction"][ok] == labels[ok]).mean())
                           if ok.any() else math.nan)
    abs_sum = items["relevance_abs_sum"][ok]
    positive = (items["relevance_sum"][ok] + abs_sum) / 2  # sum = positive - negative
    positive_share = np.where(abs_sum > 0, positive / np.where(abs_sum > 0, abs_sum, 1), np.nan)
    row.update({
        "score_mean": _mean(items["score"][ok]),
        "relevance_sum_mean": _mean(items["relevance_sum"][ok]),
        "relevance_sum_std": _std(items["relevance_sum"][ok]),
        "relevance_abs_sum_mean": _mean(abs_sum),
        "positive_share_mean": _mean(positive_share),
    })
    for column, values in metrics.items():
        row[column] = _mean(values[ok])
    return row


def summarize_explanation(folder: Path, group: str, class_names: Sequence[str] | None,
                          channel_axis: int = 0,
                          partials: Sequence[Mapping[str, ClassSums] | None] = ()
                          ) -> dict[str, Any]:
    """Write the dataset-level outputs of an explanation store; return the summary dict.

    Parameters
    ----------
    folder : Path
        The run folder.
    group : str
        The explanation's group in the store.
    class_names : sequence of str, optional
        Names of the classes (the dataset's ``classes``).
    channel_axis : int
        The axis of an item's relevance summed for the class-mean picture.
    partials : sequence of dict or None
        Each process's class sums of the items it explained in this session, by grouping
        (``{"label": ClassSums, "prediction": ClassSums}``, None for none); the done items
        they do not hold are read back.
    """
    node = open_node(folder, group)
    status = node["items/status"][:]
    done = status == DONE
    items = {name: node[f"items/{name}"][:] for name in _ITEM_STATS}
    labels = node["items/label"][:]
    has_labels = bool((labels[done] >= 0).any()) if done.any() else bool((labels >= 0).any())
    # a failed item counts for its label's class; without labels, only done items have one
    groups = labels if has_labels else np.where(done, items["prediction"], -1)
    classes = int(node["output"].shape[1])
    groups = np.where((groups >= 0) & (groups < classes), groups, -1)
    valid = groups >= 0
    metrics = {}
    curves = {}
    if "metrics" in node:
        for name in sorted(node["metrics"].array_keys()):
            values = node[f"metrics/{name}"]
            if name.endswith("_curve"):
                curves[name] = values
            else:
                metrics[name] = values[:].astype(np.float64)

    def name_of(k: int) -> str:
        return str(class_names[k]) if class_names is not None and k < len(class_names) else str(k)

    rows = [_class_row(k, name_of(k), groups == k, done & valid, status, items,
                       labels if has_labels else None, metrics)
            for k in range(classes) if (groups == k).any()]
    rows.append(_class_row("all", "all", np.ones_like(done), done, status, items,
                           labels if has_labels else None, metrics))
    _write_csv(folder / "class_stats.csv", rows)

    files = ["class_stats.csv"]
    summary_group = node.require_group("summary")
    counts = np.bincount(groups[done & valid], minlength=classes)
    present = [k for k in range(classes) if counts[k] > 0]
    summary_group.create_array("class_index", data=np.array(present, dtype=np.int64),
                               overwrite=True, dimension_names=("class",))
    summary_group.create_array("class_count", data=counts[present].astype(np.int64),
                               overwrite=True, dimension_names=("class",))
    if "relevance" in node and present:
        relevance = node["relevance"]
        image = len(relevance.shape) == 4
        axis = channel_axis if image else None
        grouping = "label" if has_labels else "prediction"
        means, normalized = _class_means(
            relevance, int(relevance.chunks[0]), np.where(valid, groups, 0), done & valid,
            items["relevance_abs_sum"], present, axis,
            [None if partial is None else partial.get(grouping) for partial in partials])
        dims = list(relevance.metadata.dimension_names[1:])
        if axis is not None:
            del dims[axis]
        for name, array in (("class_mean", means), ("class_mean_normalized", normalized)):
            summary_group.create_array(name, data=array, overwrite=True,
                                       dimension_names=("class", *dims))
        if image:
            shown = normalized[:_PICTURE_CLASSES]
            columns = min(len(shown), 8)
            grid = (-(-len(shown) // columns), columns)
            imsave(folder / "class_means.png", shown, grid=grid, symmetric=True, cmap="bwr")
            files.append("class_means.png")
    for name, values in curves.items():
        total = np.zeros(values.shape[1:])
        chunk = int(values.chunks[0])
        for start in range(0, values.shape[0], chunk):
            stop = min(start + chunk, values.shape[0])
            rows_done = done[start:stop]
            if rows_done.any():
                total += np.nan_to_num(values[start:stop][rows_done].astype(np.float64)).sum(0)
        summary_group.create_array(f"{name}_mean", data=total / max(int(done.sum()), 1),
                                   overwrite=True, dimension_names=(f"{name}_step",))
    metric_rows = [{"column": name, "higher_is_better": higher_is_better(name),
                    "mean": _mean(values[done]), "std": _std(values[done]),
                    "items": int(np.isfinite(values[done]).sum())}
                   for name, values in metrics.items()]
    if metric_rows:
        _write_csv(folder / "metrics.csv", metric_rows)
        files.append("metrics.csv")
    return {
        "items": int(status.size),
        "done": int(done.sum()),
        "failed": int((status == FAILED).sum()),
        "pending": int((status == PENDING).sum()),
        "grouped_by": "label" if has_labels else "prediction",
        "classes": [{k: (None if isinstance(v, float) and math.isnan(v) else v)
                     for k, v in row.items()} for row in rows],
        "metrics": {row["column"]: None if math.isnan(row["mean"]) else row["mean"]
                    for row in metric_rows},
        "files": files,
    }
