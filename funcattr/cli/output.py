"""Output folders and errors shared by the commands.

:class:`Staging` writes a command's files into a temporary folder next to the output folder and
moves them there only on success; a folder is replaced only if the same command wrote it.
:func:`reported_errors` turns an error inside the library into one line naming the options.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import click
import torch
from PIL import Image

__all__ = ["TRACEBACK_VARIABLE", "Staging", "check_replaceable", "first_line", "is_our_folder",
           "png_bytes", "reported_errors"]

#: Set this environment variable to see the traceback of an error inside the library.
TRACEBACK_VARIABLE = "FUNCATTR_TRACEBACK"


def is_our_folder(folder: Path, marker: str, tool: str) -> bool:
    """Whether ``folder`` holds the JSON file ``marker`` written by the command ``tool``."""
    try:
        data = json.loads((folder / marker).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and data.get("tool") == tool


def check_replaceable(folder: Path, relative: Sequence[str], marker: str, tool: str) -> None:
    """Refuse to overwrite files in ``folder`` unless ``tool`` wrote it (:func:`is_our_folder`)."""
    if not folder.is_dir():
        return
    clashes = [name for name in relative if (folder / name).exists()]
    if clashes and not is_our_folder(folder, marker, tool):
        raise click.BadParameter(
            f"{folder} already holds {clashes[0]} (not written by {tool}); choose another "
            f"output folder.",
            param_hint="--output",
        )


class Staging:
    """Write outputs into a temporary folder next to ``final`` and move them there on success.

    Files in an existing output folder are replaced only if it is an output folder of the same
    command (it holds the command's ``marker`` file); nothing else there is ever deleted. On
    failure the temporary folder is removed and ``final`` is untouched.
    """

    def __init__(self, final: Path, marker: str, tool: str) -> None:
        self.final, self.marker, self.tool = final, marker, tool
        if final.exists() and not final.is_dir():
            raise click.BadParameter(
                f"{final} exists and is not a folder. Choose another output folder.",
                param_hint="--output",
            )
        parent = final.parent
        try:
            parent.mkdir(parents=True, exist_ok=True)
            self.root = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".partial",
                                              dir=parent))
        except OSError as error:
            raise click.BadParameter(
                f"{final}: cannot create a folder here ({error.strerror}). Choose a writable "
                f"output folder.", param_hint="--output",
            ) from error

    def check_replaceable(self, relative: Sequence[str]) -> None:
        """Refuse to overwrite files in a folder that is not this command's output folder."""
        check_replaceable(self.final, relative, self.marker, self.tool)

    def path(self, relative: str) -> Path:
        """Where to write ``relative`` (its folder is created)."""
        target = self.root / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        return target

    def commit(self) -> None:
        """Move everything written into the output folder."""
        if not self.final.exists():
            try:
                os.rename(self.root, self.final)
                return
            except OSError:
                pass  # someone created it meanwhile: merge file by file
        for directory, _, names in os.walk(self.root):
            for name in names:
                source = Path(directory) / name
                target = self.final / source.relative_to(self.root)
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(source, target)
        shutil.rmtree(self.root, ignore_errors=True)

    def discard(self) -> None:
        """Remove everything written; the output folder is untouched."""
        shutil.rmtree(self.root, ignore_errors=True)


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
    """Errors inside the library as one line (no traceback) that starts with ``what``.

    ``fix`` follows the error's first line; ``memory`` says what to lower when memory runs
    out. With :data:`TRACEBACK_VARIABLE` set, the error is raised as it is.
    """
    try:
        yield
    except torch.OutOfMemoryError as error:
        raise click.ClickException(f"out of memory; {memory}.") from error
    except (ValueError, TypeError, RuntimeError) as error:
        if os.environ.get(TRACEBACK_VARIABLE):
            raise
        hint = f" {fix}" if fix else ""
        raise click.ClickException(
            f"{what}: {first_line(error, 400)}{hint} (set {TRACEBACK_VARIABLE}=1 for the "
            f"traceback)"
        ) from error
