"""Canonizers for ``--canonizer``: by name, or by the model's architecture (``auto``).

:func:`available_canonizers` is the one place that finds them. It scans the public classes of
``funcattr.canonizers`` and ``funcattr.torchvision`` for canonizers that need no arguments;
when ``funcattr.canonizers`` has a canonizer registry, this function is where to read it.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import re

import click

from funcattr.canonizers import Canonizer, CompositeCanonizer
from funcattr.cli.models import AUTO_CANONIZERS, LoadedModel

__all__ = ["available_canonizers", "resolve_canonizers"]

#: The modules whose public canonizer classes ``--canonizer`` offers.
CANONIZER_MODULES = ("funcattr.canonizers", "funcattr.torchvision")


def available_canonizers() -> dict[str, type]:
    """Canonizer classes needing no arguments, by class name, from :data:`CANONIZER_MODULES`."""
    found: dict[str, type] = {}
    for module_name in CANONIZER_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        for attr in getattr(module, "__all__", dir(module)):
            obj = getattr(module, attr, None)
            if (
                isinstance(obj, type) and issubclass(obj, Canonizer)
                and obj is not CompositeCanonizer and not inspect.isabstract(obj)
                and not attr.startswith("_")
            ):
                try:
                    inspect.signature(obj).bind()
                except (TypeError, ValueError):
                    continue
                found[attr] = obj
    return found


def _key(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower()).removesuffix("canonizer")


def resolve_canonizers(spec: str, loaded: LoadedModel) -> tuple[list, str]:
    """Canonizer instances for ``--canonizer`` (``auto``, ``none`` or comma-separated names).

    Returns
    -------
    canonizers : list of Canonizer
    description : str
    """
    available = available_canonizers()
    if spec == "none":
        return [], "none"
    if spec == "auto":
        for candidate in AUTO_CANONIZERS.get(loaded.family or "", ()):
            if candidate in available:
                return [available[candidate]()], f"{candidate} (auto)"
        return [], "none (auto: none known for this model)"
    by_key = {_key(name): cls for name, cls in available.items()}
    chosen = []
    for part in (p.strip() for p in spec.split(",")):
        cls = by_key.get(_key(part))
        if cls is None:
            close = difflib.get_close_matches(part, list(available), n=2)
            hint = f" Did you mean {', '.join(close)}?" if close else ""
            known = ", ".join(sorted(available)) or "none available"
            raise click.BadParameter(
                f"{part!r} is not a canonizer; expected auto, none or one of: {known}.{hint}",
                param_hint="--canonizer",
            )
        chosen.append(cls())
    return chosen, ", ".join(type(c).__name__ for c in chosen)
