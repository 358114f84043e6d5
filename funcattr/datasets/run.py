"""The dataset run: a job mapped over every item of a dataset into a store, streamed,
resumable and sharded over the processes of ``torchrun``.

A *job* turns a :class:`~funcattr.datasets.items.Batch` into arrays with one row per loaded
item; :func:`run_job` does everything else: it checks or creates the store, finds the units
(a few consecutive batches) still pending, gives each process its own units, streams their
batches through a ``DataLoader`` (workers, pinned memory on GPUs), records items that fail,
writes the large columns after each batch and the small ones with the status last after each
unit (see :mod:`funcattr.datasets.store`), shows progress and lets rank 0 summarise after a
barrier. The explanation
(:func:`funcattr.datasets.explain_dataset`) is one job; concept analyses can be others, in
their own group of the same store.

Every batch is the same whatever the number of processes (batch ``k`` holds the items
``k * batch_size`` to ``(k + 1) * batch_size - 1``), so a job that is deterministic per batch
gives the same values item for item under ``torchrun`` as in one process.
"""

from __future__ import annotations

import errno
import getpass
import pickle
import platform
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor

from funcattr.datasets.distributed import Processes, shard
from funcattr.datasets.items import Batch, ItemReader, Loaded, collate
from funcattr.datasets.progress import Progress
from funcattr.datasets.sources import dataset_description
from funcattr.datasets.store import (
    DONE,
    FAILED,
    FORMAT,
    PENDING,
    ChunkWriter,
    Column,
    StoreFullError,
    StoreSettingsError,
    create_group,
    differences,
    header_of,
    open_node,
    read_header,
    remove_store,
    store_path,
    update_header,
)

__all__ = ["MODES", "Job", "run_job"]

#: What to do with an existing store: continue it, or delete it and start anew.
MODES = ("resume", "overwrite")
_PROBE_LIMIT = 64  # items tried to find one that loads, for the shapes of the store
#: Items per unit at most (the small columns' chunk): zarr costs about 0.4 ms of CPU per
#: chunk written whatever its size, so the 11 or more small columns of a batch of 32 demo items
#: cost more than the relevance's compression; written once per unit instead (8 batches of 32).
_UNIT_ITEMS = 256
#: Per-item bytes up to which a column is small (chunked and written by the unit).
_SMALL_BYTES = 16 * 1024
_TABLE = (  # the index table columns the runner writes itself
    Column("items/index", (), "int64", ()),
    Column("items/source", (), "str", ()),
    Column("items/label", (), "int64", ()),
    Column("items/status", (), "uint8", ()),
    Column("items/error", (), "str", ()),
)


class Job(Protocol):
    """What :func:`run_job` maps over a dataset.

    ``__call__(batch)`` returns, for the loaded items of the batch (``batch.images``), a dict
    ``column name -> array`` with one row per loaded item (tensors or numpy arrays); the
    column names are paths in the job's group (``"relevance"``, ``"items/score"``). An entry
    ``"error"`` (strings, ``""`` for success) fails single items. The first call, on one item,
    fixes the columns' shapes and dtypes. ``owner`` names the public call in messages,
    ``label`` the job in the progress line.

    A job may also summarise while it runs, so that its summary need not read every item back:
    with ``accumulate(batch, values, errors)`` it sees each batch's final rows (numpy, one per
    loaded item, ``errors[k] != ""`` for failed ones) before they are written, and with
    ``partial()`` it returns what it gathered (picklable); rank 0 passes every process's
    ``partial()`` to ``summarize(..., partials)``. Items done in earlier sessions are in no
    partial.
    """

    owner: str
    label: str

    def dims(self, name: str, shape: tuple[int, ...]) -> tuple[str, ...] | None:
        """Names of a column's non-item dimensions (xarray's); None: ``<name>_dim<k>``."""

    def settings(self) -> dict[str, Any]:
        """JSON-able settings of the job; a resumed store must hold the same."""

    def setup(self, device: torch.device) -> None:
        """Prepare to compute on ``device`` (called once per process)."""

    def __call__(self, batch: Batch) -> dict[str, Any]:
        """The job's rows for the loaded items of ``batch``."""

    def summarize(self, folder: Path, group: str, dataset: Any) -> dict[str, Any]:
        """Dataset-level outputs from the finished store (rank 0); returns the summary.

        A job that defines ``partial()`` takes a fourth argument ``partials``: the list of
        every process's ``partial()`` after its last batch (see the class docstring).
        """


def _version() -> str:
    try:
        return metadata.version("funcattr")
    except metadata.PackageNotFoundError:
        return "unknown"


def _check_int(value: Any, name: str, owner: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{owner}({name}={value!r}): expected an int >= {minimum}.")
    return value


def _numpy(value: Any) -> np.ndarray:
    if isinstance(value, Tensor):
        return value.detach().cpu().numpy()
    return np.asarray(value)


def _columns(job: Job, values: Mapping[str, np.ndarray], batch: int,
             unit: int) -> tuple[Column, ...]:
    """The job's columns: large ones chunked by the ``batch``, small ones by the ``unit``."""
    columns = []
    for name, rows in values.items():
        dtype = "str" if rows.dtype.kind in "OUT" else rows.dtype.name
        shape = tuple(rows.shape[1:])
        dims = job.dims(name, shape)
        if dims is None:
            dims = tuple(f"{name.rsplit('/', 1)[-1]}_dim{k}" for k in range(1, len(shape) + 1))
        if len(dims) != len(shape):
            raise ValueError(f"{job.owner}: column {name!r} has shape {shape}, dims {dims}.")
        small = rows.dtype.kind in "OUT" or rows[:1].nbytes <= _SMALL_BYTES
        columns.append(Column(name, shape, dtype, dims, unit if small else batch))
    return tuple(columns)


def _batches_per_unit(items: int, batch: int, world: int) -> int:
    """Batches per unit of a new store: up to :data:`_UNIT_ITEMS` items, and at least two units
    per process where the dataset has the batches for it."""
    batches = -(-items // batch)
    return max(1, min(_UNIT_ITEMS // batch, batches // (2 * world)))


def _compute(job: Job, batch: Batch) -> tuple[dict[str, np.ndarray], list[str]]:
    """The job's rows for the loaded items, and an error text per loaded item ('' for none).

    When the batch fails as a whole, its items are computed one by one, so that one bad item
    fails alone; running out of memory is no item's fault and is raised.
    """
    count = int(batch.ok.sum())
    if count == 0:
        return {}, []
    try:
        values = {name: _numpy(rows) for name, rows in job(batch).items()}
    except torch.OutOfMemoryError as error:
        raise torch.OutOfMemoryError(
            f"{job.owner}: out of memory on a batch of {len(batch)} items; pass a smaller "
            f"batch_size (or a chunk_size in the attributor's options). {error}"
        ) from error
    except Exception as error:
        if count == 1:
            return {}, [f"{job.label} failed: {type(error).__name__}: {error}"]
        parts = [_compute(job, batch.subset([row])) for row in range(count)]
        errors = [part_errors[0] for _, part_errors in parts]
        good = [part_values for part_values, part_errors in parts if not part_errors[0]]
        values = {name: np.concatenate([part[name] for part in good]) for name in
                  (good[0] if good else {})}
        return _spread(values, errors), errors
    errors = [str(e) for e in values.pop("error", [""] * count)]
    return values, errors


def _spread(values: dict[str, np.ndarray], errors: list[str]) -> dict[str, np.ndarray]:
    """Rows of the successful items -> rows of all loaded items (failed rows: zeros)."""
    good = [k for k, error in enumerate(errors) if not error]
    spread = {}
    for name, rows in values.items():
        full = np.zeros((len(errors), *rows.shape[1:]), dtype=rows.dtype)
        full[good] = rows
        spread[name] = full
    return spread


def _chunk_values(batch: Batch, columns: tuple[Column, ...], values: Mapping[str, np.ndarray],
                  errors: list[str]) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The full chunk of every column (fill values where an item failed) and its status."""
    n = len(batch)
    loaded = batch.ok.nonzero().flatten().numpy()
    all_errors = list(batch.errors)
    for position, error in zip(loaded, errors):
        all_errors[position] = error
    ok = np.array([not error for error in all_errors])
    rows = {column.name: column.empty(n) for column in columns}
    good_loaded = np.array([not error for error in errors], dtype=bool)
    for name, array in values.items():
        if name in rows:
            rows[name][loaded[good_loaded]] = array[good_loaded]
    rows["items/source"] = np.array(batch.sources, dtype=object)
    rows["items/label"] = batch.labels.numpy()
    rows["items/error"] = np.array(all_errors, dtype=object)
    status = np.where(ok, DONE, FAILED).astype(np.uint8)
    rows.pop("items/status", None)
    return rows, status


class _UnitSampler(torch.utils.data.Sampler):
    """The index lists of the batches of the given units, in order."""

    def __init__(self, units: list[int], unit: int, batch: int, items: int) -> None:
        self.units, self.unit, self.batch, self.items = units, unit, batch, items

    def __iter__(self):
        for k in self.units:
            stop = min(self.items, (k + 1) * self.unit)
            for start in range(k * self.unit, stop, self.batch):
                yield list(range(start, min(stop, start + self.batch)))

    def __len__(self) -> int:
        return sum(-(-(min(self.items, (k + 1) * self.unit) - k * self.unit) // self.batch)
                   for k in self.units)


@dataclass
class _Plan:
    """What rank 0 found: the pending units and the layout, for every rank."""

    shape: tuple[int, ...]
    columns: tuple[Column, ...]
    pending: list[int]
    done_before: int
    items: int
    unit: int


def _probe(job: Job, reader: ItemReader, owner: str) -> tuple[Loaded, dict[str, np.ndarray]]:
    """The first item that loads, and the job's values for it (any error here is raised)."""
    reasons = []
    for index in range(min(len(reader), _PROBE_LIMIT)):
        loaded = reader[index]
        if not loaded.error:
            batch = collate([loaded])
            values = {name: _numpy(rows) for name, rows in job(batch).items()}
            values.pop("error", None)
            return loaded, values
        reasons.append(f"item {index}: {loaded.error}")
    raise ValueError(
        f"{owner}(dataset=...): none of the first {len(reasons)} items loads, so the store's "
        f"shapes are unknown: {'; '.join(reasons[:3])}. Check the dataset."
    )


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no user name in some containers
        return ""


def _session(processes: Processes, mode: str) -> dict[str, Any]:
    return {
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "mode": mode,
        "world_size": processes.world,
        "device": processes.device.type,
        "host": socket.gethostname(),
        "user": _user(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "funcattr": _version(),
    }


def _portable(error: Exception) -> Exception:
    """``error`` if it can be sent to the other ranks, else a RuntimeError with its text."""
    try:
        pickle.loads(pickle.dumps(error))
    except Exception:
        return RuntimeError(f"{type(error).__name__}: {error}")
    return error


def _prepare(job: Job, dataset: Any, folder: Path, group: str, batch_size: int, mode: str,
             retry_failed: bool, processes: Processes) -> _Plan:
    """Rank 0: check or create the store and list the pending units."""
    owner = job.owner
    header = read_header(folder, group, owner)
    reader = ItemReader(dataset)
    probe, values = _probe(job, reader, owner)
    shape = tuple(probe.image.shape)
    settings = {
        "dataset": dataset_description(dataset),
        "item_shape": list(shape),
        "batch_size": batch_size,
        "funcattr": _version(),
        **job.settings(),
    }
    if header is not None and mode == "resume":
        changed = differences(header["settings"], settings)
        if changed:
            raise StoreSettingsError(
                f"{owner}(path={str(folder)!r}): the store there was written with other "
                f"settings, so its items cannot be continued: " + "; ".join(changed) +
                ". Pass mode='overwrite' to start a new run there, or another path.", changed
            )
    items = len(dataset)
    unit = batch_size * _batches_per_unit(items, batch_size, processes.world)
    columns = tuple(Column(c.name, c.shape, c.dtype, c.dims, unit) for c in _TABLE)
    columns += _columns(job, values, batch_size, unit)
    created = header is None or mode == "overwrite"
    if created:
        if header is not None:
            remove_store(folder, group)
        folder.mkdir(parents=True, exist_ok=True)
        create_group(folder, group, items, batch_size, columns, {
            "format": FORMAT, "settings": settings,
            "layout": {"items": items, "chunk": batch_size, "unit": unit,
                       "columns": {c.name: c.as_dict() for c in columns}},
            "sessions": [], "summary": None,
        })
    node = open_node(folder, group)
    header = header_of(node)
    if created:
        node["items/index"][:] = np.arange(items, dtype=np.int64)
    update_header(node, sessions=[*header.get("sessions", []), _session(processes, mode)])
    status = node["items/status"][:]
    unfinished = status == PENDING
    if retry_failed:
        unfinished |= status == FAILED
    layout = header["layout"]
    unit = int(layout.get("unit", layout["chunk"]))  # stores before units: one batch each
    units = np.arange(items) // unit
    pending = sorted(set(units[unfinished].tolist()))
    done_before = int((~unfinished).sum())
    stored = tuple(Column(name, tuple(c["shape"]), c["dtype"], tuple(c["dims"]),
                          int(c.get("chunk") or layout["chunk"]))
                   for name, c in layout["columns"].items())
    return _Plan(shape, stored, pending, done_before, items, unit)


def run_job(job: Job, dataset: Any, path: str | Path, *, group: str = "", batch_size: int = 32,
            num_workers: int = 0, device: Any = None, mode: str = "resume",
            retry_failed: bool = False, progress: bool | None = None,
            summary: bool = True) -> Path:
    """Map ``job`` over every item of ``dataset`` into the store in the folder ``path``.

    Parameters
    ----------
    job : Job
        What to compute per batch (see :class:`Job`).
    dataset : Dataset
        A map-style dataset (see :mod:`funcattr.datasets.items` for the item forms).
    path : str or Path
        The run folder; the store is ``path/store.zarr``.
    group : str
        The job's group in the store (``""``: the root).
    batch_size : int
        Items per batch (and per chunk of the large columns, the relevance).
    num_workers : int
        ``DataLoader`` worker processes per rank (0: load in the main process).
    device : str or torch.device, optional
        Where to compute; default ``cuda`` (``cuda:LOCAL_RANK`` under ``torchrun``) if
        available, else the CPU.
    mode : {'resume', 'overwrite'}
        An existing store with the same settings is continued; ``'overwrite'`` deletes it
        first. Other settings are refused (with the differences) in ``'resume'``.
    retry_failed : bool
        Compute failed items again (their units are recomputed whole).
    progress : bool, optional
        Show progress (rank 0); default: yes.
    summary : bool
        Let rank 0 write the job's summary at the end.

    Returns
    -------
    Path
        The run folder.
    """
    owner = job.owner
    folder = Path(path)
    _check_int(batch_size, "batch_size", owner, 1)
    _check_int(num_workers, "num_workers", owner, 0)
    if mode not in MODES:
        raise ValueError(f"{owner}(mode={mode!r}): expected one of {MODES}.")
    processes = Processes.start(device)
    try:
        job.setup(processes.device)
        plan: _Plan | BaseException
        if processes.rank == 0:
            try:
                plan = _prepare(job, dataset, folder, group, batch_size, mode, retry_failed,
                                processes)
            except Exception as error:  # every rank raises it, none waits forever
                plan = error if processes.world == 1 else _portable(error)
        else:
            plan = None
        plan = processes.broadcast(plan)
        if isinstance(plan, BaseException):
            raise plan
        if processes.rank != 0 and not store_path(folder).exists():
            raise FileNotFoundError(
                f"{owner}(path={str(folder)!r}): rank {processes.rank} does not see the store "
                f"that rank 0 created there; on several machines, the path must be on a "
                f"filesystem they share."
            )
        _process(job, dataset, folder, group, batch_size, num_workers, progress, processes,
                 plan)
        partial = getattr(job, "partial", None)
        extra = {"partials": processes.gather(partial())} if summary and partial else {}
        if summary and processes.rank == 0:
            try:
                update_header(open_node(folder, group),
                              summary=job.summarize(folder, group, dataset, **extra))
            except OSError as error:
                if error.errno not in (errno.ENOSPC, errno.EDQUOT):
                    raise
                raise StoreFullError(
                    error.errno,
                    f"{owner}: the disk is full ({error.strerror}) while writing the summary "
                    f"into {folder}. Every item is stored; free space and run the same call "
                    f"again to write the summary.",
                ) from error
        processes.barrier()
    finally:
        processes.close()
    return folder


def _process(job: Job, dataset: Any, folder: Path, group: str, batch_size: int,
             num_workers: int, progress: bool | None, processes: Processes, plan: _Plan) -> None:
    """Compute and write this rank's pending units; wait for the others.

    The columns chunked by the batch are written after each batch; the others, and the status
    last, once the unit's last batch is computed.
    """
    units = shard(plan.pending, processes.rank, processes.world)
    columns = tuple(c for c in plan.columns if c.name not in ("items/status", "items/index"))
    staged = frozenset(c.name for c in columns if c.chunk == plan.unit != batch_size)
    loader = torch.utils.data.DataLoader(
        ItemReader(dataset, plan.shape),
        batch_sampler=_UnitSampler(units, plan.unit, batch_size, plan.items),
        collate_fn=collate,
        num_workers=num_workers,
        pin_memory=processes.device.type == "cuda",
    )
    bar = Progress(job.label, plan.items, plan.done_before, processes.rank, processes.world,
                   folder, progress)
    batches = iter(loader)  # worker processes fork before the writer thread starts
    writer = ChunkWriter(folder, group, job.owner)
    accumulate = getattr(job, "accumulate", None)
    try:
        for batch in batches:
            values, errors = _compute(job, batch)
            if accumulate is not None and values:
                accumulate(batch, values, errors)
            rows, status = _chunk_values(batch, columns, values, errors)
            start = int(batch.indices[0])
            stop = start + len(batch)
            writer.submit(start, rows, status, stage=staged,
                          last=stop % plan.unit == 0 or stop == plan.items)
            bar.update(len(batch), int((status == FAILED).sum()))
    finally:
        writer.close()  # the units computed so far are written, even after an error
    bar.close(final=False)
    processes.barrier()
    if processes.rank == 0:
        bar.close(final=True)
        bar.remove_files()
