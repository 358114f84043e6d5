"""Whole datasets: streamed, resumable attribution into a zarr store, sharded with ``torchrun``.

>>> from funcattr.datasets import DemoDataset, explain_dataset, open_store
>>> store = explain_dataset(model, DemoDataset(10_000), "runs/demo",
...                         composite="epsilon_plus_flat")                  # doctest: +SKIP
>>> store.relevance[:8]                     # (8, 3, 64, 64) float16, read lazily  # doctest: +SKIP

The same script under ``torchrun --nproc-per-node 4 script.py`` splits the items over four
processes; rerunning it after a crash continues where it stopped. See ``docs/datasets.md``.
:func:`relevance_maximization` finds the reference samples of concepts the same way (see
``docs/concepts.md``).
"""

from funcattr.datasets.concepts import (
    CONCEPT_GROUP,
    ConceptStore,
    ReferencePatch,
    RelevanceMaximizationJob,
    open_concept_store,
    relevance_maximization,
)
from funcattr.datasets.evaluation import DATASET_METRICS, DEFAULT_DATASET_METRICS
from funcattr.datasets.explain import (
    STORE_DTYPES,
    ExplainJob,
    evaluate_dataset,
    explain_dataset,
    item_seed,
)
from funcattr.datasets.items import Batch, Item, as_item
from funcattr.datasets.reader import DatasetStore, open_store
from funcattr.datasets.run import MODES, Job, run_job
from funcattr.datasets.sources import IMAGE_EXTENSIONS, DemoDataset, ImageFolder
from funcattr.datasets.store import (
    DONE,
    FAILED,
    PENDING,
    StoreFullError,
    StoreSettingsError,
)

__all__ = [
    "CONCEPT_GROUP",
    "DATASET_METRICS",
    "DEFAULT_DATASET_METRICS",
    "DONE",
    "FAILED",
    "IMAGE_EXTENSIONS",
    "MODES",
    "PENDING",
    "STORE_DTYPES",
    "Batch",
    "ConceptStore",
    "DatasetStore",
    "DemoDataset",
    "ExplainJob",
    "ImageFolder",
    "Item",
    "Job",
    "ReferencePatch",
    "RelevanceMaximizationJob",
    "StoreFullError",
    "StoreSettingsError",
    "as_item",
    "evaluate_dataset",
    "explain_dataset",
    "item_seed",
    "open_concept_store",
    "open_store",
    "relevance_maximization",
    "run_job",
]
