"""The array store of a dataset run: layout, creation, settings check and chunk writes.

A run writes into a folder; ``<folder>/store.zarr`` is a zarr v3 group. A job (the explanation,
or later a concept analysis) owns one group in it (the root for ``explain_dataset``) holding
arrays with one row per dataset item, chunked along the items (see below):

* ``items/`` the index table: ``index``, ``source``, ``label``, ``status`` (0 pending, 1 done,
  2 failed), ``error`` and the job's own columns;
* the job's arrays (``relevance``, ``output``, ``metrics/...``);
* the group's attribute ``funcattr``: format, the run's settings (compared on resume), the
  layout, a log of the sessions that wrote it and the summary.

The items are split into *units* of a few consecutive batches (the layout's ``unit``, a
multiple of ``batch_size``); one process computes a unit. Large columns (the relevance) are
chunked by the batch and written after each batch; the small ones (the index table, the
outputs, the metrics) are chunked by the unit, buffered and written once per unit (zarr's cost
per write is about the same for 32 rows as for 256), the status chunk last. zarr's local store
writes each chunk file atomically (a temporary file renamed into place), so an item is done only
once all its values are on disk; a process that dies leaves its unit pending.
"""

from __future__ import annotations

import asyncio
import errno
import queue
import shutil
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zarr
import zarr.api.asynchronous as zarr_async
from zarr.codecs import BloscCodec

__all__ = [
    "COMPRESSOR",
    "DONE",
    "FAILED",
    "FORMAT",
    "PENDING",
    "STORE_NAME",
    "ChunkWriter",
    "Column",
    "StoreFullError",
    "StoreSettingsError",
    "create_group",
    "differences",
    "header_of",
    "open_node",
    "read_header",
    "remove_store",
    "store_path",
    "update_header",
]

#: Format tag of the stores this module writes.
FORMAT = "funcattr.datasets/1"
#: Name of the zarr store inside a run's folder.
STORE_NAME = "store.zarr"
#: Item status values.
PENDING, DONE, FAILED = 0, 1, 2
_ATTRIBUTE = "funcattr"
#: The columns' compressor: LZ4 in Blosc with bit shuffling. On 32 relevance maps of the demo
#: (float16, one thread) it compresses as well as zarr's default zstd (level 3; ratio 4.18 vs
#: 4.19), encodes 5x faster (0.6 vs 3.0 ms CPU) and decodes 1.8x faster.
COMPRESSOR = BloscCodec(cname="lz4", clevel=5, shuffle="bitshuffle")
#: zarr compares each chunk with the fill value before writing it, to skip empty chunks: 1.7 ms
#: of CPU for a float16 chunk of 32 demo maps (NaN-aware), 3x its compression. A run writes each
#: chunk once and a chunk of failed items is rare, so the writer turns the check off.
_WRITE_EVERY_CHUNK = {"write_empty_chunks": True}


class StoreFullError(OSError):
    """The disk (or quota) ran full while writing a chunk; the store stays resumable."""


class StoreSettingsError(ValueError):
    """A store to resume was written with other settings (by another run).

    Attributes
    ----------
    differences : list of str
        One line per differing setting, e.g. ``"seed: 0 in the store, 5 now"``.
    """

    def __init__(self, message: str, differences: list[str] | tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.differences = list(differences)

    def __reduce__(self) -> tuple:  # pickled to the other ranks with its differences
        return type(self), (str(self), self.differences)


@dataclass(frozen=True)
class Column:
    """An array with one row per item: its name in the group, per-item shape, dtype, dims and
    items per chunk (0: the run's batch size)."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    dims: tuple[str, ...]
    chunk: int = 0

    @property
    def fill_value(self) -> Any:
        """The value of rows not (successfully) computed: NaN, -1, False or ''."""
        kind = np.dtype(object if self.dtype == "str" else self.dtype).kind
        return {"f": np.nan, "i": -1, "u": 0, "b": False, "O": ""}[kind]

    def empty(self, rows: int) -> np.ndarray:
        """``rows`` rows filled with :attr:`fill_value`."""
        dtype = object if self.dtype == "str" else self.dtype
        return np.full((rows, *self.shape), self.fill_value, dtype=dtype)

    def as_dict(self) -> dict[str, Any]:
        return {"shape": list(self.shape), "dtype": self.dtype, "dims": list(self.dims),
                "chunk": self.chunk}


def store_path(folder: str | Path) -> Path:
    """The zarr store of the run folder ``folder``."""
    return Path(folder) / STORE_NAME


def read_header(folder: Path, group: str, owner: str) -> dict[str, Any] | None:
    """The ``funcattr`` attribute of ``group`` in the folder's store; None where there is none.

    Raises
    ------
    ValueError
        If the folder holds something other than a funcattr store there.
    """
    path = store_path(folder)
    if not path.exists():
        if folder.exists() and not folder.is_dir():
            raise ValueError(
                f"{owner}(path={str(folder)!r}): expected a folder for the run's store, got a "
                f"file. Pass a folder path."
            )
        return None
    try:
        node = zarr.open_group(path, mode="r", path=group or None)
        header = node.attrs.get(_ATTRIBUTE)
    except Exception:  # not a zarr group (another format, a file, a broken store)
        if group and (path / "zarr.json").is_file() and not (path / group).exists():
            return None  # a new job's group in an existing store
        header = None
    if not isinstance(header, Mapping) or header.get("format") != FORMAT:
        raise ValueError(
            f"{owner}(path={str(folder)!r}): {path} exists but is not a store written by "
            f"funcattr.datasets (format {FORMAT}); it was written by another program or "
            f"version. Pass another path, or remove it yourself."
        )
    return dict(header)


def differences(stored: Any, current: Any, prefix: str = "") -> list[str]:
    """Human-readable differences between two JSON-like settings, one line per leaf."""
    if isinstance(stored, Mapping) and isinstance(current, Mapping):
        lines = []
        for key in sorted(set(stored) | set(current), key=str):
            name = f"{prefix}.{key}" if prefix else str(key)
            if key not in current:
                lines.append(f"{name}: {stored[key]!r} in the store, absent now")
            elif key not in stored:
                lines.append(f"{name}: absent in the store, {current[key]!r} now")
            else:
                lines += differences(stored[key], current[key], name)
        return lines
    if stored != current:
        return [f"{prefix}: {stored!r} in the store, {current!r} now"]
    return []


def remove_store(folder: Path, group: str = "") -> None:
    """Delete the job's group (the whole store for the root) of a funcattr store."""
    shutil.rmtree(store_path(folder) / group if group else store_path(folder))


def create_group(folder: Path, group: str, items: int, chunk: int,
                 columns: tuple[Column, ...], header: dict[str, Any]) -> zarr.Group:
    """Create the job's group with every column array (``chunk`` items per chunk where a
    column names none) and the header attribute."""
    root = zarr.open_group(store_path(folder), mode="a")
    node = root.require_group(group) if group else root
    for column in columns:
        node.create_array(
            column.name, shape=(items, *column.shape),
            chunks=(column.chunk or chunk, *column.shape),
            dtype=str if column.dtype == "str" else column.dtype,
            fill_value=column.fill_value, dimension_names=("item", *column.dims),
            compressors=COMPRESSOR, overwrite=True,
        )
    node.attrs[_ATTRIBUTE] = header
    return node


def open_node(folder: Path, group: str, mode: str = "r+") -> zarr.Group:
    """The job's group in the folder's store."""
    return zarr.open_group(store_path(folder), mode=mode, path=group or None)


def update_header(node: zarr.Group, **entries: Any) -> None:
    """Replace entries of the header attribute (rank 0 only)."""
    header = dict(node.attrs[_ATTRIBUTE])
    header.update(entries)
    node.attrs[_ATTRIBUTE] = header


def header_of(node: zarr.Group) -> dict[str, Any]:
    """The header attribute of a job's group."""
    return dict(node.attrs[_ATTRIBUTE])


def _full_disk(error: OSError, start: int, stop: int, where: Any, owner: str) -> StoreFullError:
    return StoreFullError(
        error.errno,
        f"{owner}: the disk is full ({error.strerror}) while writing items {start} to "
        f"{stop - 1} into {where}. The items done so far are kept and the store is "
        f"resumable: free space (or pass another path for a new run) and run the same call "
        f"again.",
    )


class ChunkWriter:
    """Writes chunks in a background thread, overlapping the computation of the next batch.

    The thread runs its own event loop on zarr's asynchronous API: the columns of one write
    are written concurrently, the status after them. :meth:`submit` writes rows at once;
    :meth:`stage` copies a batch's rows into buffers of the thread (made once, so that
    no heap holds small buffers that live across the batches' large ones) and writes the rows
    staged so far as one write with its ``last`` batch. At most ``depth`` tasks wait; an error of a
    write is raised by the next call or by :meth:`close` (a full disk as
    :class:`StoreFullError`).
    """

    def __init__(self, folder: Path, group: str, owner: str, depth: int = 2) -> None:
        self.path, self.group, self.owner = store_path(folder), group, owner
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._error: BaseException | None = None
        self._buffers: dict[str, np.ndarray] = {}
        self._staged_rows = self._staged_start = 0
        self._thread = threading.Thread(target=self._run, name="funcattr-store-writer",
                                        daemon=True)
        self._thread.start()

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        arrays: dict[str, Any] = {}
        try:
            node = loop.run_until_complete(
                zarr_async.open_group(store=self.path, mode="r+", path=self.group or None))
            while (task := self._queue.get()) is not None:
                if self._error is None:
                    try:
                        for write in self._writes(*task):
                            loop.run_until_complete(self._write(node, arrays, *write))
                    except BaseException as error:  # raised in the caller's thread
                        self._error = error
                self._queue.task_done()
            self._queue.task_done()
        except BaseException as error:
            self._error = error
        finally:
            loop.close()

    def _writes(self, start: int, values: Mapping[str, np.ndarray], status: np.ndarray,
                stage: frozenset[str], last: bool) -> list[tuple]:
        """The writes of a task: its unstaged columns now; with ``last``, the staged rows
        (these and the earlier ones) and then their status.

        Staged rows are copied into buffers made once and reused for every unit (a write
        finishes before the next task), so that no small buffer is made per batch.
        """
        now = {name: rows for name, rows in values.items() if name not in stage}
        if not stage:
            return [(start, now, status if last else None)]
        writes = [(start, now, None)] if now else []
        if not self._staged_rows:
            self._staged_start = start
        offset, count = self._staged_rows, len(status)
        staged = {name: values[name] for name in stage}
        for name, rows in {**staged, "items/status": status}.items():
            buffer = self._buffers.get(name)
            if buffer is None or len(buffer) < offset + count:
                grown = np.empty((max(2 * (offset + count), 1), *rows.shape[1:]), rows.dtype)
                if buffer is not None:
                    grown[:offset] = buffer[:offset]
                self._buffers[name] = buffer = grown
            buffer[offset:offset + count] = rows
        self._staged_rows = offset + count
        if last:
            rows, self._staged_rows = self._staged_rows, 0
            writes.append((self._staged_start,
                           {name: self._buffers[name][:rows] for name in staged},
                           self._buffers["items/status"][:rows]))
        return writes

    async def _write(self, node: Any, arrays: dict[str, Any], start: int,
                     values: Mapping[str, np.ndarray], status: np.ndarray | None) -> None:
        stop = start + len(next(iter(values.values())) if status is None else status)
        for name in [*values, "items/status"]:
            if name not in arrays:  # every chunk is written: no check for a chunk of fill values
                arrays[name] = (await node.getitem(name)).with_config(_WRITE_EVERY_CHUNK)
        try:
            await asyncio.gather(*(arrays[name].setitem(slice(start, stop), rows)
                                   for name, rows in values.items()))
            if status is not None:
                await arrays["items/status"].setitem(slice(start, stop), status)
        except OSError as error:
            if error.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            raise _full_disk(error, start, stop, self.path, self.owner) from error

    def _raise(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def submit(self, start: int, values: Mapping[str, np.ndarray], status: np.ndarray, *,
               stage: frozenset[str] = frozenset(), last: bool = True) -> None:
        """Queue the rows ``start : start + len(status)`` of every column.

        The columns not in ``stage`` are written at once. Those in ``stage`` and the status are
        staged after the rows staged before; with ``last``, every staged row is written, and
        the status after it (without ``stage``: the status after the columns).
        """
        self._raise()
        if not self._thread.is_alive():
            raise RuntimeError(f"{self.owner}: the store writer stopped.")
        self._queue.put((start, values, status, frozenset(stage), last))

    def close(self) -> None:
        """Wait until every queued chunk is written; raise the first write error."""
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()
        self._raise()
