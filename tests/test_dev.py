"""The ``dev`` script's set-up: ``./dev demo`` installs the package only, ``./dev test`` adds the
test tools (issue 14.38). Run against a stand-in ``.venv`` whose programs log their arguments
(every import check fails, as in a fresh ``.venv``), so nothing is installed."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

FAKE = """#!/usr/bin/env bash
echo "$(basename "$0") $*" >> "$DEV_LOG"
if [ "$(basename "$0")" = python ] && [ "${1:-}" = -c ]; then
    exit 1  # an import check: nothing is installed yet
fi
"""


def run_dev(tmp_path: Path, *args: str) -> list[str]:
    shutil.copy(ROOT / "dev", tmp_path / "dev")
    bin_folder = tmp_path / ".venv" / "bin"
    bin_folder.mkdir(parents=True, exist_ok=True)
    for program in ("python", "funcattr", "ruff"):
        (bin_folder / program).write_text(FAKE)
        (bin_folder / program).chmod(0o755)
    log = tmp_path / f"log-{args[0]}"
    subprocess.run(["bash", str(tmp_path / "dev"), *args], check=True, timeout=60,
                   env={"PATH": "/usr/bin:/bin", "DEV_LOG": str(log)})
    return log.read_text().splitlines()


def installs(calls: list[str]) -> list[str]:
    return [call for call in calls if call.startswith("python -m pip install")]


def test_dev_demo_installs_only_the_package(tmp_path):
    calls = run_dev(tmp_path, "demo")
    assert installs(calls)[-1] == "python -m pip install -q -e ."
    assert not [call for call in installs(calls) if "[test]" in call or "zennit" in call]
    assert calls[-1] == "funcattr explain --output funcattr-demo-output"


def test_dev_test_installs_the_test_tools(tmp_path):
    calls = run_dev(tmp_path, "test", "-q")
    assert "python -m pip install -q -e ." in installs(calls)
    assert "python -m pip install -q -e .[test]" in installs(calls)
    assert any("zennit==1.0.0" in call for call in installs(calls))
    assert "ruff check funcattr tests benchmarks" in calls
    assert "python -m pytest -q" in calls
