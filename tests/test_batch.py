"""Batch rendering: prompt files, the plan (seeds x prompts, names), the CLI, and two CPU processes."""

from __future__ import annotations

import logging
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from cli_helpers import assert_user_error, invoke, ok, read_json

from videodiff import launch
from videodiff.batch import MAX_VIDEOS, draw_seeds, parse_seeds, plan_batch, read_prompt_file
from videodiff.config import RenderConfig
from videodiff.errors import UserError

SMALL = ("--height", "16", "--width", "16", "--frames", "2", "--steps", "1", "-q")
PROMPTS = ["a red circle", "a blue square", "the sea at night"]
RENDERED = re.compile(r"rendered (?!\d+, skipped )(.+?)(?: \(process (\d+)\))?")  # a video, not the count


def snapshot(folder: Path) -> dict[str, tuple[int, bytes]]:
    return {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in sorted(folder.iterdir())}


@pytest.fixture(autouse=True)
def _in_tmp_path(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)


# ---------------------------------------------------------------- prompt files


def test_text_prompt_file_skips_comments_and_blank_lines(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text("# my prompts\n a red circle \n\n   \n#no\na blue square\n", encoding="utf-8")
    assert read_prompt_file(path) == [{"prompt": "a red circle"}, {"prompt": "a blue square"}]


def test_yaml_prompt_file_takes_strings_and_mappings(tmp_path):
    path = tmp_path / "prompts.yml"
    path.write_text("- a red circle\n- prompt: the sea\n  frames: 3\n  seed: 7\n  negative: blurry\n")
    assert read_prompt_file(path) == [
        {"prompt": "a red circle"},
        {"prompt": "the sea", "frames": 3, "seed": 7, "negative": "blurry"},
    ]


BAD_FILES = {
    "syntax": ("prompts.yaml", "- a\n- [b\n", ["not valid YAML"]),
    "not-a-list": ("prompts.yaml", "prompt: a cat\n", ["list"]),
    "unknown-key": ("prompts.yaml", "- a cat\n- prompt: a dog\n  colour: red\n", ["item 2", "colour"]),
    "missing-prompt": ("prompts.yaml", "- a cat\n- a dog\n- frames: 3\n", ["item 3", "prompt"]),
    "empty-prompt": ("prompts.yaml", "- prompt: ''\n", ["item 1", "prompt"]),
    "model-per-item": ("prompts.yaml", "- prompt: a\n  model: x\n", ["item 1", "model", "per item"]),
    "number-item": ("prompts.yaml", "- a\n- 12\n", ["item 2"]),
    "empty-text": ("prompts.txt", "# only a comment\n\n", ["no prompts"]),
    "missing": (None, None, ["does not exist"]),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_bad_prompt_file_is_a_user_error_naming_the_item(case, tmp_path):
    name, text, words = BAD_FILES[case]
    path = tmp_path / (name or "absent.txt")
    if text is not None:
        path.write_text(text, encoding="utf-8")
    with pytest.raises(UserError) as info:
        read_prompt_file(path)
    message = str(info.value)
    assert "\n" not in message
    for word in words:
        assert word in message, message


# ---------------------------------------------------------------- the plan


def items(*prompts: str) -> list[dict]:
    return [{"prompt": p} for p in prompts]


def test_plan_renders_every_prompt_once_per_seed_with_deterministic_names():
    base = RenderConfig(frames=4, steps=2)
    plan = plan_batch(base, items(*PROMPTS), [1, 2], output="clips", batch=True, name="prompts")
    assert [(c.prompt, c.seed) for c in plan] == [(p, s) for p in PROMPTS for s in (1, 2)]
    assert [c.output for c in plan] == [
        os.path.join("clips", f"{i:04d}-{slug}-{s}.mp4")
        for i, slug in enumerate(["a-red-circle", "a-blue-square", "the-sea-at-night"], 1)
        for s in (1, 2)
    ]
    assert all((c.frames, c.steps) == (4, 2) for c in plan)
    # without --output: outputs/batch-<stem>/, the same names on every call (no time stamp)
    again = plan_batch(base, items(*PROMPTS), [1, 2], fmt="gif", batch=True, name="prompts")
    assert again == plan_batch(base, items(*PROMPTS), [1, 2], fmt="gif", batch=True, name="prompts")
    assert again[0].output == os.path.join("outputs", "batch-prompts", "0001-a-red-circle-1.gif")
    assert plan_batch(base, items("a cat"), [3, 4], fmt="png")[1].output == os.path.join(
        "outputs", "batch-a-cat", "0001-a-cat-4"
    )


def test_item_settings_override_the_command_for_that_item_only():
    base = RenderConfig(frames=4, negative="ugly", seed=5)
    entries = [
        {"prompt": "a"},
        {"prompt": "b", "frames": 3, "seed": 9, "output": "hero.gif"},
        {"prompt": "c", "output": "sub/c.webm"},  # inside the folder (absolute paths and '..' are refused)
    ]
    plan = plan_batch(base, entries, output="clips", batch=True)
    assert [(c.prompt, c.frames, c.seed, c.negative) for c in plan] == [
        ("a", 4, 5, "ugly"),
        ("b", 3, 9, "ugly"),
        ("c", 4, 5, "ugly"),
    ]
    assert [c.output for c in plan] == [
        os.path.join("clips", "0001-a-5.mp4"),
        os.path.join("clips", "hero.gif"),
        os.path.join("clips", "sub", "c.webm"),
    ]
    # an item's own seed pins it; the others take every --seeds seed; own outputs get -<seed>
    plan = plan_batch(base, entries, [1, 2], output="clips")
    assert [(c.prompt, c.seed) for c in plan] == [("a", 1), ("a", 2), ("b", 9), ("c", 1), ("c", 2)]
    assert plan[3].output == os.path.join("clips", "sub", "c-1.webm")


def test_num_videos_draws_distinct_seeds_shared_by_all_prompts(caplog):
    with caplog.at_level(logging.INFO, logger="videodiff"):
        plan = plan_batch(RenderConfig(), items("a", "b"), num_videos=4)
    seeds_a = [c.seed for c in plan if c.prompt == "a"]
    assert len(set(seeds_a)) == 4
    assert [c.seed for c in plan if c.prompt == "b"] == seeds_a
    assert len({c.output for c in plan}) == 8
    assert any(",".join(map(str, seeds_a)) in r.getMessage() for r in caplog.records)  # announced, re-runnable


def test_single_video_is_not_a_batch():
    plan = plan_batch(RenderConfig(seed=3), items("a cat"), output="cat.gif")
    assert [(c.output, c.seed) for c in plan] == [("cat.gif", 3)]
    drawn = plan_batch(RenderConfig(), items("a cat"), fmt="webm")
    assert re.fullmatch(r"outputs/\d{8}-\d{6}-a-cat-\d+\.webm", drawn[0].output.replace(os.sep, "/"))


PLAN_ERRORS = {
    "seeds-and-num-videos": (dict(seeds=[1], num_videos=2), ["--seeds", "--num-videos"]),
    "num-videos-0": (dict(num_videos=0), ["--num-videos"]),
    "file-name-as-folder": (dict(seeds=[1, 2], output="clips.mp4"), ["folder", "clips.mp4"]),
    "format-disagrees": (dict(output="a.mp4", fmt="gif"), ["--format"]),
    "bad-item-value": (dict(entries=[{"prompt": "a"}, {"prompt": "b", "frames": "many"}]), ["item 2", "--frames"]),
    "same-output": (
        dict(entries=[{"prompt": "a", "output": "x.gif"}, {"prompt": "b", "output": "x.gif"}]),
        ["1 and 2"],
    ),
}


@pytest.mark.parametrize("case", list(PLAN_ERRORS))
def test_plan_mistakes_are_user_errors(case):
    kwargs, words = PLAN_ERRORS[case]
    entries = kwargs.pop("entries", items("a"))
    with pytest.raises(UserError) as info:
        plan_batch(RenderConfig(), entries, batch=case in ("bad-item-value", "same-output") or None, **kwargs)
    for word in words:
        assert word in str(info.value), str(info.value)


def test_parse_seeds():
    assert parse_seeds("1, 2,30") == [1, 2, 30]
    for bad in ("1,x", "", "1,1", "-1"):
        with pytest.raises(UserError):
            parse_seeds(bad)


def test_drawn_seeds_are_distinct_and_drawing_is_linear():
    seeds = draw_seeds(MAX_VIDEOS)  # a list scanned per draw took minutes for 100,000
    assert len(seeds) == MAX_VIDEOS
    assert len(set(seeds)) == MAX_VIDEOS
    assert all(0 <= seed < 2**32 for seed in seeds)


def test_a_batch_is_counted_before_its_plan_is_made():
    many = items(*(f"p{i}" for i in range(MAX_VIDEOS // 2 + 1)))
    with pytest.raises(UserError, match=f"{MAX_VIDEOS + 2} videos .* at most {MAX_VIDEOS}"):
        plan_batch(RenderConfig(), many, seeds=[1, 2])
    pinned = [{"prompt": "a", "seed": 1}] * MAX_VIDEOS  # an item's own seed renders it once: counted as one
    assert len(plan_batch(RenderConfig(), pinned[:3] + items("b"), seeds=[1, 2], output="clips")) == 5
    with pytest.raises(UserError, match=r"10001 videos \(1 prompts x 10001 seeds\)"):
        plan_batch(RenderConfig(), items("a"), seeds=list(range(MAX_VIDEOS + 1)))


def _huge_prompt_file() -> str:
    Path("prompts.txt").write_text("a red circle\n" * 40_000, encoding="utf-8")
    return "prompts.txt"


# Each refused in one line before any model is looked at: /nonexistent would be the error otherwise.
LIMITS = {
    "num-videos": (lambda: ["a", "--num-videos", "100000"], "--num-videos must be a whole number from 1 to 10000"),
    "num-videos-just-over": (lambda: ["a", "--num-videos", MAX_VIDEOS + 1], "from 1 to 10000, got 10001"),
    "seeds": (lambda: ["a", "--seeds", ",".join(map(str, range(MAX_VIDEOS + 1)))], "--seeds lists 10001 seeds"),
    "prompts-x-seeds": (
        lambda: ["--prompt-file", _huge_prompt_file(), "--seeds", ",".join(map(str, range(200)))],
        "8000000 videos (40000 prompts x 200 seeds); at most 10000",
    ),
    "prompts-x-num-videos": (
        lambda: ["--prompt-file", _huge_prompt_file(), "--num-videos", "2"],
        "80000 videos (40000 prompts x 2 seeds)",
    ),
    "free-init": (lambda: ["a", "--free-init", "1000000"], "--free-init must be a whole number from 0 (off) to 10"),
}


@pytest.mark.parametrize("case", list(LIMITS))
def test_numbers_beyond_their_limits_fail_in_one_line_before_the_model(case, monkeypatch):
    from videodiff.pipelines import VideoPipeline

    def no_load(*args, **kwargs):
        raise AssertionError("the model was loaded before the limit was checked")

    monkeypatch.setattr(VideoPipeline, "load", no_load)
    args, words = LIMITS[case]
    message = assert_user_error(invoke("render", *args(), "--model", "/nonexistent", "-o", "out"))
    assert words in message
    assert not Path("out").exists()


def test_free_init_is_bounded_in_settings_files_too():
    Path("shared.yaml").write_text("prompt: a\nfree_init: 11\n", encoding="utf-8")
    message = assert_user_error(invoke("render", "--config", "shared.yaml", "--model", "/nonexistent"))
    assert "--free-init must be a whole number from 0 (off) to 10, got 11" in message
    assert RenderConfig(free_init=10).validate().free_init == 10


# ---------------------------------------------------------------- launching


def test_world_size_without_a_shared_state_exits_2_in_one_line(tmp_path, models, monkeypatch):
    alone = launch.SingleProcess()  # what PartialState reports when the launch is not seen (no ACCELERATE_USE_CPU)
    monkeypatch.setattr(launch, "_partial_state", lambda: alone)
    line = assert_user_error(invoke("render", "a cat", *models, *SMALL, "--seed", 1, env={"WORLD_SIZE": "2"}))
    assert "ACCELERATE_USE_CPU=1" in line
    assert not list(tmp_path.iterdir())


# ---------------------------------------------------------------- the command line


@pytest.fixture(scope="module")
def rendered(tmp_path_factory, models) -> Path:
    """A 3-prompt file x --seeds 1,2 rendered into DIR/clips (six videos)."""
    root = tmp_path_factory.mktemp("batch")
    (root / "prompts.txt").write_text("# three prompts\n" + "\n".join(PROMPTS) + "\n", encoding="utf-8")
    cwd = os.getcwd()
    os.chdir(root)
    try:
        result = ok(invoke("render", "--prompt-file", "prompts.txt", "--seeds", "1,2", *models, *SMALL, "-o", "clips"))
    finally:
        os.chdir(cwd)
    lines = result.stdout.splitlines()
    assert lines[-1] == "rendered 6, skipped 0"
    assert len([m for line in lines if (m := RENDERED.fullmatch(line))]) == 6
    assert not any("(process" in line for line in lines)  # no launcher, no process number
    return root


def copy_batch(rendered: Path, tmp_path: Path) -> Path:
    shutil.copy(rendered / "prompts.txt", tmp_path / "prompts.txt")
    shutil.copytree(rendered / "clips", tmp_path / "clips")
    return tmp_path / "clips"


def test_batch_writes_every_prompt_and_seed_with_sidecars(rendered):
    clips = rendered / "clips"
    videos = sorted(clips.glob("*.mp4"))
    assert len(videos) == 6 and len(list(clips.glob("*.mp4.json"))) == 6
    assert not [p for p in clips.iterdir() if ".tmp" in p.name]
    seen = set()
    for video in videos:
        record = read_json(video.with_name(video.name + ".json"))
        number, _, seed = re.fullmatch(r"(\d{4})-(.+)-(\d+)\.mp4", video.name).groups()
        assert record["prompt"] == PROMPTS[int(number) - 1]
        assert record["seed"] == int(seed)
        assert (record["frames"], record["height"]) == (2, 16)
        seen.add((record["prompt"], record["seed"]))
    assert seen == {(p, s) for p in PROMPTS for s in (1, 2)}


def test_skip_existing_renders_nothing_new(rendered, tmp_path, models):
    clips = copy_batch(rendered, tmp_path)
    before = snapshot(clips)
    result = ok(
        invoke(
            "render",
            "--prompt-file",
            "prompts.txt",
            "--seeds",
            "1,2",
            *models,
            *SMALL,
            "-o",
            "clips",
            "--skip-existing",
        )
    )
    assert result.stdout.splitlines() == ["rendered 0, skipped 6"]
    assert snapshot(clips) == before


def test_existing_outputs_fail_the_batch_before_anything_is_rendered(rendered, tmp_path, models):
    clips = copy_batch(rendered, tmp_path)
    for path in clips.iterdir():  # only the last item is left: the first five must not be rendered
        if not path.name.startswith("0003-the-sea-at-night-2"):
            path.unlink()
    before = snapshot(clips)
    line = assert_user_error(
        invoke("render", "--prompt-file", "prompts.txt", "--seeds", "1,2", *models, *SMALL, "-o", "clips")
    )
    assert "0003-the-sea-at-night-2.mp4" in line and "--skip-existing" in line and "--overwrite" in line
    assert snapshot(clips) == before


def test_yaml_item_settings_land_in_its_sidecar(tmp_path, models):
    (tmp_path / "shots.yaml").write_text(
        "- a red circle\n- prompt: the sea\n  frames: 3\n  seed: 7\n  output: sea.gif\n"
    )
    result = ok(invoke("render", "--prompt-file", "shots.yaml", *models, *SMALL, "--seed", 4))
    folder = tmp_path / "outputs" / "batch-shots"
    assert sorted(p.name for p in folder.iterdir()) == [
        "0001-a-red-circle-4.mp4",
        "0001-a-red-circle-4.mp4.json",
        "sea.gif",
        "sea.gif.json",
    ]
    sea = read_json(folder / "sea.gif.json")
    assert (sea["prompt"], sea["frames"], sea["seed"], sea["info"]["frames_written"]) == ("the sea", 3, 7, 3)
    assert read_json(folder / "0001-a-red-circle-4.mp4.json")["frames"] == 2
    assert result.stdout.splitlines()[-1] == "rendered 2, skipped 0"


def test_single_prompt_with_format_prints_only_its_path(tmp_path, models):
    result = ok(invoke("render", "a cat", *models, *SMALL, "--seed", 3, "--format", "gif"))
    (gif,) = (tmp_path / "outputs").glob("*-a-cat-3.gif")
    assert result.stdout.splitlines() == [str(gif.resolve())]
    assert gif.with_name(gif.name + ".json").is_file()


def test_prompt_and_prompt_file_together_is_an_error(tmp_path, models):
    (tmp_path / "p.txt").write_text("a dog\n")
    assert "--prompt-file" in assert_user_error(invoke("render", "a cat", "--prompt-file", "p.txt", *models, *SMALL))


# ---------------------------------------------------------------- two processes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_cpu_processes_render_every_item_exactly_once(tmp_path, tiny_model, tiny_motion):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n", encoding="utf-8")
    out = tmp_path / "clips"
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "VIDEODIFF_MODEL", "VIDEODIFF_MOTION_MODULE")}
    env.update(ACCELERATE_USE_CPU="1", OMP_NUM_THREADS="1")
    # accelerate 1.x: --cpu alone starts ONE process; --multi_gpu starts N, which ACCELERATE_USE_CPU keeps on CPUs
    launch = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        str(free_port()),
    ]
    command = [
        *launch,
        "-m",
        "videodiff",
        "render",
        "--prompt-file",
        str(prompts),
        "--seeds",
        "1,2",
        "--model",
        str(tiny_model),
        "--motion-module",
        str(tiny_motion),
        *SMALL,
        "--output",
        str(out),
    ]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240, check=False)
    assert done.returncode == 0, done.stderr[-3000:]

    lines = [m.groups() for line in done.stdout.splitlines() if (m := RENDERED.fullmatch(line))]
    planned = {
        str(Path(c.output).resolve())
        for c in plan_batch(RenderConfig(), read_prompt_file(prompts), [1, 2], output=out, batch=True)
    }
    paths = [path for path, _ in lines]
    assert len(paths) == len(set(paths)) == 6, done.stdout
    assert set(paths) == planned
    assert {process for _, process in lines} == {"0", "1"}
    assert "rendered 6, skipped 0 on 2 processes" in done.stdout.splitlines()
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted([Path(p).name for p in planned] + [Path(p).name + ".json" for p in planned])
    for path in planned:
        assert read_json(Path(path + ".json"))["info"]["output"] == path
