"""Every ``funcattr ...`` command in the shell blocks of README.md and docs/*.md runs as written.

The commands run in a fresh working folder that holds what they name: ``photos/`` and
``data/`` (demo sample images with their masks), ``models/net.py`` (a small CNN factory) with
``net.pt`` and ``classes.txt``, and random weights for the torchvision architectures named with
``--weights``. Where a block shows the output (``$ funcattr ...`` followed by lines), every
line shown is in the output, in order (``...`` stands for anything). On a machine without
CUDA, ``--device cuda`` runs as ``--device cpu`` (the only change to a command). Commands on
torchvision models at 224x224 and ``funcattr evaluate`` are marked slow. The numbers
of docs/cli.md's tables of mask fractions are the command's, to the digits shown.
"""

from __future__ import annotations

import itertools
import re
import shlex
import textwrap
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from funcattr.cli import main

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SAMPLES = Path(str(resources.files("funcattr.demo") / "samples"))
#: Commands with one of these are slow: torchvision models at 224x224, and funcattr evaluate
#: (every default metric of five methods on the 12 demo images takes about 20 s).
SLOW = ("-m resnet", "-m vgg", "funcattr evaluate")

NET = """
import torch


def build():
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
        torch.nn.MaxPool2d(2), torch.nn.Conv2d(8, 8, 3, padding=1), torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 4))
"""


@dataclass(frozen=True)
class Command:
    """A ``funcattr`` command of a doc, with the output shown after it (if any)."""

    doc: str
    line: int
    text: str
    shown: tuple[str, ...] = ()

    @property
    def id(self) -> str:
        return f"{self.doc}:{self.line}"


def doc_commands() -> list[Command]:
    """The ``funcattr ...`` lines of the fenced blocks, ``$ funcattr ...`` with their output."""
    commands = []
    for path in DOCS:
        lines = path.read_text(encoding="utf-8").splitlines()
        inside, current = False, None
        for number, line in enumerate(lines, start=1):
            if line.lstrip().startswith("```"):
                inside = not inside
                current = None
                continue
            if not inside:
                continue
            stripped = line.strip()
            if stripped.startswith("$ "):
                current = None
                if stripped.startswith("$ funcattr "):
                    current = Command(path.name, number, stripped[2:])
                    commands.append(current)
            elif current is not None:  # the output shown after `$ funcattr ...`
                if stripped:
                    commands[-1] = current = Command(current.doc, current.line, current.text,
                                                     (*current.shown, stripped))
            elif stripped.startswith("funcattr ") or stripped == "funcattr":
                commands.append(Command(path.name, number, stripped))
    return commands


COMMANDS = doc_commands()


def _params() -> list:
    return [pytest.param(c, id=c.id, marks=[pytest.mark.slow] * any(s in c.text for s in SLOW))
            for c in COMMANDS]


def _copy_samples(folder: Path, count: int) -> None:
    folder.mkdir()
    images = sorted(p for p in SAMPLES.glob("*.png") if not p.stem.endswith("_mask"))[:count]
    for image in images:
        (folder / image.name).write_bytes(image.read_bytes())
        mask = image.with_name(f"{image.stem}_mask.png")
        (folder / mask.name).write_bytes(mask.read_bytes())


def _random_weights(name: str, path: Path) -> None:
    import torchvision.models

    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = torchvision.models.get_model(name, weights=None)
    torch.save(model.state_dict(), path)


@pytest.fixture
def workdir(tmp_path, monkeypatch) -> Path:
    """A working folder with the files the documented commands name."""
    _copy_samples(tmp_path / "photos", 2)
    _copy_samples(tmp_path / "data", 2)
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "net.py").write_text(textwrap.dedent(NET))
    namespace: dict = {}
    exec(NET, namespace)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        net = namespace["build"]().float()
    torch.save(net.state_dict(), tmp_path / "net.pt")
    (tmp_path / "classes.txt").write_text("".join(f"class {i}\n" for i in range(4)))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _arguments(command: Command, workdir: Path) -> list[str]:
    arguments = shlex.split(command.text, comments=True)[1:]
    for option, value in itertools.pairwise(arguments):
        if option in ("-w", "--weights") and not (workdir / value).exists():
            model = arguments[arguments.index("-m") + 1]
            _random_weights(model, workdir / value)
    if "--device" in arguments and not torch.cuda.is_available():
        index = arguments.index("--device") + 1
        arguments[index] = arguments[index].replace("cuda", "cpu")
    return arguments


_NUMBER = re.compile(r"-?\d+\.\d+(?:e[+-]?\d+)?")


def _same_up_to_rounding(expected: str, line: str) -> bool:
    """The same text, with decimal numbers equal to 0.5% (metric means in float32 may differ
    in the last printed digit on another CPU's summation order)."""
    if _NUMBER.split(expected) != _NUMBER.split(line):
        return False
    pairs = zip(_NUMBER.findall(expected), _NUMBER.findall(line), strict=True)
    return all(abs(float(a) - float(b)) <= 5e-3 * abs(float(a)) + 1e-6 for a, b in pairs)


def _shown_in(shown: tuple[str, ...], output: str) -> None:
    """Every line shown is a line of the output, in order; ``...`` matches anything, and
    decimal numbers match to 0.5%."""
    lines = [" ".join(line.split()) for line in output.splitlines()]
    position = 0
    for expected in shown:
        expected = " ".join(expected.split())
        if expected == "...":
            continue
        pattern = re.compile(".*".join(re.escape(part) for part in expected.split("...")))
        for index in range(position, len(lines)):
            if pattern.fullmatch(lines[index]) or _same_up_to_rounding(expected, lines[index]):
                position = index + 1
                break
        else:
            raise AssertionError(f"not in the output (in order): {expected!r}\n{output}")


def test_the_docs_have_commands():
    names = {(c.doc, c.text.split()[1] if len(c.text.split()) > 1 else "") for c in COMMANDS}
    assert {("cli.md", "explain"), ("cli.md", "list"), ("metrics.md", "evaluate")} <= names
    assert any(c.shown for c in COMMANDS)


@pytest.mark.parametrize("command", _params())
def test_documented_command_runs_as_written(command, workdir):
    arguments = _arguments(command, workdir)
    result = CliRunner().invoke(main, arguments, prog_name="funcattr")
    output = result.stdout + result.stderr
    assert "Traceback" not in output, output
    if any(line.startswith("Error:") for line in command.shown):
        assert result.exit_code == 2, output  # a documented mistake
    else:
        assert result.exit_code == 0, output
    _shown_in(command.shown, output)


def _figures() -> list[tuple[tuple[str, ...], float, float]]:
    """The rows of docs/cli.md's tables: (options, fraction in the mask, within 2 px)."""
    text = (ROOT / "docs" / "cli.md").read_text(encoding="utf-8")
    rows = []
    for table in re.finditer(r"^\| `(--composite|--attributor)` [^\n]*\n\|---[^\n]*\n"
                             r"((?:\|[^\n]*\n)+)", text, re.M):
        for name, inside, near in re.findall(r"^\| `(\w+)`[^|]*\| ([\d.]+) \| ([\d.]+) \|$",
                                             table.group(2), re.M):
            rows.append(((table.group(1), name), float(inside), float(near)))
    return rows


FIGURES = _figures()


def test_cli_md_has_its_tables_of_figures():
    assert len(FIGURES) >= 12
    assert (("--composite", "epsilon_plus_flat"), 0.701, 0.912) in FIGURES


@pytest.mark.parametrize(("options", "inside", "near"), FIGURES,
                         ids=[" ".join(options) for options, _, _ in FIGURES])
def test_cli_md_figures_are_the_commands(options, inside, near, tmp_path):
    import json

    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["explain", *options, "-o", str(out), "-q",
                                       "--relevance-format", "none"])
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert round(summary["mean_fraction_in_mask"], 3) == inside
    assert round(summary["mean_fraction_near_mask"], 3) == near
