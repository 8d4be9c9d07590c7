"""ControlNet single files: the original layout (``control_v11p_sd15_*.pth`` / ``.safetensors``) loads to the tensors
diffusers' ``ControlNetModel.from_single_file`` gives; other families and code in pickles are refused in one line;
``videodiff inspect`` names a ControlNet and its kind."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from cli_helpers import invoke, ok
from safetensors.torch import save_file

from videodiff.errors import UserError
from videodiff.tiny import build_tiny_controlnet, build_tiny_model
from videodiff.weights.controlnets import check_fits, describe_controlnet, load_controlnet, local_controlnet_kind

RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1", "norm2": "out_layers.0",
          "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}  # fmt: skip
FIXED = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
         "conv_in": "input_blocks.0.0", "controlnet_mid_block": "middle_block_out.0",
         "controlnet_cond_embedding.conv_in": "input_hint_block.0",
         "controlnet_cond_embedding.conv_out": "input_hint_block.14"}  # fmt: skip


def ldm_key(key: str, per_block: int) -> str:
    """A diffusers ControlNet key in the original (LDM) layout: diffusers' ``convert_controlnet_checkpoint`` read
    backwards (input block ``1 + level * (per_block + 1) + layer``, resnets' ``in_layers``/``out_layers``, zero
    convolutions, the hint block's convolutions at every other index with its last at 14). The fixture checks that
    diffusers' conversion takes every key back."""
    if m := re.fullmatch(r"down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.*)", key):
        block = 1 + int(m[1]) * (per_block + 1) + int(m[3])
        if m[2] == "attentions":
            return f"input_blocks.{block}.1.{m[4]}"
        head, _, leaf = m[4].partition(".")
        return f"input_blocks.{block}.0.{RESNET[head]}.{leaf}"
    if m := re.fullmatch(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.*)", key):
        return f"input_blocks.{1 + int(m[1]) * (per_block + 1) + per_block}.0.op.{m[2]}"
    if m := re.fullmatch(r"mid_block\.resnets\.(\d+)\.(\w+)\.(.*)", key):
        return f"middle_block.{2 * int(m[1])}.{RESNET[m[2]]}.{m[3]}"
    if m := re.fullmatch(r"mid_block\.attentions\.0\.(.*)", key):
        return f"middle_block.1.{m[1]}"
    if m := re.fullmatch(r"controlnet_down_blocks\.(\d+)\.(.*)", key):
        return f"zero_convs.{m[1]}.0.{m[2]}"
    if m := re.fullmatch(r"controlnet_cond_embedding\.blocks\.(\d+)\.(.*)", key):
        return f"input_hint_block.{2 * int(m[1]) + 2}.{m[2]}"
    head, _, leaf = key.rpartition(".")
    return f"{FIXED[head]}.{leaf}"


def ldm_state(folder: Path, prefix: str = "") -> dict[str, torch.Tensor]:
    """The ControlNet in ``folder`` as an original-layout state dict, checked against diffusers' conversion."""
    from diffusers import ControlNetModel
    from diffusers.loaders.single_file_utils import convert_controlnet_checkpoint

    net = ControlNetModel.from_pretrained(folder)
    state = net.state_dict()
    ldm = {prefix + ldm_key(k, net.config.layers_per_block): v.clone() for k, v in state.items()}
    back = convert_controlnet_checkpoint(ldm, {"layers_per_block": net.config.layers_per_block})
    assert back.keys() == state.keys() and all(torch.equal(back[k], state[k]) for k in state)
    return ldm


def as_list(value) -> list:
    return list(value) if isinstance(value, (list, tuple)) else [value]


@pytest.fixture(scope="module")
def files(tmp_path_factory, tiny_model):
    """The tiny ControlNet's folder and its original-layout files: ``.safetensors`` with ``control_model.`` (as
    ControlNet 1.0's whole-model files, beside one U-Net tensor of the SD model) and ``.pth`` without."""
    root = tmp_path_factory.mktemp("controlnet_files")
    folder = build_tiny_controlnet(root / "cn", tiny_model)
    whole = {**ldm_state(folder, "control_model."), "model.diffusion_model.input_blocks.0.0.bias": torch.zeros(32)}
    save_file(whole, root / "control_sd15_tiny.safetensors")
    torch.save(ldm_state(folder), root / "control_v11p_sd15_tiny.pth")
    return folder, [root / "control_sd15_tiny.safetensors", root / "control_v11p_sd15_tiny.pth"]


def test_original_layout_loads_as_diffusers_from_single_file(files):
    """Every tensor equal to ``ControlNetModel.from_single_file(file, config=<folder>)``'s (offline), the config's
    shapes inferred from the file alone."""
    from diffusers import ControlNetModel

    folder, paths = files
    for path in paths:
        ours = load_controlnet(path)
        reference = ControlNetModel.from_single_file(str(path), config=str(folder), local_files_only=True)
        a, b = ours.state_dict(), reference.state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), path
        for key in ("in_channels", "conditioning_channels", "block_out_channels", "layers_per_block",
                    "cross_attention_dim", "down_block_types", "conditioning_embedding_out_channels",
                    "mid_block_type", "use_linear_projection"):  # fmt: skip
            assert as_list(ours.config[key]) == as_list(reference.config[key]), key
        assert not ours.training and not any(p.requires_grad for p in ours.parameters())
        assert local_controlnet_kind(str(path)) == "controlnet"


def test_a_diffusers_layout_file_alone_loads(files, tmp_path):
    folder, _ = files
    weights = next(folder.glob("*.safetensors"))
    alone = tmp_path / "canny.safetensors"
    alone.write_bytes(weights.read_bytes())
    a, b = load_controlnet(alone).state_dict(), load_controlnet(folder).state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_loaded_controlnet_has_the_fused_gated_gelu(files):
    """As the U-Net's, its feed-forwards' gated GELU is fused on the CPU in inference (videodiff.unet.fused)."""
    from diffusers.models.activations import GEGLU

    folder, paths = files
    for source in (folder, paths[0]):
        gelus = [m for m in load_controlnet(source).modules() if isinstance(m, GEGLU)]
        assert gelus and all(type(m).__name__ == "FusedGEGLU" for m in gelus)


def test_a_controlnet_for_another_family_is_refused_in_one_line(tmp_path, files, tiny_pipe):
    """A ControlNet with a 48-wide text (an SD1.5-layout model's is 32 here) loads, and is refused against the
    U-Net by ``check_fits``, also through a render; an SDXL file (``label_emb``) is refused as it loads."""
    from videodiff.settings.control import Control

    other = build_tiny_model(tmp_path / "other", cross_attention_dim=48)
    path = tmp_path / "other.safetensors"
    save_file(ldm_state(build_tiny_controlnet(tmp_path / "other_cn", other)), path)
    net = load_controlnet(path)
    with pytest.raises(UserError, match=r"text width \(cross_attention_dim\) 48 differ from this model's 32") as info:
        check_fits(net, tiny_pipe.parts.unet.config, str(path))
    assert "\n" not in str(info.value)
    picture = tmp_path / "map.png"
    from PIL import Image

    Image.new("RGB", (40, 32)).save(picture)
    with pytest.raises(UserError, match="was made for another model"):
        tiny_pipe("a cat", controls=[Control(maps=str(picture), controlnet=str(path))], num_frames=2, steps=1)

    sdxl = {**ldm_state(files[0]), "label_emb.0.0.weight": torch.zeros(8, 4), "label_emb.0.0.bias": torch.zeros(8)}
    save_file(sdxl, tmp_path / "sdxl.safetensors")
    with pytest.raises(UserError, match="SDXL ControlNet") as info:
        load_controlnet(tmp_path / "sdxl.safetensors")
    assert "\n" not in str(info.value)
    assert "SDXL" in describe_controlnet(tmp_path / "sdxl.safetensors")["refused"]


class _Touch:
    def __init__(self, target: Path):
        self.target = target

    def __reduce__(self):
        return (Path.touch, (self.target,))


def test_code_in_a_pth_never_runs_and_other_files_are_not_controlnets(files, tmp_path):
    target = tmp_path / "pwned"
    evil = tmp_path / "control_v11p_sd15_evil.pth"
    torch.save({**ldm_state(files[0]), "payload": _Touch(target)}, evil)
    for call in (load_controlnet, describe_controlnet, local_controlnet_kind):
        with pytest.raises(UserError, match="code") as info:
            call(str(evil))
        assert "\n" not in str(info.value)
    assert not target.exists()
    stranger = tmp_path / "stranger.safetensors"
    save_file({"weight": torch.zeros(2)}, stranger)
    with pytest.raises(UserError, match="not a ControlNet"):
        load_controlnet(stranger)


def test_inspect_names_controlnets_and_their_kind(files, tiny_model, tmp_path):
    from videodiff.tiny import build_tiny_sparsectrl

    folder, paths = files
    for path in (folder, *paths):
        info = json.loads(ok(invoke("inspect", path, "--json")).stdout)
        assert info["kind"] == "controlnet" and info["conditioning_channels"] == 3, path
        assert info["text_width"] == 32 and info["block_channels"] == [32, 64]
    assert json.loads(ok(invoke("inspect", paths[0], "--json")).stdout)["layout"] == "original ControlNet layout"
    sparse = build_tiny_sparsectrl(tmp_path / "sc", tiny_model, kind="scribble")
    info = json.loads(ok(invoke("inspect", sparse, "--json")).stdout)
    assert info["kind"] == "sparsectrl" and info["conditioning_channels"] == 3 and "scribble" in info["conditioning"]
    assert "controlnet" in ok(invoke("inspect", paths[1])).stdout  # the table form too
