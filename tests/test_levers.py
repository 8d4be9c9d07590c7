"""Each speed lever (videodiff/unet/levers.py) leaves fp32 frames within 2/255 of the plain path.

Frames of the tiny model, rendered with the lever and without in the same process; the lever is undone after.
Speed is not asserted here: ``videodiff bench levers`` measures it.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from videodiff.unet.levers import LEVERS, applied

RENDER = dict(num_frames=6, height=32, width=32, num_inference_steps=2, guidance_scale=7.5, seed=5)


def frames(pipe) -> np.ndarray:
    return np.asarray(pipe("a red circle moving right", **RENDER).frames).astype(int)


@pytest.fixture(scope="module")
def plain(tiny_pipe, one_thread) -> np.ndarray:
    return frames(tiny_pipe)


@pytest.mark.parametrize("lever", [pytest.param(x, marks=pytest.mark.slow) if x == "compile" else x for x in LEVERS])
def test_a_lever_keeps_the_frames(tiny_pipe, one_thread, plain, lever):
    with applied(tiny_pipe.unet, lever) as unet:
        assert unet is tiny_pipe.unet
        if lever == "channels-last":
            conv = tiny_pipe.unet.unet.conv_in.weight
            assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
        levered = frames(tiny_pipe)
    assert np.abs(levered - plain).max() <= 2
    assert tiny_pipe.unet.unet.conv_in.weight.is_contiguous()  # undone
    assert tiny_pipe.unet._compiled_call_impl is None


def test_an_unknown_lever_is_refused(tiny_pipe):
    with pytest.raises(ValueError, match="unknown lever"), applied(tiny_pipe.unet, "warp-drive"):
        pass
