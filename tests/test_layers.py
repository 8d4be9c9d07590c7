"""The import rules import-linter cannot express (the others are contracts in pyproject.toml)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "videodiff"

LOADS_NO_TORCH = """
import sys
from videodiff import config
from videodiff.cli import cli
try:
    cli.main(["render", "--help"], prog_name="videodiff", standalone_mode=False)
    cli.main(["train", "--help"], prog_name="videodiff", standalone_mode=False)
finally:
    print(sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "diffusers", "transformers")))
"""


def test_config_and_argument_parsing_load_no_torch():
    """``videodiff render --help`` and the settings stay fast: parsing loads no torch, diffusers or transformers."""
    done = subprocess.run([sys.executable, "-c", LOADS_NO_TORCH], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]", done.stdout
    assert "--frames" in done.stdout  # the help was printed: the check ran after parsing


def test_sampling_imports_nothing_of_the_package():
    """Nothing but its own modules, not even lazily, inside a function (import-linter's contracts see those too; this
    says it plainly). The sampling package is the loop, the conditioning object and the guides."""
    imported = []
    for path in sorted((PACKAGE / "sampling").glob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        imported += [
            ("." * node.level + (node.module or "")) if isinstance(node, ast.ImportFrom) else alias.name
            for node in ast.walk(tree)
            if isinstance(node, (ast.Import, ast.ImportFrom))
            for alias in node.names
        ]
    own = [
        name
        for name in imported
        if name.startswith(".") or (name.split(".")[0] == "videodiff" and not name.startswith("videodiff.sampling"))
    ]
    assert imported and not own, own


def test_no_module_holds_more_than_500_lines():
    """Files stay small and named for what they hold (a module that grows two jobs splits)."""
    files = PACKAGE.rglob("*.py")
    sizes = {str(p.relative_to(PACKAGE)): len(p.read_text(encoding="utf-8").splitlines()) for p in files}
    assert not {name: n for name, n in sizes.items() if n > 500}


def test_videodiff_render_renders_whether_or_not_its_module_was_imported():
    """``videodiff.render(config)`` (the Python API) works before and after ``videodiff.render`` the module loads."""
    code = (
        "import videodiff, inspect; first = videodiff.render; import videodiff.render, videodiff.cli; "
        "after = videodiff.render; assert callable(first) and callable(after); "
        "assert inspect.signature(after.__call__).parameters.keys() >= {'config', 'pipe', 'on_step'}"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
