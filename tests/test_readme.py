"""The README's first command renders as written (in the test environment: not a fresh install)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from cli_helpers import invoke, ok

from videodiff.weights import hub

README = Path(__file__).resolve().parents[1] / "README.md"


def fresh_machine_commands() -> list[str]:
    text = README.read_text(encoding="utf-8")
    section = text.split("## The two commands for a fresh machine", 1)[1].split("\n## ", 1)[0]
    return [block.strip() for block in re.findall(r"```bash\n(.*?)```", section, flags=re.S)]


def test_readme_has_the_two_commands():
    commands = fresh_machine_commands()
    assert len(commands) >= 2 and all("\n" not in c for c in commands[:2])
    render, test = commands[:2]
    assert " videodiff render " in f" {render} " and "--model" not in render  # the built-in model, offline
    assert test.endswith('pip install -e ".[test,ui]" && python -m pytest -q')
    ci = (README.parent / ".ci" / "run").read_text(encoding="utf-8")
    assert 'pip install -e ".[test,ui]" && python -m pytest -q' in ci  # what .ci/run runs, kept in sync


@pytest.mark.skipif(not (hub.BUILTIN_MODEL / "model_index.json").is_file(), reason="no built-in model")
def test_readme_render_command_runs(tmp_path, monkeypatch):
    render = fresh_machine_commands()[0]
    args = shlex.split(render.split("&&")[-1])  # the part after the set-up
    assert args[:2] == ["videodiff", "render"]
    monkeypatch.chdir(tmp_path)
    result = ok(invoke(*args[1:]))
    output = Path(args[args.index("-o") + 1])
    assert (tmp_path / output).is_file() and (tmp_path / f"{output}.json").is_file()
    assert str((tmp_path / output).resolve()) in result.stdout


def test_readme_is_short():
    """The README answers what, install, the two commands, one example per command, data flow,
    guarantees and where the docs are; everything else lives in the docs site (docs/, mkdocs.yml)."""
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 400, f"README.md has {len(lines)} lines; move the detail into docs/"


def test_readme_quick_start_names_every_command():
    """One example per command of `videodiff --help`, so a new command cannot go unmentioned."""
    from videodiff.cli import cli

    text = README.read_text(encoding="utf-8")
    for name in cli.commands:
        assert f"videodiff {name} " in text, name
