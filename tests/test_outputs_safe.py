"""Nothing of the user's is lost (issue 17, "Found, to fix" 1 and 2): what an output may replace, and where.

Rules (videodiff/media/atomic.py, videodiff/media/video.py): ``--overwrite`` replaces a PNG-frames folder
videodiff wrote (its ``.videodiff-frames`` receipt, and nothing but the frames it lists) or a regular file of
the output's own type; any other folder, a device, a FIFO, a symbolic link or a file of another type is
refused in one line whatever the flags. ``--skip-existing`` never replaces anything. Prompt-file outputs
stay inside the batch folder, and a video never appears without its sidecar.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from cli_helpers import assert_user_error, invoke, ok

PROMPT = "a red circle moving right"
SMALL = ("--height", "16", "--width", "16", "--frames", "2", "--steps", "1", "--seed", "1", "-q")
GIF = b"GIF89a" + bytes(20)  # what an existing .gif looks like to the type check


@pytest.fixture(autouse=True)
def _in_tmp_path(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)


def tree(root: Path) -> dict[str, bytes | None]:
    """Every path under ``root`` with its bytes (None for folders and other non-files), links not followed."""
    out: dict[str, bytes | None] = {}
    for path in sorted(root.rglob("*")):
        mode = path.lstat().st_mode
        out[str(path.relative_to(root))] = path.read_bytes() if stat.S_ISREG(mode) else None
    return out


def users_photos(root: Path) -> Path:
    photos = root / "photos"
    (photos / "holiday").mkdir(parents=True)
    (photos / "cat.jpg").write_bytes(b"\xff\xd8\xff a cat")
    (photos / "holiday" / "beach.jpg").write_bytes(b"\xff\xd8\xff a beach")
    return photos


# ---------------------------------------------------------------- 1. user files are never deleted


def test_overwrite_refuses_a_users_folder(tmp_path, models):
    users_photos(tmp_path)
    before = tree(tmp_path)
    message = assert_user_error(invoke("render", PROMPT, *models, *SMALL, "-o", "photos", "--overwrite"))
    assert "photos" in message and "folder" in message
    assert tree(tmp_path) == before


def test_config_file_overwrite_refuses_a_users_folder(tmp_path, models):
    users_photos(tmp_path)
    (tmp_path / "settings.yaml").write_text("output: photos\noverwrite: true\n")
    before = tree(tmp_path)
    assert_user_error(invoke("render", PROMPT, *models, *SMALL, "--config", "settings.yaml"))
    assert tree(tmp_path) == before


def test_skip_existing_refuses_a_users_folder_and_never_replaces(tmp_path, models):
    users_photos(tmp_path)
    (tmp_path / "my.gif").write_bytes(GIF + b"the user's own gif")
    before = tree(tmp_path)
    result = ok(invoke("render", PROMPT, *models, *SMALL, "-o", "my.gif", "--skip-existing"))
    assert "skipping" in result.stderr or result.stderr == ""  # -q hides the notice
    assert tree(tmp_path) == before
    assert_user_error(invoke("render", PROMPT, *models, *SMALL, "-o", "photos", "--skip-existing"))
    assert tree(tmp_path) == before


def test_prompt_file_items_never_replace_a_users_file_with_skip_existing(tmp_path, models):
    batch = tmp_path / "clips"
    batch.mkdir()
    (batch / "my.gif").write_bytes(GIF + b"the user's own gif")
    (tmp_path / "p.yaml").write_text("- prompt: a red circle moving right\n  output: my.gif\n- a blue square\n")
    before = tree(batch)
    ok(invoke("render", "--prompt-file", "p.yaml", *models, *SMALL, "-o", "clips", "--skip-existing"))
    after = tree(batch)
    assert after["my.gif"] == before["my.gif"]
    assert "my.gif.json" not in after  # skipped, not rendered again


def test_overwrite_refuses_a_file_of_another_type(tmp_path, models):
    (tmp_path / "notes.gif").write_text("my notes, not a GIF")
    (tmp_path / "notes").write_text("a file where a PNG-frames folder would go")
    before = tree(tmp_path)
    assert "not a .gif file" in assert_user_error(
        invoke("render", PROMPT, *models, *SMALL, "-o", "notes.gif", "--overwrite")
    )
    assert_user_error(invoke("render", PROMPT, *models, *SMALL, "-o", "notes", "--overwrite"))
    assert tree(tmp_path) == before


def test_overwrite_refuses_a_fifo_and_a_device(tmp_path, models):
    os.mkfifo(tmp_path / "pipe.gif")
    assert "not a regular file" in assert_user_error(
        invoke("render", PROMPT, *models, *SMALL, "-o", "pipe.gif", "--overwrite")
    )
    assert stat.S_ISFIFO((tmp_path / "pipe.gif").lstat().st_mode)
    try:
        os.mknod(tmp_path / "full", stat.S_IFCHR | 0o666, os.makedev(1, 7))
    except (PermissionError, OSError):
        return  # not root: the FIFO above is the same rule
    assert "not a regular file" in assert_user_error(
        invoke("render", PROMPT, *models, *SMALL, "-o", "full", "--overwrite")
    )
    assert stat.S_ISCHR((tmp_path / "full").lstat().st_mode)


@pytest.mark.parametrize("overwrite", [False, True])
def test_a_symlink_as_output_is_not_followed(tmp_path, models, overwrite):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / "dangling.gif").symlink_to(elsewhere / "new.gif")
    (elsewhere / "kept.gif").write_bytes(GIF + b"precious")
    (tmp_path / "link.gif").symlink_to(elsewhere / "kept.gif")
    before = tree(tmp_path)
    flags = ("--overwrite",) if overwrite else ()
    for name in ("dangling.gif", "link.gif"):
        message = assert_user_error(invoke("render", PROMPT, *models, *SMALL, "-o", name, *flags))
        assert "link" in message
    assert tree(tmp_path) == before
    assert not (elsewhere / "new.gif").exists()


def test_overwrite_replaces_videodiffs_own_frames_folders(tmp_path, models):
    ok(invoke("render", PROMPT, *models, *SMALL, "-o", "frames"))
    assert (tmp_path / "frames" / ".videodiff-frames").is_file()
    ok(invoke("render", PROMPT, *models, *SMALL, "-o", "frames", "--overwrite"))
    # a folder of nothing but NNNN.png names (ffmpeg's %04d.png) is the user's: its names prove nothing
    older = tmp_path / "older"
    older.mkdir()
    for i in range(3):
        (older / f"{i:04d}.png").write_bytes(b"png")
    before = tree(tmp_path)
    assert_user_error(invoke("render", PROMPT, *models, *SMALL, "-o", "older", "--overwrite"))
    assert tree(tmp_path) == before
    (tmp_path / "frames" / "my-notes.txt").write_text("now the folder holds something of the user's")
    before = tree(tmp_path)
    assert_user_error(invoke("render", PROMPT, *models, *SMALL, "-o", "frames", "--overwrite"))
    assert tree(tmp_path) == before


@pytest.mark.parametrize("name", [".", "..", "./", "a/.."])
def test_an_output_without_a_name_is_one_line(tmp_path, models, name):
    before = tree(tmp_path)
    assert_user_error(invoke("render", PROMPT, *models, *SMALL, "-o", name, "--overwrite"))
    assert tree(tmp_path) == before


def test_a_name_too_long_is_one_line(tmp_path, models):
    assert "too long" in assert_user_error(invoke("render", PROMPT, *models, *SMALL, "-o", "x" * 300 + ".gif"))


# ---------------------------------------------------------------- 2. outputs stay inside the batch folder


@pytest.mark.parametrize("own", ["../../escaped.gif", "ABSOLUTE", "sub/../../escaped.gif"])
def test_prompt_file_outputs_stay_in_the_batch_folder(tmp_path, models, own):
    own = str(tmp_path / "escaped-absolute.gif") if own == "ABSOLUTE" else own
    (tmp_path / "work").mkdir()
    os.chdir(tmp_path / "work")
    Path("p.yaml").write_text(f"- prompt: a red circle moving right\n  output: {own}\n- a blue square moving up\n")
    before = tree(tmp_path)
    message = assert_user_error(invoke("render", "--prompt-file", "p.yaml", *models, *SMALL, "-o", "clips"))
    assert "inside the batch folder" in message
    assert tree(tmp_path) == before


def test_a_sidecar_that_cannot_be_written_leaves_no_video(tmp_path, models):
    (tmp_path / "clip.gif.json").mkdir()  # something in the sidecar's way
    message = assert_user_error(invoke("render", PROMPT, *models, *SMALL, "-o", "clip.gif", "--overwrite"))
    assert "clip.gif.json" in message
    assert not (tmp_path / "clip.gif").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.gif.json"]


def test_a_failing_sidecar_move_takes_the_video_back(tmp_path, monkeypatch):
    """The pair is moved into place sidecar first; a failure after it removes what was moved."""
    import numpy as np

    from videodiff.errors import UserError
    from videodiff.media import atomic
    from videodiff.media.video import save_video

    real = atomic._move_into_place
    moved: list[Path] = []

    def second_fails(tmp: Path, final: Path) -> None:
        if moved:
            raise OSError(28, "No space left on device")
        real(tmp, final)
        moved.append(final)

    monkeypatch.setattr(atomic, "_move_into_place", second_fails)
    with pytest.raises(UserError, match="No space left"):
        save_video(np.zeros((2, 8, 8, 3), np.uint8), tmp_path / "clip.gif", 8, sidecar="{}\n")
    assert list(tmp_path.iterdir()) == []
