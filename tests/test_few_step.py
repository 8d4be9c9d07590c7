"""Few-step motion models: AnimateDiff-Lightning and AnimateLCM files (tiny, built here) against diffusers.

Lightning ships each variant as ONE safetensors file of diffusers ``MotionAdapter`` keys
(``animatediff_lightning_4step_diffusers.safetensors``, loaded by its model card with
``MotionAdapter().load_state_dict(load_file(...))``) and asks for ``EulerDiscreteScheduler`` with
``timestep_spacing="trailing"``, guidance 1. AnimateLCM ships a ``MotionAdapter`` folder
(``wangfuyun/AnimateLCM``) plus a kohya-style spatial LoRA (``AnimateLCM_sd15_t2v_lora.safetensors``,
``lora_unet_*`` keys, loaded at 0.8) and asks for ``LCMScheduler``. The tests build tiny files of
the same layouts and compare our renders with diffusers' ``AnimateDiffPipeline`` configured as
those model cards configure it.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_helpers import assert_user_error, invoke, ok, read_json

from videodiff import load_pipeline
from videodiff.config import parse_defaults
from videodiff.errors import UserError
from videodiff.tiny import build_tiny_motion_adapter, diffusers_reference

PROMPT = "a red circle moving right"
LIGHTNING = "animatediff_lightning_4step_diffusers.safetensors"
LCM_LORA = "AnimateLCM_sd15_t2v_lora.safetensors"
RENDER = dict(num_frames=8, height=32, width=40)
TOLERANCE = 2  # of 255, as the other parity tests


@pytest.fixture(scope="module")
def lightning_file(tmp_path_factory) -> Path:
    """A Lightning-layout file: one safetensors of MotionAdapter() state-dict keys (8 heads, mid block, 32 frames;
    only the channels are tiny), random non-zero weights."""
    folder = build_tiny_motion_adapter(tmp_path_factory.mktemp("lightning") / "adapter", seed=7, motion_heads=8)
    path = folder.parent / LIGHTNING
    shutil.copyfile(folder / "diffusion_pytorch_model.safetensors", path)
    shutil.rmtree(folder)
    return path


@pytest.fixture(scope="module")
def lcm_folder(tmp_path_factory) -> Path:
    """An AnimateLCM-layout repository: a MotionAdapter folder (config.json + weights) with its spatial LoRA inside."""
    from safetensors.torch import save_file

    folder = build_tiny_motion_adapter(tmp_path_factory.mktemp("animatelcm") / "AnimateLCM", seed=9)
    save_file(lcm_lora_tensors(), str(folder / LCM_LORA))
    return folder


# modules the LoRA patches; kohya names them with underscores (lora_unet_down_blocks_0_...); a 3x3 conv as LoCon
LORA_TARGETS = {
    name.replace(".", "_"): name
    for name in (
        "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q",
        "down_blocks.0.attentions.1.transformer_blocks.0.attn2.to_k",
        "up_blocks.1.attentions.0.transformer_blocks.0.ff.net.0.proj",
        "up_blocks.1.attentions.2.proj_out",
        "down_blocks.0.resnets.0.conv1",
    )
}
RANK, ALPHA, SCALE = 4, 2.0, 0.8


def lcm_lora_tensors() -> dict[str, torch.Tensor]:
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel(  # tiny_model's layout (videodiff.tiny.build_tiny_model)
        block_out_channels=(32, 64),
        layers_per_block=2,
        sample_size=32,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=8,
    )
    modules = dict(unet.named_modules())
    g = torch.Generator().manual_seed(4)
    tensors = {}
    for kohya, name in LORA_TARGETS.items():
        weight = modules[name].weight
        out_ch, in_ch = weight.shape[:2]
        kernel = weight.shape[2:]
        tensors[f"lora_unet_{kohya}.lora_down.weight"] = torch.randn(RANK, in_ch, *kernel, generator=g) * 0.3
        tensors[f"lora_unet_{kohya}.lora_up.weight"] = torch.randn(out_ch, RANK, *[1] * len(kernel), generator=g) * 0.3
        tensors[f"lora_unet_{kohya}.alpha"] = torch.tensor(ALPHA)
    return tensors


def merge_by_hand(unet, tensors: dict[str, torch.Tensor], scale: float) -> None:
    """The reference merge, written out: W += scale * alpha / rank * up @ down (flattened for convs)."""
    modules = dict(unet.named_modules())
    with torch.no_grad():
        for kohya, name in LORA_TARGETS.items():
            down = tensors[f"lora_unet_{kohya}.lora_down.weight"]
            up = tensors[f"lora_unet_{kohya}.lora_up.weight"]
            alpha = float(tensors[f"lora_unet_{kohya}.alpha"])
            weight = modules[name].weight
            delta = (up.flatten(1) @ down.flatten(1)).reshape(weight.shape)
            weight += scale * alpha / down.shape[0] * delta


def frames_of(output) -> np.ndarray:
    return (output.frames[0] * 255).round().astype(np.uint8)


def assert_close_frames(ours: np.ndarray, expected: np.ndarray) -> None:
    assert ours.shape == expected.shape == (8, 32, 40, 3)
    assert ours.std() > 5  # a real picture, not a constant
    assert np.abs(ours.astype(int) - expected.astype(int)).max() <= TOLERANCE


def scheduler_config(model: Path) -> dict:
    from diffusers import DDIMScheduler

    return dict(DDIMScheduler.load_config(model / "scheduler"))


# ---------------------------------------------------------------------------------------------------------------------
# AnimateDiff-Lightning


def lightning_reference(tiny_model: Path, path: Path):
    """The Lightning model card's diffusers set-up: MotionAdapter().load_state_dict(load_file(...)) and Euler
    with trailing spacing and linear betas."""
    from diffusers import EulerDiscreteScheduler, MotionAdapter
    from safetensors.torch import load_file

    adapter = MotionAdapter(
        block_out_channels=(32, 64), motion_layers_per_block=2, motion_num_attention_heads=8, motion_norm_num_groups=32
    )
    adapter.load_state_dict(load_file(str(path)))  # strict, as the card does
    scheduler = EulerDiscreteScheduler.from_config(
        scheduler_config(tiny_model), timestep_spacing="trailing", beta_schedule="linear"
    )
    return diffusers_reference(tiny_model, adapter, scheduler)


def test_lightning_file_renders_as_diffusers_does(tiny_model, lightning_file):
    """Euler, trailing, guidance 1, 4 steps: within 2/255 of AnimateDiffPipeline on the same file."""
    pipe = load_pipeline(str(tiny_model), str(lightning_file), device="cpu")
    assert pipe.parts.sources["motion_module"]["format"] == "diffusers"
    assert pipe.parts.sources["motion_module"]["version"] == "v2"  # Lightning was distilled from v2
    settings = dict(scheduler="euler", timestep_spacing="trailing", guidance_scale=1.0, num_inference_steps=4)
    ours = pipe(PROMPT, seed=3, **settings, **RENDER).frames
    reference = lightning_reference(tiny_model, lightning_file)
    out = reference(
        PROMPT,
        guidance_scale=1.0,
        num_inference_steps=4,
        generator=torch.Generator("cpu").manual_seed(3),
        output_type="np",
        **RENDER,
    )
    assert_close_frames(ours, frames_of(out))
    # and the spacing matters: linspace is a different video (so the comparison above can fail)
    linspace = pipe(PROMPT, seed=3, **{**settings, "timestep_spacing": "linspace"}, **RENDER).frames
    assert np.abs(linspace.astype(int) - ours.astype(int)).max() > TOLERANCE


def test_lightning_folder_records_its_few_step_defaults(tiny_model, lightning_file, tmp_path):
    """`convert --default` writes videodiff.json; render then uses 4 euler trailing steps at guidance 1 unasked,
    the same video as the file with those flags given."""
    folder = tmp_path / "lightning-4step"
    defaults = ("steps=4", "scheduler=euler", "timestep_spacing=trailing", "guidance=1")
    args = [a for d in defaults for a in ("--default", d)]
    ok(invoke("convert", lightning_file, folder, "--to", "diffusers", *args))
    assert read_json(folder / "videodiff.json")["defaults"] == {
        "steps": 4,
        "scheduler": "euler",
        "timestep_spacing": "trailing",
        "guidance": 1.0,
    }
    common = ("--model", tiny_model, "--frames", 4, "--height", 16, "--width", 16, "--seed", 2)
    ok(invoke("render", PROMPT, *common, "--motion-module", folder, "-o", tmp_path / "a.gif"))
    sidecar = read_json(tmp_path / "a.gif.json")
    assert (sidecar["steps"], sidecar["scheduler"], sidecar["timestep_spacing"], sidecar["guidance"]) == (
        4,
        "euler",
        "trailing",
        1.0,
    )
    flags = ("--steps", 4, "--scheduler", "euler", "--timestep-spacing", "trailing", "--guidance", 1)
    ok(invoke("render", PROMPT, *common, "--motion-module", lightning_file, *flags, "-o", tmp_path / "b.gif"))
    from PIL import Image

    a, b = Image.open(tmp_path / "a.gif"), Image.open(tmp_path / "b.gif")
    assert np.array_equal(np.asarray(a.convert("RGB")), np.asarray(b.convert("RGB")))
    # the command line still wins over the recorded defaults; and the Python API reads them too
    ok(invoke("render", PROMPT, *common, "--motion-module", folder, "--steps", 2, "-o", tmp_path / "c.gif"))
    assert read_json(tmp_path / "c.gif.json")["steps"] == 2
    pipe = load_pipeline(str(tiny_model), str(folder), device="cpu")
    assert pipe.settings(PROMPT).timestep_spacing == "trailing" and pipe.settings(PROMPT).steps == 4


def test_motion_modules_defaults_win_over_the_models(tiny_model, lightning_file, tmp_path):
    from videodiff.weights.hub import read_model_defaults

    model = tmp_path / "model"
    shutil.copytree(tiny_model, model)
    (model / "videodiff.json").write_text(json.dumps({"defaults": {"steps": 25, "guidance": 7.5, "fps": 12}}))
    motion = tmp_path / "motion"
    ok(invoke("convert", lightning_file, motion, "--to", "diffusers", "--default", "steps=4"))
    assert read_model_defaults(str(model), str(motion)) == {"steps": 4, "guidance": 7.5, "fps": 12}
    assert read_model_defaults(str(model), str(lightning_file)) == {"steps": 25, "guidance": 7.5, "fps": 12}


@pytest.mark.parametrize(
    "spec, message",
    [
        ("stepz=4", "KEY one of"),
        ("steps", "KEY=VALUE"),
        ("steps=0", "positive whole number"),
        ("scheduler=fast", "unknown --scheduler"),
        ("timestep_spacing=sideways", "unknown --timestep-spacing"),
        ("guidance_interval=0.8,0.2", "LOW <= HIGH"),
    ],
)
def test_bad_recorded_default_is_a_one_line_error(lightning_file, tmp_path, spec, message):
    result = invoke("convert", lightning_file, tmp_path / "out", "--to", "diffusers", "--default", spec)
    assert message in assert_user_error(result)
    assert not (tmp_path / "out").exists()


def test_recorded_defaults_parse_as_yaml_values():
    recorded = parse_defaults(["steps=8", "guidance=1.5", "guidance_interval=0,0.5", "timestep-spacing=trailing"])
    assert recorded == {"steps": 8, "guidance": 1.5, "guidance_interval": [0.0, 0.5], "timestep_spacing": "trailing"}
    with pytest.raises(UserError, match="videodiff.json"):
        from videodiff.weights.motion_formats import convert_motion_module

        convert_motion_module("x", "y.safetensors", "original", defaults={"steps": 4})


# ---------------------------------------------------------------------------------------------------------------------
# AnimateLCM


def lcm_reference(tiny_model: Path, folder: Path):
    """AnimateLCM's model card: MotionAdapter.from_pretrained(repo), LCMScheduler with linear betas, its LoRA at 0.8
    (merged here by hand: diffusers' load_lora_weights needs PEFT)."""
    from diffusers import LCMScheduler
    from safetensors.torch import load_file

    scheduler = LCMScheduler.from_config(scheduler_config(tiny_model), beta_schedule="linear")
    reference = diffusers_reference(tiny_model, folder, scheduler)
    merge_by_hand(reference.unet, load_file(str(folder / LCM_LORA)), SCALE)
    return reference


def test_animatelcm_renders_as_diffusers_does(tiny_model, lcm_folder):
    """LCM, 4 steps, guidance 2 with a negative prompt, the spatial LoRA at 0.8: within 2/255 of AnimateDiffPipeline
    (LCM draws fresh noise at every step from the seed's generator: the same draws on both sides)."""
    pipe = load_pipeline(str(tiny_model), str(lcm_folder), lora=(f"{lcm_folder / LCM_LORA}:{SCALE}",), device="cpu")
    assert pipe.parts.sources["lora"][0]["scale"] == SCALE
    settings = dict(scheduler="lcm", guidance_scale=2.0, num_inference_steps=4, negative_prompt="cat")
    ours = pipe(PROMPT, seed=5, **settings, **RENDER).frames
    reference = lcm_reference(tiny_model, lcm_folder)
    out = reference(
        PROMPT,
        guidance_scale=2.0,
        num_inference_steps=4,
        negative_prompt="cat",
        generator=torch.Generator("cpu").manual_seed(5),
        output_type="np",
        **RENDER,
    )
    assert_close_frames(ours, frames_of(out))
    # without the LoRA it is another video: the LoRA reached the U-Net
    bare = load_pipeline(str(tiny_model), str(lcm_folder), device="cpu")(PROMPT, seed=5, **settings, **RENDER).frames
    assert np.abs(bare.astype(int) - ours.astype(int)).max() > TOLERANCE


# ---------------------------------------------------------------------------------------------------------------------
# hub ids (no network: the hub's download functions are replaced by the local files they would return)


def test_hub_ids_reach_the_same_files(tiny_model, lightning_file, lcm_folder, monkeypatch):
    import huggingface_hub

    downloads, snapshots = [], []

    def fake_download(repo_id, filename, local_files_only=False, **kw):
        downloads.append((repo_id, filename))
        return str({LIGHTNING: lightning_file, LCM_LORA: lcm_folder / LCM_LORA}[filename])

    def fake_snapshot(repo_id, local_files_only=False, **kw):
        snapshots.append(repo_id)
        return str(lcm_folder)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot)
    lightning = load_pipeline(str(tiny_model), f"ByteDance/AnimateDiff-Lightning/{LIGHTNING}", device="cpu")
    assert set(downloads) == {("ByteDance/AnimateDiff-Lightning", LIGHTNING)}  # that one file (read, fingerprinted)
    local = load_pipeline(str(tiny_model), str(lightning_file), device="cpu")
    for a, b in zip(lightning.unet.motion.parameters(), local.unet.motion.parameters()):
        assert torch.equal(a, b)
    lcm = load_pipeline(
        str(tiny_model), "wangfuyun/AnimateLCM", lora=(f"wangfuyun/AnimateLCM/{LCM_LORA}:0.8",), device="cpu"
    )
    assert snapshots[-1] == "wangfuyun/AnimateLCM" and downloads[-1] == ("wangfuyun/AnimateLCM", LCM_LORA)
    assert lcm.parts.sources["lora"][0] == {
        "id": f"wangfuyun/AnimateLCM/{LCM_LORA}",
        "scale": 0.8,
        "sha256": lcm.parts.sources["lora"][0]["sha256"],
    }


def test_missing_hub_file_offline_is_a_one_line_error(models, tmp_path):
    result = invoke(
        "render",
        PROMPT,
        "--model",
        models[1],
        "--motion-module",
        "nobody/nothing/mm.safetensors",
        "-o",
        tmp_path / "x.gif",
    )
    message = assert_user_error(result)
    assert "nobody/nothing" in message and "mm.safetensors" in message
