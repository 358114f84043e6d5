"""Output folders and errors shared by the commands.

An output folder always holds exactly one whole run's output. :class:`Staging` writes a run's
files into a new folder next to the output folder and, when everything succeeded, swaps it in
for the old one whole (two renames); a failed run leaves the old folder as it was, and a re-run
leaves no stale files of an earlier one. An existing folder is replaced only if it holds
nothing but what the same command wrote there last time (the list of files in its marker JSON):
a user's file in it, at a planned path or anywhere else, is never overwritten or deleted; the
run is refused before any work. :func:`reported_errors` turns an error inside the library or
the user's model into one line naming the options.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import secrets
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path
from types import TracebackType

import click
from PIL import Image

__all__ = ["TRACEBACK_VARIABLE", "Staging", "first_line", "foreign_entries", "is_our_folder",
           "png_bytes", "reported_errors"]

#: Set this environment variable to see the traceback of an error inside the library.
TRACEBACK_VARIABLE = "FUNCATTR_TRACEBACK"


def _marker_data(folder: Path, marker: str, tool: str) -> dict | None:
    try:
        data = json.loads((folder / marker).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("tool") == tool else None


def is_our_folder(folder: Path, marker: str, tool: str) -> bool:
    """Whether ``folder`` holds the JSON file ``marker`` written by the command ``tool``."""
    return _marker_data(folder, marker, tool) is not None


def _written(folder: Path, marker: str, tool: str) -> set[str]:
    """What the last run of ``tool`` wrote into ``folder`` (its marker's ``files``), or nothing."""
    data = _marker_data(folder, marker, tool)
    return set(data.get("files", ())) | {marker} if data is not None else set()


def foreign_entries(folder: Path, marker: str, tool: str) -> Iterator[str]:
    """The files and folders in ``folder`` (relative, ``/``-separated, in ``os.walk`` order)
    that the last run of ``tool`` did not write: all of them unless ``marker`` is its JSON file
    with its list of ``files``. A generator: the first one costs one folder listing."""
    written = _written(folder, marker, tool)
    parents = {parent.as_posix() for name in written for parent in Path(name).parents}
    for directory, folders, files in os.walk(folder):
        base = Path(directory).relative_to(folder)
        for name in [*folders, *files]:
            relative = (base / name).as_posix()
            if relative not in written and relative not in parents:
                yield relative


class Staging:
    """Build a command's output folder aside and swap it in whole (see the module docstring).

    Use it as a context manager: :meth:`check` before the work (refuses a folder it may not
    replace), :meth:`path` for every file written, :meth:`commit` at the end; leaving the
    ``with`` block without a commit removes what was written.

    Parameters
    ----------
    final : pathlib.Path
        The output folder.
    marker : str
        The command's JSON file in it; it lists the files written (:meth:`manifest`).
    tool : str
        The command, as recorded in the marker (``"funcattr explain"``).
    """

    def __init__(self, final: Path, marker: str, tool: str) -> None:
        self.final = Path(os.path.realpath(final)) if final.is_symlink() else final
        self.shown, self.marker, self.tool = final, marker, tool
        self.root: Path | None = None
        self.written: set[str] = set()

    def check(self, planned: Iterable[str] = ()) -> None:
        """Refuse an output folder that cannot or may not be replaced (before any work).

        ``planned`` are the files the run will write; one of them already there and not
        written by the command is named first.
        """
        final = self.final
        if final.exists() and not final.is_dir():
            raise click.BadParameter(
                f"{self.shown} exists and is not a folder. Choose another output folder.",
                param_hint="--output",
            )
        if final.is_dir():
            if not os.access(final, os.W_OK | os.X_OK):
                raise click.BadParameter(
                    f"{self.shown}: expected a writable folder, got one without write "
                    f"permission. Make it writable (chmod u+w) or choose another output folder.",
                    param_hint="--output",
                )
            written = _written(final, self.marker, self.tool)
            clash = next((name for name in planned
                          if name not in written and os.path.lexists(final / name)), None)
            clash = clash or next(foreign_entries(final, self.marker, self.tool), None)
            if clash is not None:
                if not written:
                    raise click.BadParameter(
                        f"{self.shown} already holds {clash} (not written by {self.tool}); a "
                        f"run replaces its output folder whole. Choose another output folder "
                        f"(a new or empty one).", param_hint="--output",
                    )
                raise click.BadParameter(
                    f"{self.shown} holds {clash}, which {self.tool} did not write; a run "
                    f"replaces its output folder whole. Move the file elsewhere or choose "
                    f"another output folder.", param_hint="--output",
                )
        existing = next(p for p in [final.parent, *final.parent.parents] if p.exists())
        if not existing.is_dir():
            raise click.BadParameter(
                f"{self.shown}: expected a folder that can be created, got none: {existing} "
                f"is a file. Choose another output folder.", param_hint="--output",
            )
        if not os.access(existing, os.W_OK | os.X_OK):
            raise click.BadParameter(
                f"{self.shown}: expected a folder that can be created, got none: {existing} is "
                f"not writable. Choose another output folder.", param_hint="--output",
            )

    def __enter__(self) -> Staging:
        parent = self.final.parent
        try:
            parent.mkdir(parents=True, exist_ok=True)
            for _ in range(100):
                root = parent / f".{self.final.name}.{secrets.token_hex(4)}.partial"
                with contextlib.suppress(FileExistsError):
                    os.mkdir(root)  # mode 0o777 less the umask, as any new folder
                    self.root = root
                    break
        except OSError as error:
            raise click.BadParameter(
                f"{self.shown}: cannot create a folder here ({error.strerror or error}). Choose "
                f"a writable output folder.", param_hint="--output",
            ) from error
        if self.root is None:
            raise click.ClickException(f"{self.shown}: cannot find a free temporary name "
                                       f"next to it. Remove the .partial folders there.")
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.discard()

    def path(self, relative: str) -> Path:
        """Where to write ``relative`` (its folder is created; it is listed in the manifest)."""
        if self.root is None:
            raise RuntimeError("Staging.path: use the Staging as a context manager first.")
        self.written.add(Path(relative).as_posix())
        target = self.root / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        return target

    def manifest(self) -> list[str]:
        """Every file of the run, the marker included (what the marker JSON lists)."""
        return sorted(self.written | {self.marker})

    def commit(self) -> None:
        """Swap the new folder in for the output folder (or move it there if there is none).

        Raises
        ------
        click.ClickException
            If the output folder cannot be replaced; it is then as it was.
        """
        if self.root is None:
            raise RuntimeError("Staging.commit: use the Staging as a context manager first.")
        final = self.final
        try:
            if os.path.lexists(final):
                self.check()  # again: something may have been put there meanwhile
                shutil.copymode(final, self.root)  # keep the folder's permissions
                old = final.parent / f".{final.name}.{secrets.token_hex(4)}.old"
                os.rename(final, old)
                try:
                    os.rename(self.root, final)
                except OSError:
                    os.rename(old, final)
                    raise
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.rename(self.root, final)
        except OSError as error:
            raise click.ClickException(
                f"--output {self.shown}: cannot put the results in place "
                f"({error.strerror or error}); the folder is as it was. Check its permissions, "
                f"or choose another output folder."
            ) from error
        self.root = None

    def discard(self) -> None:
        """Remove everything written; the output folder is untouched."""
        if self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)
            self.root = None


def png_bytes(image: Image.Image) -> bytes:
    """The PNG file of ``image``."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=False)
    return buffer.getvalue()


def first_line(error: BaseException, limit: int) -> str:
    """The first line of an error's message (at most ``limit`` characters)."""
    return (str(error).strip().splitlines() or [type(error).__name__])[0][:limit]


@contextlib.contextmanager
def reported_errors(what: str, *, fix: str = "",
                    memory: str = "lower --chunk-size") -> Iterator[None]:
    """Errors inside the library or the user's model as one line (no traceback) that starts
    with ``what``.

    Any exception but click's own (which already are one line) is reported: the user's model
    may raise anything. ``fix`` follows the error's first line; ``memory`` says what to lower
    when memory runs out. With :data:`TRACEBACK_VARIABLE` set, the error is raised as it is.
    """
    import torch  # only when a command runs (funcattr --help does not import torch)

    try:
        yield
    except (click.ClickException, click.exceptions.Exit, click.Abort):
        raise
    except (torch.OutOfMemoryError, MemoryError) as error:
        if os.environ.get(TRACEBACK_VARIABLE):
            raise
        raise click.ClickException(f"{what}: out of memory; {memory}.") from error
    except Exception as error:
        if os.environ.get(TRACEBACK_VARIABLE):
            raise
        hint = f" {fix}" if fix else ""
        kind = "" if isinstance(error, ValueError | TypeError | RuntimeError) else \
            f"{type(error).__name__}: "
        raise click.ClickException(
            f"{what}: {kind}{first_line(error, 400)}{hint} (set {TRACEBACK_VARIABLE}=1 for the "
            f"traceback)"
        ) from error
