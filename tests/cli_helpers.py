"""Shared helpers of the command-line tests: running a command and checking a user error."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from click.testing import CliRunner, Result

from funcattr.cli import main

__all__ = ["assert_error", "invoke", "quiet_progress"]


def invoke(*args: object) -> Result:
    """``funcattr ARGS...`` in this process (arguments made strings)."""
    return CliRunner().invoke(main, [str(a) for a in args])


def assert_error(result: Result, fragment: str, code: int | None = None, *,
                 stdout_empty: bool = False) -> str:
    """A user error: non-zero exit (``code`` if given), exactly one ``Error:`` line on stderr
    holding ``fragment``, no traceback (and nothing on stdout if ``stdout_empty``); returns
    the line."""
    assert result.exit_code != 0, result.output
    if code is not None:
        assert result.exit_code == code, (result.exit_code, result.output)
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    lines = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(lines) == 1, result.stderr
    assert fragment in lines[0], lines[0]
    if stdout_empty:
        assert result.stdout == ""
    return lines[0]


@pytest.fixture(scope="module")
def quiet_progress() -> Iterator[None]:
    """Stderr holds only what a test expects: no progress lines, however slow the machine
    (tests/test_cli_reliability.py tests them). Use it with ``autouse`` in a module:
    ``pytestmark = pytest.mark.usefixtures("quiet_progress")``."""
    from funcattr.cli import progress

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(progress, "QUIET_SECONDS", float("inf"))
        yield
