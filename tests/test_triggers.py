"""MotionLoRAs merged only for prompts with their trigger word: exact switching, sidecars, model folders, errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from cli_helpers import invoke
from safetensors.torch import save_file

from videodiff import load_pipeline
from videodiff.config import parse_trigger, words_of
from videodiff.errors import UserError
from videodiff.media.video import sidecar_path

RENDER = dict(num_frames=4, height=16, width=16, num_inference_steps=2, output_type="latent")


def motion_lora(path: Path, seed: int) -> Path:
    """A PEFT-layout MotionLoRA on two temporal attention projections of the tiny motion modules."""
    g = torch.Generator().manual_seed(seed)
    tensors = {}
    block = "motion_modules.0.transformer_blocks.0.attn1"
    for target, width in ((f"down_blocks.0.{block}.to_q", 32), (f"up_blocks.0.{block}.to_v", 64)):
        tensors[f"{target}.lora_A.weight"] = torch.randn(2, width, generator=g)
        tensors[f"{target}.lora_B.weight"] = torch.randn(width, 2, generator=g)
    save_file(tensors, str(path))
    return path


@pytest.fixture(scope="module")
def loras(tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("trigger-loras")
    return motion_lora(folder / "left.safetensors", 1), motion_lora(folder / "right.safetensors", 2)


def test_parse_trigger():
    assert parse_trigger("Left=a/b.safetensors:0.5") == ("left", "a/b.safetensors", 0.5)
    assert words_of("A red circle, moving LEFT!") == {"a", "red", "circle", "moving", "left"}
    for bad in ("left", "=x.safetensors", "two words=x.safetensors", "left="):
        with pytest.raises(UserError, match="WORD=PATH") as info:
            parse_trigger(bad)
        assert "\n" not in str(info.value)


def test_a_trigger_merges_its_lora_only_for_prompts_with_the_word(tiny_model, tiny_motion, loras):
    left, right = loras
    triggered = load_pipeline(str(tiny_model), str(tiny_motion), motion_lora_trigger=[f"left={left}", f"right={right}"])
    plain = load_pipeline(str(tiny_model), str(tiny_motion))
    with_left = load_pipeline(str(tiny_model), str(tiny_motion), motion_lora=[str(left)])
    with_right = load_pipeline(str(tiny_model), str(tiny_motion), motion_lora=[str(right)])
    prompts = ["a square moving left", "a square moving right", "a still square", "a square moving left"]
    expected = [with_left, with_right, plain, with_left]
    # in and out again, in any order: each render equals a pipeline with exactly its LoRA merged once
    for prompt, reference in zip(prompts, expected):
        got = triggered(prompt, seed=3, **RENDER)
        assert torch.equal(got.latents, reference(prompt, seed=3, **RENDER).latents), prompt
        assert got.triggered == tuple(w for w in ("left", "right") if w in prompt.split())
    assert not torch.equal(
        plain(prompts[0], seed=3, **RENDER).latents, with_left(prompts[0], seed=3, **RENDER).latents
    )  # the LoRA does change the video


def test_cli_trigger_flag_is_recorded(models, loras, tmp_path):
    left, _ = loras
    out = tmp_path / "v.gif"
    small = ("--frames", 4, "--height", 16, "--width", 16, "--steps", 1, "--seed", 1)
    trigger = ("--motion-lora-trigger", f"left={left}:0.5")
    result = invoke("render", "a square moving left", *models, *small, *trigger, "-o", out)
    assert result.exit_code == 0, result.output
    side = json.loads(sidecar_path(out).read_text())
    assert side["motion_lora_trigger"] == [f"left={left}:0.5"]
    assert side["info"]["motion_lora_triggered"] == ["left"]
    assert side["info"]["sources"]["motion_lora_trigger"][0]["scale"] == 0.5
    bad = invoke("render", "a square", *models, "--motion-lora-trigger", "left", "-o", tmp_path / "w.gif")
    assert bad.exit_code == 2 and "WORD=PATH" in bad.output and len(bad.output.strip().splitlines()) == 1
    assert not (tmp_path / "w.gif").exists()


def test_a_model_folder_names_its_own_triggers(tiny_model, tiny_motion, loras, tmp_path):
    left, _ = loras
    folder = tmp_path / "model"
    shutil.copytree(tiny_model, folder)
    shutil.copytree(tiny_motion, folder / "motion_adapter")
    (folder / "motion_loras").mkdir()
    shutil.copy(left, folder / "motion_loras" / "left.safetensors")
    (folder / "videodiff.json").write_text(
        json.dumps({"motion_lora_triggers": {"Left": "motion_loras/left.safetensors"}})
    )
    own = load_pipeline(str(folder))
    assert [t.word for t in own.parts.triggers] == ["left"]
    reference = load_pipeline(str(tiny_model), str(tiny_motion), motion_lora=[str(left)])
    assert torch.equal(own("moving left", seed=0, **RENDER).latents, reference("moving left", seed=0, **RENDER).latents)
    # the command line's trigger for the same word replaces the folder's
    other = load_pipeline(str(folder), motion_lora_trigger=[f"left={left}:0"])
    plain = load_pipeline(str(tiny_model), str(tiny_motion))
    assert torch.equal(other("moving left", seed=0, **RENDER).latents, plain("moving left", seed=0, **RENDER).latents)
    (folder / "videodiff.json").write_text(json.dumps({"motion_lora_triggers": {"left": str(left)}}))
    with pytest.raises(UserError, match="outside the model folder"):
        load_pipeline(str(folder))
    (folder / "videodiff.json").write_text(json.dumps({"motion_lora_triggers": ["left"]}))
    with pytest.raises(UserError, match="must map words"):
        load_pipeline(str(folder))


def test_a_trigger_lora_for_other_motion_modules_is_refused(tiny_model, tiny_motion, tmp_path):
    bad = tmp_path / "bad.safetensors"
    save_file({"down_blocks.0.motion_modules.0.transformer_blocks.0.attn1.to_q.lora_A.weight": torch.zeros(2, 99),
               "down_blocks.0.motion_modules.0.transformer_blocks.0.attn1.to_q.lora_B.weight": torch.zeros(32, 2)},
              str(bad))  # fmt: skip
    with pytest.raises(UserError, match="update for") as info:
        load_pipeline(str(tiny_model), str(tiny_motion), motion_lora_trigger=[f"left={bad}"])
    assert "\n" not in str(info.value)
