"""The architecture, checked on the source with ``ast`` (nothing is imported to check it).

- :data:`LAYERS` is the one table of layers, lowest first; ``docs/architecture.md`` mirrors it
  and every top-level module or package of ``funcattr`` is in it.
- A module imports only modules of its own layer or of layers below (the package face
  ``funcattr/__init__.py`` sits on top and is imported by no module of the package).
- No import cycles between modules (function-local imports count: they are edges too).
- No private name crosses a module boundary: ``from funcattr.x import _name``, ``x._name``
  on an imported funcattr module, or a private module (``_common``) imported from outside its
  package.

Each test lists every violation as ``path:line: what``.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "funcattr"

#: The layers, lowest first: (layer, top-level modules and packages of funcattr). A module may
#: import from its own layer and the layers above it in this list, never from one below.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("types and layers", ("types", "layer", "module_tree", "allocator")),
    ("core", ("core",)),
    ("rules", ("rules",)),
    ("canonizers", ("canonizers", "torchvision")),
    ("ruled tree", ("ruled",)),
    ("composites", ("composites", "checks")),
    ("functional", ("functional",)),
    ("attribution", ("attribution",)),
    ("transformers", ("transformers",)),
    ("concepts", ("concepts",)),
    ("image, cmap, report", ("cmap", "image", "report", "concept_report")),
    ("metrics", ("metrics",)),
    ("demo", ("demo",)),
    ("datasets", ("datasets",)),
    ("cli", ("cli", "__main__")),
]
#: Layer entries whose modules do not exist yet (the issues that add them).
PLANNED: set[str] = set()

RANK = {name: rank for rank, (_, names) in enumerate(LAYERS) for name in names}
FACE = "funcattr"


# --------------------------------------------------------------------------------------------
# Reading the package
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Import:
    """One imported thing: the module it resolves to and, for ``from m import n``, ``n``."""

    source: str  # the importing module
    path: str  # its file, relative to the repository
    line: int
    target: str  # the module imported (or whose name is imported)
    name: str | None  # the imported name when it is not a module itself

    def where(self) -> str:
        return f"{self.path}:{self.line}"


def _is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _top(module: str) -> str:
    parts = module.split(".")
    return FACE if len(parts) == 1 else parts[1]


class Sources:
    """The modules of the package under ``root / 'funcattr'``, parsed, never imported."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.modules = {self._name(p): p for p in sorted((root / FACE).rglob("*.py"))}
        self.packages = {m for m, p in self.modules.items() if p.name == "__init__.py"}
        self.trees = {m: ast.parse(p.read_text(), str(p)) for m, p in self.modules.items()}
        self.imports = [item for module in self.modules for item in self.imports_of(module)]

    def _name(self, path: Path) -> str:
        parts = path.relative_to(self.root).with_suffix("").parts
        return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)

    def path(self, module: str) -> str:
        return str(self.modules[module].relative_to(self.root))

    def _resolve_from(self, node: ast.ImportFrom, source: str) -> str:
        if not node.level:
            return node.module or ""
        package = source if source in self.packages else source.rpartition(".")[0]
        base = package.split(".")
        base = base[: len(base) - (node.level - 1)]
        return ".".join(base + ([node.module] if node.module else []))

    def imports_of(self, source: str) -> list[Import]:
        """Every funcattr import in ``source``, at any depth (function-local ones included)."""
        found = []
        for node in ast.walk(self.trees[source]):
            if isinstance(node, ast.Import):
                found += [Import(source, self.path(source), node.lineno, alias.name, None)
                          for alias in node.names if alias.name.split(".")[0] == FACE]
            elif isinstance(node, ast.ImportFrom):
                module = self._resolve_from(node, source)
                if module.split(".")[0] != FACE:
                    continue
                for alias in node.names:
                    submodule = f"{module}.{alias.name}"
                    if submodule in self.modules:
                        found.append(Import(source, self.path(source), node.lineno, submodule,
                                            None))
                    else:
                        found.append(Import(source, self.path(source), node.lineno, module,
                                            alias.name))
        return found

    def private_attributes_of(self, source: str) -> list[tuple[int, str]]:
        """``m._name`` where ``m`` is bound to a funcattr module by an import in ``source``."""
        bound: dict[str, str] = {}
        for node in ast.walk(self.trees[source]):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.split(".")[0] == FACE:
                        bound[alias.asname or FACE] = alias.name if alias.asname else FACE
            elif isinstance(node, ast.ImportFrom):
                module = self._resolve_from(node, source)
                for alias in node.names:
                    if f"{module}.{alias.name}" in self.modules:
                        bound[alias.asname or alias.name] = f"{module}.{alias.name}"
        found = []
        for node in ast.walk(self.trees[source]):
            if not isinstance(node, ast.Attribute) or not _is_private(node.attr):
                continue
            chain, value = [], node.value
            while isinstance(value, ast.Attribute):
                chain.insert(0, value.attr)
                value = value.value
            if isinstance(value, ast.Name) and value.id in bound:
                module = ".".join([bound[value.id], *chain])
                if module in self.modules and module != source:
                    found.append((node.lineno, f"{module}.{node.attr}"))
        return found


SOURCES = Sources(ROOT)


# --------------------------------------------------------------------------------------------
# The layer table
# --------------------------------------------------------------------------------------------

def test_layer_table_covers_every_top_level_module():
    present = {_top(module) for module in SOURCES.modules} - {FACE}
    listed = set(RANK)
    assert sorted(present - listed) == [], "top-level modules missing from LAYERS"
    assert sorted(listed - present - PLANNED) == [], "LAYERS names modules that do not exist"
    assert len(RANK) == sum(len(names) for _, names in LAYERS), "a module is in two layers"


def doc_layers(text: str) -> list[tuple[str, tuple[str, ...]]]:
    """The rows ``| layer | modules | ... |`` of the table under ``## Layers``."""
    section = text.split("\n## Layers", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if not line.startswith("|") or len(cells) < 2 or cells[0] in ("layer", "") or set(
                cells[0]) <= {"-", ":"}:
            continue
        rows.append((cells[0], tuple(re.findall(r"`(\w+)(?:\.py|/)?`", cells[1]))))
    return rows


def test_docs_mirror_the_layer_table():
    """docs/architecture.md lists the layers in this order with the same modules (written as
    ``name.py`` or ``name/``), so it names every top-level module."""
    assert doc_layers((ROOT / "docs" / "architecture.md").read_text()) == LAYERS


# --------------------------------------------------------------------------------------------
# The package face
# --------------------------------------------------------------------------------------------

def test_every_name_in_the_face_imports():
    import funcattr

    for name in funcattr.__all__:
        assert getattr(funcattr, name) is not None, name
    namespace: dict = {}
    exec(f"from funcattr import {', '.join(funcattr.__all__)}", namespace)
    assert set(funcattr.__all__) <= set(namespace) and set(funcattr.__all__) <= set(dir(funcattr))
    assert len(funcattr.__all__) == len(set(funcattr.__all__))


def test_face_names_each_public_module():
    """The face's ``__all__`` names every public layer's module (torchvision and the CLI are
    reached as ``funcattr.torchvision`` / the ``funcattr`` command)."""
    import funcattr

    public = {name for _, names in LAYERS for name in names if not _is_private(name)}
    entry_points = {"torchvision", "module_tree", "ruled", "functional", "report",
                    "concept_report", "demo", "cli", "__main__"}
    assert sorted(public - PLANNED - entry_points - set(funcattr.__all__)) == []


def test_import_funcattr_loads_no_optional_layer():
    """metrics, image and torchvision's models load on first use (``import funcattr`` time)."""
    import subprocess
    import sys

    code = ("import sys, funcattr\n"
            "print(sorted(m for m in ('funcattr.metrics', 'funcattr.image', 'torchvision', "
            "'funcattr.torchvision', 'PIL') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True, cwd=ROOT)
    assert result.stdout.strip() == "[]"


# --------------------------------------------------------------------------------------------
# Imports: upward, cycles, private names
# --------------------------------------------------------------------------------------------

def upward_imports(sources: Sources) -> list[str]:
    problems = []
    for item in sources.imports:
        source, target = _top(item.source), _top(item.target)
        if source == FACE or source not in RANK:
            continue
        if target == FACE:
            name = f" {item.name}" if item.name else ""
            problems.append(f"{item.where()}: {item.source} imports{name} from the package "
                            f"face funcattr; import it from the module that defines it")
        elif target in RANK and RANK[target] > RANK[source]:
            problems.append(
                f"{item.where()}: {item.source} ({LAYERS[RANK[source]][0]}) imports "
                f"{item.target} ({LAYERS[RANK[target]][0]}), a higher layer")
    return problems


def import_cycles(sources: Sources) -> list[str]:
    """Strongly connected components of the module graph with more than one module."""
    edges: dict[str, dict[str, Import]] = {module: {} for module in sources.modules}
    for item in sources.imports:
        if item.target in sources.modules and item.target != item.source:
            edges[item.source].setdefault(item.target, item)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    components = []

    def visit(node: str) -> None:  # Tarjan's algorithm
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in edges[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for module in sources.modules:
        if module not in index:
            visit(module)
    problems = []
    for component in components:
        inner = [item for source in component for target, item in edges[source].items()
                 if target in component]
        problems.append(f"cycle {' <-> '.join(component)}: "
                        + "; ".join(f"{item.where()} imports {item.target}" for item in inner))
    return problems


def private_imports(sources: Sources) -> list[str]:
    problems = []
    for item in sources.imports:
        if item.name is not None and _is_private(item.name) and item.target != item.source:
            problems.append(f"{item.where()}: {item.source} imports the private name "
                            f"{item.name} from {item.target}")
        parts = item.target.split(".")
        private = [i for i, part in enumerate(parts) if _is_private(part)]
        if private:
            owner = ".".join(parts[: private[0]])  # the package the private module belongs to
            if not (item.source == owner or item.source.startswith(owner + ".")):
                problems.append(f"{item.where()}: {item.source} imports the private module "
                                f"{item.target} from outside {owner}")
    for module in sources.modules:
        problems += [f"{sources.path(module)}:{line}: {module} uses the private name {name}"
                     for line, name in sources.private_attributes_of(module)]
    return problems


@pytest.mark.parametrize("check", [upward_imports, import_cycles, private_imports],
                         ids=["no_upward_imports", "no_import_cycles", "no_private_imports"])
def test_imports(check):
    problems = check(SOURCES)
    assert problems == [], "\n" + "\n".join(problems)


# --------------------------------------------------------------------------------------------
# The checks themselves, on a small package with one violation of each kind
# --------------------------------------------------------------------------------------------

BROKEN = {
    "__init__.py": "from funcattr.functional import functionalize\n",
    "types.py": "X = 1\n",
    "rules.py": "from funcattr import types\nfrom funcattr.composites import Preset\n",
    "composites.py": ("from funcattr.rules import _helper\n"
                      "def context():\n    from funcattr.functional import run\n"),
    "functional.py": ("from . import composites\nimport funcattr.rules as r\n"
                      "from funcattr import functionalize\n"
                      "def run():\n    return r._helper, composites.Preset\n"),
    "metrics/__init__.py": "from funcattr.metrics._common import ok\n",
    "metrics/_common.py": "ok = 1\n",
    "cli.py": "from funcattr.metrics import _common\n",
}


@pytest.fixture
def broken(tmp_path: Path) -> Sources:
    for name, text in BROKEN.items():
        path = tmp_path / FACE / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return Sources(tmp_path)


def test_checks_find_each_kind_of_violation(broken: Sources):
    assert upward_imports(broken) == [
        "funcattr/composites.py:3: funcattr.composites (composites) imports funcattr.functional "
        "(functional), a higher layer",  # a function-local import counts
        "funcattr/functional.py:3: funcattr.functional imports functionalize from the package "
        "face funcattr; import it from the module that defines it",
        "funcattr/rules.py:2: funcattr.rules (rules) imports funcattr.composites (composites), "
        "a higher layer",
    ]
    assert import_cycles(broken) == [
        "cycle funcattr <-> funcattr.composites <-> funcattr.functional <-> funcattr.rules: "
        "funcattr/__init__.py:1 imports funcattr.functional; "
        "funcattr/composites.py:1 imports funcattr.rules; "
        "funcattr/composites.py:3 imports funcattr.functional; "
        "funcattr/functional.py:1 imports funcattr.composites; "  # a relative import
        "funcattr/functional.py:2 imports funcattr.rules; "
        "funcattr/functional.py:3 imports funcattr; "
        "funcattr/rules.py:2 imports funcattr.composites",
    ]
    assert private_imports(broken) == [
        "funcattr/cli.py:1: funcattr.cli imports the private module funcattr.metrics._common "
        "from outside funcattr.metrics",
        "funcattr/composites.py:1: funcattr.composites imports the private name _helper from "
        "funcattr.rules",
        "funcattr/functional.py:5: funcattr.functional uses the private name "
        "funcattr.rules._helper",
    ]


def test_docs_table_parser():
    text = ("# A\n\n## Layers\n\n| layer | modules | holds |\n|---|---|---|\n"
            "| core | `core/`, `_affine.py` | the rules |\n| cli | `cli/` | |\n\n## Next\n"
            "| other | `x.py` | |\n")
    assert doc_layers(text) == [("core", ("core", "_affine")), ("cli", ("cli",))]
