"""The ``funcattr`` command: explain and evaluate image classifiers from the shell.

``funcattr explain`` writes heatmaps, raw relevance, a JSON summary and an HTML report;
``funcattr evaluate`` tabulates metrics of several explanation methods; ``funcattr list``
shows what can be chosen by name. See ``docs/cli.md``.

Modules: :mod:`~funcattr.cli.group` (the ``main`` group), one module per command
(:mod:`~funcattr.cli.explain`, :mod:`~funcattr.cli.evaluate`, :mod:`~funcattr.cli.listing`)
that adds it to ``main``, and the shared pieces: :mod:`~funcattr.cli.options` (click options,
built from the attributor registry), :mod:`~funcattr.cli.attributors` (dispatch, composites,
chunk size), :mod:`~funcattr.cli.canonizers`, :mod:`~funcattr.cli.models`,
:mod:`~funcattr.cli.samples`, :mod:`~funcattr.cli.heatmaps` and :mod:`~funcattr.cli.output`
(staged output folders, one-line errors).
"""

from funcattr.attribution.registry import ATTRIBUTORS
from funcattr.cli import (  # noqa: F401  (each adds its command)
    concepts,
    evaluate,
    explain,
    listing,
)
from funcattr.cli.attributors import (
    CHUNK_PIXELS,
    DEFAULT_LRP_COMPOSITE,
    attribute,
    auto_chunk_size,
    build_composite,
)
from funcattr.cli.canonizers import available_canonizers, resolve_canonizers
from funcattr.cli.group import main
from funcattr.cli.heatmaps import (
    RELEVANCE_NORMS,
    dilate_mask,
    normalize_relevance,
    positive_fraction_in_mask,
)
from funcattr.cli.models import InputNormalization, LoadedModel, load_model
from funcattr.cli.options import (
    attributor_options,
    image_arguments,
    input_options,
    model_from_options,
    model_options,
)
from funcattr.cli.output import TRACEBACK_VARIABLE
from funcattr.cli.samples import IMAGE_SUFFIXES, Sample, collect_samples, demo_samples

__all__ = [
    "ATTRIBUTORS",
    "CHUNK_PIXELS",
    "DEFAULT_LRP_COMPOSITE",
    "IMAGE_SUFFIXES",
    "RELEVANCE_NORMS",
    "TRACEBACK_VARIABLE",
    "InputNormalization",
    "LoadedModel",
    "Sample",
    "attribute",
    "attributor_options",
    "auto_chunk_size",
    "available_canonizers",
    "build_composite",
    "collect_samples",
    "demo_samples",
    "dilate_mask",
    "image_arguments",
    "input_options",
    "load_model",
    "main",
    "model_from_options",
    "model_options",
    "normalize_relevance",
    "positive_fraction_in_mask",
    "resolve_canonizers",
]
