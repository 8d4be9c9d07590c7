"""GPU failures simulated on the CPU (issue 17): out-of-memory is answered with concrete advice in one line,
and frames that decode to NaN/inf are never written silently."""

from __future__ import annotations

import pytest
import torch
from cli_helpers import assert_user_error, invoke

PROMPT = "a red circle moving right"
SMALL = ("--height", "16", "--width", "16", "--frames", "2", "--steps", "1", "--seed", "1", "-q")


@pytest.mark.parametrize("where", ["load", "generate"])
def test_out_of_memory_is_one_line_with_advice(tmp_path, models, monkeypatch, where):
    from videodiff import pipelines

    def oom(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 8.00 GiB total)")

    target = "load" if where == "load" else "generate"
    monkeypatch.setattr(pipelines.VideoPipeline, target, oom if where == "generate" else classmethod(oom))
    message = assert_user_error(invoke("render", PROMPT, *models, *SMALL, "-o", tmp_path / "x.gif"))
    assert message.startswith("out of GPU memory rendering 2 frames of 16x16; try fewer --frames than 2")
    for advice in ("--decode-chunk", "--dtype fp16", "--offload model", "--attention-slicing", "--vae-tiling"):
        assert advice in message
    assert list(tmp_path.iterdir()) == []


def test_other_runtime_errors_still_raise(tmp_path, models, monkeypatch):
    from videodiff import pipelines

    def bug(*args, **kwargs):
        raise RuntimeError("shape mismatch: an internal bug keeps its traceback")

    monkeypatch.setattr(pipelines.VideoPipeline, "generate", bug)
    result = invoke("render", PROMPT, *models, *SMALL, "-o", tmp_path / "x.gif")
    assert result.exit_code == 1 and isinstance(result.exception, RuntimeError)


class NaNVAE:
    """A VAE stub that overflows in half precision, and (``always``) in float32 too."""

    def __init__(self, always: bool) -> None:
        self.dtype = torch.float16
        self.always = always
        self.config = type("Config", (), {"scaling_factor": 1.0})()

    def to(self, dtype):
        self.dtype = dtype
        return self

    def decode(self, z):
        bad = self.always or self.dtype != torch.float32
        sample = torch.full((z.shape[0], 3, 4, 4), float("nan") if bad else 0.5)
        return type("Out", (), {"sample": sample})()


def test_half_precision_overflow_is_retried_in_fp32():
    from videodiff import vae

    frames = vae.decode(NaNVAE(always=False), torch.zeros(1, 4, 3, 2, 2), chunk=2)
    assert torch.isfinite(frames).all()


def test_frames_that_stay_nan_are_refused_not_written_black():
    from videodiff import vae
    from videodiff.errors import UserError

    with pytest.raises(UserError, match="NaN/inf .* --dtype fp32"):
        vae.decode(NaNVAE(always=True), torch.zeros(1, 4, 3, 2, 2), chunk=2)
    with pytest.raises(UserError, match="the latents diverged"):
        vae.decode(NaNVAE(always=True), torch.full((1, 4, 3, 2, 2), float("nan")), chunk=2)
