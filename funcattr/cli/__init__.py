"""The ``funcattr`` command: explain and evaluate image classifiers from the shell.

``funcattr explain`` writes heatmaps, raw relevance, a JSON summary and an HTML report;
``funcattr evaluate`` tabulates metrics of several explanation methods; ``funcattr list``
shows what can be chosen by name. See ``docs/cli.md``.

Modules: :mod:`~funcattr.cli.group` (the ``main`` group, which imports a command's module
when the command runs), one module per command (:mod:`~funcattr.cli.explain`,
:mod:`~funcattr.cli.evaluate`, :mod:`~funcattr.cli.listing`, :mod:`~funcattr.cli.concepts`,
:mod:`~funcattr.cli.text`) that adds it to ``main``, and the shared pieces:
:mod:`~funcattr.cli.options` (click options, built from the attributor registry),
:mod:`~funcattr.cli.attributors` (dispatch, composites, chunk size),
:mod:`~funcattr.cli.canonizers` (the canonizer registry), :mod:`~funcattr.cli.models`,
:mod:`~funcattr.cli.samples`, :mod:`~funcattr.cli.heatmaps`, :mod:`~funcattr.cli.progress`
and :mod:`~funcattr.cli.output` (output folders replaced whole, one-line errors).

Only :func:`main` is imported with this package (so that ``funcattr --help`` does not import
torch); the other names load on first use.
"""

import importlib
from typing import Any

from funcattr.cli.group import main

#: Loaded on first access: name -> module that defines it.
_ON_FIRST_USE = {
    "ATTRIBUTORS": "funcattr.attribution.registry",
    "CHUNK_PIXELS": "funcattr.cli.attributors",
    "DEFAULT_LRP_COMPOSITE": "funcattr.cli.attributors",
    "IMAGE_SUFFIXES": "funcattr.cli.samples",
    "RELEVANCE_NORMS": "funcattr.cli.heatmaps",
    "TRACEBACK_VARIABLE": "funcattr.cli.output",
    "InputNormalization": "funcattr.cli.models",
    "LoadedModel": "funcattr.cli.models",
    "Sample": "funcattr.cli.samples",
    "attribute": "funcattr.cli.attributors",
    "attributor_options": "funcattr.cli.options",
    "auto_chunk_size": "funcattr.cli.attributors",
    "build_composite": "funcattr.cli.attributors",
    "collect_samples": "funcattr.cli.samples",
    "demo_samples": "funcattr.cli.samples",
    "dilate_mask": "funcattr.cli.heatmaps",
    "image_arguments": "funcattr.cli.options",
    "input_options": "funcattr.cli.options",
    "load_model": "funcattr.cli.models",
    "model_from_options": "funcattr.cli.options",
    "model_options": "funcattr.cli.options",
    "normalize_relevance": "funcattr.cli.heatmaps",
    "positive_fraction_in_mask": "funcattr.cli.heatmaps",
    "resolve_canonizers": "funcattr.cli.canonizers",
}
_MODULES = ("attributors", "canonizers", "concepts", "evaluate", "explain", "group", "heatmaps",
            "listing", "models", "options", "output", "progress", "samples", "text")

__all__ = ["main", *sorted(_ON_FIRST_USE)]


def __getattr__(name: str) -> Any:
    """Load the names of :data:`__all__` and the submodules on first use."""
    if name in _ON_FIRST_USE:
        value = getattr(importlib.import_module(_ON_FIRST_USE[name]), name)
    elif name in _MODULES:
        value = importlib.import_module(f"funcattr.cli.{name}")
    else:
        raise AttributeError(f"module 'funcattr.cli' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_ON_FIRST_USE, *_MODULES})
