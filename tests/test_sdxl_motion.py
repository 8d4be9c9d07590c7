"""SDXL motion modules: the original ``mm_sdxl_v10_beta.ckpt`` layout converted by key to diffusers' layout,
Hotshot-XL's layout (``temporal_attentions.N``, its own sinusoidal table) loaded strictly, both named by ``inspect``,
and a motion module for another family refused in one line. Random weights written in each layout by the rules stated
here."""

from __future__ import annotations

import math
import re

import pytest
import torch

from videodiff.weights.motion_formats import describe_motion_module, load_any_motion_module

# three blocks (SDXL's count) at tiny widths, eight heads (every released SDXL module's), no mid block
CONFIG = dict(block_out_channels=(32, 64, 64), motion_layers_per_block=2, motion_num_attention_heads=8,
              motion_norm_num_groups=32, use_motion_mid_block=False)  # fmt: skip


def diffusers_keys(max_frames: int) -> dict[str, torch.Size]:
    """Key shapes of a diffusers SDXL ``MotionAdapter`` of :data:`CONFIG` (the layout the others convert to)."""
    from diffusers import MotionAdapter

    adapter = MotionAdapter(**CONFIG, motion_max_seq_length=max_frames)
    return {k: v.shape for k, v in adapter.state_dict().items()}


def inner_to_original(inner: str) -> str:
    """A transformer block's diffusers names in AnimateDiff's original ones (the renaming diffusers' conversion
    script undoes): attn1/attn2 -> attention_blocks.0/1, norm1/norm2 -> norms.0/1, norm3 -> ff_norm."""
    for new, old in (("attn1.", "attention_blocks.0."), ("attn2.", "attention_blocks.1."), ("norm1.", "norms.0."),
                     ("norm2.", "norms.1."), ("norm3.", "ff_norm.")):  # fmt: skip
        inner = re.sub(rf"(transformer_blocks\.\d+\.){re.escape(new)}", rf"\g<1>{old}", inner)
    return inner


def written(layout: str, max_frames: int, pe_name: str = "pe", pe=None) -> tuple[dict, dict]:
    """``(file tensors, {diffusers key: file key})``: random tensors under ``layout``'s keys (``original``:
    ``X.motion_modules.N.temporal_transformer.``; ``hotshot``: ``X.temporal_attentions.N.``), a positional table
    ``pe`` (default random) under each attention block's ``pos_encoder.<pe_name>``."""
    g = torch.Generator().manual_seed(7)
    tensors, where = {}, {}
    for key, shape in diffusers_keys(max_frames).items():
        head, index, rest = re.match(r"^(.+?)\.motion_modules\.(\d+)\.(.+)$", key).groups()
        prefix = f"{head}.motion_modules.{index}.temporal_transformer." if layout == "original" else (
            f"{head}.temporal_attentions.{index}.")  # fmt: skip
        if rest.endswith("pos_embed.pe"):
            table = torch.randn(shape, generator=g) if pe is None else pe(shape[-1], shape[1])
            block = rest.removesuffix("pos_embed.pe")
            for a in (0, 1):
                tensors[f"{prefix}{block}attention_blocks.{a}.pos_encoder.{pe_name}"] = table.clone()
            where[key] = f"{prefix}{block}attention_blocks.0.pos_encoder.{pe_name}"
            continue
        tensors[prefix + inner_to_original(rest)] = torch.randn(shape, generator=g)
        where[key] = prefix + inner_to_original(rest)
    return tensors, where


def hotshot_table(dim: int, length: int) -> torch.Tensor:
    """Hotshot-XL's positional encoding, by the formula of its published source (hotshot_xl/models/
    transformer_temporal.py, ``PositionalEncoding``, ``_SCALE_FACTOR = 10000.0``, ``max_length`` 24):
    ``div_term = exp(arange(0, dim, 2) * (-log(10000) / dim))``, ``pe[0, :, 0::2] = sin(position * div_term)``,
    ``pe[0, :, 1::2] = cos(position * div_term)``, ``position = arange(max_length)``."""
    position = torch.arange(length, dtype=torch.float32)[:, None]
    div = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    table = torch.zeros(1, length, dim)
    table[0, :, 0::2], table[0, :, 1::2] = torch.sin(position * div), torch.cos(position * div)
    return table


def test_the_original_sdxl_layout_converts_key_by_key_to_diffusers(tmp_path):
    """``mm_sdxl_v10_beta.ckpt``'s layout (a pickle, read weights-only): every tensor lands on the diffusers key its
    name maps to, unchanged, and the result loads strictly into a diffusers SDXL ``MotionAdapter``."""
    from diffusers import MotionAdapter

    tensors, where = written("original", 32)
    path = tmp_path / "mm_sdxl_v10_beta.ckpt"
    torch.save({"state_dict": tensors}, path)
    stack, info = load_any_motion_module(str(path))
    ours = stack.state_dict()
    assert set(ours) == set(where)
    for key, file_key in where.items():
        assert torch.equal(ours[key], tensors[file_key]), key
    MotionAdapter(**CONFIG, motion_max_seq_length=32).load_state_dict(ours, strict=True)
    assert (info.format, info.version, info.max_frames, info.has_mid_block) == ("original", "sdxl", 32, False)
    described = describe_motion_module(path)
    assert (described["name"], described["family"]) == ("AnimateDiff-SDXL", "SDXL")


def test_hotshot_xl_layout_loads_strictly_with_its_positional_encoding(tmp_path):
    """Hotshot-XL's layout loads with no missing or unexpected key (a strict load), every tensor where its name maps,
    and its table is the formula of its source: the same sinusoids the motion stack builds for 24 frames."""
    from safetensors.torch import save_file

    from videodiff.unet import MotionStack

    tensors, where = written("hotshot", 24, pe_name="positional_encoding", pe=hotshot_table)
    assert any(".temporal_attentions.0.transformer_blocks.0.attention_blocks.1.to_q.weight" in k for k in tensors)
    path = tmp_path / "hsxl_temporal_layers.safetensors"
    save_file(tensors, str(path))
    stack, info = load_any_motion_module(str(path))
    ours = stack.state_dict()
    assert set(ours) == set(where)
    for key, file_key in where.items():
        assert torch.equal(ours[key], tensors[file_key]), key
    assert (info.format, info.version, info.max_frames) == ("hotshot", "hotshot-xl", 24)
    own = MotionStack(**CONFIG, motion_max_seq_length=24).state_dict()
    for key in (k for k in ours if k.endswith("pos_embed.pe")):
        torch.testing.assert_close(own[key], hotshot_table(own[key].shape[-1], 24))
    described = describe_motion_module(path)
    assert (described["format"], described["name"], described["family"]) == ("hotshot", "Hotshot-XL", "SDXL")


def test_inspect_names_a_diffusers_sdxl_adapter(tmp_path):
    from videodiff.tiny_sdxl import build_tiny_sdxl_motion_adapter

    folder = build_tiny_sdxl_motion_adapter(tmp_path / "adapter")
    described = describe_motion_module(folder)
    assert (described["format"], described["name"], described["family"]) == ("diffusers", "AnimateDiff-SDXL", "SDXL")


@pytest.mark.parametrize("layout", ["original", "hotshot"])
def test_an_sdxl_module_on_an_sd15_model_is_refused_in_one_line(tmp_path, tiny_model, layout):
    from cli_helpers import assert_user_error, invoke
    from safetensors.torch import save_file

    tensors, _ = written(layout, 24, pe_name="pe" if layout == "original" else "positional_encoding")
    path = tmp_path / f"{layout}.safetensors"
    save_file(tensors, str(path))
    message = assert_user_error(invoke("render", "a cat", "--model", tiny_model, "--motion-module", path, "-q"))
    assert "the motion modules are for SDXL (3 blocks), but the image model is SD1.5" in message


def test_a_hotshot_xl_module_renders_at_the_size_and_length_it_was_trained_at(tmp_path, tiny_sdxl_model):
    """Hotshot-XL's defaults (512x512, 8 frames at 8 fps, its README) stand in for SDXL's 1024 and 16 frames;
    a diffusers SDXL adapter keeps the family's; what the user asks for wins."""
    from safetensors.torch import save_file

    from videodiff import load_pipeline
    from videodiff.render import resolve_render_config
    from videodiff.tiny_sdxl import build_tiny_sdxl_motion_adapter

    tensors, _ = written("hotshot", 24, pe_name="positional_encoding", pe=hotshot_table)
    path = tmp_path / "hsxl_temporal_layers.safetensors"
    save_file(tensors, str(path))
    pipe = load_pipeline(str(tiny_sdxl_model), str(path), device="cpu")  # the Python API
    assert pipe.default_size() == (512, 512) and pipe.settings("a cat").frames == 8
    assert pipe.settings("a cat", num_frames=4).frames == 4
    adapter = str(build_tiny_sdxl_motion_adapter(tmp_path / "ad"))
    other = load_pipeline(str(tiny_sdxl_model), adapter, device="cpu")
    assert other.default_size() != (512, 512) and other.settings("a cat").frames == 16
    config = resolve_render_config({"prompt": "a cat", "model": str(tiny_sdxl_model), "motion_module": str(path)})
    assert (config.height, config.width, config.frames, config.fps) == (512, 512, 8, 8)  # the command line
    config = resolve_render_config({"prompt": "a cat", "model": str(tiny_sdxl_model), "motion_module": str(path),
                                    "frames": 12, "fps": 10})  # fmt: skip
    assert (config.frames, config.fps) == (12, 10)
    config = resolve_render_config({"prompt": "a cat", "model": str(tiny_sdxl_model), "motion_module": adapter})
    assert config.frames == 16 and config.height != 512
