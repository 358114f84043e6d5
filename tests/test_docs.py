"""Every Python code block of README.md and docs/*.md runs as written.

The convention (also stated in README.md, "Documentation"):

- Each file is one namespace: its ```python blocks run in the order they appear, so a block
  may use what an earlier block of the same file defined.
- A block that needs variables the reader is assumed to have (a model, an input ``x``, a
  ``target``) gets them from a **hidden setup block** placed before it: an HTML comment that
  starts with ``<!-- setup`` on its own line and ends with ``-->``. It holds Python code, runs
  like a block, and does not show when the Markdown is rendered.
- Nothing is skipped: a ```python block that cannot run is a documentation bug. Shell blocks
  (```sh, ```console) and text blocks (```text, ``` without a language) do not run here (the
  command-line examples are checked by the CLI tests); a signature listing, or an example that
  can run only where it says (downloaded weights, a cluster, the reader's own data), belongs
  in one of those, not in a ```python block.

Each file runs in a temporary working folder (files a snippet writes land there) with the
registries (attributors, metrics, composites, canonizers, layer VJPs) restored afterwards, so a
snippet that registers something does not leak into other tests.
"""

from __future__ import annotations

import re
import sys
import types
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

#: ```python ... ``` blocks and <!-- setup ... --> comments, in document order
_PIECE = re.compile(r"^```python\n(?P<code>.*?)^```\s*$|^<!-- setup\n(?P<setup>.*?)^-->\s*$",
                    re.S | re.M)


def pieces(path: Path) -> list[tuple[int, str, str]]:
    """``(line, kind, code)`` for each Python block (``'block'``) and hidden setup block
    (``'setup'``) of ``path``, in order; ``line`` is where its code starts."""
    text = path.read_text()
    found = []
    for match in _PIECE.finditer(text):
        kind = "block" if match.group("code") is not None else "setup"
        code = match.group("code") if kind == "block" else match.group("setup")
        line = text.count("\n", 0, match.start()) + 2
        found.append((line, kind, code))
    return found


def _registries() -> list[dict]:
    """The process-wide tables a documented snippet may add to."""
    from funcattr import layer
    from funcattr.attribution.registry import ATTRIBUTORS
    from funcattr.canonizers.registry import CANONIZERS
    from funcattr.composites.presets import COMPOSITES
    from funcattr.metrics.registry import METRIC_SPECS

    return [ATTRIBUTORS, CANONIZERS, COMPOSITES, METRIC_SPECS, layer._INPUT_VJPS]


@pytest.fixture
def restored_registries():
    tables = _registries()
    saved = [dict(table) for table in tables]
    yield
    for table, content in zip(tables, saved, strict=True):
        table.clear()
        table.update(content)


def test_the_documented_files_hold_python_blocks():
    """The pattern finds the blocks (a test that found none would check nothing)."""
    counts = {path.name: sum(kind == "block" for _, kind, _ in pieces(path)) for path in FILES}
    assert counts["README.md"] >= 5 and counts["attributors.md"] >= 10, counts
    assert counts["migration.md"] >= 3 and counts["metrics.md"] >= 4, counts


@pytest.mark.parametrize("path", FILES, ids=lambda path: path.name)
def test_every_python_block_runs(path: Path, tmp_path, monkeypatch, restored_registries):
    found = pieces(path)
    if not found:
        assert "```python" not in path.read_text()
        return
    monkeypatch.chdir(tmp_path)
    module = types.ModuleType(f"docs_{path.stem}")  # a real module: dataclasses look it up
    monkeypatch.setitem(sys.modules, module.__name__, module)
    namespace = module.__dict__
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float32)  # the docs assume torch's defaults
    try:  # warnings are errors here as everywhere in the tests (pyproject.toml)
        for line, kind, code in found:
            compiled = compile("\n" * (line - 1) + code, str(path.relative_to(ROOT)), "exec")
            try:
                exec(compiled, namespace)
            except Exception as error:
                error.add_note(f"in the {kind} at {path.name}:{line}")
                raise
    finally:
        torch.set_default_dtype(previous)
