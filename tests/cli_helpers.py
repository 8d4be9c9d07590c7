"""Running the CLI in tests: in-process, isolated from the environment, with the one-line error contract."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from click.testing import CliRunner, Result

from videodiff.cli import cli


def invoke(*args: object, env: dict[str, str | None] | None = None) -> Result:
    """Run the CLI in-process; model and launcher env vars are cleared unless given, and the CLI's logging
    set-up is undone afterwards (it turns off propagation, which other tests' ``caplog`` relies on)."""
    logger = logging.getLogger("videodiff")
    saved = list(logger.handlers), logger.level, logger.propagate
    environment = {"VIDEODIFF_MODEL": None, "VIDEODIFF_MOTION_MODULE": None, "WORLD_SIZE": None, **(env or {})}
    try:
        return CliRunner().invoke(cli, [str(a) for a in args], env=environment)
    finally:
        logger.handlers[:] = saved[0]
        logger.setLevel(saved[1])
        logger.propagate = saved[2]


def ok(result: Result) -> Result:
    assert result.exit_code == 0, f"exit {result.exit_code}\nstderr: {result.stderr}\n{result.exception!r}"
    assert "Traceback" not in result.output
    return result


def assert_user_error(result: Result) -> str:
    """Exit status 2 and exactly one stderr line ``videodiff: error: ...``; returns the message."""
    assert result.exit_code == 2, f"exit {result.exit_code}\nstderr: {result.stderr}\n{result.exception!r}"
    assert "Traceback" not in result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1, f"expected one stderr line, got {lines!r}"
    assert lines[0].startswith("videodiff: error: ")
    assert result.stdout == ""
    return lines[0].removeprefix("videodiff: error: ")


def read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))
