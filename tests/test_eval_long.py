"""``videodiff eval long``, ``eval travel`` and ``eval sweep`` on the built-in model at the tiniest sizes.

They check the commands run and what each line holds, not the scores (those are in the docs' tables).
"""

from __future__ import annotations

import json

import pytest
from cli_helpers import invoke, ok

from videodiff.shapes.sweep import changes_against, parse_setting


def test_travel_key_names_match_the_package():
    from videodiff.cli.long_eval import TRAVEL_KEY_NAMES
    from videodiff.shapes.long import TRAVEL_KEYS

    assert tuple(TRAVEL_KEYS) == TRAVEL_KEY_NAMES


def test_eval_long_one_seed_two_steps(tmp_path, one_thread):
    """20 frames: two windows of 16 overlapping by 4, so the seam statistics are reported."""
    out = tmp_path / "long.jsonl"
    result = ok(invoke("eval", "long", "steps=2", "--seeds", "1", "--frames", "20", "--out", out))
    record = json.loads(result.stdout.strip().splitlines()[-1])
    assert json.loads(out.read_text()) == record
    assert (record["setting"], record["seed"]) == ("steps=2", 1)
    keys = {"flicker", "seam_ratio", "jitter_ratio", "seam_mean_ratio", "present", "color", "shape"}
    assert keys | {"most_objects", "directions", "render_s"} <= set(record)
    assert record["seam_ratio"] is not None and len(record["directions"]) == 1


@pytest.mark.slow
def test_eval_travel_one_seed(one_thread):
    result = ok(invoke("eval", "travel", "--keys", "blend", "--seeds", "1", "--frames", "34"))
    record = json.loads(result.stdout.strip().splitlines()[-1])
    assert (record["keys"], record["seed"]) == ("blend", 1)
    assert len(record["colours"]) == 34 and set(record["colours"]) <= set("rbcoypg-")
    assert isinstance(record["red_before_24"], bool) and isinstance(record["blue_after_40"], bool)


def test_sweep_settings_and_changes():
    assert parse_setting("default") == {}
    assert parse_setting("steps=16,motion_prior=0.375,scheduler=ddim") == {
        "steps": 16,
        "motion_prior": 0.375,
        "scheduler": "ddim",
    }
    assert parse_setting("guidance_interval=0,0.5,steps=4") == {"guidance_interval": (0.0, 0.5), "steps": 4}
    video = {"prompt": "a red circle moving left", "seed": 0, "color": "red", "shape": "square"}
    before = {("a red circle moving left", 0): {**video, "direction": "left", "steady": True}}
    now = [{**video, "shape": "circle", "direction": "right", "steady": True}]
    assert changes_against(before, now) == ["  'a red circle moving left' seed 0: +shape -direction"]


@pytest.mark.slow
def test_eval_sweep_diff_and_against(tmp_path, one_thread):
    """Two settings with --diff, then a third against the first run's --out file."""
    out = tmp_path / "sweep.jsonl"
    args = ("eval", "sweep", "--combos", "heldout", "--seeds", "1")
    lines = ok(invoke(*args, "--diff", "--out", out, "steps=2", "steps=3")).stdout.strip().splitlines()
    assert lines[0].startswith("steps=2: n=10 color=") and "diff=" not in lines[0]
    assert lines[1].startswith("steps=3: n=10 ") and " diff=" in lines[1]
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["setting"] for r in rows] == ["steps=2", "steps=3"] and len(rows[1]["frame_diff"]) == 10
    assert len(rows[0]["videos"]) == 10
    again = ok(invoke(*args, "--against", out, "steps=2")).stdout.strip().splitlines()
    assert again[0].startswith("steps=2: n=10 ") and len(again) == 1  # the same setting: nothing changed
