"""Reading a dataset run's store back: one call, lazily (arrays are read chunk by chunk)."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from funcattr.datasets.store import DONE, FAILED, PENDING, STORE_NAME, header_of, read_header

__all__ = ["DatasetStore", "open_store"]


class DatasetStore:
    """A dataset run's store, read lazily: arrays are ``zarr.Array`` objects that read only the
    chunks a slice touches (``store.relevance[100:200]`` is a numpy array).

    Attributes
    ----------
    path : Path
        The run folder.
    group : zarr.Group
        The job's zarr group (plain zarr, for anything not wrapped here).
    """

    def __init__(self, path: str | os.PathLike, group: str = "") -> None:
        folder = Path(path)
        if folder.name == STORE_NAME or (folder / "zarr.json").is_file():
            folder = folder.parent
        if read_header(folder, group, "open_store") is None:
            raise FileNotFoundError(
                f"open_store(path={str(path)!r}): no store there (expected "
                f"{folder / STORE_NAME}). Pass the folder given to explain_dataset."
            )
        self.path = folder
        self.group = zarr.open_group(folder / STORE_NAME, mode="r", path=group or None)

    @property
    def header(self) -> dict[str, Any]:
        """The run's record: format, settings, layout, sessions, summary."""
        return header_of(self.group)

    @property
    def settings(self) -> dict[str, Any]:
        """The settings the store was written with (model fingerprint, attributor, ...)."""
        return self.header["settings"]

    @property
    def summary(self) -> dict[str, Any] | None:
        """The summary rank 0 wrote at the end of the last complete session (or None)."""
        return self.header.get("summary")

    @property
    def sessions(self) -> list[dict[str, Any]]:
        """One record per session that wrote into the store (time, world size, device...)."""
        return self.header.get("sessions", [])

    def __len__(self) -> int:
        return int(self.group["items/status"].shape[0])

    @property
    def relevance(self) -> zarr.Array:
        """``(items, *item_shape)`` relevance (NaN where an item is not done)."""
        if "relevance" not in self.group:
            raise KeyError("open_store(...).relevance: this run did not keep the relevance "
                           "(save_relevance=False).")
        return self.group["relevance"]

    @property
    def output(self) -> zarr.Array:
        """``(items, classes)`` model outputs."""
        return self.group["output"]

    @property
    def table(self) -> dict[str, zarr.Array]:
        """The index table's columns (``index``, ``source``, ``label``, ``status``, ``error``,
        ``prediction``, ``target``, ``score``, ...), each ``(items,)``, lazily."""
        items = self.group["items"]
        return {name: items[name] for name in sorted(items.array_keys())}

    @property
    def metrics(self) -> dict[str, zarr.Array]:
        """Per-item metric values ``(items,)`` and curves ``(items, steps + 1)``, lazily."""
        if "metrics" not in self.group:
            return {}
        node = self.group["metrics"]
        return {name: node[name] for name in sorted(node.array_keys())}

    def read_table(self, columns: Iterable[str] | None = None) -> dict[str, np.ndarray]:
        """The index table (or the named columns) as numpy arrays; metric values included."""
        arrays = {**self.table, **{k: v for k, v in self.metrics.items()
                                   if len(v.shape) == 1}}
        names = list(arrays) if columns is None else list(columns)
        missing = [n for n in names if n not in arrays]
        if missing:
            raise KeyError(f"open_store(...).read_table(columns={missing!r}): expected columns "
                           f"from {sorted(arrays)}.")
        return {name: arrays[name][:] for name in names}

    def to_pandas(self, columns: Iterable[str] | None = None) -> Any:
        """The table as a ``pandas.DataFrame`` (needs pandas)."""
        try:
            import pandas
        except ImportError as error:
            raise ImportError("open_store(...).to_pandas(): needs pandas (pip install "
                              "pandas); read_table() gives numpy arrays.") from error
        return pandas.DataFrame(self.read_table(columns))

    def counts(self) -> dict[str, int]:
        """How many items are done, failed and pending."""
        status = self.group["items/status"][:]
        return {"done": int((status == DONE).sum()), "failed": int((status == FAILED).sum()),
                "pending": int((status == PENDING).sum())}

    def done(self) -> np.ndarray:
        """``(items,)`` boolean: the item's values are stored."""
        return self.group["items/status"][:] == DONE

    def failures(self) -> list[tuple[int, str, str]]:
        """``(index, source, error)`` of every failed item."""
        status = self.group["items/status"][:]
        rows = np.flatnonzero(status == FAILED)
        if not rows.size:
            return []
        sources, errors = self.group["items/source"][:], self.group["items/error"][:]
        return [(int(k), str(sources[k]), str(errors[k])) for k in rows]

    def class_means(self, normalized: bool = True) -> dict[int, np.ndarray]:
        """``{class: (H, W) map}``: the mean relevance (channels summed) of each class that has
        items, from the summary; ``normalized``: each item's relevance divided by its absolute
        sum first."""
        name = "class_mean_normalized" if normalized else "class_mean"
        if "summary" not in self.group or name not in self.group["summary"]:
            raise KeyError(f"open_store(...).class_means(): no {name} in the store (the run "
                           f"has no summary yet, or kept no relevance).")
        summary = self.group["summary"]
        means = summary[name][:]
        return {int(k): means[row] for row, k in enumerate(summary["class_index"][:])}

    def __repr__(self) -> str:
        counts = self.counts()
        settings = self.settings
        return (f"DatasetStore({str(self.path)!r}, items={len(self)}, done={counts['done']}, "
                f"failed={counts['failed']}, pending={counts['pending']}, "
                f"attributor={settings.get('attributor')!r})")


def open_store(path: str | os.PathLike, group: str = "") -> DatasetStore:
    """Open the store of a dataset run for reading (lazily).

    Parameters
    ----------
    path : str or os.PathLike
        The run folder given to :func:`~funcattr.datasets.explain_dataset` (or its
        ``store.zarr``).
    group : str
        The job's group in the store (``""`` for the explanation).

    Examples
    --------
    >>> store = open_store("runs/demo")                                  # doctest: +SKIP
    >>> store.relevance[:4].shape, store.read_table(["label", "score"])  # doctest: +SKIP
    """
    return DatasetStore(path, group)
