"""Progress of a run: one bar on a terminal, lines otherwise; rank 0 shows every rank.

Each rank writes its counts to a small file ``<run folder>/progress/rank-R`` (atomically, at
most once a second); rank 0 adds them up, so its bar shows the total and the count of each
rank. The other ranks print nothing (their output would garble rank 0's bar on a shared
terminal).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import TextIO

__all__ = ["Progress"]

_WRITE_EVERY = 1.0  # seconds between a rank's count files
_DRAW_EVERY = 0.2  # seconds between bar redraws on a terminal
_LINE_EVERY = 10.0  # seconds between lines when not on a terminal


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"


class Progress:
    """Count the items a rank finishes; rank 0 draws the run's total.

    Parameters
    ----------
    label : str
        What runs, e.g. ``"explain_dataset gradient"``.
    total : int
        Items of the dataset.
    done_before : int
        Items finished by earlier sessions (resume).
    rank, world : int
        This process's rank and the number of processes.
    folder : Path
        The run folder (for the count files of several ranks).
    enabled : bool or None
        Draw at all; None: on rank 0 unless the stream is closed.
    stream : file, optional
        Where to draw; standard error by default.
    """

    def __init__(self, label: str, total: int, done_before: int, rank: int, world: int,
                 folder: Path, enabled: bool | None = None, stream: TextIO | None = None) -> None:
        self.label, self.total, self.done_before = label, total, done_before
        self.rank, self.world = rank, world
        self.stream = stream or sys.stderr
        self.enabled = (rank == 0) if enabled is None else (bool(enabled) and rank == 0)
        self.terminal = self.enabled and self.stream.isatty()
        self.folder = Path(folder) / "progress"
        self.done = self.failed = 0
        self.start = self._last_write = self._last_draw = time.monotonic()
        self._last_line = self.start
        self._counts: dict[int, tuple[int, int]] = {}
        if world > 1:
            self.folder.mkdir(parents=True, exist_ok=True)  # before any rank writes its count

    def update(self, done: int, failed: int = 0) -> None:
        """Add ``done`` finished items (``failed`` of them failed)."""
        self.done += done
        self.failed += failed
        now = time.monotonic()
        if self.world > 1 and now - self._last_write >= _WRITE_EVERY:
            self._write()
            self._last_write = now
        if self.enabled:
            if self.terminal and now - self._last_draw >= _DRAW_EVERY:
                self._draw(now, end="")
                self._last_draw = now
            elif not self.terminal and now - self._last_line >= _LINE_EVERY:
                self._draw(now, end="\n")
                self._last_line = now

    def _write(self) -> None:
        path = self.folder / f"rank-{self.rank}"
        temporary = path.with_suffix(".partial")
        try:
            temporary.write_text(f"{self.done} {self.failed}\n")
            os.replace(temporary, path)
        except OSError:  # progress is only shown; a full disk is reported by the store
            pass

    def _read(self) -> dict[int, tuple[int, int]]:
        counts = {self.rank: (self.done, self.failed)}
        if self.world > 1:
            for rank in range(self.world):
                if rank == self.rank:
                    continue
                try:
                    done, failed = (self.folder / f"rank-{rank}").read_text().split()
                    counts[rank] = (int(done), int(failed))
                except (OSError, ValueError):
                    counts[rank] = self._counts.get(rank, (0, 0))
        self._counts = counts
        return counts

    def _draw(self, now: float, end: str) -> None:
        counts = self._read()
        new = sum(done for done, _ in counts.values())
        failed = sum(fail for _, fail in counts.values())
        finished = self.done_before + new
        share = finished / self.total if self.total else 1.0
        rate = new / max(now - self.start, 1e-9)
        left = (self.total - finished) / rate if rate > 0 else float("inf")
        eta = _duration(left) if left != float("inf") else "?"
        text = (f"{self.label}: {finished}/{self.total} items ({share:.0%}), {rate:.1f}/s, "
                f"eta {eta}")
        if failed:
            text += f", {failed} failed"
        if self.world > 1:
            text += " | ranks " + " ".join(str(counts[r][0]) for r in sorted(counts))
        if self.terminal:
            width = 24
            filled = int(width * share)
            text = f"\r[{'#' * filled}{'.' * (width - filled)}] {text}\x1b[K"
        self.stream.write(text + end)
        self.stream.flush()

    def close(self, final: bool = True) -> None:
        """Write the last count; rank 0 draws the final state and ends the line."""
        if self.world > 1:
            self._write()
        if self.enabled and final:
            self._draw(time.monotonic(), end="\n")

    def remove_files(self) -> None:
        """Delete the count files (rank 0, after every rank has finished)."""
        if self.folder.is_dir():
            for path in self.folder.iterdir():
                path.unlink(missing_ok=True)
            self.folder.rmdir()
