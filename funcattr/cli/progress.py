"""Progress of a command on stderr: a bar or a line per step on a terminal, lines in a log.

On a terminal, :class:`Progress` shows a bar (``funcattr explain``: images done) or a line
before each step (``funcattr evaluate``: method and metric). When stderr is not a terminal (a
log file, a pipe, a batch job), it writes one line per step once the run has taken
:data:`QUIET_SECONDS`, so that quick runs stay silent and long ones say how far they got.
``--quiet`` turns it all off.
"""

from __future__ import annotations

import sys
import time
from types import TracebackType

import click

__all__ = ["QUIET_SECONDS", "Progress"]

#: When stderr is not a terminal, progress lines start once a run has taken this long.
QUIET_SECONDS = 30.0


class Progress:
    """Progress of ``total`` units of work, reported per step.

    Parameters
    ----------
    total : int
        Units in the whole run (images, steps).
    label : str
        What runs, e.g. ``"funcattr explain: gradient"``.
    unit : str
        The unit's name (plural), e.g. ``"images"``.
    quiet : bool
        Report nothing.
    bar : bool
        On a terminal, a bar advanced by :meth:`advance`; else a line per :meth:`step`.
    """

    def __init__(self, total: int, label: str, unit: str, *, quiet: bool,
                 bar: bool = True) -> None:
        self.total, self.label, self.unit, self.quiet = total, label, unit, quiet
        self.started = time.perf_counter()
        self.done = 0
        self.bar = bar
        self.terminal = not quiet and total > 0 and sys.stderr.isatty()
        self._bar = None
        if self.terminal and bar:
            self._bar = click.progressbar(length=total, label=label, file=sys.stderr,
                                          show_pos=True, show_percent=True)

    def __enter__(self) -> Progress:
        if self._bar is not None:
            self._bar.__enter__()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        if self._bar is not None:
            self._bar.__exit__(kind, error, traceback)

    def _log(self, text: str) -> None:
        seconds = time.perf_counter() - self.started
        if not self.quiet and not self.terminal and seconds >= QUIET_SECONDS:
            click.echo(f"{self.label}: {text} ({seconds:.0f} s)", err=True)

    def step(self, what: str) -> None:
        """A step starts: without a bar, a line ``[k/total] what`` (on a terminal, or in a log
        once the run has taken :data:`QUIET_SECONDS`)."""
        text = f"[{self.done + 1}/{self.total}] {what}"
        if self.bar:
            return
        if self.terminal:
            click.echo(f"  {text}", err=True)
        else:
            self._log(text)

    def advance(self, count: int = 1) -> None:
        """``count`` units are done: the bar moves, or (with ``bar``, not on a terminal) a line
        says so."""
        self.done += count
        if self._bar is not None:
            self._bar.update(count)
        elif self.bar and not self.terminal:
            self._log(f"{self.done}/{self.total} {self.unit} done")
