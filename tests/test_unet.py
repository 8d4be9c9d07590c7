"""The inflated video U-Net: parity with diffusers' UNetMotionModel, zero-init inflation, limits."""

from __future__ import annotations

import pytest
import torch
from diffusers import MotionAdapter, UNet2DConditionModel, UNetMotionModel

from videodiff.errors import UserError
from videodiff.unet import MotionStack, VideoUNet
from videodiff.weights.motion_formats import load_motion_folder


@pytest.fixture(scope="module")
def unet2d(tiny_model):
    return UNet2DConditionModel.from_pretrained(tiny_model / "unet").eval()


def _stack_like(adapter_config) -> MotionStack:
    return MotionStack(**{k: v for k, v in adapter_config.items() if not k.startswith("_")})


@pytest.mark.parametrize("frames,h,w", [(8, 16, 16), (5, 12, 20)])
def test_matches_diffusers_unet_motion_model(unet2d, tiny_motion, frames, h, w):
    adapter = MotionAdapter.from_pretrained(tiny_motion)
    reference = UNetMotionModel.from_unet2d(unet2d, adapter).eval()
    ours = VideoUNet(unet2d, load_motion_folder(tiny_motion)).eval()
    ours.set_attention_backend("sdpa")  # cross-attention then takes the text context once per video
    assert ours._context_once_per_video()
    torch.manual_seed(0)
    x = torch.randn(2, 4, frames, h, w)
    context = torch.randn(2, 77, 32)
    with torch.no_grad():
        expected = reference(x, 500, encoder_hidden_states=context.repeat_interleave(frames, 0)).sample
        got = ours(x, 500, context)
    # the temporal stack must matter, or this would only test the image path
    with torch.no_grad():
        per_frame = torch.stack(
            [unet2d(x[:, :, i], 500, encoder_hidden_states=context).sample for i in range(frames)], 2
        )
    assert (expected - per_frame).abs().max() > 1e-2
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_zero_initialised_stack_equals_image_model_per_frame(unet2d, tiny_motion):
    adapter = MotionAdapter.from_pretrained(tiny_motion)
    fresh = _stack_like(adapter.config)  # a new stack: proj_out is zero
    assert all(torch.count_nonzero(m.proj_out.weight) == 0 for m in fresh.modules() if hasattr(m, "proj_out"))
    video_unet = VideoUNet(unet2d, fresh).eval()
    x = torch.randn(1, 4, 6, 16, 16)
    context = torch.randn(1, 77, 32)
    with torch.no_grad():
        got = video_unet(x, 321, context)
        for i in range(6):
            frame = unet2d(x[:, :, i], 321, encoder_hidden_states=context).sample
            torch.testing.assert_close(got[:, :, i], frame, rtol=1e-5, atol=1e-5)


def test_inflation_does_not_touch_spatial_weights(unet2d, tiny_motion):
    before = {k: v.clone() for k, v in unet2d.state_dict().items()}
    video_unet = VideoUNet(unet2d, load_motion_folder(tiny_motion))
    new_keys = set(video_unet.state_dict()) - {f"unet.{k}" for k in before}
    assert new_keys and all(k.startswith("motion.") for k in new_keys)
    for k, v in unet2d.state_dict().items():
        assert torch.equal(v, before[k])


def test_stack_keys_match_motion_adapter(tiny_motion):
    adapter = MotionAdapter.from_pretrained(tiny_motion)
    stack = _stack_like(adapter.config)
    assert set(stack.state_dict()) == set(adapter.state_dict())
    for key, tensor in adapter.state_dict().items():
        assert stack.state_dict()[key].shape == tensor.shape


def test_per_frame_context_equals_shared_context(unet2d, tiny_motion):
    video_unet = VideoUNet(unet2d, load_motion_folder(tiny_motion)).eval()
    x = torch.randn(1, 4, 4, 16, 16)
    context = torch.randn(1, 77, 32)
    with torch.no_grad():
        a = video_unet(x, 10, context)
        b = video_unet(x, 10, context[:, None].expand(1, 4, 77, 32))
    torch.testing.assert_close(a, b)


def test_too_many_frames_names_the_limit(unet2d, tiny_motion):
    video_unet = VideoUNet(unet2d, load_motion_folder(tiny_motion))
    with pytest.raises(UserError, match="limit of 32"):
        video_unet(torch.randn(1, 4, 33, 8, 8), 10, torch.randn(1, 77, 32))


def test_incompatible_motion_module_is_a_user_error(unet2d):
    wrong = MotionStack(block_out_channels=(64, 128), motion_num_attention_heads=4)
    with pytest.raises(UserError, match="channels"):
        VideoUNet(unet2d, wrong)


@pytest.mark.parametrize("backend", ["math", "sdpa"])
def test_attention_backends_agree(unet2d, tiny_motion, backend):
    video_unet = VideoUNet(unet2d, load_motion_folder(tiny_motion)).eval()
    x, context = torch.randn(1, 4, 4, 16, 16), torch.randn(1, 77, 32)
    with torch.no_grad():
        video_unet.set_attention_backend("sdpa")
        reference = video_unet(x, 10, context)
        video_unet.set_attention_backend(backend)
        got = video_unet(x, 10, context)
    torch.testing.assert_close(got, reference, rtol=1e-4, atol=1e-4)
