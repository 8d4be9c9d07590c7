"""Motion-module files: original AnimateDiff layout, version detection, MotionLoRA, conversion, safety, v1 norms."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from videodiff.config import parse_scaled_path
from videodiff.errors import UserError
from videodiff.tiny import build_tiny_motion_adapter
from videodiff.unet import MotionStack, VideoUNet
from videodiff.unet.inflate import FrameGroupNorm, _over_frames
from videodiff.weights import motion_formats as mf
from videodiff.weights.motion_formats import (
    apply_motion_lora,
    convert_motion_module,
    describe_motion_module,
    detect_motion_state_dict,
    load_any_motion_module,
    load_motion_folder,
    save_motion_folder,
)

VERSIONS = {"v1": (24, False), "v2": (32, True), "v3": (32, False)}
SD15 = dict(block_out_channels=(320, 640, 1280, 1280), motion_layers_per_block=2, motion_num_attention_heads=8)


def to_original(state_dict: dict[str, torch.Tensor], with_pe: bool = True) -> dict[str, torch.Tensor]:
    """Test-side reverse renames (written independently of the module under test)."""
    out = {}
    for key, value in state_dict.items():
        head, _, rest = key.partition(".motion_modules.")
        index, _, rest = rest.partition(".")
        base = f"{head}.motion_modules.{index}.temporal_transformer."
        if rest.endswith("pos_embed.pe"):
            if with_pe:
                block = rest[: -len("pos_embed.pe")]
                for a in (0, 1):
                    out[f"{base}{block}attention_blocks.{a}.pos_encoder.pe"] = value.clone()
            continue
        rest = "." + rest
        for old, new in [
            (".attn1.", ".attention_blocks.0."),
            (".attn2.", ".attention_blocks.1."),
            (".norm1.", ".norms.0."),
            (".norm2.", ".norms.1."),
            (".norm3.", ".ff_norm."),
        ]:
            rest = rest.replace(old, new)
        out[base + rest[1:]] = value
    return out


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """Tiny diffusers folders (8 heads, like every AnimateDiff release) and original files for v1/v2/v3."""
    root = tmp_path_factory.mktemp("motion-formats")
    out = {}
    for version, (length, mid) in VERSIONS.items():
        folder = build_tiny_motion_adapter(
            root / f"{version}-diffusers",
            seed=3,
            motion_max_seq_length=length,
            use_motion_mid_block=mid,
            motion_heads=8,
        )
        state_dict = load_file(folder / "diffusion_pytorch_model.safetensors")
        out[f"{version}-diffusers"] = folder
        out[f"{version}-original"] = root / f"mm_{version}.safetensors"
        save_file(to_original(state_dict), out[f"{version}-original"])
        out[f"{version}-nope"] = root / f"mm_{version}_nope.safetensors"
        save_file(to_original(state_dict, with_pe=False), out[f"{version}-nope"])
    return out


@pytest.fixture
def notices(monkeypatch) -> list[str]:
    seen: list[str] = []
    monkeypatch.setattr(mf, "notice", seen.append)
    return seen


def _equal_state(a: nn.Module | dict, b: nn.Module | dict) -> bool:
    a = a if isinstance(a, dict) else a.state_dict()
    b = b if isinstance(b, dict) else b.state_dict()
    return set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


# --- rendering parity --------------------------------------------------------------------------------------------


def test_original_v2_renders_like_diffusers_folder_and_from_single_file(tiny_model, files):
    from diffusers import MotionAdapter

    from videodiff.pipelines import VideoPipeline
    from videodiff.weights.models import load_model_parts

    folder, original = files["v2-diffusers"], files["v2-original"]
    parts = load_model_parts(str(tiny_model), str(folder))
    settings = dict(num_frames=3, height=16, width=16, num_inference_steps=2, seed=7)

    def render(motion: MotionStack):
        parts.motion = motion.requires_grad_(False).eval()
        result = VideoPipeline(parts, torch.device("cpu"), torch.float32)("a red circle", **settings)
        return result.frames, result.latents

    expected_frames, expected_latents = render(load_motion_folder(folder))
    stack, info = load_any_motion_module(str(original))
    assert (info.format, info.version, info.norm_over_frames) == ("original", "v2", False)
    frames, latents = render(stack)
    assert np.array_equal(frames, expected_frames) and torch.equal(latents, expected_latents)

    # diffusers' own single-file loader, offline: config= takes a local folder holding config.json
    adapter = MotionAdapter.from_single_file(str(original), config=str(folder), local_files_only=True)
    assert _equal_state(adapter.state_dict(), stack.state_dict())
    theirs = MotionStack(**{k: v for k, v in adapter.config.items() if not k.startswith("_")})
    theirs.load_state_dict(adapter.state_dict())
    frames, latents = render(theirs)
    assert np.array_equal(frames, expected_frames) and torch.equal(latents, expected_latents)


# --- detection ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", list(VERSIONS))
@pytest.mark.parametrize("fmt", ["original", "diffusers"])
def test_detects_version_of_tiny_files(files, notices, version, fmt):
    length, mid = VERSIONS[version]
    stack, info = load_any_motion_module(str(files[f"{version}-{fmt}"]))
    assert (info.format, info.version, info.max_frames, info.has_mid_block) == (fmt, version, length, mid)
    assert info.norm_over_frames == (fmt == "original" and version == "v1")
    assert stack.max_frames == length and (stack.mid_block is not None) == mid
    assert stack.config["block_out_channels"] == [32, 64] and info.config["motion_num_attention_heads"] == 8
    assert info.params == sum(p.numel() for p in stack.parameters()) and info.dtype == "float32"
    assert _equal_state(stack, load_motion_folder(files[f"{version}-diffusers"]))
    assert any(version in n for n in notices)
    described = describe_motion_module(files[f"{version}-{fmt}"])
    assert described["format"] == fmt and described["version"] == version
    assert (described["positional_length"], described["mid_block"], described["parameters"]) == (
        length,
        mid,
        info.params,
    )


def test_files_without_positional_encodings(files, notices):
    _, info = load_any_motion_module(str(files["v2-nope"]))
    assert (info.version, info.max_frames) == ("v2", 32) and not any("cannot be told apart" in n for n in notices)
    stack, info = load_any_motion_module(str(files["v3-nope"]))
    assert (info.version, info.max_frames, info.norm_over_frames) == ("v3", 32, False)
    assert any("cannot be told apart" in n for n in notices)
    # the positional tables are the stack's own sinusoids
    assert _equal_state(stack, load_motion_folder(files["v3-diffusers"]))
    # a v1 file looks the same without them: --motion-config v1 says what it is
    notices.clear()
    stack, info = load_any_motion_module(str(files["v1-nope"]), motion_config="v1")
    assert (info.version, info.max_frames, info.norm_over_frames, stack.max_frames) == ("v1", 24, True, 24)
    assert not any("cannot be told apart" in n for n in notices)
    assert _equal_state(stack, load_motion_folder(files["v1-diffusers"]))
    assert describe_motion_module(files["v3-nope"])["positional_length"] is None


def test_motion_config_path_and_version_names(files, tmp_path):
    # heads cannot be read from weights: a MotionAdapter config.json sets them
    folder = build_tiny_motion_adapter(tmp_path / "heads4", motion_heads=4)
    original = tmp_path / "heads4.safetensors"
    save_file(to_original(load_file(folder / "diffusion_pytorch_model.safetensors")), original)
    stack, info = load_any_motion_module(str(original), motion_config=str(folder / "config.json"))
    assert (
        info.config["motion_num_attention_heads"] == 4
        and stack.down_blocks[0].motion_modules[0].transformer_blocks[0].attn1.heads == 4
    )
    assert load_any_motion_module(str(original))[1].config["motion_num_attention_heads"] == 8
    # forcing a version that contradicts the weights is an error, not a silent load
    with pytest.raises(UserError, match="pos_embed.pe has shape"):
        load_any_motion_module(str(files["v3-original"]), motion_config="v1")
    with pytest.raises(UserError, match="unexpected.*mid_block"):
        load_any_motion_module(str(files["v2-original"]), motion_config="v3")
    with pytest.raises(UserError, match="neither v1, v2, v3"):
        load_any_motion_module(str(files["v2-original"]), motion_config="v4")


@pytest.mark.parametrize("version", list(VERSIONS))
def test_full_size_original_layout_detection(version):
    length, mid = VERSIONS[version]
    with torch.device("meta"):
        stack = MotionStack(**SD15, motion_max_seq_length=length, use_motion_mid_block=mid)
    ours = stack.state_dict()
    original = to_original(ours)
    n_transformers = sum(k.endswith("pos_embed.pe") for k in ours)
    assert len(original) == len(ours) + n_transformers  # a positional table per attention block
    tt = "temporal_transformer.transformer_blocks.0."
    assert original[f"down_blocks.0.motion_modules.0.{tt}attention_blocks.1.pos_encoder.pe"].shape == (1, length, 320)
    assert original[f"down_blocks.3.motion_modules.1.{tt}attention_blocks.0.to_q.weight"].shape == (1280, 1280)
    assert original[f"up_blocks.3.motion_modules.2.{tt}ff.net.0.proj.weight"].shape == (2560, 320)
    assert original[f"up_blocks.0.motion_modules.2.{tt}ff_norm.weight"].shape == (1280,)
    assert original["up_blocks.1.motion_modules.0.temporal_transformer.proj_in.weight"].shape == (1280, 1280)
    assert ("mid_block.motion_modules.0.temporal_transformer.norm.weight" in original) == mid

    info = detect_motion_state_dict(original)
    assert (info.format, info.version, info.max_frames, info.has_mid_block) == ("original", version, length, mid)
    assert info.norm_over_frames == (version == "v1")
    assert info.params == sum(p.numel() for p in stack.parameters())
    expected = {**stack.config, "block_out_channels": [320, 640, 1280, 1280]}
    assert info.config == expected
    assert detect_motion_state_dict(ours).format == "diffusers"


def test_full_size_sdxl_motion_module_is_detected_as_sdxl():
    with torch.device("meta"):
        stack = MotionStack(block_out_channels=(320, 640, 1280), motion_max_seq_length=32, use_motion_mid_block=False)
    info = detect_motion_state_dict(to_original(stack.state_dict()), "mm_sdxl_v10_beta.ckpt")
    assert (info.format, info.version, info.has_mid_block) == ("original", "sdxl", False)
    assert info.config["block_out_channels"] == [320, 640, 1280]


# --- conversion --------------------------------------------------------------------------------------------------


def test_round_trip_original_diffusers_original(files, tmp_path):
    from diffusers import MotionAdapter

    src = files["v2-original"]
    folder = convert_motion_module(str(src), str(tmp_path / "adapter"), to="diffusers")
    config = json.loads((folder / "config.json").read_text())
    assert config["_class_name"] == "MotionAdapter" and config["use_motion_mid_block"] is True
    assert _equal_state(MotionAdapter.from_pretrained(folder).state_dict(), load_motion_folder(folder).state_dict())
    back = convert_motion_module(str(folder), str(tmp_path / "back.safetensors"), to="original")
    assert _equal_state(load_file(back), load_file(src))
    assert describe_motion_module(back)["format"] == "original"

    # half precision stays half precision
    half = tmp_path / "half.safetensors"
    save_file({k: v.half() for k, v in load_file(src).items()}, half)
    mid = convert_motion_module(str(half), str(tmp_path / "half-adapter"), to="diffusers")
    again = convert_motion_module(str(mid), str(tmp_path / "half-back.safetensors"), to="original")
    assert _equal_state(load_file(again), load_file(half))
    assert describe_motion_module(mid)["dtype"] == "float16"


def test_convert_refuses_overwrite_and_odd_targets(files, tmp_path):
    dst = tmp_path / "out.safetensors"
    convert_motion_module(str(files["v3-diffusers"]), str(dst), to="original")
    before = dst.read_bytes()
    with pytest.raises(UserError, match="already exists"):
        convert_motion_module(str(files["v1-diffusers"]), str(dst), to="original")
    assert dst.read_bytes() == before
    convert_motion_module(str(files["v1-diffusers"]), str(dst), to="original", overwrite=True)
    assert describe_motion_module(dst)["version"] == "v1"
    with pytest.raises(UserError, match=".safetensors only"):
        convert_motion_module(str(files["v1-diffusers"]), str(tmp_path / "x.ckpt"), to="original")
    with pytest.raises(UserError, match="cannot convert"):
        convert_motion_module(str(files["v1-diffusers"]), str(tmp_path / "y"), to="onnx")  # type: ignore[arg-type]
    folder = save_motion_folder(load_motion_folder(files["v1-diffusers"]), tmp_path / "saved", receipt=True)
    with pytest.raises(UserError, match="already exists"):
        save_motion_folder(load_motion_folder(files["v1-diffusers"]), folder)
    assert _equal_state(load_motion_folder(folder), load_motion_folder(files["v1-diffusers"]))
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporaries left behind


def _tree(root: Path) -> dict[str, bytes | None]:
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None) for p in sorted(root.rglob("*"))}


def test_convert_replaces_only_a_folder_it_wrote(files, tmp_path):
    """Issue 30: a user's folder that merely looks like a diffusers model (``config.json`` and
    ``diffusion_pytorch_model.safetensors``, a real MotionAdapter even) is never replaced, whatever the flags; a folder
    convert wrote carries a receipt and is replaced with --overwrite until the user changes or adds a file."""
    import shutil

    src = str(files["v2-original"])
    theirs = tmp_path / "theirs"
    shutil.copytree(files["v3-diffusers"], theirs)
    before = _tree(tmp_path)
    for overwrite in (False, True):
        with pytest.raises(UserError, match="not a videodiff motion-module folder"):
            convert_motion_module(src, str(theirs), to="diffusers", overwrite=overwrite)
    assert _tree(tmp_path) == before

    ours = convert_motion_module(src, str(tmp_path / "ours"), to="diffusers")
    with pytest.raises(UserError, match="already exists"):
        convert_motion_module(src, str(ours), to="diffusers")
    convert_motion_module(str(files["v1-diffusers"]), str(ours), to="diffusers", overwrite=True)
    assert describe_motion_module(ours)["version"] == "v1"
    for change in ("add", "edit"):
        if change == "add":
            (ours / "notes.txt").write_text("the user's notes")
        else:
            (ours / "notes.txt").unlink()
            (ours / "config.json").write_text((ours / "config.json").read_text() + " ")
        before = _tree(tmp_path)
        with pytest.raises(UserError, match="not a videodiff motion-module folder"):
            convert_motion_module(src, str(ours), to="diffusers", overwrite=True)
        assert _tree(tmp_path) == before

    # a file where a folder would go, and a file that is not safetensors where one would: never replaced
    (tmp_path / "a-file").write_bytes(b"the user's")
    (tmp_path / "notes.safetensors").write_bytes(b"the user's text")
    before = _tree(tmp_path)
    with pytest.raises(UserError, match="is not a motion-module folder"):
        convert_motion_module(src, str(tmp_path / "a-file"), to="diffusers", overwrite=True)
    with pytest.raises(UserError, match="is not a safetensors file"):
        convert_motion_module(src, str(tmp_path / "notes.safetensors"), to="original", overwrite=True)
    assert _tree(tmp_path) == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporaries left behind


def test_convert_carries_companions_without_replacing_a_users_file(files, tmp_path):
    """The motion prior beside an original-layout output (``mm.motion_prior.safetensors``) is derived: it replaces
    an earlier one videodiff wrote (with --overwrite), never a user's file of that name."""
    import shutil

    from videodiff.motion_prior import PRIOR_FILE

    src = tmp_path / "src"
    shutil.copytree(files["v2-diffusers"], src)
    save_file({"x": torch.zeros(2)}, src / PRIOR_FILE, metadata={"format": "videodiff-motion-prior"})
    out = tmp_path / "mm.safetensors"
    companion = tmp_path / f"mm.{PRIOR_FILE}"
    convert_motion_module(str(src), str(out), to="original")
    assert companion.read_bytes() == (src / PRIOR_FILE).read_bytes()
    convert_motion_module(str(src), str(out), to="original", overwrite=True)  # our own: replaced
    companion.write_bytes(b"the user's file of that name")
    before = _tree(tmp_path)
    with pytest.raises(UserError, match="not written by videodiff"):
        convert_motion_module(str(src), str(out), to="original", overwrite=True)
    assert _tree(tmp_path) == before


def test_wrapped_pickle_checkpoint_with_module_prefix(files, tmp_path):
    ckpt = tmp_path / "wrapped.ckpt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in load_file(files["v1-original"]).items()}}, ckpt)
    stack, info = load_any_motion_module(str(ckpt))
    assert (info.format, info.version, info.norm_over_frames) == ("original", "v1", True)
    assert _equal_state(stack, load_motion_folder(files["v1-diffusers"]))
    assert describe_motion_module(ckpt)["version"] == "v1"


# --- bad input ---------------------------------------------------------------------------------------------------


class _CreatesFile:
    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self):
        return (open, (str(self.target), "w"))


def test_pickle_that_runs_code_is_refused(tmp_path):
    target = tmp_path / "pwned.txt"
    evil = tmp_path / "mm_sd_v15_v2.ckpt"
    torch.save({"state_dict": {"x": _CreatesFile(target)}}, evil)
    for call in (
        lambda: load_any_motion_module(str(evil)),
        lambda: describe_motion_module(evil),
        lambda: apply_motion_lora(MotionStack(block_out_channels=(32, 64)), evil, 1.0),
    ):
        with pytest.raises(UserError, match="safetensors"):
            call()
    assert not target.exists()


def test_corrupt_and_mismatched_files(files, tmp_path):
    data = files["v2-original"].read_bytes()
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(data[: len(data) // 2])
    text = tmp_path / "notes.ckpt"
    text.write_text("not a checkpoint")
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x00" * 64)
    for bad in (truncated, text, garbage):
        with pytest.raises(UserError, match=bad.name):
            load_any_motion_module(str(bad))
        with pytest.raises(UserError, match=bad.name):
            describe_motion_module(bad)

    original = load_file(files["v2-original"])

    def refused(state_dict: dict, match: str, name: str = "bad.safetensors") -> None:
        path = tmp_path / name
        save_file(state_dict, path)
        with pytest.raises(UserError, match=match) as caught:
            load_any_motion_module(str(path))
        assert name in str(caught.value) and "\n" not in str(caught.value)

    extra = {**original, "down_blocks.0.motion_modules.0.temporal_transformer.extra.weight": torch.zeros(1)}
    refused(extra, "unexpected")
    extra_attention = dict(original)
    extra_attention[
        "mid_block.motion_modules.0.temporal_transformer.transformer_blocks.0.attention_blocks.2.to_q.weight"
    ] = torch.zeros(64, 64)
    refused(extra_attention, "SD1.5 AnimateDiff layout lacks")
    missing = {k: v for k, v in original.items() if not k.endswith("ff_norm.weight")}
    refused(missing, "missing")
    wrong_channels = dict(original)
    key = "mid_block.motion_modules.0.temporal_transformer.proj_out.weight"
    wrong_channels[key] = torch.zeros(64, 32)
    refused(wrong_channels, "proj_out.weight has shape")
    no_up = {k: v for k, v in original.items() if not k.startswith("up_blocks.1.")}
    refused(no_up, "2 down blocks but 1 up blocks")
    gap = {k: v for k, v in original.items() if not k.startswith("down_blocks.0.motion_modules.0.")}
    refused(gap, "numbering gap|proj_in")
    refused({"model.diffusion_model.conv_in.weight": torch.zeros(1)}, "not a motion module")
    refused(_lora_original(load_motion_folder(files["v2-diffusers"]), seed=0), "LoRA")


# --- MotionLoRA --------------------------------------------------------------------------------------------------

TARGETS = [
    "down_blocks.0.motion_modules.1.transformer_blocks.0.attn1.to_q",
    "down_blocks.1.motion_modules.0.transformer_blocks.0.attn2.to_out.0",
    "mid_block.motion_modules.0.transformer_blocks.0.attn1.to_v",
    "up_blocks.1.motion_modules.2.transformer_blocks.0.attn2.to_k",
]


def _lora_pairs(stack: MotionStack, seed: int, rank: int = 2) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    weights = dict(stack.named_parameters())
    out = {}
    for target in TARGETS:
        out_dim, in_dim = weights[f"{target}.weight"].shape
        out[target] = (torch.randn(rank, in_dim, generator=g) * 0.1, torch.randn(out_dim, rank, generator=g) * 0.1)
    return out


def _lora_original(stack: MotionStack, seed: int) -> dict[str, torch.Tensor]:
    """Original MotionLoRA layout: ``...attention_blocks.N.processor.to_q_lora.down.weight``."""
    out = {}
    for target, (down, up) in _lora_pairs(stack, seed).items():
        module, _, rest = target.partition(".transformer_blocks.0.")
        attn, proj = rest.split(".", 1)  # "attn1", "to_q" / "to_out.0"
        block = f"{module}.temporal_transformer.transformer_blocks.0.attention_blocks.{int(attn[-1]) - 1}"
        lora = f"{block}.processor.{proj.removesuffix('.0')}_lora"
        out[f"{lora}.down.weight"], out[f"{lora}.up.weight"] = down, up
    return out


def _lora_peft(stack: MotionStack, seed: int, alpha: float | None = None) -> dict[str, torch.Tensor]:
    out = {}
    for target, (down, up) in _lora_pairs(stack, seed).items():
        out[f"unet.{target}.lora_A.weight"], out[f"unet.{target}.lora_B.weight"] = down, up
        if alpha is not None:
            out[f"unet.{target}.alpha"] = torch.tensor(alpha)
    return out


def _manual(stack: MotionStack, *loras: tuple[int, float, float]) -> dict[str, torch.Tensor]:
    """Expected weights: for each (seed, scale, factor) add scale * factor * up @ down."""
    expected = {k: v.clone() for k, v in stack.state_dict().items()}
    for seed, scale, factor in loras:
        for target, (down, up) in _lora_pairs(stack, seed).items():
            expected[f"{target}.weight"] += scale * factor * (up @ down)
    return expected


@pytest.mark.parametrize("layout", ["original", "peft", "processor"])
def test_motion_lora_merge(files, tmp_path, layout):
    base = load_motion_folder(files["v2-diffusers"])

    def write(seed: int, name: str) -> Path:
        if layout == "original":
            state_dict = _lora_original(base, seed)
        elif layout == "peft":
            state_dict = _lora_peft(base, seed)
        else:  # diffusers' older attention-processor layout, our key names
            state_dict = {}
            for target, (down, up) in _lora_pairs(base, seed).items():
                module, _, proj = target.removesuffix(".0").rpartition(".")  # "...attn1", "to_q" / "to_out"
                state_dict[f"{module}.processor.{proj}_lora.down.weight"] = down
                state_dict[f"{module}.processor.{proj}_lora.up.weight"] = up
        path = tmp_path / name
        save_file(state_dict, path)
        return path

    first, second = write(1, "a.safetensors"), write(2, "b.safetensors")
    stack = load_motion_folder(files["v2-diffusers"])
    apply_motion_lora(stack, first, 0.0)
    assert _equal_state(stack, base)
    apply_motion_lora(stack, first, 1.0)
    torch.testing.assert_close(stack.state_dict(), _manual(base, (1, 1.0, 1.0)), rtol=0, atol=1e-6)
    stack = load_motion_folder(files["v2-diffusers"])
    apply_motion_lora(stack, first, 0.5)
    apply_motion_lora(stack, second, -0.25)
    apply_motion_lora(stack, first, 0.25)
    torch.testing.assert_close(stack.state_dict(), _manual(base, (1, 0.75, 1.0), (2, -0.25, 1.0)), rtol=0, atol=1e-6)


def test_motion_lora_alpha_and_errors(files, tmp_path):
    base = load_motion_folder(files["v2-diffusers"])
    path = tmp_path / "alpha.safetensors"
    save_file(
        {f"base_model.model.{k.removeprefix('unet.')}": v for k, v in _lora_peft(base, 3, alpha=1.0).items()}, path
    )
    stack = load_motion_folder(files["v2-diffusers"])
    apply_motion_lora(stack, path, 2.0)
    torch.testing.assert_close(stack.state_dict(), _manual(base, (3, 2.0, 0.5)), rtol=0, atol=1e-6)  # alpha 1 / rank 2

    def refused(state_dict: dict, match: str) -> None:
        bad = tmp_path / "bad_lora.safetensors"
        save_file(state_dict, bad)
        stack = load_motion_folder(files["v2-diffusers"])
        with pytest.raises(UserError, match=match) as caught:
            apply_motion_lora(stack, bad, 1.0)
        assert "bad_lora.safetensors" in str(caught.value)
        assert _equal_state(stack, base)  # nothing merged

    good = _lora_original(base, 4)
    refused({**good, "lora_unet_conv_in.lora_down.weight": torch.zeros(2, 4)}, "lora_unet_conv_in")
    refused({"unet.down_blocks.0.attentions.0.proj_in.lora_A.weight": torch.zeros(2, 32)}, "attentions.0.proj_in")
    sdxl = dict(good)
    key = next(k for k in sdxl if k.endswith("to_q_lora.down.weight"))
    sdxl[key] = torch.zeros(2, 320)
    refused(sdxl, key.replace(".", r"\."))
    lonely = {k: v for k, v in good.items() if not k.endswith("up.weight")}
    refused(lonely, "no matching up")


def test_parse_scaled_path():
    assert parse_scaled_path("loras/zoom.safetensors:0.8") == ("loras/zoom.safetensors", 0.8)
    assert parse_scaled_path("zoom.safetensors") == ("zoom.safetensors", 1.0)
    assert parse_scaled_path("zoom.safetensors:-1.5") == ("zoom.safetensors", -1.5)
    assert parse_scaled_path(r"C:\loras\zoom.safetensors") == (r"C:\loras\zoom.safetensors", 1.0)
    assert parse_scaled_path(r"C:\loras\zoom.safetensors:0.5") == (r"C:\loras\zoom.safetensors", 0.5)
    assert parse_scaled_path("a:b:c") == ("a:b:c", 1.0)
    with pytest.raises(UserError):
        parse_scaled_path("weird:nan")
    assert parse_scaled_path(":0.5") == (":0.5", 1.0)


# --- v1: spatial norms over all frames ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def unet2d(tiny_model):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel.from_pretrained(tiny_model / "unet").eval()


@pytest.fixture(scope="module")
def video_unet(unet2d, files):
    stack, info = load_any_motion_module(str(files["v1-original"]))
    assert info.norm_over_frames
    return VideoUNet(unet2d, stack).eval()


def _outputs(model: VideoUNet, videos: list[torch.Tensor], context: torch.Tensor, over_frames: bool):
    model.set_norm_over_frames(over_frames)
    try:
        with torch.no_grad():
            return [model(x, 400, context) for x in videos]
    finally:
        model.set_norm_over_frames(False)


def test_norm_over_frames_on_a_video(unet2d, video_unet):
    keys = set(video_unet.state_dict())
    context = torch.randn(1, 77, 32, generator=torch.Generator().manual_seed(0))
    still = torch.randn(1, 4, 1, 8, 8, generator=torch.Generator().manual_seed(1)).repeat(1, 1, 4, 1, 1)
    moving = torch.randn(1, 4, 4, 8, 8, generator=torch.Generator().manual_seed(2))

    # Frames stay identical through the network only while the motion modules are the identity
    # (trained ones add a different positional encoding per frame): use a fresh, zero-initialised stack.
    identity = VideoUNet(unet2d, MotionStack(block_out_channels=(32, 64), motion_max_seq_length=24)).eval()
    off, on = (_outputs(identity, [still, moving], context, flag) for flag in (False, True))
    torch.testing.assert_close(on[0], off[0], rtol=1e-4, atol=1e-5)  # identical frames: the same statistics
    assert (on[1] - off[1]).abs().max() > 1e-3  # frames that differ: statistics over the video differ

    off, on = (_outputs(video_unet, [moving], context, flag)[0] for flag in (False, True))
    assert (on - off).abs().max() > 1e-3
    video_unet.set_norm_over_frames(True)
    assert set(video_unet.state_dict()) == keys
    assert isinstance(video_unet.unet.down_blocks[0].resnets[0].norm1, FrameGroupNorm)
    assert isinstance(video_unet.unet.mid_block.resnets[1].norm2, FrameGroupNorm)
    assert isinstance(video_unet.unet.conv_norm_out, FrameGroupNorm)
    # another VideoUNet on the same image U-Net keeps its own setting, either way round
    other = VideoUNet(video_unet.unet, video_unet.motion).eval()
    with torch.no_grad():
        assert torch.equal(other(moving, 400, context), off)
        assert torch.equal(video_unet(moving, 400, context), on)
        other.set_norm_over_frames(True)
        video_unet.set_norm_over_frames(False)
        assert torch.equal(video_unet(moving, 400, context), off)
        assert torch.equal(other(moving, 400, context), on)


def test_norm_over_frames_with_gradient_checkpointing(video_unet):
    context = torch.randn(1, 77, 32)
    x = torch.randn(1, 4, 3, 8, 8)

    def grad(checkpointing: bool) -> torch.Tensor:
        video_unet.gradient_checkpointing = checkpointing
        sample = x.clone().requires_grad_(True)
        video_unet(sample, 300, context).square().mean().backward()
        return sample.grad

    video_unet.set_norm_over_frames(True)
    try:
        plain, checkpointed = grad(False), grad(True)
    finally:
        video_unet.set_norm_over_frames(False)
        video_unet.gradient_checkpointing = False
        video_unet.zero_grad(set_to_none=True)
    torch.testing.assert_close(checkpointed, plain, rtol=1e-4, atol=1e-6)


def test_frame_group_norm_matches_manual_statistics():
    b, f, c, h, w, groups = 2, 3, 16, 5, 4, 4
    norm = FrameGroupNorm(groups, c, eps=1e-6)
    with torch.no_grad():
        norm.weight.normal_()
        norm.bias.normal_()
    x = torch.randn(b * f, c, h, w)
    got = _over_frames(norm, f)(x)
    video = x.reshape(b, f, c, h, w).permute(0, 2, 1, 3, 4)  # [b c f h w]
    grouped = video.reshape(b, groups, c // groups, f, h, w)
    mean = grouped.mean(dim=(2, 3, 4, 5), keepdim=True)
    var = grouped.var(dim=(2, 3, 4, 5), keepdim=True, unbiased=False)
    normed = ((grouped - mean) / torch.sqrt(var + 1e-6)).reshape(b, c, f, h, w)
    expected = normed * norm.weight.view(1, c, 1, 1, 1) + norm.bias.view(1, c, 1, 1, 1)
    torch.testing.assert_close(got, expected.permute(0, 2, 1, 3, 4).reshape(b * f, c, h, w), rtol=1e-5, atol=1e-5)
    # outside a video call it is an ordinary per-frame GroupNorm
    torch.testing.assert_close(norm(x), F.group_norm(x, groups, norm.weight, norm.bias, 1e-6))


# PEFT MotionLoRAs are scaled as PEFT scales them, the same as image LoRAs (one parser for both).


def _peft_motion_lora(base: MotionStack, folder: Path, seed: int, config: dict | None, metadata: dict | None) -> Path:
    """PEFT keys (no alpha tensors); the scaling in ``adapter_config.json`` beside the file, or in its header."""
    folder.mkdir()
    path = folder / "adapter_model.safetensors"
    header = {"lora_adapter_metadata": json.dumps(metadata)} if metadata is not None else None
    save_file(_lora_peft(base, seed), path, metadata=header)
    if config is not None:
        (folder / "adapter_config.json").write_text(json.dumps(config))
    return path


def _expected(base: MotionStack, seed: int, scale: float, factors: dict[str, float]) -> dict[str, torch.Tensor]:
    """The base weights plus ``scale * factor * up @ down`` for each target (factor by target name)."""
    expected = {k: v.clone() for k, v in base.state_dict().items()}
    for target, (down, up) in _lora_pairs(base, seed).items():
        expected[f"{target}.weight"] += (up.double() @ down.double() * (scale * factors[target])).float()
    return expected


def test_peft_motion_lora_with_rslora_scales_by_alpha_over_sqrt_rank(files, tmp_path):
    base = load_motion_folder(files["v2-diffusers"])
    path = _peft_motion_lora(base, tmp_path / "rs", 5, {"lora_alpha": 4, "r": 2, "use_rslora": True}, None)
    stack = load_motion_folder(files["v2-diffusers"])
    apply_motion_lora(stack, path, 0.5)
    factor = 4 / 2**0.5  # rsLoRA: alpha / sqrt(r), not alpha / r
    torch.testing.assert_close(
        stack.state_dict(), _expected(base, 5, 0.5, dict.fromkeys(TARGETS, factor)), atol=1e-6, rtol=0
    )


def test_peft_motion_lora_alpha_pattern_gives_one_module_its_own_alpha(files, tmp_path):
    base = load_motion_folder(files["v2-diffusers"])
    special = TARGETS[1]
    config = {"lora_alpha": 4, "r": 2, "alpha_pattern": {special: 1}}
    path = _peft_motion_lora(base, tmp_path / "pattern", 6, config, None)
    stack = load_motion_folder(files["v2-diffusers"])
    apply_motion_lora(stack, path, 1.0)
    factors = {t: (1 / 2 if t == special else 4 / 2) for t in TARGETS}
    torch.testing.assert_close(stack.state_dict(), _expected(base, 6, 1.0, factors), atol=1e-6, rtol=0)


def test_peft_motion_lora_config_in_the_safetensors_metadata(files, tmp_path):
    base = load_motion_folder(files["v2-diffusers"])
    path = _peft_motion_lora(base, tmp_path / "meta", 7, None, {"unet.lora_alpha": 8, "unet.r": 2})
    stack = load_motion_folder(files["v2-diffusers"])
    apply_motion_lora(stack, path, 1.0)
    torch.testing.assert_close(
        stack.state_dict(), _expected(base, 7, 1.0, dict.fromkeys(TARGETS, 8 / 2)), atol=1e-6, rtol=0
    )
