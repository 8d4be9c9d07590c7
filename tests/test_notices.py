"""What the terminal shows: progress of long jobs per stage, and the notices about a prompt as one message."""

from __future__ import annotations

import io
import logging
import re
import sys

import pytest
from cli_helpers import invoke, ok

from videodiff import log, text
from videodiff.log import Progress, gathered, notice


@pytest.fixture
def cli_logging():
    """The CLI's logging set-up (``videodiff: `` lines on stderr), undone afterwards."""
    logger = logging.getLogger("videodiff")
    saved = list(logger.handlers), logger.level, logger.propagate
    yield log.setup_cli_logging
    logger.handlers[:] = saved[0]
    logger.setLevel(saved[1])
    logger.propagate = saved[2]


class Clock:
    """A clock the test moves: one second per item."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def said(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "videodiff"]


# ------------------------------------------------------------------ progress


def test_progress_says_done_total_and_time_left_at_every_tenth(caplog):
    clock = Clock()
    with caplog.at_level("INFO", logger="videodiff"), Progress("scoring", 100, clock=clock) as shown:
        for _ in range(100):
            clock.now += 1
            shown.update()
    lines = said(caplog)
    assert [int(re.search(r": (\d+)/100 videos", line).group(1)) for line in lines] == list(range(10, 101, 10))
    assert lines[0] == "scoring: 10/100 videos, 0:10 so far, about 1:30 left"  # 10 s for 10: 90 s for the 90 left
    assert lines[-1] == "scoring: 100/100 videos, 1:40 in all"


def test_progress_says_something_at_least_every_interval(caplog):
    clock = Clock()
    with caplog.at_level("INFO", logger="videodiff"), Progress("rendering", 1000, every=30, clock=clock) as shown:
        for _ in range(1000):
            clock.now += 1
            shown.update()
    done = [int(re.search(r": (\d+)/1000", line).group(1)) for line in said(caplog)]
    assert done[0] == 30 and done[-1] == 1000
    assert max(b - a for a, b in zip([0, *done], done)) <= 30  # never 30 s without a line


def test_progress_redraws_one_line_on_a_terminal(monkeypatch, cli_logging):
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    screen = Terminal()
    monkeypatch.setattr(sys, "stderr", screen)
    cli_logging()
    with Progress("scoring ground truth", 5) as shown:
        for _ in range(5):
            shown.update()
    out = screen.getvalue()
    assert "\r" in out and out.count("\n") <= 1  # one line, redrawn in place
    final = out.rstrip("\n").split("\r")[-1]
    assert final.startswith("videodiff: scoring ground truth: 5/5 videos") and "left" in final


def test_progress_is_silent_with_quiet(capsys, cli_logging):
    cli_logging(quiet=True)
    with Progress("scoring", 3) as shown:
        for _ in range(3):
            shown.update()
    assert capsys.readouterr().err == ""


def test_eval_shapes_shows_every_stage_with_time_left():
    """A small run of `eval shapes` on the built-in model: each stage (ground truth, its file round trip, the
    VAE round trip, the model's renders and scoring) counts its videos to the end on stderr."""
    args = (
        "--combos",
        "heldout",
        "--seeds",
        1,
        "--steps",
        1,
        "--guidance",
        1,
        "--motion-prior",
        0,
        "--set",
        "frames=4",
    )
    result = ok(invoke("eval", "shapes", *args, "--roundtrip", "none"))  # the round trip's stage: the next test
    stages = (
        "scoring ground truth",
        "scoring ground truth after the model's VAE",
        "rendering and scoring built-in shapes",
    )
    lines = result.stderr.splitlines()
    for stage in stages:
        mine = [line for line in lines if line.startswith(f"videodiff: {stage}: ")]
        assert mine and mine[-1].startswith(f"videodiff: {stage}: 10/10 videos, "), (stage, mine)
        assert any("left" in line for line in mine), mine
    assert "a red circle moving left" in result.stdout  # the tables still go to stdout


def test_the_file_round_trip_stage_is_shown(caplog):
    from videodiff.shapes.evaluate import evaluate_ground_truth
    from videodiff.shapes.world import HELDOUT

    with caplog.at_level("INFO", logger="videodiff"):
        evaluate_ground_truth(1, 0, sorted(HELDOUT)[:2], roundtrip_suffix=".gif")
    assert said(caplog)[-1].startswith("scoring ground truth after gif round trip: 2/2 videos, ")


def test_one_line_per_video_commands_count_their_lines(capsys, cli_logging):
    """`eval long` and `eval travel` print a JSON line per video; each one counts on the stage's progress."""
    from videodiff.cli.long_eval import _video_lines

    with _video_lines("eval long", 2) as echo:
        echo('{"seed": 1}')
        echo('{"seed": 2}')
    out, err = capsys.readouterr()
    assert out.splitlines() == ['{"seed": 1}', '{"seed": 2}']
    lines = err.splitlines()
    assert lines[0].startswith("videodiff: eval long: 1/2 videos, ") and "left" in lines[0]
    assert lines[-1].startswith("videodiff: eval long: 2/2 videos, ")


# ------------------------------------------------------------------ notices about the prompt


def test_notices_about_one_subject_are_one_message(caplog):
    with caplog.at_level("INFO", logger="videodiff"):
        with gathered():
            notice("first about the prompt", about="the prompt")
            notice("not about it")
            notice("second about the prompt", about="the prompt")
            notice("second about the prompt", about="the prompt")  # said once
            notice("only one about the seed", about="the seed")
            assert said(caplog) == ["not about it"]  # held until the scope ends
        notice("outside: at once", about="the prompt")
    assert said(caplog) == [
        "not about it",
        "2 notes on the prompt:\n  - first about the prompt\n  - second about the prompt",
        "only one about the seed",  # a lone note as it is
        "outside: at once",
    ]


def test_held_notices_are_said_on_an_error_not_on_an_interrupt(caplog):
    with caplog.at_level("INFO", logger="videodiff"):
        with pytest.raises(ValueError), gathered():
            notice("said before the error", about="the prompt")
            raise ValueError
        with pytest.raises(KeyboardInterrupt), gathered():
            notice("not said", about="the prompt")
            raise KeyboardInterrupt
    assert said(caplog) == ["said before the error"]


def test_nearest_known_word_for_a_typo():
    known = {"a", "moving", "red", "circle", "square", "right", "left", "down", "up"}
    assert text.nearest_words(["cirle", "rigth", "sqare"], known) == {
        "cirle": "circle",
        "rigth": "right",
        "sqare": "square",
    }
    assert text.nearest_words(["dog", "on", "the", "beach"], known) == {}  # no guess for words far from any


@pytest.fixture(scope="module")
def builtin_pipe():
    from videodiff import load_pipeline

    return load_pipeline(device="cpu")


QUICK = {"steps": 2, "output_type": "latent", "seed": 0}  # the model's motion prior, one step run


def test_a_prompt_outside_the_model_gives_one_notice(builtin_pipe, caplog):
    """ "a dog running on the beach": unknown words, words cut and the prior's motion slowed, in one message."""
    with caplog.at_level("INFO", logger="videodiff"):
        builtin_pipe("a dog running on the beach", **QUICK)
    about = [m for m in said(caplog) if re.search("never saw|were cut|slowed to", m)]
    assert len(about) == 1, about
    message = about[0]
    assert message.startswith("3 notes on the prompt:\n")
    for part in ("never saw the words dog, running", "these words were cut: 'on the beach'", "slowed to"):
        assert part in message, part
    assert "did you mean" not in message  # nothing near these words


def test_typos_name_the_nearest_known_words(builtin_pipe, caplog):
    with caplog.at_level("INFO", logger="videodiff"):
        builtin_pipe("a red cirle moving rigth", **QUICK)
    told = [m for m in said(caplog) if "never saw" in m]
    assert len(told) == 1, told
    assert "did you mean 'a red circle moving right'? (cirle -> circle, rigth -> right)" in told[0]
