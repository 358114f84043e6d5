"""Explain (and evaluate) every item of a dataset into an array store.

:func:`explain_dataset` runs one of funcattr's pure attributors (or your own with the same
signature) with a composite and canonizers over a dataset, streamed in batches, and writes the
relevance, the model output and an index table into ``<path>/store.zarr``; with ``metrics``
it evaluates each batch's fresh attribution as well. :func:`evaluate_dataset` is the same with
the evaluation metrics on and the relevance not kept. Both resume an interrupted run and split
the dataset over the processes of ``torchrun`` (see :mod:`funcattr.datasets.run`).
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import os
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from funcattr.attribution import gradient, one_hot, smooth_grad
from funcattr.attribution.registry import ATTRIBUTORS
from funcattr.composites import get_composite
from funcattr.datasets.evaluation import (
    DEFAULT_DATASET_METRICS,
    LOCALISATION,
    check_metrics,
    evaluate_batch,
)
from funcattr.datasets.items import Batch, ItemReader
from funcattr.datasets.reader import DatasetStore, open_store
from funcattr.datasets.run import run_job
from funcattr.datasets.summary import ClassSums, summarize_explanation
from funcattr.functional import functionalize
from funcattr.ruled import FunctionalModel

__all__ = ["STORE_DTYPES", "ExplainJob", "batch_input", "evaluate_dataset", "explain_dataset",
           "item_seed", "model_fingerprint", "params_on", "rules_settings"]

#: Dtypes of the stored relevance.
STORE_DTYPES: dict[str, torch.dtype] = {"float16": torch.float16, "float32": torch.float32,
                                        "float64": torch.float64}
_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")
_FLOAT16_MAX = float(torch.finfo(torch.float16).max)
_METRIC_SALT = 0x6D657472  # separates the metrics' random streams from SmoothGrad's
#: Bytes the running class sums of a process may hold (two float64 maps per class); beyond, the
#: job stops summing and the summary reads the relevance back.
CLASS_SUMS_LIMIT = 256 * 2**20


def item_seed(seed: int, index: int) -> int:
    """The random seed of item ``index`` in a run with ``seed`` (a hash of both, 63 bits)."""
    digest = hashlib.blake2b(f"{seed}:{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def _qualified(function: Callable) -> str:
    """``module.qualname`` of a function, or of a callable object's class with its repr (memory
    addresses left out, so that the same settings describe alike in every process)."""
    if hasattr(function, "__qualname__"):
        return f"{getattr(function, '__module__', '?')}.{function.__qualname__}"
    kind = type(function)
    return f"{kind.__module__}.{kind.__qualname__}: {_ADDRESS.sub('', repr(function))}"


def _attributor_name(function: Callable) -> str:
    """A registered attributor's name (stable when the library's modules move), else the
    function's qualified name."""
    for name, spec in ATTRIBUTORS.items():
        if spec.function is function:
            return name
    return _qualified(function)


def _name(function: Callable) -> str:
    return getattr(function, "__name__", type(function).__name__)


def _describe(value: Any) -> Any:
    """A JSON-able description of an option, equal for equal options."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, list | tuple):
        return [_describe(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _describe(v) for k, v in value.items()}
    if isinstance(value, torch.dtype | torch.device):
        return str(value)
    if isinstance(value, Tensor):
        data = value.detach().cpu().reshape(-1)
        digest = hashlib.sha256(data.view(torch.uint8).numpy().tobytes()).hexdigest()[:16]
        return f"tensor(shape={tuple(value.shape)}, dtype={data.dtype}, sha256={digest})"
    if isinstance(value, functools.partial):
        return {"function": _qualified(value.func), "args": _describe(value.args),
                "keywords": _describe(value.keywords)}
    if callable(value):
        return _qualified(value)
    return _ADDRESS.sub("", repr(value))


def rules_settings(model: nn.Module, composite: Any, canonizers: Any,
                   fn: FunctionalModel) -> dict[str, Any]:
    """The settings of a job that runs ``model`` with rules: its fingerprint, the composite,
    a SHA-256 of the rules ``fn`` assigned, the canonizers (compared on resume)."""
    if canonizers is not None and not isinstance(canonizers, Sequence):
        canonizers = [canonizers]
    return {
        "model": model_fingerprint(model),
        "composite": _describe(get_composite(composite) if isinstance(composite, str)
                               else composite),
        "rules_sha256": hashlib.sha256(repr(fn.rules).encode()).hexdigest(),
        "canonizers": [repr(c) for c in canonizers or ()],
    }


def params_on(params: dict[str, Tensor], device: torch.device) -> dict[str, Tensor]:
    """The parameters on ``device`` (new tensors where they move; the model is not changed)."""
    first = next(iter(params.values()), None)
    if first is not None and first.device != device:
        return {name: tensor.to(device) for name, tensor in params.items()}
    return params


def batch_input(batch: Batch, params: dict[str, Tensor], device: torch.device) -> Tensor:
    """A batch's loaded images on ``device``, floating images in the parameters' dtype."""
    x = batch.images.to(device, non_blocking=True)
    first = next(iter(params.values()), None)
    if first is not None and x.dtype != first.dtype and x.is_floating_point():
        x = x.to(first.dtype)
    return x


def model_fingerprint(model: nn.Module) -> dict[str, Any]:
    """The model's type, size and a SHA-256 of its parameters and buffers (in name order)."""
    digest = hashlib.sha256()
    count = 0
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        data = tensor.detach().cpu().reshape(-1)
        digest.update(f"{name}:{data.dtype}:{tuple(tensor.shape)}\n".encode())
        digest.update(data.view(torch.uint8).numpy().tobytes() if data.numel() else b"")
        count += data.numel()
    return {"type": _qualified(type(model)), "values": count, "sha256": digest.hexdigest()}


def _resolve_attributor(attributor: Any, options: Mapping[str, Any] | None,
                        owner: str) -> tuple[Callable, dict[str, Any]]:
    options = dict(options or {})
    if isinstance(attributor, str):
        if attributor not in ATTRIBUTORS:
            raise ValueError(
                f"{owner}(attributor={attributor!r}): expected one of {list(ATTRIBUTORS)} or a "
                f"pure attributor fn(fn, params, input, attr_output_fn, **options)."
            )
        attributor = ATTRIBUTORS[attributor].function
    if isinstance(attributor, functools.partial):
        if attributor.args:
            raise ValueError(
                f"{owner}(attributor=partial(...)): expected keyword options only, got "
                f"positional arguments {attributor.args!r}. Pass them as keywords."
            )
        options = {**attributor.keywords, **options}
        attributor = attributor.func
    if not callable(attributor):
        raise TypeError(
            f"{owner}(attributor={attributor!r}): expected a pure attributor such as "
            f"funcattr.smooth_grad (or its name), got {type(attributor).__name__}."
        )
    try:
        parameters = inspect.signature(attributor).parameters
    except (TypeError, ValueError):
        parameters = {}
    takes_any = any(p.kind is p.VAR_KEYWORD for p in parameters.values())
    accepted = [name for name, p in parameters.items() if p.kind is p.KEYWORD_ONLY]
    unknown = [key for key in options if parameters and not takes_any and key not in parameters]
    if unknown:
        raise ValueError(
            f"{owner}(options={{{unknown[0]!r}: ...}}): {_name(attributor)} takes no option "
            f"{unknown[0]!r}; its options are {accepted}."
        )
    if attributor is smooth_grad and {"generator", "noise"} & set(options):
        raise ValueError(
            f"{owner}(options={{'generator' or 'noise': ...}}): SmoothGrad's noise is drawn per "
            f"item from seed (so it does not depend on batches or ranks); pass seed=... instead."
        )
    return attributor, options


class ExplainJob:
    """The explanation of one batch: the job :func:`explain_dataset` maps over a dataset.

    See :func:`explain_dataset` for the parameters; ``dtype`` is the stored relevance's.
    """

    def __init__(self, model: nn.Module, *, composite: Any, canonizers: Any,
                 attributor: Callable, options: Mapping[str, Any], target: str | int,
                 times_output: bool, dtype: torch.dtype, seed: int,
                 metrics: Mapping[str, Mapping[str, Any]], save_relevance: bool,
                 owner: str) -> None:
        self.model, self.composite, self.canonizers = model, composite, canonizers
        self.function, self.options = attributor, dict(options)
        self.target, self.times_output, self.dtype = target, times_output, dtype
        self.seed, self.metrics, self.save_relevance = seed, dict(metrics), save_relevance
        self.owner = owner
        self.label = f"{owner} {_name(attributor)}"
        self.fn, self.params = functionalize(model, composite, canonizers)
        self.device = torch.device("cpu")
        self._class_sums: dict[str, ClassSums] | None = {
            "label": ClassSums(0), "prediction": ClassSums(0)} if save_relevance else None

    def settings(self) -> dict[str, Any]:
        """Everything that determines the stored values (compared on resume)."""
        return {
            "job": "explain",
            **rules_settings(self.model, self.composite, self.canonizers, self.fn),
            "attributor": _attributor_name(self.function),
            "options": _describe(self.options),
            "target": self.target,
            "times_output": self.times_output,
            "dtype": str(self.dtype).removeprefix("torch."),
            "seed": self.seed,
            "metrics": _describe(self.metrics),
            "save_relevance": self.save_relevance,
        }

    def setup(self, device: torch.device) -> None:
        """Move the parameters (new tensors; the model is not changed) to ``device``."""
        self.device = device
        self.params = params_on(self.params, device)

    def dims(self, name: str, shape: tuple[int, ...]) -> tuple[str, ...] | None:
        if name == "relevance" and len(shape) == 3:
            return ("channel", "height", "width")
        if name == "output" and len(shape) == 1:
            return ("class",)
        if name.endswith("_curve"):
            return (f"{name.rsplit('/', 1)[-1]}_step",)
        return None

    def _noise(self, batch: Batch, x: Tensor) -> Tensor:
        """SmoothGrad's standard-normal noise, ``(n_iter - 1, batch, ...)``, drawn per item."""
        n_iter = self.options.get("n_iter", inspect.signature(smooth_grad)
                                  .parameters["n_iter"].default)
        generator = torch.Generator()
        draws = []
        for index in batch.indices[batch.ok].tolist():
            generator.manual_seed(item_seed(self.seed, index))
            draws.append(torch.randn((max(n_iter - 1, 0), *x.shape[1:]), generator=generator,
                                     dtype=x.dtype))
        return torch.stack(draws, dim=1).to(x.device)

    def __call__(self, batch: Batch) -> dict[str, Any]:
        x = batch_input(batch, self.params, self.device)
        count = x.shape[0]
        labels = batch.labels[batch.ok]
        errors = [""] * count
        targets: Tensor | None = None
        if self.target == "label":
            for row in (labels < 0).nonzero().flatten().tolist():
                errors[row] = "no label, but target='label'"
            targets = labels.clamp(min=0).to(self.device)
        elif isinstance(self.target, int):
            targets = torch.full((count,), self.target, dtype=torch.long, device=self.device)
        elif self.function is not gradient:  # the prediction, before any copy is perturbed
            with torch.no_grad():
                targets = self.fn.plain(self.params, x).argmax(dim=1)
        options = dict(self.options)
        if self.function is smooth_grad:
            options["noise"] = self._noise(batch, x)
        seed_fn = one_hot(targets, times_output=self.times_output)
        output, attribution = self.function(self.fn, self.params, x, seed_fn, **options)
        output, attribution = output.detach(), attribution.detach()
        if targets is None:
            targets = output.argmax(dim=1)
        flat = attribution.reshape(count, -1)
        magnitude = flat.abs()
        values: dict[str, Any] = {
            "output": output.float(),
            "items/prediction": output.argmax(dim=1),
            "items/target": targets,
            "items/score": output.gather(1, targets[:, None])[:, 0].float(),
            # summed in the relevance's dtype (torch sums pairwise: relative error ~1e-7 in
            # float32, 4x less CPU than converting every value to float64 first)
            "items/relevance_sum": flat.sum(dim=1).to(torch.float64),
            "items/relevance_abs_sum": magnitude.sum(dim=1).to(torch.float64),
            "items/has_mask": batch.has_mask[batch.ok],
        }
        if self.metrics:
            masks = None if batch.masks is None else batch.masks.to(self.device)
            seed = item_seed(self.seed ^ _METRIC_SALT, int(batch.indices[0]))
            values.update(evaluate_batch(self.metrics, self.fn.plain, self.params, x, targets,
                                         attribution, masks, batch.has_mask[batch.ok], seed))
        if self.save_relevance:
            stored = attribution.to(self.dtype)
            if self.dtype == torch.float16:
                peak = magnitude.amax(dim=1)
                for row in (peak > _FLOAT16_MAX).nonzero().flatten().tolist():
                    errors[row] = (f"relevance exceeds the float16 range (max |R| = "
                                   f"{float(peak[row]):.4g}); pass dtype='float32'")
            values["relevance"] = stored
        if any(errors):
            values["error"] = np.array(errors, dtype=object)
        return values

    def accumulate(self, batch: Batch, values: Mapping[str, np.ndarray],
                   errors: Sequence[str]) -> None:
        """Add a computed batch's successful items to the running class sums (by label where
        an item has one, else by prediction), as the summary would read them back."""
        if self._class_sums is None or "relevance" not in values:
            return
        stored = torch.from_numpy(values["relevance"])
        if stored.ndim != 4:  # no images: no channel axis to sum; the summary reads back
            self._class_sums = None
            return
        if stored.dtype == torch.float16:
            stored = stored.to(torch.float32)
        predictions = torch.from_numpy(values["items/prediction"])
        classes = values["output"].shape[1]
        labels = batch.labels[batch.ok]
        good = torch.tensor([not error for error in errors], dtype=torch.bool)
        indices = batch.indices[batch.ok]
        abs_sum = torch.from_numpy(values["items/relevance_abs_sum"])
        for grouping, rows, keys in (("label", good & (labels >= 0), labels),
                                     ("prediction", good & (labels < 0), predictions)):
            rows &= (keys >= 0) & (keys < classes)
            if rows.any():
                self._class_sums[grouping].add(keys[rows], stored[rows], abs_sum[rows],
                                               indices[rows].numpy())
        if sum(sums.nbytes for sums in self._class_sums.values()) > CLASS_SUMS_LIMIT:
            self._class_sums = None

    def partial(self) -> dict[str, ClassSums] | None:
        """This process's class sums of the items it explained (see :class:`Job`)."""
        return self._class_sums

    def summarize(self, folder: Path, group: str, dataset: Any,
                  partials: Sequence[Any] = ()) -> dict[str, Any]:
        classes = getattr(dataset, "classes", None)
        names = [str(c) for c in classes] if isinstance(classes, Sequence) else None
        return summarize_explanation(folder, group, names, partials=partials)


def _check_options(model: Any, target: Any, times_output: Any, dtype: Any, seed: Any,
                   owner: str) -> torch.dtype:
    if not isinstance(model, nn.Module):
        raise TypeError(f"{owner}(model={type(model).__name__}): expected a torch.nn.Module.")
    training = [name or type(model).__name__ for name, m in model.named_modules() if m.training]
    if training:
        raise ValueError(
            f"{owner}(model=...): expected a model in eval mode, got training mode in "
            f"{training[:3]}; in training mode BatchNorm and Dropout make each result depend on "
            f"its batch. Call model.eval() first."
        )
    if not (target in ("prediction", "label") or (
            isinstance(target, int) and not isinstance(target, bool) and target >= 0)):
        raise ValueError(
            f"{owner}(target={target!r}): expected 'prediction', 'label' or a class index >= 0."
        )
    if times_output is not None and not isinstance(times_output, bool):
        raise TypeError(f"{owner}(times_output={times_output!r}): expected a bool or None.")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"{owner}(seed={seed!r}): expected an int.")
    name = str(dtype).removeprefix("torch.")
    if name not in STORE_DTYPES:
        raise ValueError(
            f"{owner}(dtype={dtype!r}): expected one of {list(STORE_DTYPES)} for the stored "
            f"relevance."
        )
    return STORE_DTYPES[name]


def explain_dataset(
    model: nn.Module,
    dataset: Any,
    path: str | os.PathLike,
    *,
    composite: Any = None,
    canonizers: Any = None,
    attributor: Callable | str = gradient,
    options: Mapping[str, Any] | None = None,
    target: str | int = "prediction",
    times_output: bool | None = None,
    dtype: str | torch.dtype = "float16",
    seed: int = 0,
    metrics: Sequence[str] = (),
    metric_options: Mapping[str, Mapping[str, Any]] | None = None,
    save_relevance: bool = True,
    batch_size: int = 32,
    num_workers: int = 0,
    device: str | torch.device | None = None,
    mode: str = "resume",
    retry_failed: bool = False,
    progress: bool | None = None,
) -> DatasetStore:
    """Explain every item of ``dataset`` into the array store ``<path>/store.zarr``.

    Streamed in batches through a ``DataLoader`` (memory is bounded by the batch), resumable
    (rerun the same call after a crash: done items are kept), and split over the processes
    when started by ``torchrun`` (each rank writes its own chunks, rank 0 the summary; the
    results equal a one-process run item for item). An item that fails to load or to explain
    is recorded as failed with its reason, and the run goes on.

    Parameters
    ----------
    model : torch.nn.Module
        The classifier, in eval mode; never changed.
    dataset : torch.utils.data.Dataset
        Items as :mod:`funcattr.datasets.items` describes (a tensor, ``(image, label[,
        mask])``, a dict or an :class:`~funcattr.datasets.Item`), e.g. :class:`DemoDataset`,
        :class:`ImageFolder` or a torchvision dataset.
    path : str or os.PathLike
        The run folder: ``store.zarr``, ``class_means.png``, ``class_stats.csv`` (and
        ``metrics.csv``) are written there.
    composite : Composite or str, optional
        The rules (as for :func:`funcattr.functionalize`); None: the plain gradient.
    canonizers : Canonizer or sequence, optional
        Canonizers applied after the composite's own.
    attributor : callable or str
        A pure attributor ``fn(fn, params, input, attr_output_fn, **options)``: one of
        :data:`funcattr.ATTRIBUTORS` (or its name), a ``functools.partial`` of one with its
        options, or your own. SmoothGrad's noise is drawn per item from ``(seed, index)``.
    options : dict, optional
        The attributor's keyword options, e.g. ``{"n_iter": 20, "noise_level": 0.1}``.
    target : 'prediction', 'label' or int
        The class explained: the model's prediction, the item's label, or one class.
    times_output : bool, optional
        Seed the backward with ``score * one_hot`` instead of ``one_hot``; default: only for
        occlusion (whose windows are scored by the output).
    dtype : 'float16', 'float32' or 'float64'
        The stored relevance's dtype. An item whose relevance exceeds float16's range fails,
        saying so.
    seed : int
        The run's seed (SmoothGrad's noise per item, the metrics' draws per batch).
    metrics : sequence of str
        Evaluation metrics computed on each batch's attribution (names from
        :data:`~funcattr.datasets.DATASET_METRICS`); stored under ``metrics/``.
    metric_options : dict of str to dict, optional
        Keyword options per metric, e.g. ``{"pixel_flipping": {"n_steps": 16}}``.
    save_relevance : bool
        Store the relevance (False keeps only the table, the outputs and the metrics).
    batch_size : int
        Items per batch; also the store's chunk along the items. Part of the settings.
    num_workers : int
        ``DataLoader`` worker processes per rank that load items while the model computes.
    device : str or torch.device, optional
        Default: CUDA if available (``cuda:LOCAL_RANK`` under ``torchrun``), else the CPU.
    mode : {'resume', 'overwrite'}
        ``'resume'`` continues a store with the same settings and refuses one with other
        settings (naming the differences); ``'overwrite'`` deletes an existing store first.
    retry_failed : bool
        Explain the items that failed in earlier sessions again.
    progress : bool, optional
        Show progress on rank 0 (a bar on a terminal, a line every 10 s otherwise).

    Returns
    -------
    DatasetStore
        The store, opened for reading (see :func:`open_store`).

    Raises
    ------
    ValueError
        For a store with other settings, a path holding something else, bad options.
    funcattr.datasets.StoreFullError
        If the disk runs full; the store stays resumable.

    Examples
    --------
    >>> store = explain_dataset(load_demo_model(), DemoDataset(10_000), "runs/demo",
    ...                         composite="epsilon_plus_flat")                    # doctest: +SKIP
    >>> store.relevance[:8].shape                                                 # doctest: +SKIP
    (8, 3, 64, 64)
    """
    owner = "explain_dataset"
    store_dtype = _check_options(model, target, times_output, dtype, seed, owner)
    function, options = _resolve_attributor(attributor, options, owner)
    checked = check_metrics(metrics, metric_options, owner)
    if not isinstance(save_relevance, bool):
        raise TypeError(f"{owner}(save_relevance={save_relevance!r}): expected a bool.")
    if times_output is None:
        times_output = any(spec.scores and spec.function is function
                           for spec in ATTRIBUTORS.values())
    if any(m in LOCALISATION for m in checked):
        _check_masks(dataset, owner)
    job = ExplainJob(model, composite=composite, canonizers=canonizers, attributor=function,
                     options=options, target=target, times_output=times_output,
                     dtype=store_dtype, seed=seed, metrics=checked,
                     save_relevance=save_relevance, owner=owner)
    run_job(job, dataset, Path(path), batch_size=batch_size, num_workers=num_workers,
            device=device, mode=mode, retry_failed=retry_failed, progress=progress)
    return open_store(path)


def _check_masks(dataset: Any, owner: str) -> None:
    """The localisation metrics need masks: the first loadable item must have one."""
    reader = ItemReader(dataset)
    for index in range(min(len(reader), 64)):
        loaded = reader[index]
        if not loaded.error:
            if loaded.mask is None:
                raise ValueError(
                    f"{owner}(metrics=...): the localisation metrics {list(LOCALISATION)} need "
                    f"object masks, but the dataset's items have none (item {index}). Give the "
                    f"items masks, or leave these metrics out."
                )
            return


def evaluate_dataset(model: nn.Module, dataset: Any, path: str | os.PathLike, *,
                     metrics: Sequence[str] = DEFAULT_DATASET_METRICS,
                     save_relevance: bool = False, **options: Any) -> DatasetStore:
    """Evaluate an explanation method over every item of ``dataset``.

    :func:`explain_dataset` with the evaluation ``metrics`` on (default
    :data:`~funcattr.datasets.DEFAULT_DATASET_METRICS`: pixel flipping, region perturbation
    and the localisation metrics) and, by default, without keeping the relevance. The per-item
    values are in ``store.metrics``, their means in ``metrics.csv`` and per class in
    ``class_stats.csv``. Every other keyword is :func:`explain_dataset`'s.

    Examples
    --------
    >>> store = evaluate_dataset(load_demo_model(), DemoDataset(1000), "runs/eval",
    ...                          composite="epsilon_plus_flat")                  # doctest: +SKIP
    >>> store.summary["metrics"]["relevance_mass_accuracy"]                      # doctest: +SKIP
    """
    return explain_dataset(model, dataset, path, metrics=metrics, save_relevance=save_relevance,
                           **options)
