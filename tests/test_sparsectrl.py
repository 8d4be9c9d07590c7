"""SparseCtrl: parity with diffusers' AnimateDiffSparseControlNetPipeline (RGB and scribble, two conditioning frames),
the original v3 file layout loaded strictly, and its bad inputs refused in one line before any model loads."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from PIL import Image

from videodiff.errors import UserError
from videodiff.schedulers import make_scheduler
from videodiff.settings.control import Control, check_sparse, flags_to_controls, parse_controls
from videodiff.tiny import build_tiny_sparsectrl, diffusers_sparsectrl_reference

PROMPT = "a red circle moving right"
FRAMES, H, W = 8, 32, 40
AT = (0, 5)  # the frames the two pictures pin (the second as -3 in our terms: negative frames count from the end)


@pytest.fixture(scope="module")
def sparse_nets(tmp_path_factory, tiny_model):
    root = tmp_path_factory.mktemp("sparsectrl")
    return {kind: build_tiny_sparsectrl(root / kind, tiny_model, kind=kind) for kind in ("rgb", "scribble")}


@pytest.fixture(scope="module")
def pictures(tmp_path_factory):
    """Two pictures: for RGB, coloured blocks; for scribble, white strokes on black. ``{kind: [(path, array)]}``."""
    folder = tmp_path_factory.mktemp("pictures")
    out: dict[str, list] = {"rgb": [], "scribble": []}
    for i in range(2):
        rgb = np.full((H, W, 3), 40, np.uint8)
        rgb[6:26, 4 + 18 * i : 18 + 18 * i] = (220, 30 + 150 * i, 40)
        scribble = np.zeros((H, W, 3), np.uint8)
        scribble[8 + 12 * i : 10 + 12 * i, 4:36] = 255
        scribble[4:28, 10 + 20 * i : 12 + 20 * i] = 255
        for kind, array in (("rgb", rgb), ("scribble", scribble)):
            path = folder / f"{kind}{i}.png"
            Image.fromarray(array).save(path)
            out[kind].append((path, array))
    return out


def _reference(tiny_pipe, tiny_model, tiny_motion, net, arrays, scale, monkeypatch):
    """diffusers' pipeline, its VAE read at the posterior's mean (as videodiff reads it): diffusers draws a sample
    with no generator (the global RNG), which for a trained VAE's ~0 posterior spread is the mean, and for the tiny
    random VAE's would be noise no implementation can match."""
    import diffusers.pipelines.animatediff.pipeline_animatediff_sparsectrl as module

    monkeypatch.setattr(module, "retrieve_latents", lambda out, generator=None, sample_mode="": out.latent_dist.mode())
    scheduler = make_scheduler("ddim", tiny_pipe.parts.scheduler_config)
    pipe = diffusers_sparsectrl_reference(tiny_model, tiny_motion, scheduler, net)
    out = pipe(
        PROMPT,
        negative_prompt="cat",
        num_frames=FRAMES,
        height=H,
        width=W,
        num_inference_steps=4,
        guidance_scale=7.5,
        conditioning_frames=[Image.fromarray(a) for a in arrays],
        controlnet_frame_indices=list(AT),
        controlnet_conditioning_scale=scale,
        generator=torch.Generator("cpu").manual_seed(3),
        output_type="np",
    ).frames[0]
    return (out * 255).round().astype(np.uint8)


def _ours(tiny_pipe, controls):
    kwargs = dict(negative_prompt="cat", num_frames=FRAMES, height=H, width=W, num_inference_steps=4, seed=3)
    return tiny_pipe(PROMPT, scheduler="ddim", controls=controls, **kwargs).frames.astype(int)


@pytest.mark.parametrize("kind", ["rgb", "scribble"])
def test_sparsectrl_matches_diffusers(kind, tiny_pipe, tiny_model, tiny_motion, sparse_nets, pictures, monkeypatch):
    """Two pictures at frames 0 and 5 (given as 0 and -3), scale 0.8: every pixel within 2/255 of diffusers'
    AnimateDiffSparseControlNetPipeline; another scale, a step range (diffusers' SparseCtrl pipeline controls every
    step) or the first picture one frame later each give a video more than 2/255 away."""
    net = str(sparse_nets[kind])
    (first, a), (second, b) = pictures[kind]
    expected = _reference(tiny_pipe, tiny_model, tiny_motion, net, [a, b], 0.8, monkeypatch).astype(int)
    at = (f"0:{first}", f"-3:{second}")
    ours = _ours(tiny_pipe, [Control(controlnet=net, sparse_at=at, scale=0.8)])
    assert ours.shape == expected.shape == (FRAMES, H, W, 3)
    assert np.abs(ours - expected).max() <= 2
    for wrong in (
        Control(controlnet=net, sparse_at=at, scale=1.0),
        Control(controlnet=net, sparse_at=at, scale=0.8, range=(0.5, 1.0)),
        Control(controlnet=net, sparse_at=(f"1:{first}", f"-3:{second}"), scale=0.8),
    ):
        assert np.abs(_ours(tiny_pipe, [wrong]) - expected).max() > 2


# --- the original layout -----------------------------------------------------------------------------------------

# diffusers' scripts/convert_animatediff_sparsectrl_to_diffusers.py, KEYS_RENAME_MAPPING (huggingface/diffusers,
# added in #8897, "AnimateDiff SparseCtrl"): AnimateDiff's motion-module names -> diffusers'. Its convert() applies
# each pair with str.replace in this order, then loads the result into SparseControlNetModel with strict=True.
SCRIPT_TABLE = {
    ".attention_blocks.0": ".attn1",
    ".attention_blocks.1": ".attn2",
    ".attn1.pos_encoder": ".pos_embed",
    ".ff_norm": ".norm3",
    ".norms.0": ".norm1",
    ".norms.1": ".norm2",
    ".temporal_transformer": "",
}


def script_convert(key: str) -> str:
    """The script's renaming of one key."""
    for old, new in SCRIPT_TABLE.items():
        key = key.replace(old, new)
    return key


def original_key(key: str) -> str:
    """A diffusers SparseCtrl key in AnimateDiff's words: the table read backwards (``temporal_transformer`` back
    after ``motion_modules.N``, ``pos_embed`` back to the first attention's ``pos_encoder``)."""
    if ".motion_modules." not in key:
        return key
    key = re.sub(r"(\.motion_modules\.\d+)\.", r"\1.temporal_transformer.", key)
    for old, new in reversed(list(SCRIPT_TABLE.items())[:-1]):
        key = key.replace(new + ".", old + ".")
    return key


@pytest.mark.parametrize("kind", ["rgb", "scribble"])
@pytest.mark.parametrize("suffix", [".ckpt", ".safetensors"])
def test_the_original_layout_loads_strictly_to_the_same_tensors(kind, suffix, sparse_nets, tmp_path):
    """A v3_sd15_sparsectrl_{rgb,scribble}.ckpt-layout file, written from the diffusers folder through the script's
    table, loads (strictly: every key named, every shape checked) to the folder's tensors and config."""
    from diffusers import SparseControlNetModel
    from safetensors.torch import save_file

    from videodiff.weights.controlnets import describe_controlnet, load_controlnet

    reference = SparseControlNetModel.from_pretrained(sparse_nets[kind])
    state = reference.state_dict()
    original = {original_key(k): v.clone() for k, v in state.items()}
    assert any(".temporal_transformer." in k and ".attention_blocks.0." in k for k in original)
    assert any(k.endswith(".attention_blocks.0.pos_encoder.pe") for k in original)
    assert {script_convert(k) for k in original} == set(state)  # the table read backwards is the script's inverse
    path = tmp_path / f"v3_sd15_sparsectrl_{kind}{suffix}"
    torch.save(original, path) if suffix == ".ckpt" else save_file(original, path)
    net = load_controlnet(path)
    assert type(net) is SparseControlNetModel
    loaded = net.state_dict()
    assert set(loaded) == set(state) and all(torch.equal(loaded[k], state[k]) for k in state)
    keys = ["conditioning_channels", "use_simplified_condition_embedding", "block_out_channels", "down_block_types"]
    keys += ["cross_attention_dim", "motion_max_seq_length"]
    keys += [] if kind == "rgb" else ["conditioning_embedding_out_channels"]  # the RGB one's single convolution
    for key in keys:
        assert list(np.atleast_1d(net.config[key])) == list(np.atleast_1d(reference.config[key])), key
    info = describe_controlnet(path)
    assert info["kind"] == "sparsectrl" and info["conditioning_channels"] == (4 if kind == "rgb" else 3)


def test_positional_encodings_left_out_of_a_file_are_computed(sparse_nets, tmp_path):
    """AnimateDiff's own loader drops ``pos_encoder.pe``: a file without them loads, with diffusers' sinusoid."""
    from diffusers import SparseControlNetModel

    from videodiff.weights.controlnets import load_controlnet

    reference = SparseControlNetModel.from_pretrained(sparse_nets["rgb"])
    state = reference.state_dict()
    original = {original_key(k): v for k, v in state.items() if not k.endswith(".pe")}
    torch.save(original, tmp_path / "no_pe.ckpt")
    loaded = load_controlnet(tmp_path / "no_pe.ckpt").state_dict()
    assert all(torch.equal(loaded[k], state[k]) for k in state)


# --- bad input ---------------------------------------------------------------------------------------------------


def test_sparse_flags_make_one_more_control(tmp_path):
    picture = tmp_path / "a.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(picture)
    given = {"sparsectrl": "sc", "sparse_at": (f"0:{picture}", f"-1:{picture}"), "sparse_scale": 0.5,
             "sparse_range": "0,0.5", "controlnet": ("cn",), "control": (str(picture),), "prompt": "p"}  # fmt: skip
    out = flags_to_controls(given)
    assert out["prompt"] == "p" and not any(k.startswith(("sparse", "control_")) for k in out if k != "controls")
    cn, sc = out["controls"]
    assert cn.maps == str(picture) and not cn.sparse
    assert sc == Control(controlnet="sc", sparse_at=(f"0:{picture}", f"-1:{picture}"), scale=0.5, range=(0.0, 0.5))
    assert flags_to_controls({"sparse_at": (), "sparsectrl": None, "prompt": "p"}) == {"prompt": "p"}
    item = {"controlnet": "sc", "sparse_at": ["0:a.png", "-1:b.png"], "scale": 0.7}
    assert parse_controls([item]) == (Control(controlnet="sc", sparse_at=("0:a.png", "-1:b.png"), scale=0.7),)
    assert Control.of(item).record()["sparse_at"] == ["0:a.png", "-1:b.png"]


ONE = {"sparsectrl": "sc", "sparse_at": ("0:a.png",)}


@pytest.mark.parametrize(
    "given, words",
    [
        ({"sparse_at": ("0:a.png",)}, "--sparse-at needs --sparsectrl"),
        ({"sparsectrl": "sc"}, "--sparsectrl needs --sparse-at"),
        ({"sparse_scale": 0.5}, "need --sparsectrl"),
        ({"sparsectrl": "sc", "sparse_at": ("a.png",)}, "FRAME:PATH"),
        ({"sparsectrl": "sc", "sparse_at": ("x:a.png",)}, "FRAME:PATH"),
        ({**ONE, "sparse_scale": float("nan")}, "--sparse-scale must be a finite"),
        ({**ONE, "sparse_scale": 11.0}, "--sparse-scale must be from 0 to 10"),
        ({**ONE, "sparse_range": "0.6,0.2"}, "--sparse-range must have 0 <= START <= END"),
    ],
)
def test_bad_sparse_flags_are_one_line(given, words):
    with pytest.raises(UserError, match=re.escape(words)) as caught:
        flags_to_controls(given)
    assert "\n" not in str(caught.value)


def test_sparse_frames_are_checked_before_loading(tmp_path):
    """``check_sparse`` (torch-free, from settings alone): frames outside the video, a frame given twice, a missing
    picture, maps and pictures on one control."""
    picture = tmp_path / "a.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(picture)
    ok = Control(controlnet="sc", sparse_at=(f"0:{picture}", f"-1:{picture}"))
    check_sparse([ok], 8)
    from videodiff.control.sparse import picture_sources
    from videodiff.media.images import file_sha256

    recorded = picture_sources(ok, 8)
    assert [r["frame"] for r in recorded] == [0, 7] and recorded[1]["path"] == str(picture.resolve())
    assert recorded[0]["sha256"] == file_sha256(picture)
    cases = [
        (Control(controlnet="sc", sparse_at=(f"8:{picture}",)), "frame 8 is outside the video's 8 frames (0 to 7)"),
        (Control(controlnet="sc", sparse_at=(f"-9:{picture}",)), "frame -9 is outside"),
        (Control(controlnet="sc", sparse_at=(f"7:{picture}", f"-1:{picture}")), "gives frame 7 twice"),
        (Control(controlnet="sc", sparse_at=(f"0:{tmp_path / 'none.png'}",)), "no such file"),
    ]
    for control, words in cases:
        with pytest.raises(UserError, match=re.escape(words)):
            check_sparse([control], 8)
    with pytest.raises(UserError, match="not both"):
        Control(maps=str(picture), controlnet="sc", sparse_at=(f"0:{picture}",)).checked()


def test_model_kinds_are_checked_against_inputs(tiny_model, sparse_nets, tmp_path):
    """A SparseCtrl model given maps, or a ControlNet given pictures: one line each, from the folder's config (before
    loading, :func:`check_sparse_inputs`) and from the loaded model (``with_controls``)."""
    from videodiff.control.sparse import check_sparse_inputs
    from videodiff.tiny import build_tiny_controlnet
    from videodiff.weights.controlnets import local_controlnet_kind

    cn = build_tiny_controlnet(tmp_path / "cn", tiny_model)
    picture = tmp_path / "a.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(picture)
    sc = str(sparse_nets["scribble"])
    check_sparse_inputs([Control(controlnet=sc, sparse_at=(f"0:{picture}",))], 8, local_controlnet_kind)
    with pytest.raises(UserError, match="is a SparseCtrl model: it reads pictures"):
        check_sparse_inputs([Control(maps=str(picture), controlnet=sc)], 8, local_controlnet_kind)
    with pytest.raises(UserError, match="is a ControlNet, not a SparseCtrl model"):
        check_sparse_inputs([Control(controlnet=str(cn), sparse_at=(f"0:{picture}",))], 8, local_controlnet_kind)
    broken = tmp_path / "broken.png"
    broken.write_bytes(picture.read_bytes()[:40])
    with pytest.raises(UserError):
        check_sparse_inputs([Control(controlnet=sc, sparse_at=(f"0:{broken}",))], 8)


def test_with_controls_refuses_a_sparsectrl_given_maps(tiny_pipe, sparse_nets, tmp_path):
    picture = tmp_path / "a.png"
    Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(picture)
    with pytest.raises(UserError, match="is a SparseCtrl model"):
        _ours(tiny_pipe, [Control(maps=str(picture), controlnet=str(sparse_nets["rgb"]))])


def test_a_render_longer_than_the_sparsectrl_sees_is_one_line(tiny_pipe, tiny_model, pictures, tmp_path):
    """A SparseCtrl's motion modules encode at most ``motion_max_seq_length`` frames: 8 frames through a 4-frame
    one are refused in one line, not a shape error."""
    short = build_tiny_sparsectrl(tmp_path / "short", tiny_model, kind="scribble", frames=4)
    control = Control(controlnet=str(short), sparse_at=(f"0:{pictures['scribble'][0][0]}",))
    with pytest.raises(UserError, match="sees at most 4 frames at once, this render 8") as info:
        _ours(tiny_pipe, [control])
    assert "\n" not in str(info.value)
