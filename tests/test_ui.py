"""The web app's parts that need no browser: the gallery reader, the form, uploads, renders, `videodiff serve`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.cli_helpers import assert_user_error, invoke
from videodiff.config import RenderConfig
from videodiff.errors import UserError
from videodiff.ui import form, parse_auth, reach_notice
from videodiff.ui.gallery import inside, read_runs, read_sidecar


def sidecar_of(prompt: str = "a red circle moving right", **more) -> dict:
    return {"prompt": prompt, "seed": 3, "frames": 8, "steps": 4, **more, "info": {"created": "2026-12-02T03:00:00"}}


def put_run(folder: Path, name: str, sidecar: object | None, text: str | None = None) -> Path:
    video = folder / name
    video.write_bytes(b"\x00\x00\x00\x18ftypisom")
    if text is not None:
        (folder / (name + ".json")).write_text(text, encoding="utf-8")
    elif sidecar is not None:
        (folder / (name + ".json")).write_text(json.dumps(sidecar), encoding="utf-8")
    return video


# ------------------------------------------------------------------------------------------- the gallery reader


def test_gallery_lists_runs_and_skips_missing_and_corrupt_sidecars_with_a_notice(tmp_path):
    put_run(tmp_path, "good.mp4", sidecar_of())
    put_run(tmp_path, "nosidecar.mp4", None)
    put_run(tmp_path, "corrupt.mp4", None, text='{"prompt": "a red')
    put_run(tmp_path, "list.mp4", None, text="[1, 2]")
    put_run(tmp_path, "unknown.mp4", {"prompt": "x", "colour": "red"})
    put_run(tmp_path, "noprompt.mp4", {"seed": 1})
    put_run(tmp_path, "binary.mp4", None)
    (tmp_path / "binary.mp4.json").write_bytes(b"\xff\xfe\x00garbage")
    (tmp_path / "notes.txt").write_text("not a video")
    batch = tmp_path / "batch-prompts"
    batch.mkdir()
    put_run(batch, "b.gif", sidecar_of("a blue square moving up"))

    runs, notices = read_runs(tmp_path)

    assert sorted(r.name for r in runs) == ["b.gif", "good.mp4"]
    skipped = " ".join(notices)
    for name in ("nosidecar.mp4", "corrupt.mp4", "list.mp4", "unknown.mp4", "noprompt.mp4", "binary.mp4"):
        assert f"skipped {name}" in skipped
    assert len(notices) == 6
    good = next(r for r in runs if r.name == "good.mp4")
    assert good.settings["seed"] == 3 and "info" not in good.settings and good.created.startswith("2026")
    assert good.mode == "text" and "a red circle" in good.caption()


def test_gallery_skips_linked_sidecars_and_videos(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.json").write_text(json.dumps(sidecar_of()))
    folder = tmp_path / "out"
    folder.mkdir()
    put_run(folder, "linked.mp4", None)
    os.symlink(outside / "secret.json", folder / "linked.mp4.json")
    os.symlink(outside / "secret.json", folder / "elsewhere.mp4")
    runs, notices = read_runs(folder)
    assert runs == [] and len(notices) == 1 and "not a regular file" in notices[0]


def test_gallery_of_a_missing_folder_is_empty(tmp_path):
    assert read_runs(tmp_path / "none") == ([], [])


def test_read_sidecar_refuses_huge_files(tmp_path):
    big = tmp_path / "x.mp4.json"
    big.write_text('{"prompt": "' + "a" * (2 << 20) + '"}')
    with pytest.raises(ValueError, match="larger than"):
        read_sidecar(big)


@pytest.mark.parametrize("name", ["../secret.mp4", "/etc/passwd", "a/../../x", "", "x\0y"])
def test_paths_from_the_page_stay_inside_the_outputs_folder(tmp_path, name):
    with pytest.raises(UserError):
        inside(tmp_path / "out", name)


def test_a_link_out_of_the_outputs_folder_is_refused(tmp_path):
    (tmp_path / "out").mkdir()
    os.symlink(tmp_path, tmp_path / "out" / "up")
    with pytest.raises(UserError, match="outside"):
        inside(tmp_path / "out", "up/secret.mp4")
    assert inside(tmp_path / "out", "run.mp4") == (tmp_path / "out" / "run.mp4").resolve()


# ------------------------------------------------------------------------------------------- the form


def test_form_builds_the_cli_settings_and_names_the_output_in_the_outputs_folder(tmp_path):
    values = {
        "prompt": "a red circle moving right",
        "frames": 8.0,
        "steps": 4,
        "seed": -1,
        "width": 64,
        "height": None,
        "strength": 0.5,
        "guidance": 7.5,
    }
    config = form.build_config("text", values, RenderConfig(), tmp_path, "gif")
    assert config.frames == 8 and isinstance(config.frames, int) and config.steps == 4 and config.width == 64
    assert 0 <= config.seed < 2**32  # drawn here, so the name holds it
    assert config.strength is None  # text-to-video has no strength
    output = Path(config.output)
    assert output.parent == tmp_path and output.suffix == ".gif" and output.stem.endswith(f"-{config.seed}")
    assert not config.overwrite and config.quiet


def test_form_refuses_what_the_cli_refuses_in_one_line(tmp_path):
    with pytest.raises(UserError, match="multiple of 8"):
        form.build_config("text", {"prompt": "x", "width": 100}, RenderConfig(), tmp_path)
    with pytest.raises(UserError, match="type a prompt"):
        form.build_config("text", {"prompt": "  "}, RenderConfig(), tmp_path)
    with pytest.raises(UserError, match="whole number"):
        form.build_config("text", {"prompt": "x", "frames": 8.5}, RenderConfig(), tmp_path)
    with pytest.raises(UserError, match="needs a picture"):
        form.build_config("img2vid", {"prompt": "x"}, RenderConfig(), tmp_path)
    with pytest.raises(UserError, match="outside the outputs folder"):
        form.build_config("img2vid", {"prompt": "x", "image": "/etc/passwd"}, RenderConfig(), tmp_path)
    with pytest.raises(UserError, match="outside the outputs folder"):
        form.build_config("vid2vid", {"prompt": "x", "video": "../../v.mp4"}, RenderConfig(), tmp_path)
    with pytest.raises(UserError, match="FRAME:TEXT"):
        form.build_config("travel", {"keyframes": "zero: a"}, RenderConfig(), tmp_path)


def test_prompt_travel_and_use_these_settings_round_trip(tmp_path):
    config = form.build_config(
        "travel",
        {"keyframes": "0: a red circle\n# comment\n\n6: a blue circle", "frames": 8, "seed": 5, "travel": "slerp"},
        RenderConfig(),
        tmp_path,
    )
    assert config.prompt_at == {0: "a red circle", 6: "a blue circle"} and config.travel == "slerp"
    from videodiff.config import to_dict
    from videodiff.ui.gallery import Run

    settings = json.loads(json.dumps(to_dict(config)))  # as a sidecar holds it (keys become text)
    run = Run(Path(config.output), Path(config.output + ".json"), settings)
    mode, values, notices = form.form_from_run(run, tmp_path)
    assert mode == "travel" and notices == [] and values["seed"] == 5 and values["format"] == "mp4"
    again = form.build_config(mode, values, RenderConfig(), tmp_path, values["format"])
    assert again.prompt_at == config.prompt_at and again.seed == 5 and again.travel == "slerp"


def test_use_these_settings_drops_inputs_outside_the_outputs_folder(tmp_path):
    from videodiff.ui.gallery import Run

    run = Run(tmp_path / "r.mp4", tmp_path / "r.mp4.json", {"prompt": "x", "image_at": ["0:/etc/hosts"]})
    mode, values, notices = form.form_from_run(run, tmp_path)
    assert mode == "img2vid" and "image" not in values and "upload it again" in notices[0]


def test_the_same_name_twice_in_one_second_gets_a_new_name(tmp_path):
    first = form.unique_output("a red circle", 1, tmp_path, "mp4")
    first.write_bytes(b"")
    second = form.unique_output("a red circle", 1, tmp_path, "mp4")
    assert second != first and second.stem.endswith("-2")


# ------------------------------------------------------------------------------------------- uploads


def test_uploads_are_checked_by_type_size_and_the_cli_readers_then_kept_in_the_outputs_folder(tmp_path):
    picture = tmp_path / "red.png"
    Image.fromarray(np.full((32, 32, 3), (255, 0, 0), np.uint8)).save(picture)
    kept = form.accept_upload(picture, tmp_path / "out", "image")
    assert kept.parent == tmp_path / "out" / "inputs" and kept.read_bytes() == picture.read_bytes()
    assert form.accept_upload(picture, tmp_path / "out", "image") == kept  # content-addressed: once

    fake = tmp_path / "fake.png"
    fake.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    with pytest.raises(UserError, match="fake.png"):
        form.accept_upload(fake, tmp_path / "out", "image")
    script = tmp_path / "evil.html"
    script.write_text("<script>alert(1)</script>")
    with pytest.raises(UserError, match="not a image file|not a image"):
        form.accept_upload(script, tmp_path / "out", "image")
    not_a_video = tmp_path / "x.mp4"
    not_a_video.write_bytes(b"nope")
    with pytest.raises(UserError, match="video"):
        form.accept_upload(not_a_video, tmp_path / "out", "video")
    one_frame = tmp_path / "one.gif"
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(one_frame)
    with pytest.raises(UserError, match="one.gif is a still picture: animate it with videodiff img2vid"):
        form.accept_upload(one_frame, tmp_path / "out", "video")
    assert sorted(p.name for p in (tmp_path / "out" / "inputs").iterdir()) == [kept.name]


def test_uploads_larger_than_the_limit_are_refused(tmp_path, monkeypatch):
    picture = tmp_path / "red.png"
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(picture)
    monkeypatch.setattr(form, "MAX_IMAGE_BYTES", 10)
    with pytest.raises(UserError, match="MiB"):
        form.accept_upload(picture, tmp_path / "out", "image")


# ------------------------------------------------------------------------------------------- renders


def test_renderer_writes_through_the_render_layer_with_progress_and_previews(tiny_pipe, tmp_path):
    from videodiff.ui.jobs import Renderer

    config = form.build_config(
        "text",
        {"prompt": "a cat", "frames": 4, "steps": 4, "seed": 1, "width": 32, "height": 32, "guidance": 1.0},
        RenderConfig(),
        tmp_path,
    )
    steps, previews = [], []
    outcome = Renderer(tiny_pipe, previews=2).render(
        config, "s", progress=lambda n, total, what: steps.append((n, total)), preview=previews.append
    )
    assert outcome.output.is_file() and outcome.sidecar.is_file()
    assert json.loads(outcome.sidecar.read_text())["seed"] == 1
    assert steps == [(n, 4) for n in range(1, 5)]
    assert len(previews) == 1 and previews[0].dtype == np.uint8 and previews[0].shape[-1] == 3
    runs, _ = read_runs(tmp_path)
    assert [r.output for r in runs] == [outcome.output]
    from videodiff.ui.gallery import thumbnail

    thumb = thumbnail(runs[0], tmp_path)
    assert thumb.suffix == ".png" and thumb.parent == tmp_path / ".thumbnails"
    assert Image.open(thumb).size[0] >= 32
    assert [r.output for r in read_runs(tmp_path)[0]] == [outcome.output]  # the thumbnails folder is not a run


def test_stop_ends_a_render_cleanly_and_writes_nothing(tiny_pipe, tmp_path):
    from videodiff.sampling import Cancelled
    from videodiff.ui.jobs import Renderer

    renderer = Renderer(tiny_pipe)
    config = form.build_config(
        "text",
        {"prompt": "a cat", "frames": 4, "steps": 6, "seed": 1, "width": 32, "height": 32, "guidance": 1.0},
        RenderConfig(),
        tmp_path,
    )
    seen = []

    def progress(n, total, what):
        seen.append(n)
        if n == 2:
            assert renderer.cancel("me")

    with pytest.raises(Cancelled):
        renderer.render(config, "me", progress=progress)
    assert seen == [1, 2]  # no step after the stop
    assert list(tmp_path.iterdir()) == []  # nothing written, not even a temporary file
    assert not renderer.cancel("me")  # the job is gone
    outcome = renderer.render(config.replace(output=str(tmp_path / "after.mp4")), "me")  # the pipe still works
    assert outcome.output.is_file()


def test_renders_take_turns(tiny_pipe, tmp_path):
    from videodiff.ui.jobs import Renderer

    renderer = Renderer(tiny_pipe)
    steps: list[int] = []  # the seed of each step taken, in the order taken

    def one(seed):
        config = form.build_config(
            "text",
            {"prompt": "a cat", "frames": 4, "steps": 3, "seed": seed, "width": 32, "height": 32, "guidance": 1.0},
            RenderConfig(),
            tmp_path,
        )
        renderer.render(config, str(seed), progress=lambda n, total, what: steps.append(seed))

    threads = [threading.Thread(target=one, args=(s,)) for s in (1, 2, 3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(list(tmp_path.glob("*.mp4"))) == 3 and len(list(tmp_path.glob("*.mp4.json"))) == 3
    runs = [steps[i : i + 3] for i in range(0, 9, 3)]
    assert all(len(set(run)) == 1 for run in runs), steps  # one render's steps, then the next's: never mixed
    assert sorted(run[0] for run in runs) == [1, 2, 3]


# ------------------------------------------------------------------------------------------- the command


def test_serve_without_gradio_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "gradio", None)  # import gradio raises ImportError
    message = assert_user_error(invoke("serve", "--port", "7999"))
    assert "pip install 'videodiff[ui]'" in message


def test_serve_refuses_a_bad_auth_before_anything_loads():
    assert "USER:PASSWORD" in assert_user_error(invoke("serve", "--auth", "nopassword"))
    assert parse_auth("me:se:cret") == ("me", "se:cret")


def test_serve_help_loads_no_gradio_and_no_torch():
    code = (
        "import sys\nfrom videodiff.cli import cli\n"
        "try:\n    cli.main(['serve', '--help'], prog_name='videodiff', standalone_mode=False)\n"
        "finally:\n    print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'gradio', 'diffusers')))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "--outputs" in done.stdout and done.stdout.strip().splitlines()[-1] == "[]"


def test_a_host_other_than_this_computer_is_said_plainly():
    assert "only this computer" in reach_notice("127.0.0.1", 7860)
    assert "anyone on that network can render" in reach_notice("0.0.0.0", 7860)


def test_vid2vid_and_prompt_travel_render_from_the_form(tiny_pipe, tmp_path):
    from videodiff.media.video import save_video
    from videodiff.ui.jobs import Renderer

    clip = tmp_path / "clip.gif"
    save_video(np.random.default_rng(0).integers(0, 255, (6, 32, 32, 3), dtype=np.uint8), clip, fps=8)
    outputs = tmp_path / "out"
    kept = form.accept_upload(clip, outputs, "video")
    common = {"steps": 3, "seed": 1, "width": 32, "height": 32, "guidance": 1.0, "frames": 4}
    renderer = Renderer(tiny_pipe)
    v2v = renderer.render(
        form.build_config(
            "vid2vid", {**common, "prompt": "a cat", "video": str(kept), "strength": 0.5}, RenderConfig(), outputs
        )
    )
    side = json.loads(v2v.sidecar.read_text())
    assert side["video"] == str(kept.resolve()) and side["strength"] == 0.5
    travel = renderer.render(
        form.build_config("travel", {**common, "keyframes": "0: a cat\n3: a dog"}, RenderConfig(), outputs)
    )
    assert json.loads(travel.sidecar.read_text())["prompt_at"] == {"0": "a cat", "3": "a dog"}
    runs, notices = read_runs(outputs)
    assert {r.mode for r in runs} == {"vid2vid", "travel"} and notices == []
    mode, values, notes = form.form_from_run(next(r for r in runs if r.mode == "vid2vid"), outputs)
    assert mode == "vid2vid" and values["video"] == str(kept.resolve()) and notes == []


# ------------------------------------------------------------------------------------------- control


def test_served_controlnets_are_offered_by_name_and_nothing_else_is_taken(tmp_path):
    from videodiff.ui.controls import NONE, OWN, ServedControls, served_names

    a, b = str(tmp_path / "x" / "canny"), str(tmp_path / "y" / "canny")
    assert served_names([a, b, "org/depth"]) == {"canny": a, "canny-2": b, "org/depth": "org/depth"}
    served = ServedControls([a, b], "/models/own-cn", tmp_path / "scratch", tmp_path / "uploads")
    assert served.choices == [NONE, "canny", "canny-2", OWN]
    assert served.source("canny-2") == b and served.source(OWN) is None
    for name in (a, "depth", "../canny"):
        with pytest.raises(UserError, match="unknown ControlNet"):
            served.source(name)
    none = ServedControls([], None, tmp_path / "scratch", tmp_path / "uploads")
    assert not none.available and none.choices == [NONE]
    with pytest.raises(UserError, match="--controlnet PATH"):
        none.source(OWN)


def test_uploaded_maps_are_staged_in_upload_order_from_the_upload_folder_only(tmp_path, monkeypatch):
    from videodiff.ui import controls
    from videodiff.ui.controls import ControlRequest, ServedControls

    uploads = tmp_path / "uploads"
    uploads.mkdir()
    pictures = []
    for i, name in enumerate(("b.png", "a.jpg", "c.png")):
        Image.fromarray(np.full((8, 8, 3), 40 * i, np.uint8)).save(uploads / name)
        pictures.append(str(uploads / name))
    served = ServedControls([str(tmp_path / "cn")], None, tmp_path / "scratch", uploads)
    folder = served.request_folder()
    (control,) = served.controls([ControlRequest("cn", pictures, "canny", 10, 20, 0.5, 0.1, 0.9)], folder)
    maps = control.parsed_maps
    assert (maps.detector, maps.thresholds, control.scale, control.range) == ("canny", (10, 20), 0.5, (0.1, 0.9))
    staged = sorted(Path(maps.path).iterdir())
    assert [p.name for p in staged] == ["0000.png", "0001.jpg", "0002.png"]  # the upload order, not the names'
    assert [p.read_bytes() for p in staged] == [Path(p).read_bytes() for p in pictures]
    single = served.controls([ControlRequest("cn", {"path": pictures[1]})], served.request_folder())
    assert Path(single[0].maps).name == "a.jpg"  # one picture: every frame's map, by its own name

    outside = tmp_path / "elsewhere.png"
    outside.write_bytes(Path(pictures[0]).read_bytes())
    os.symlink(outside, uploads / "link.png")
    clip = uploads / "clip.mp4"
    clip.write_bytes(b"\x00" * 16)
    for request, message in (
        (ControlRequest("cn", [str(outside)]), "not a path on the server"),
        (ControlRequest("cn", [str(uploads / "link.png")]), "not a path on the server"),
        (ControlRequest("cn", [f"{uploads}/../elsewhere.png"]), "not a path on the server"),
        (ControlRequest("cn", "/etc/passwd"), "not a path on the server"),
        (ControlRequest("cn", [pictures[0], str(clip)]), "must all be pictures"),
        (ControlRequest("cn", [pictures[0]], "sobel"), "unknown detector"),
        (ControlRequest("cn", [pictures[0]], "canny", 1.5), "whole number"),
        (ControlRequest("cn", [pictures[0]], scale="lots"), "scale must be a number"),
        (ControlRequest("cn", [pictures[0]], scale=11), "from 0 to 10"),
        (ControlRequest("cn", [pictures[0]], start=0.8, end=0.2), "START <= END"),
    ):
        with pytest.raises(UserError, match=message):
            served.controls([request], served.request_folder())
    two = [ControlRequest("cn", [pictures[0]]), ControlRequest("none", [pictures[1]])]
    with pytest.raises(UserError, match="control 2: choose a ControlNet"):
        served.controls(two, served.request_folder())
    monkeypatch.setattr(controls, "MAX_IMAGE_BYTES", 10)
    with pytest.raises(UserError, match="MiB"):
        served.controls([ControlRequest("cn", [pictures[0]])], served.request_folder())


def test_use_these_settings_of_a_controlled_run_asks_for_its_maps_again(tmp_path):
    from videodiff.ui.gallery import Run

    control = {"maps": "/tmp/gone/control-1", "controlnet": "/models/cn", "scale": 1.0, "range": [0, 1]}
    run = Run(tmp_path / "r.mp4", tmp_path / "r.mp4.json", {"prompt": "x", "seed": 2, "controls": [control]})
    mode, values, notices = form.form_from_run(run, tmp_path)
    assert mode == "text" and values["seed"] == 2 and "controls" not in values
    assert notices == ["this run was steered by a ControlNet: choose it and upload its maps again in Control"]


def test_the_post_processing_section_sets_interpolation_and_use_these_settings_shows_it(tmp_path):
    """The form's "off" is no interpolation; a factor (text, as the dropdown sends it) and a method reach the
    settings; a run's recorded image prompt is a notice in "Use these settings" (its picture was the request's)."""
    from videodiff.config import to_dict
    from videodiff.ui.gallery import Run

    values = {"prompt": "x", "frames": 4, "interpolate": "off", "interpolate_method": "blend"}
    assert form.build_config("text", values, RenderConfig(), tmp_path).interpolate is None
    config = form.build_config("text", {**values, "interpolate": "3"}, RenderConfig(), tmp_path)
    assert (config.interpolate, config.interpolate_method) == (3, "blend")
    with pytest.raises(UserError, match="interpolate"):
        form.build_config("text", {**values, "interpolate": "9"}, RenderConfig(), tmp_path)
    settings = {**json.loads(json.dumps(to_dict(config))), "ip_adapters": [{"adapter": "a.bin", "image": "/x.png"}]}
    mode, got, notices = form.form_from_run(Run(Path(config.output), Path(config.output + ".json"), settings), tmp_path)
    assert (got["interpolate"], got["interpolate_method"]) == (3, "blend")
    assert any("IP-Adapter" in n for n in notices)
    again = form.build_config(mode, got, RenderConfig(ip_adapters=({"adapter": "a.bin", "image": "a.png"},)), tmp_path)
    assert again.ip_adapters == ()  # an image prompt comes from the page's section, never the server's settings
