"""One switch that runs every rule on the reference path (the specification).

By default rules take the fast path (:mod:`funcattr.core._fast`) where it covers a call and the
reference rule (:mod:`funcattr.core.reference`) elsewhere. The environment variable
``FUNCATTR_REFERENCE=1`` or a ``with reference_path():`` block runs everything on the
reference path; the block wins over the variable and holds for the current thread (or asyncio
task) only. The path is chosen when a ruled module runs (the forward pass), so a forward pass
inside the block gets the reference backward wherever its pullback is taken.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

__all__ = ["ENVIRONMENT_VARIABLE", "reference_path", "uses_reference"]

ENVIRONMENT_VARIABLE = "FUNCATTR_REFERENCE"
_ON, _OFF = ("1", "true", "yes", "on"), ("", "0", "false", "no", "off")
_REFERENCE: ContextVar[bool | None] = ContextVar("funcattr_reference", default=None)


@contextmanager
def reference_path(enabled: bool = True) -> Iterator[None]:
    """Run rules on the reference path (``enabled=False``: the default choice) in this block.

    Parameters
    ----------
    enabled : bool
        ``True`` forces the reference rule; ``False`` restores the default (fast where
        possible) inside the block, also when ``FUNCATTR_REFERENCE=1`` is set.

    Examples
    --------
    >>> with funcattr.core.reference_path():                          # doctest: +SKIP
    ...     output, relevance = funcattr.gradient(fn, params, x, one_hot(0))
    """
    if not isinstance(enabled, bool):
        raise TypeError(
            f"reference_path(enabled={enabled!r}): expected a bool, got "
            f"{type(enabled).__name__}. Use reference_path() or reference_path(enabled=False)."
        )
    token = _REFERENCE.set(enabled)
    try:
        yield
    finally:
        _REFERENCE.reset(token)


def uses_reference() -> bool:
    """Whether rules run on the reference path now (see the module docstring)."""
    forced = _REFERENCE.get()
    if forced is not None:
        return forced
    value = os.environ.get(ENVIRONMENT_VARIABLE, "").strip().lower()
    if value in _ON:
        return True
    if value in _OFF:
        return False
    raise ValueError(
        f"{ENVIRONMENT_VARIABLE}={value!r}: expected 1 or 0, got {value!r}. Set "
        f"{ENVIRONMENT_VARIABLE}=1 to run every rule on the reference path, or unset it."
    )
