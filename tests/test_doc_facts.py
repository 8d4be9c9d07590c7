"""What the README and the docs state about the software's behaviour is what the code does.

Defaults, limits and the built-in model's figures are read from the pages and compared with the settings
dataclasses (defaults and metadata), the checks' constants and the built-in model's ``videodiff.json``, so
that a stated figure cannot go stale. Measurements (table rows with a date, commit and machine) are history
and are not checked. Each fact below must be found somewhere: a rewording that drops it fails here too, and
then the pattern moves with the words.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import click
import pytest

from videodiff import text
from videodiff.cli import cli
from videodiff.config import IMG2VID_STRENGTH, MODEL_DEFAULT_KEYS, VID2VID_STRENGTH, TrainConfig
from videodiff.log import Progress
from videodiff.settings import checks
from videodiff.settings.render import STAGES
from videodiff.shapes.world import ALL_COMBOS, COLORS, DIRECTIONS, HELDOUT, SHAPES
from videodiff.starts import start_step
from videodiff.weights import models

ROOT = Path(__file__).resolve().parents[1]
# the changelog is history; docs/changelog.md includes it
PAGES = [ROOT / "README.md", *sorted(p for p in (ROOT / "docs").rglob("*.md") if p.name != "changelog.md")]
N = r"(\d+(?:\.\d+)?)"  # a number a page states: 16, 7.5 (not a full stop after it)
MEASURED = re.compile(r"^\|\s*\d{4}-\d{2}-\d{2}\s*\|")  # a measurement row: | date | commit | machine | ...


def builtin() -> dict[str, Any]:
    """The built-in model's recorded defaults (its folders' ``videodiff.json``)."""
    return models.read_model_defaults(None)


def sampled(steps: int, fraction: float) -> int:
    """Steps that run from the motion prior's start ``fraction`` into ``steps``."""
    return steps - start_step(steps, fraction)


def guided(steps: int, high: float) -> int:
    """Steps of ``steps`` sampled whose position ``i/(steps-1)`` lies in ``[0, high]``."""
    return sum(1 for i in range(steps) if i / (steps - 1) <= high)


class Fact(NamedTuple):
    """A figure the pages state: where ``pattern`` matches, its groups must read ``values()``."""

    name: str
    pattern: str
    values: Callable[[], tuple[Any, ...]]


def _b(*keys: str) -> Callable[[], tuple[Any, ...]]:
    return lambda: tuple(builtin()[k] for k in keys)


FACTS = [
    # limits (videodiff.settings.checks, videodiff.media.clips)
    Fact(
        "limits",
        r"at most ([\d,]+) steps, ([\d,]+) pixels a side, ([\d,]+) frames, ([\d,]+) prompt characters(?: \([^)]*\))?, "
        rf"fps from {N} to {N}, `--stride` ([\d,]+), ([\d,]+) videos a batch(?: \([^)]*\))?, `--free-init` (\d+), "
        r"(\d+) MiB settings",
        lambda: (
            checks.MAX_STEPS,
            checks.MAX_SIDE,
            checks.MAX_FRAMES,
            checks.MAX_PROMPT_CHARS,
            checks.MIN_FPS,
            checks.MAX_FPS,
            checks.MAX_STRIDE,
            _max_videos(),
            checks.MAX_FREE_INIT,
            checks.MAX_SETTINGS_BYTES >> 20,
        ),
    ),
    Fact(
        "video file limits",
        r"a video frame at most (\d+) a side and (\d+)x\d+ pixels, a video file at most ([\d,]+) frames",
        lambda: _video_limits(),
    ),
    Fact("frames limit", r"`--frames N` \|[^|]*\| frames, at most ([\d,]+)", lambda: (checks.MAX_FRAMES,)),
    Fact("lcm steps limit", r"`lcm` \(\d+-\d+ steps, at most (\d+)\)", lambda: (checks.LCM_MAX_STEPS,)),
    Fact("cache limit", r"every N-th step only, 1 to (\d+)", lambda: (checks.MAX_CACHE,)),
    # the built-in defaults of a model that records none (the settings dataclasses)
    Fact(
        "built-in defaults",
        rf"else (\d+) frames, (\d+) (\w+) steps and guidance {N}",
        lambda: _fields("frames", "steps", "scheduler", "guidance"),
    ),
    # the built-in model (its videodiff.json)
    Fact(
        "built-in model's sampling",
        rf"(\d+) ([\w+-]+) {N} for the built-in model",
        _b("steps", "scheduler", "guidance"),
    ),
    Fact("built-in model's size", r"(\d+)×(\d+), (\d+)-frame clips", _b("height", "width", "frames")),
    Fact("built-in model's frames", r"uint8 numpy array \[(\d+), (\d+), (\d+), 3\]", _b("frames", "height", "width")),
    Fact("built-in model's prior", rf"the built-in model: {N}, so (\d+) of its (\d+) steps run", lambda: _prior()),
    Fact(
        "built-in model's sampled steps",
        r"the built-in\s+16-step model \(`--motion-module shapes-teacher`\) samples (\d+) of its (\d+) steps, and "
        r"`0,0\.5` guides the first (\d+) of\s+those (\d+)",
        lambda: _interval_figures(),
    ),
    Fact(
        "built-in model's skipped steps",
        r"the current defaults skip (\d+) of (\d+)",
        lambda: (start_step(builtin()["steps"], builtin()["motion_prior"]), builtin()["steps"]),
    ),
    Fact(
        "built-in model's start",
        rf"current defaults start at {N}, (\d+) of 4 steps in",
        lambda: (builtin()["motion_prior"], start_step(4, builtin()["motion_prior"])),
    ),
    Fact(
        "built-in model's strength",
        rf"{N} for the built-in model\), else {N} \(img2vid\) / {N} \(vid2vid\)",
        lambda: (1 - builtin()["motion_prior"], IMG2VID_STRENGTH, VID2VID_STRENGTH),
    ),
    # the shapes world
    Fact(
        "vocabulary",
        r"(\d+) colours \([^)]*\), (\d+) shapes \([^)]*\) and (\d+) directions",
        lambda: (len(COLORS), len(SHAPES), len(DIRECTIONS)),
    ),
    Fact("held out", r"(\d+) of the (\d+) (?:combinations )?were held out", lambda: (len(HELDOUT), len(ALL_COMBOS))),
    # what the terminal shows (videodiff.text, videodiff.log)
    Fact("typo similarity", rf"similarity of at least {N}", lambda: (_default_of(text.nearest_words, "cutoff"),)),
    Fact("progress interval", r"at least every (\d+) s\b", lambda: (_default_of(Progress, "every"),)),
    # the web app
    Fact("serve address", r"(?:videodiff serve|the web app)\b[^\n]*?http://([\d.]+):(\d+)", lambda: _serve_defaults()),
]


def _default_of(func: Callable[..., Any], name: str) -> Any:
    return inspect.signature(func).parameters[name].default


def _fields(*names: str) -> tuple[Any, ...]:
    defaults = {f.name: f.default for stage in STAGES for f in dataclasses.fields(stage)}
    return tuple(defaults[n] for n in names)


def _max_videos() -> int:
    from videodiff.batch import MAX_VIDEOS

    return MAX_VIDEOS


def _video_limits() -> tuple[int, int, int]:
    from videodiff.media import budget

    side = int(budget.MAX_DECODE_PIXELS**0.5)
    return budget.MAX_VIDEO_SIDE, side, budget.MAX_VIDEO_FRAMES


def _prior() -> tuple[float, int, int]:
    d = builtin()
    return d["motion_prior"], sampled(d["steps"], d["motion_prior"]), d["steps"]


def _interval_figures() -> tuple[int, int, int, int]:
    d = models.read_model_defaults(None, "shapes-teacher")  # the 16-step model: the default renders unguided
    run = sampled(d["steps"], d["motion_prior"])
    return run, d["steps"], guided(run, 0.5), run


def _serve_defaults() -> tuple[str, int]:
    params = {p.name: p.default for p in cli.commands["serve"].params}
    return params["host"], params["port"]


def same(stated: str, actual: Any) -> bool:
    """Whether ``stated`` (text from a page) says ``actual``: numbers by value (``10,000``, ``1.0`` = ``1``),
    ``off``/``on`` for flags, names without backticks and case."""
    text = stated.strip().strip("`").strip()
    if isinstance(actual, bool):
        return text.lower() == ("on" if actual else "off")
    if isinstance(actual, (int, float)):
        try:
            return abs(float(text.replace(",", "")) - float(actual)) < 1e-9
        except ValueError:
            return False
    return text.lower() == str(actual).lower()


def statements(text: str) -> str:
    """``text`` without its measurement rows (history, not a statement about the software)."""
    return "\n".join("" if MEASURED.match(line) else line for line in text.splitlines())


def wrong_facts(text: str, where: str = "") -> tuple[list[str], set[str]]:
    """The figures in ``text`` that disagree with the code, and the names of the facts found."""
    wrong, found = [], set()
    body = statements(text)
    for fact in FACTS:
        for match in re.finditer(fact.pattern.replace(" ", r"\s+"), body):  # a line may break anywhere
            found.add(fact.name)
            actual = fact.values()
            if len(match.groups()) != len(actual) or not all(map(same, match.groups(), actual)):
                wrong.append(f"{where}: {fact.name}: {match.group(0)!r} states {match.groups()}, the code {actual}")
    return wrong, found


# ------------------------------------------------------------------ option defaults in reference tables and prose

# the render settings' fields; train's where no render setting has the name (--distill-ema...)
FIELDS = {f.name: f for cls in (TrainConfig, *STAGES) for f in dataclasses.fields(cls)}
RECORDED = set(MODEL_DEFAULT_KEYS)  # a model may record these: "the model's, else X"


def _click_default(flag: str) -> Any:
    """The default of ``--flag`` where the commands that have it agree (``None`` where none has one)."""
    found = set()

    def walk(command: click.Command) -> None:
        for param in command.params:
            if isinstance(param, click.Option) and f"--{flag}" in param.opts:
                if isinstance(param.default, (bool, int, float, str)):  # not None, (), or click's unset marker
                    found.add(param.default)
        for sub in getattr(command, "commands", {}).values():
            walk(sub)

    walk(cli)
    return found.pop() if len(found) == 1 else None


def option_default(flag: str) -> tuple[bool, Any]:
    """``(whether a model may record it, its built-in default)`` for ``--flag`` (a settings field's, else
    the commands' own option default)."""
    name = flag.replace("-", "_")
    if name in FIELDS:
        field = FIELDS[name]
        default = field.default if isinstance(field.default, (bool, int, float, str)) else None
        return name in RECORDED, default
    return False, _click_default(flag)


def wrong_table_defaults(text: str, where: str = "") -> list[str]:
    """Rows of ``| flag | default | meaning |`` tables whose default cell disagrees with the code: a setting a
    model may record reads ``the model's[, else X]``; any other states its default (``off`` for a flag)."""
    wrong = []
    in_table = False
    for line in statements(text).splitlines():
        row = line.replace("\\|", "/")  # an escaped | inside a cell (`latent\\|pixels`)
        cells = [c.strip() for c in row.strip().strip("|").split("|")] if row.startswith("|") else []
        if cells[:2] == ["flag", "default"]:
            in_table = True
            continue
        if not cells:
            in_table = False
        if not in_table or len(cells) < 3 or set(cells[0]) <= set("- "):
            continue
        flag_cell, default = cells[0], cells[1]
        if not default:
            continue
        for flag in re.findall(r"--([a-z][a-z0-9-]*)", flag_cell):
            recorded, value = option_default(flag)
            if recorded:
                rest = default.removeprefix("the model's")
                if rest == default:
                    wrong.append(f"{where}: --{flag}: {default!r} omits that the model's recorded default comes first")
                elif value is not None and not same(
                    re.split(r"[,(]", rest.removeprefix(", else "), maxsplit=1)[0], value
                ):
                    wrong.append(f"{where}: --{flag}: {default!r}, the code's default is {value!r}")
            elif value is not None and not same(re.split(r"\s[(]|, ", default, maxsplit=1)[0], value):
                wrong.append(f"{where}: --{flag}: {default!r}, the code's default is {value!r}")
    return wrong


PROSE_DEFAULT = re.compile(r"`--([a-z][a-z0-9-]*)[^`]*`,? \(?default (\d[\d.,]*|`[^`]+`)")


def wrong_prose_defaults(text: str, where: str = "") -> list[str]:
    """``--flag``, default X`` (or ``(default X``) in prose where the code's default of ``--flag`` is not X."""
    wrong = []
    for match in PROSE_DEFAULT.finditer(statements(text)):
        flag, stated = match.group(1), match.group(2).rstrip(".,")
        _, value = option_default(flag)
        if value is not None and not isinstance(value, bool) and not same(stated, value):
            wrong.append(f"{where}: --{flag}: {match.group(0)!r}, the code's default is {value!r}")
    return wrong


# ------------------------------------------------------------------ the tests


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(ROOT)) for p in PAGES])
def test_stated_defaults_and_figures_match_the_code(page):
    text = page.read_text(encoding="utf-8")
    where = str(page.relative_to(ROOT))
    wrong = wrong_facts(text, where)[0] + wrong_table_defaults(text, where) + wrong_prose_defaults(text, where)
    assert not wrong, "\n".join(wrong)


def test_every_fact_is_stated_somewhere():
    """Each checked fact is found on some page: a rewording that drops a pattern cannot drop its check."""
    found: set[str] = set()
    for page in PAGES:
        found |= wrong_facts(page.read_text(encoding="utf-8"))[1]
    assert found == {f.name for f in FACTS}, sorted({f.name for f in FACTS} - found)
    tables = sum(
        "| flag | default |" in page.read_text(encoding="utf-8") for page in PAGES
    )  # the render and img2vid/vid2vid references
    assert tables >= 2


@pytest.mark.parametrize(
    "stale",
    [
        "print(settings.steps)     # 12 dpm++ 4.0 for the built-in model",  # the README's comment of 2026-12
        "| flag | default | meaning |\n| --- | --- | --- |\n| `--steps N` | 25 | denoising steps |",  # the model's?
        "| flag | default | meaning |\n| --- | --- | --- |\n| `--steps N` | the model's, else 20 | steps |",
        "| flag | default | meaning |\n| --- | --- | --- |\n| `--fuse` | `flat` | how windows are weighted |",
        "| flag | default | meaning |\n| --- | --- | --- |\n| `--paste` | on | exact pictures |",
        "the motion prior's start (1 minus its `motion_prior`: 0.67 for the built-in model), else 0.85 (img2vid) / "
        "0.6 (vid2vid)",
        "limits: at most 1000 steps, 2048 pixels a side, 1024 frames, 10,000 prompt characters, fps from 0.1 to 240, "
        "`--stride` 1000, 10,000 videos a batch, `--free-init` 10, 1 MiB settings",
        "with `--distill-ema`, default 0.9) as the target",
        "a fresh clone (the built-in model: 0.33, so 8 of its 12 steps run)",
    ],
)
def test_a_stale_figure_fails(stale):
    wrong = wrong_facts(stale)[0] + wrong_table_defaults(stale) + wrong_prose_defaults(stale)
    assert wrong, stale


def test_help_adds_a_default_only_where_the_help_names_none():
    """A field's help that names its default gets no second one, from click or from the model's rule."""
    from videodiff.cli.options import help_with_default

    assert help_with_default("Steps.", 25, True) == ("Steps. [default: the model's, else 25]", False)
    assert help_with_default("Fuse.", "pyramid", False) == ("Fuse.", True)  # click appends [default: pyramid]
    for recorded in (True, False):
        for said in ("Where [default: the model's, else latent].", "Size (default: the model's).", "Default: 2."):
            assert help_with_default(said, "latent", recorded) == (said, False)
        assert help_with_default("Seed.", None, recorded) == ("Seed.", False)
