"""Issue-3 features through the command line: convert, inspect, and the add-on flags of render."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from cli_helpers import invoke as run
from PIL import Image
from safetensors.torch import save_file

SMALL = ["--frames", "3", "--steps", "2", "--height", "16", "--width", "16", "--seed", "4", "-q"]


def frames(folder):
    return np.stack([np.asarray(Image.open(p)) for p in sorted(folder.glob("*.png"))])


@pytest.fixture(scope="module")
def original_v2(tiny_motion, tmp_path_factory):
    out = tmp_path_factory.mktemp("conv") / "mm_v2.safetensors"
    result = run("convert", tiny_motion, out, "--to", "original")
    assert result.exit_code == 0, result.output
    return out


def test_convert_round_trip_and_inspect(original_v2, tmp_path):
    back = tmp_path / "back"
    assert run("convert", original_v2, back, "--to", "diffusers").exit_code == 0
    assert (back / "config.json").is_file()
    info = json.loads(run("inspect", original_v2, "--json").stdout)
    assert info["format"] == "original" and info["version"] == "v2" and info["positional_length"] == 32
    again = run("convert", original_v2, back, "--to", "diffusers")
    assert again.exit_code == 2 and "already exists" in again.stderr


def test_original_file_renders_like_its_diffusers_folder(tiny_model, tiny_motion, original_v2, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert (
        run("render", "a cat", "--model", tiny_model, "--motion-module", tiny_motion, *SMALL, "-o", "a").exit_code == 0
    )
    # original files cannot record the head count (AnimateDiff always used 8; the tiny adapter has 4)
    b = ["render", "a cat", "--model", tiny_model, "--motion-module", original_v2, *SMALL]
    assert run(*b, "-o", "b8").exit_code == 0
    r = run(*b, "--motion-config", tiny_motion / "config.json", "-o", "b")
    assert r.exit_code == 0, r.output
    assert np.array_equal(frames(tmp_path / "a"), frames(tmp_path / "b"))
    assert not np.array_equal(frames(tmp_path / "a"), frames(tmp_path / "b8"))
    sidecar = json.loads((tmp_path / "b.json").read_text())
    assert sidecar["info"]["sources"]["motion_module"]["version"] == "v2"


def test_lora_and_motion_lora_flags_change_the_video_and_are_recorded(tiny_model, tiny_motion, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    lora = {  # kohya format on one cross-attention query projection
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_q.lora_down.weight": torch.randn(2, 32),
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_q.lora_up.weight": torch.randn(32, 2),
    }
    save_file(lora, str(tmp_path / "style.safetensors"))
    motion_lora = {
        "down_blocks.0.motion_modules.0.transformer_blocks.0.attn1.to_q.lora_A.weight": torch.randn(2, 32),
        "down_blocks.0.motion_modules.0.transformer_blocks.0.attn1.to_q.lora_B.weight": torch.randn(32, 2),
    }
    save_file(motion_lora, str(tmp_path / "zoom.safetensors"))
    base = ["render", "a cat", "--model", tiny_model, "--motion-module", tiny_motion, *SMALL]
    assert run(*base, "-o", "plain").exit_code == 0
    assert run(*base, "--lora", "style.safetensors:0", "-o", "zero").exit_code == 0
    r = run(*base, "--lora", "style.safetensors:0.8", "--motion-lora", "zoom.safetensors:2", "-o", "styled")
    assert r.exit_code == 0, r.output
    assert np.array_equal(frames(tmp_path / "plain"), frames(tmp_path / "zero"))
    assert not np.array_equal(frames(tmp_path / "plain"), frames(tmp_path / "styled"))
    sources = json.loads((tmp_path / "styled.json").read_text())["info"]["sources"]
    assert sources["lora"][0]["scale"] == 0.8 and sources["motion_lora"][0]["scale"] == 2.0
    settings = json.loads((tmp_path / "styled.json").read_text())
    assert settings["lora"] == ["style.safetensors:0.8"]


def test_clip_skip_and_embedding(tiny_model, tiny_motion, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    save_file({"emb_params": torch.randn(2, 32)}, str(tmp_path / "sparkle.safetensors"))
    base = ["render", "a sparkle cat", "--model", tiny_model, "--motion-module", tiny_motion, *SMALL]
    assert run(*base, "-o", "plain").exit_code == 0
    assert run(*base, "--clip-skip", "1", "-o", "skip").exit_code == 0
    r = run(*base, "--embedding", "sparkle.safetensors", "-o", "emb")
    assert r.exit_code == 0, r.output
    assert not np.array_equal(frames(tmp_path / "plain"), frames(tmp_path / "skip"))
    assert not np.array_equal(frames(tmp_path / "plain"), frames(tmp_path / "emb"))


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--lora", "missing.safetensors"], "missing.safetensors"),
        (["--motion-lora", "nothing.ckpt:0.5"], "nothing.ckpt"),
        (["--vae", "novae.safetensors"], "novae"),
        (["--spatial-norm", "sideways"], "spatial-norm"),
        (["--clip-skip", "-1"], "clip-skip"),
        (["--motion-config", "v9"], "v9"),
    ],
)
def test_bad_add_ons_are_one_line_errors(tiny_model, tiny_motion, tmp_path, monkeypatch, extra, message):
    monkeypatch.chdir(tmp_path)
    r = run("render", "a cat", "--model", tiny_model, "--motion-module", tiny_motion, *SMALL, *extra, "-o", "x.gif")
    assert r.exit_code == 2, r.output
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("videodiff: error:") and message in lines[0], r.stderr
    assert not (tmp_path / "x.gif").exists()


def test_inspect_bad_input(tmp_path):
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 10)
    r = run("inspect", tmp_path / "junk.safetensors")
    assert r.exit_code == 2 and "junk.safetensors" in r.stderr
    assert run("inspect", tmp_path / "absent.ckpt").exit_code == 2
