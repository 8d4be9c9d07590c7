"""SDXL: parity with diffusers' AnimateDiffSDXLPipeline on a tiny random SDXL model and SDXL motion adapter (two text
encoders, ``addition_embed_type="text_time"``), and the comparison failing when the size ids or the pooled text are
wrong; the family's text layer, ``--clip-skip``, empty negative prompt and VAE upcast; refusals."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from videodiff import families
from videodiff.errors import UserError
from videodiff.pipeline import prompts
from videodiff.schedulers import make_scheduler

PROMPT = "a red circle moving right"
SMALL = dict(num_frames=4, height=32, width=40, num_inference_steps=3)


@pytest.fixture
def sdxl_model(tiny_sdxl_model):
    return tiny_sdxl_model


@pytest.fixture
def sdxl_motion(tiny_sdxl_motion):
    return tiny_sdxl_motion


@pytest.fixture(scope="module")
def sdxl_pipe(tiny_sdxl_pipe, one_thread):
    return tiny_sdxl_pipe


def reference_frames(pipe, model, motion, scheduler: str, **kwargs) -> np.ndarray:
    from videodiff.tiny_sdxl import diffusers_sdxl_reference

    reference = diffusers_sdxl_reference(model, motion, make_scheduler(scheduler, pipe.parts.scheduler_config))
    out = reference(
        PROMPT, guidance_scale=7.5, generator=torch.Generator("cpu").manual_seed(3), output_type="np", **kwargs
    ).frames[0]
    return (out * 255).round().astype(np.uint8)


def gap(a: np.ndarray, b: np.ndarray) -> int:
    return int(np.abs(a.astype(int) - b.astype(int)).max())


@pytest.mark.parametrize(("scheduler", "negative"), [("ddim", "cat"), ("euler", None)])
def test_same_frames_as_diffusers_animatediff_sdxl(sdxl_pipe, sdxl_model, sdxl_motion, scheduler, negative):
    """Same weights, seed and scheduler: every pixel within 2/255 of AnimateDiffSDXLPipeline (fp32, CPU); with no
    negative prompt both take zeros as the unconditional text (``force_zeros_for_empty_prompt``)."""
    kwargs = dict(negative_prompt=negative, num_frames=8, height=32, width=40, num_inference_steps=4)
    ours = sdxl_pipe(PROMPT, seed=3, scheduler=scheduler, **kwargs).frames
    expected = reference_frames(sdxl_pipe, sdxl_model, sdxl_motion, scheduler, **kwargs)
    assert ours.shape == expected.shape == (8, 32, 40, 3)
    assert ours.std() > 5  # a real picture, not a constant
    assert gap(ours, expected) <= 2


@pytest.fixture(scope="module")
def small_reference(sdxl_pipe, tiny_sdxl_model, tiny_sdxl_motion):
    return reference_frames(sdxl_pipe, tiny_sdxl_model, tiny_sdxl_motion, "ddim", negative_prompt="cat", **SMALL)


def render_small(pipe) -> np.ndarray:
    return pipe(PROMPT, seed=3, scheduler="ddim", negative_prompt="cat", **SMALL).frames


def test_the_comparison_fails_with_wrong_size_ids(sdxl_pipe, small_reference, monkeypatch):
    """The parity above is not blind to the size ids: crop ids of (8, 8) instead of (0, 0) open a gap."""
    assert gap(render_small(sdxl_pipe), small_reference) <= 2
    real = prompts.size_ids

    def cropped(height, width, like):
        return real(height, width, like) + torch.tensor([[0, 0, 8, 8, 0, 0]], dtype=like.dtype)

    monkeypatch.setattr(prompts, "size_ids", cropped)
    assert gap(render_small(sdxl_pipe), small_reference) > 2


def test_the_comparison_fails_without_the_pooled_text(sdxl_pipe, small_reference, monkeypatch):
    """... nor to the pooled text: zeros in its place open a gap, and a conditioning without it is refused."""
    real = prompts.added_fields

    def unpooled(pipe, settings, guided, context):
        fields = real(pipe, settings, guided, context)
        pooled = fields["text_embeds"]
        fields["text_embeds"] = type(pooled)(torch.zeros_like(pooled.value), torch.zeros_like(pooled.uncond))
        return fields

    monkeypatch.setattr(prompts, "added_fields", unpooled)
    assert gap(render_small(sdxl_pipe), small_reference) > 2
    monkeypatch.setattr(prompts, "added_fields", lambda *a: {k: v for k, v in real(*a).items() if k != "text_embeds"})
    with pytest.raises(ValueError, match=r"needs \['text_embeds'\]"):
        render_small(sdxl_pipe)


def test_clip_skip_as_sdxl_defines_it(sdxl_pipe):
    """``--clip-skip N``: each encoder's hidden states N layers before the penultimate, no final norm (diffusers'
    ``hidden_states[-(clip_skip + 2)]``); the pooled text stays the last encoder's projection."""
    from videodiff import text

    tokenizers, encoders = sdxl_pipe.parts.tokenizers, sdxl_pipe.text_encoders
    plain, pooled = text.encode_penultimate(tokenizers, encoders, [PROMPT], "cpu")
    skipped, pooled_skipped = text.encode_penultimate(tokenizers, encoders, [PROMPT], "cpu", clip_skip=1)
    expected = []
    for tokenizer, encoder in zip(tokenizers, encoders):
        ids = tokenizer([PROMPT], padding="max_length", max_length=tokenizer.model_max_length, return_tensors="pt")
        expected.append(encoder(ids.input_ids, output_hidden_states=True).hidden_states[-3])
    torch.testing.assert_close(skipped, torch.cat(expected, dim=-1))
    torch.testing.assert_close(pooled_skipped, pooled)
    assert plain.shape == skipped.shape == (1, 77, 64) and (plain - skipped).abs().max() > 1e-3


def test_the_family_decides_the_vae_dtype():
    """A half-precision SDXL render keeps a ``force_upcast`` VAE in float32 (diffusers' SDXL pipelines decode in
    float32 for the same reason); SD1.5 and bfloat16 keep the render's dtype."""

    class VAE:
        class config:  # noqa: N801 - the diffusers attribute
            force_upcast = True

    assert prompts.vae_dtype(families.SDXL, VAE, torch.float16) is torch.float32
    assert prompts.vae_dtype(families.SDXL, VAE, torch.bfloat16) is torch.bfloat16
    assert prompts.vae_dtype(families.SD15, VAE, torch.float16) is torch.float16


def test_the_sdxl_pipeline_knows_its_family_and_size(sdxl_pipe):
    assert sdxl_pipe.family is families.SDXL and sdxl_pipe.unet.family is families.SDXL
    assert len(sdxl_pipe.text_encoders) == 2
    assert sdxl_pipe.default_size() == (32, 32)  # the U-Net's sample_size in pixels, as diffusers takes it
    assert families.SDXL.default_size == 1024


def test_a_motion_module_for_another_family_is_refused_in_one_line(sdxl_model, sdxl_motion, tiny_model, tiny_motion):
    from cli_helpers import assert_user_error, invoke

    message = assert_user_error(invoke("render", "a cat", "--model", sdxl_model, "--motion-module", tiny_motion, "-q"))
    assert "the motion modules are for SD1.5 (2 blocks), but the image model is SDXL" in message
    message = assert_user_error(invoke("render", "a cat", "--model", tiny_model, "--motion-module", sdxl_motion, "-q"))
    assert "the motion modules are for SDXL (3 blocks), but the image model is SD1.5" in message


def test_sparsectrl_on_sdxl_is_refused_in_one_line(sdxl_pipe, tmp_path):
    """SparseCtrl (AnimateDiff v3's, SD1.5 only) does not fit an SDXL U-Net: refused by name before any file of its is
    read (SDXL ControlNets and IP-Adapters render: tests/test_sdxl_controlnet.py, tests/test_sdxl_ip_adapter.py,
    where an SD1.5 IP-Adapter is refused naming both families)."""
    given = [{"controlnet": str(tmp_path / "net"), "sparse_at": [f"0:{tmp_path / 'p.png'}"]}]
    with pytest.raises(UserError, match="^SparseCtrl is not supported for SDXL models yet$"):
        sdxl_pipe(PROMPT, seed=1, controls=given, **SMALL)


@pytest.mark.parametrize(("changes", "feature"), [({"distill": "lcm"}, "consistency distillation"),
                                               ({"motion_prior": True}, "motion prior")])  # fmt: skip
def test_distilling_or_fitting_a_motion_prior_on_sdxl_is_refused_in_one_line(sdxl_model, tmp_path, changes, feature):
    from videodiff.config import TrainConfig
    from videodiff.training.loop import Trainer

    (tmp_path / "data").mkdir()
    config = TrainConfig(model=str(sdxl_model), data=str(tmp_path / "data"), output=str(tmp_path / "run"), quiet=True,
                         **changes)  # fmt: skip
    with pytest.raises(UserError, match=f"^{feature} is not supported for SDXL models yet$"):
        Trainer(config).build_models()


def test_half_precision_keeps_the_sdxl_vae_in_float32_through_every_start(tiny_sdxl_model, tiny_sdxl_motion):
    """``--dtype fp16``: the U-Net and text encoders in half precision, the ``force_upcast`` VAE in float32, and
    text-to-video, img2vid and vid2vid (which encode through that VAE) render (on the CPU here)."""
    from videodiff import load_pipeline

    pipe = load_pipeline(str(tiny_sdxl_model), str(tiny_sdxl_motion), device="cpu", dtype="fp16")
    assert (pipe.unet.dtype, pipe.text_encoders[1].dtype, pipe.vae.dtype) == (torch.float16,) * 2 + (torch.float32,)
    picture = np.random.default_rng(0).integers(0, 256, (32, 32, 3)).astype(np.uint8)
    kw = dict(num_frames=4, num_inference_steps=2, seed=1)
    clip = np.stack([picture] * 4)
    for result in (pipe(PROMPT, **kw), pipe.img2vid(picture, PROMPT, **kw), pipe.vid2vid(clip, PROMPT, **kw)):
        assert result.frames.shape == (4, 32, 32, 3) and result.frames.std() > 5


SD15_IP = "made for another model family, SD1.5 (32-wide cross-attention); the model is SDXL (64-wide)"


@pytest.mark.parametrize(
    ("args", "expected"),
    [(("--sparsectrl", "NET", "--sparse-at", "AT"), "SparseCtrl is not supported for SDXL models yet"),
     (("--ip-adapter", "ADAPTER", "--ip-image", "PIC"), SD15_IP)],
)  # fmt: skip
def test_sd15_add_ons_on_an_sdxl_folder_are_refused_before_it_loads(sdxl_model, sdxl_motion, tmp_path, monkeypatch,
                                                                     tiny_model, args, expected):  # fmt: skip
    """SparseCtrl by name; an SD1.5 IP-Adapter (``.safetensors``: its header) naming both families."""
    assert expected in add_on_refused_before_loading(sdxl_model, sdxl_motion, args, tiny_model, tmp_path, monkeypatch)


def add_on_refused_before_loading(model, motion, args, sd15_model, tmp_path, monkeypatch) -> str:
    """The one error line of ``render`` on ``model`` with the add-on ``args`` (``NET``: a folder, ``PIC``/``AT``: a
    picture, ``ADAPTER``: a tiny IP-Adapter for ``sd15_model``), failing if the model is loaded."""
    from cli_helpers import assert_user_error, invoke
    from PIL import Image

    from videodiff.pipelines import VideoPipeline
    from videodiff.tiny import build_tiny_image_encoder, build_tiny_ip_adapter

    def load(*a, **k):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(VideoPipeline, "load", load)
    Image.new("RGB", (32, 32)).save(tmp_path / "pic.png")
    (tmp_path / "net").mkdir()
    names = {"NET": str(tmp_path / "net"), "PIC": str(tmp_path / "pic.png"), "AT": f"0:{tmp_path / 'pic.png'}"}
    if "ADAPTER" in args:
        encoder = build_tiny_image_encoder(tmp_path / "models" / "image_encoder")
        adapter = build_tiny_ip_adapter(tmp_path / "models" / "ip-adapter_sd15.safetensors", sd15_model, encoder)
        names["ADAPTER"] = str(adapter)
    given = [names.get(a, a) for a in args]
    return assert_user_error(invoke("render", PROMPT, "--model", model, "--motion-module", motion, *given,
                                    "-o", tmp_path / "x.gif", "-q"))  # fmt: skip
