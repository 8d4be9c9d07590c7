"""Model families: decided once from a model's own config, refused by name where unsupported, and what a family's
time embedding takes besides the timestep reaching the inflated U-Net through the conditioning object."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest
import torch
from diffusers import UNet2DConditionModel

from videodiff import families
from videodiff.errors import UserError
from videodiff.sampling import Cond, TensorField
from videodiff.sampling.cond import TEXT_EMBEDS, TIME_IDS
from videodiff.unet import MotionStack, VideoUNet


def tiny_xl_unet() -> UNet2DConditionModel:
    """A random U-Net with SDXL's added conditioning (pooled text and six size ids, ``text_time``)."""
    torch.manual_seed(0)
    return UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=2,
        sample_size=16,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=8,
        norm_num_groups=32,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=24 + 6 * 8,
    ).eval()


def test_families_are_decided_from_the_unet_config():
    assert families.of_unet({"cross_attention_dim": 768}) is families.SD15
    assert families.of_unet({"addition_embed_type": "text_time"}) is families.SDXL
    with pytest.raises(UserError, match="no known model family.*class_embed_type='timestep'"):
        families.of_unet({"class_embed_type": "timestep"})
    assert families.of_motion_channels([320, 640, 1280]) is families.SDXL
    assert families.of_motion_channels([320, 640, 1280, 1280]) is families.SD15
    assert families.SDXL.added_conditioning == (TEXT_EMBEDS, TIME_IDS)  # the conditioning object's field names
    assert families.SD15.folders == ("tokenizer", "text_encoder", "vae", "unet", "scheduler")


@pytest.fixture
def sdxl_unsupported(monkeypatch):
    """SDXL as a family videodiff recognises but does not render (what every new family starts as)."""
    monkeypatch.setitem(families.FAMILIES, "sdxl", dataclasses.replace(families.SDXL, supported=False))


def test_an_unsupported_family_is_refused_once_by_name(sdxl_unsupported):
    with pytest.raises(UserError, match=r"the image model is SDXL, which videodiff cannot render yet"):
        VideoUNet(tiny_xl_unet(), MotionStack(block_out_channels=(32, 64), motion_norm_num_groups=32))
    assert families.require_supported(families.SD15, "x") is families.SD15
    assert families.SDXL.supported  # the family itself renders (tests/test_sdxl.py)


def test_added_conditioning_reaches_the_time_embedding():
    """Zero-initialised motion modules: the inflated U-Net equals the 2D U-Net per frame, added conditioning included
    (SDXL's pooled text and size ids, given as fields of the conditioning object)."""
    unet2d = tiny_xl_unet()
    video = VideoUNet(unet2d, MotionStack(block_out_channels=(32, 64), motion_norm_num_groups=32), supported_only=False)
    assert video.family is families.SDXL
    g = torch.Generator().manual_seed(1)
    x, context = torch.randn(2, 4, 3, 8, 8, generator=g), torch.randn(2, 7, 32, generator=g)
    pooled, ids = torch.randn(2, 24, generator=g), torch.tensor([[64.0, 64, 0, 0, 64, 64], [32, 48, 0, 0, 64, 64]])
    cond = Cond.text(context).with_fields(text_embeds=TensorField(pooled), time_ids=TensorField(ids))
    with torch.no_grad():
        got = video(x, 400, cond)
        for i in range(3):
            added = {"text_embeds": pooled, "time_ids": ids}
            frame = unet2d(x[:, :, i], 400, encoder_hidden_states=context, added_cond_kwargs=added).sample
            torch.testing.assert_close(got[:, :, i], frame, rtol=1e-5, atol=1e-5)
        other = video(x, 400, cond.with_fields(time_ids=TensorField(ids * 2)))
    assert (other - got).abs().max() > 1e-4  # the size ids matter
    with pytest.raises(ValueError, match=r"\['time_ids'\]"):
        video(x, 400, cond.without(TIME_IDS))


def test_the_families_import_no_torch():
    code = "import sys, videodiff.families; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_a_model_folder_of_an_unsupported_family_is_refused_by_name_before_loading(tmp_path, models, sdxl_unsupported):
    import json

    from cli_helpers import assert_user_error, invoke

    folder = tmp_path / "xl"
    (folder / "unet").mkdir(parents=True)
    config = {"_class_name": "UNet2DConditionModel", "addition_embed_type": "text_time", "cross_attention_dim": 2048}
    (folder / "unet" / "config.json").write_text(json.dumps(config))
    message = assert_user_error(invoke("render", "a cat", "--model", folder, "--motion-module", models[3], "-q"))
    assert "the model is SDXL, which videodiff cannot render yet" in message


def test_a_loaded_pipeline_knows_its_family(tiny_pipe):
    assert tiny_pipe.parts.family is families.SD15 and tiny_pipe.unet.family is families.SD15


def test_three_motion_blocks_with_a_middle_block_are_sd15_not_sdxl():
    """SDXL motion modules have three blocks and no middle block; the built-in model's (64, 128, 128) has one."""
    from videodiff.weights.hub import BUILTIN_MODEL
    from videodiff.weights.motion_headers import describe_motion_module

    assert families.of_motion_channels([320, 640, 1280], mid_block=False) is families.SDXL
    assert families.of_motion_channels([64, 128, 128], mid_block=True) is families.SD15
    info = describe_motion_module(BUILTIN_MODEL / "motion_adapter")
    assert info["family"] == "SD1.5" and info["version"] == "v2"
