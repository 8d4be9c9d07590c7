"""SDXL LoRAs: both text encoders and the U-Net, in kohya's layout (``lora_te1_``, ``lora_te2_``, ``lora_unet_`` with
the original SDXL block names or diffusers') and PEFT's (``unet.``, ``text_encoder.``, ``text_encoder_2.``), merged
as ``W + scale * alpha / rank * up @ down`` into exactly the modules they name."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from videodiff.errors import UserError
from videodiff.weights.models import load_model_parts

RANK, ALPHA, SCALE = 2, 1.0, 0.5
# (component, module as diffusers/transformers name it, kohya name, PEFT name)
TARGETS = [
    ("text_encoder", "text_model.encoder.layers.0.self_attn.q_proj",
     "lora_te1_text_model_encoder_layers_0_self_attn_q_proj"),
    ("text_encoder_2", "text_model.encoder.layers.1.self_attn.v_proj",
     "lora_te2_text_model_encoder_layers_1_self_attn_v_proj"),
    # SDXL's second level, first attention: input_blocks.4.1 in the original naming (block 0 has two ResNets and a
    # downsampler: input_blocks 1-3)
    ("unet", "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q",
     "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q"),
    ("unet", "up_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k",
     "lora_unet_up_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k"),
]  # fmt: skip


def module(parts, component: str, name: str) -> torch.nn.Module:
    model = getattr(parts, component)
    try:
        return model.get_submodule(name)
    except AttributeError:  # transformers 5 does not nest CLIPTextModel's modules in .text_model
        return model.get_submodule(name.removeprefix("text_model."))


def write_lora(path, parts, layout: str) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(3)
    tensors, pairs = {}, {}
    for component, name, kohya in TARGETS:
        weight = module(parts, component, name).weight
        down, up = torch.randn(RANK, weight.shape[1], generator=g), torch.randn(weight.shape[0], RANK, generator=g)
        pairs[(component, name)] = (down, up)
        if layout == "kohya":
            tensors.update({f"{kohya}.lora_down.weight": down, f"{kohya}.lora_up.weight": up,
                            f"{kohya}.alpha": torch.tensor(ALPHA)})  # fmt: skip
        else:
            tensors.update({f"{component}.{name}.lora_A.weight": down, f"{component}.{name}.lora_B.weight": up})
    save_file(tensors, str(path))
    return pairs


@pytest.mark.parametrize("layout", ["kohya", "peft"])
def test_an_sdxl_lora_merges_into_both_text_encoders_and_the_unet(tiny_sdxl_model, tiny_sdxl_motion, tmp_path, layout):
    plain = load_model_parts(str(tiny_sdxl_model), str(tiny_sdxl_motion))
    path = tmp_path / f"{layout}.safetensors"
    pairs = write_lora(path, plain, layout)
    merged = load_model_parts(str(tiny_sdxl_model), str(tiny_sdxl_motion), loras=(f"{path}:{SCALE}",))
    factor = SCALE * (ALPHA / RANK if layout == "kohya" else 1.0)  # PEFT without a config: alpha = rank
    for (component, name), (down, up) in pairs.items():
        want = module(plain, component, name).weight + factor * up @ down
        torch.testing.assert_close(module(merged, component, name).weight, want, rtol=1e-5, atol=1e-5)
    changed = {
        component for component in ("text_encoder", "text_encoder_2", "unet")
        for (n, a), (_, b) in zip(getattr(plain, component).state_dict().items(),
                                  getattr(merged, component).state_dict().items())
        if not torch.equal(a, b)
    }  # fmt: skip
    assert changed == {"text_encoder", "text_encoder_2", "unet"}
    other = "text_model.encoder.layers.0.self_attn.v_proj"  # a module the file does not name
    assert torch.equal(module(merged, "text_encoder_2", other).weight, module(plain, "text_encoder_2", other).weight)


def test_an_sdxl_lora_on_an_sd15_model_is_refused_in_one_line(
    tiny_sdxl_model, tiny_sdxl_motion, tiny_model, tiny_motion, tmp_path
):
    path = tmp_path / "xl.safetensors"
    write_lora(path, load_model_parts(str(tiny_sdxl_model), str(tiny_sdxl_motion)), "kohya")
    with pytest.raises(UserError, match="an SDXL LoRA .*this model is SD1.5-family"):
        load_model_parts(str(tiny_model), str(tiny_motion), loras=(str(path),))
