"""Canonizers for ``--canonizer``: by name, or by the model's architecture (``auto``).

Both come from the canonizer registry (:data:`funcattr.canonizers.CANONIZERS`):
:func:`funcattr.canonizers.find_canonizer` reads a name (case, punctuation and a ``Canonizer``
suffix do not matter, so class names work too) and
:func:`funcattr.canonizers.canonizers_for` picks by architecture. A canonizer whose
constructor needs arguments (say ``named_merge_batch_norm``'s ``name_map``) cannot be built from
the command line; it is listed as such and refused with a hint.
"""

from __future__ import annotations

import difflib

import click

from funcattr.canonizers import (
    CANONIZERS,
    CanonizerSpec,
    canonizers_for,
    find_canonizer,
    get_canonizer,
)
from funcattr.cli.models import LoadedModel
from funcattr.cli.output import reported_errors

__all__ = ["buildable", "resolve_canonizers"]


def buildable(spec: CanonizerSpec) -> bool:
    """Whether the command line can build the canonizer (its constructor needs no argument)."""
    return not spec.arguments()


def _unknown(part: str) -> click.BadParameter:
    names = [name for name, spec in CANONIZERS.items() if buildable(spec)]
    close = difflib.get_close_matches(part, names, n=2)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    return click.BadParameter(
        f"{part!r} is not a canonizer the command line can build; expected auto, none or "
        f"one of: {', '.join(names)} (funcattr list canonizers).{hint}",
        param_hint="--canonizer",
    )


def resolve_canonizers(spec: str, loaded: LoadedModel) -> tuple[list, str]:
    """Canonizer instances for ``--canonizer`` (``auto``, ``none`` or comma-separated names).

    Returns
    -------
    canonizers : list of Canonizer
    description : str
    """
    if spec == "none":
        return [], "none"
    if spec == "auto":
        with reported_errors(f"--canonizer auto on --model {loaded.name}",
                             fix="Pass --canonizer none or name canonizers."):
            chosen = canonizers_for(loaded.model)
        if not chosen:
            return [], "none (auto: none fits this model)"
        return chosen, f"{', '.join(type(c).__name__ for c in chosen)} (auto)"
    chosen = []
    for part in (p.strip() for p in spec.split(",")):
        try:
            found = find_canonizer(part)
        except (TypeError, ValueError):
            raise _unknown(part) from None
        if not buildable(found):
            arguments = ", ".join(found.arguments())
            raise click.BadParameter(
                f"{part!r} needs the argument(s) {arguments}, which the command line cannot "
                f"give. Use it from Python (funcattr.get_canonizer({found.name!r}, "
                f"{arguments.split(', ')[0]}=...)), or choose another canonizer.",
                param_hint="--canonizer",
            )
        chosen.append(get_canonizer(found.name))
    return chosen, ", ".join(type(c).__name__ for c in chosen)
