"""Image-model LoRAs merged into the tiny model: formats, arithmetic, and refusals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from videodiff.config import parse_scaled_path
from videodiff.errors import UserError
from videodiff.weights.lora import apply_lora, describe_lora

RANK = 4
ALPHA = 2.0
# (module, down shape, up shape): attention projections, a 1x1 conv, a 3x3 LoCon conv, an MLP.
UNET_TARGETS = [
    ("down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q", (RANK, 32), (32, RANK)),
    ("down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k", (RANK, 32), (32, RANK)),
    ("mid_block.attentions.0.transformer_blocks.0.attn1.to_out.0", (RANK, 64), (64, RANK)),
    ("up_blocks.1.attentions.0.transformer_blocks.0.ff.net.0.proj", (RANK, 32), (256, RANK)),
    ("down_blocks.0.attentions.0.proj_in", (RANK, 32, 1, 1), (32, RANK, 1, 1)),
    ("down_blocks.0.resnets.0.conv1", (RANK, 32, 3, 3), (32, RANK, 1, 1)),
]
TEXT_TARGETS = [
    ("text_model.encoder.layers.0.self_attn.q_proj", (RANK, 32), (32, RANK)),
    ("text_model.encoder.layers.1.self_attn.v_proj", (RANK, 32), (32, RANK)),
    ("text_model.encoder.layers.0.mlp.fc1", (RANK, 32), (64, RANK)),
]
# The same modules in the original Stable Diffusion (LDM) naming, for the tiny U-Net's layout.
_BLOCK = "transformer_blocks.0"
LDM_NAMES = {
    f"down_blocks.0.attentions.0.{_BLOCK}.attn1.to_q": "input_blocks_1_1_transformer_blocks_0_attn1_to_q",
    f"down_blocks.0.attentions.0.{_BLOCK}.attn2.to_k": "input_blocks_1_1_transformer_blocks_0_attn2_to_k",
    f"mid_block.attentions.0.{_BLOCK}.attn1.to_out.0": "middle_block_1_transformer_blocks_0_attn1_to_out_0",
    f"up_blocks.1.attentions.0.{_BLOCK}.ff.net.0.proj": "output_blocks_3_1_transformer_blocks_0_ff_net_0_proj",
    "down_blocks.0.attentions.0.proj_in": "input_blocks_1_1_proj_in",
    "down_blocks.0.resnets.0.conv1": "input_blocks_1_0_in_layers_2",
}


def load_models(tiny_model: Path):
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModel

    unet = UNet2DConditionModel.from_pretrained(tiny_model / "unet").eval()
    text_encoder = CLIPTextModel.from_pretrained(tiny_model / "text_encoder").eval()
    return unet, text_encoder


def make_lora(seed: int, unet_targets=UNET_TARGETS, text_targets=TEXT_TARGETS) -> dict[str, tuple]:
    """{(component, module): (down, up)} with random small tensors."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for component, targets in (("unet", unet_targets), ("text_encoder", text_targets)):
        for name, down_shape, up_shape in targets:
            out[(component, name)] = (
                torch.randn(down_shape, generator=g) * 0.1,
                torch.randn(up_shape, generator=g) * 0.1,
            )
    return out


def kohya_dict(lora, alpha: float | None = ALPHA, names=None) -> dict[str, torch.Tensor]:
    sd = {}
    for (component, name), (down, up) in lora.items():
        prefix = "lora_unet_" if component == "unet" else "lora_te_"
        key = prefix + ((names or {}).get(name) or name.replace(".", "_"))
        sd[f"{key}.lora_down.weight"] = down.clone()
        sd[f"{key}.lora_up.weight"] = up.clone()
        if alpha is not None:
            sd[f"{key}.alpha"] = torch.tensor(alpha)
    return sd


def peft_dict(lora) -> dict[str, torch.Tensor]:
    sd = {}
    for (component, name), (down, up) in lora.items():
        sd[f"{component}.{name}.lora_A.weight"] = down.clone()
        sd[f"{component}.{name}.lora_B.weight"] = up.clone()
    return sd


def module(model, name: str):
    """``name`` in ``model``; CLIPTextModel's modules lose the ``text_model.`` prefix in transformers 5."""
    try:
        return model.get_submodule(name)
    except AttributeError:
        return model.get_submodule(name.removeprefix("text_model."))


def expected_weights(unet, text_encoder, loras_factors_scales) -> dict[tuple, torch.Tensor]:
    models = {"unet": unet, "text_encoder": text_encoder}
    out = {}
    for lora, factor, scale in loras_factors_scales:
        for (component, name), (down, up) in lora.items():
            key = (component, name)
            weight = out.get(key)
            if weight is None:
                weight = module(models[component], name).weight.detach().clone()
            delta = (up.flatten(1) @ down.flatten(1)).reshape(weight.shape)
            out[key] = weight + delta * (scale * factor)
    return out


def assert_weights(unet, text_encoder, expected) -> None:
    models = {"unet": unet, "text_encoder": text_encoder}
    for (component, name), weight in expected.items():
        got = module(models[component], name).weight.detach()
        torch.testing.assert_close(got, weight, rtol=0, atol=1e-6, msg=f"{component}.{name}")


def snapshot(*models) -> list[dict[str, torch.Tensor]]:
    return [{k: v.clone() for k, v in m.state_dict().items()} for m in models]


def assert_unchanged(before, *models) -> None:
    for state, model in zip(before, models):
        now = model.state_dict()
        assert all(torch.equal(now[k], v) for k, v in state.items())


def test_scale_zero_changes_nothing(tiny_model, tmp_path):
    unet, te = load_models(tiny_model)
    before = snapshot(unet, te)
    path = tmp_path / "style.safetensors"
    save_file(kohya_dict(make_lora(0)), str(path))
    report = apply_lora(unet, te, path, scale=0.0)
    assert report.unet_modules == len(UNET_TARGETS) and report.text_encoder_modules == len(TEXT_TARGETS)
    assert_unchanged(before, unet, te)


def test_kohya_merge_matches_manual(tiny_model, tmp_path, caplog):
    unet, te = load_models(tiny_model)
    lora = make_lora(1)
    expected = expected_weights(unet, te, [(lora, ALPHA / RANK, 1.0)])
    path = tmp_path / "style.safetensors"
    save_file(kohya_dict(lora), str(path))
    with caplog.at_level("INFO", logger="videodiff"):
        report = apply_lora(unet, te, path)
    assert report.format == "kohya" and report.ranks == [RANK]
    assert_weights(unet, te, expected)
    assert any("style.safetensors" in r.getMessage() and "kohya" in r.getMessage() for r in caplog.records)


def test_kohya_without_alpha_uses_factor_one(tiny_model, tmp_path):
    unet, te = load_models(tiny_model)
    lora = make_lora(2)
    expected = expected_weights(unet, te, [(lora, 1.0, 0.7)])
    path = tmp_path / "noalpha.safetensors"
    save_file(kohya_dict(lora, alpha=None), str(path))
    apply_lora(unet, te, path, scale=0.7)
    assert_weights(unet, te, expected)


def test_kohya_and_peft_give_the_same_model(tiny_model, tmp_path):
    lora = make_lora(3)
    kohya = tmp_path / "kohya.safetensors"
    save_file(kohya_dict(lora), str(kohya))
    # PEFT: alpha from adapter_config.json beside the file
    peft_dir = tmp_path / "peft"
    peft_dir.mkdir()
    save_file(peft_dict(lora), str(peft_dir / "adapter_model.safetensors"))
    (peft_dir / "adapter_config.json").write_text(json.dumps({"r": RANK, "lora_alpha": ALPHA}))
    # diffusers: alpha in the safetensors header
    meta = tmp_path / "pytorch_lora_weights.safetensors"
    header = {"unet.lora_alpha": ALPHA, "unet.r": RANK, "text_encoder.lora_alpha": ALPHA, "text_encoder.r": RANK}
    save_file(peft_dict(lora), str(meta), metadata={"format": "pt", "lora_adapter_metadata": json.dumps(header)})
    # PEFT with .alpha keys
    alpha_keys = tmp_path / "alpha_keys.safetensors"
    sd = peft_dict(lora)
    sd.update({f"{c}.{n}.alpha": torch.tensor(ALPHA) for c, n in lora})
    save_file(sd, str(alpha_keys))

    states = []
    for source in (kohya, peft_dir, meta, alpha_keys):
        unet, te = load_models(tiny_model)
        report = apply_lora(unet, te, source)
        assert report.modules == len(lora)
        states.append(snapshot(unet, te))
    for other in states[1:]:
        for a, b in zip(states[0], other):
            assert all(torch.equal(a[k], b[k]) for k in a)


def test_peft_without_alpha_uses_factor_one(tiny_model, tmp_path):
    unet, te = load_models(tiny_model)
    lora = make_lora(4)
    expected = expected_weights(unet, te, [(lora, 1.0, 1.0)])
    path = tmp_path / "pytorch_lora_weights.safetensors"
    save_file(peft_dict(lora), str(path))
    report = apply_lora(unet, te, path)
    assert report.format == "peft"
    assert_weights(unet, te, expected)


def test_diffusers_processor_format(tiny_model, tmp_path):
    targets = [t for t in UNET_TARGETS if ".attn" in t[0]]
    lora = make_lora(5, unet_targets=targets, text_targets=[TEXT_TARGETS[0]])
    sd = {}
    for (component, name), (down, up) in lora.items():
        if component == "text_encoder":  # ...self_attn.q_proj -> ...self_attn.to_q_lora
            attn, proj = name.rsplit(".", 1)
            prefix = f"text_encoder.{attn}.{proj.replace('q_proj', 'to_q')}_lora"
        else:  # ...attn1.to_out.0 -> ...attn1.processor.to_out_lora
            attn = name[: name.index(".attn") + len(".attn1")]
            proj = name[len(attn) + 1 :].replace("to_out.0", "to_out")
            prefix = f"unet.{attn}.processor.{proj}_lora"
        sd[f"{prefix}.down.weight"] = down
        sd[f"{prefix}.up.weight"] = up
    path = tmp_path / "old.bin"
    torch.save(sd, str(path))
    unet, te = load_models(tiny_model)
    expected = expected_weights(unet, te, [(lora, 1.0, 1.0)])
    report = apply_lora(unet, te, path)
    assert report.format == "diffusers-old"
    assert report.unet_modules == len(targets) and report.text_encoder_modules == 1
    assert_weights(unet, te, expected)


def test_ldm_named_kohya(tiny_model, tmp_path):
    lora = make_lora(6)
    path = tmp_path / "ldm.safetensors"
    save_file(kohya_dict(lora, names=LDM_NAMES), str(path))
    unet, te = load_models(tiny_model)
    expected = expected_weights(unet, te, [(lora, ALPHA / RANK, 1.0)])
    report = apply_lora(unet, te, path)
    assert report.format == "kohya-ldm"
    assert_weights(unet, te, expected)


def test_two_loras_add(tiny_model, tmp_path):
    a, b = make_lora(7), make_lora(8)
    pa, pb = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    save_file(kohya_dict(a), str(pa))
    save_file(peft_dict(b), str(pb))
    unet, te = load_models(tiny_model)
    expected = expected_weights(unet, te, [(a, ALPHA / RANK, 1.0), (b, 1.0, 0.5)])
    apply_lora(unet, te, pa, 1.0)
    apply_lora(unet, te, pb, 0.5)
    assert_weights(unet, te, expected)


def test_merge_in_float32_cast_back(tiny_model, tmp_path):
    unet, te = load_models(tiny_model)
    te.to(torch.bfloat16)
    lora = {key: value for key, value in make_lora(9).items() if key[0] == "text_encoder"}
    path = tmp_path / "te.safetensors"
    save_file(kohya_dict(lora), str(path))
    before = {name: module(te, name).weight.detach().clone() for _, name in lora}
    apply_lora(unet, te, path)
    for (_, name), (down, up) in lora.items():
        weight = module(te, name).weight
        assert weight.dtype == torch.bfloat16
        want = (before[name].float() + (up @ down) * (ALPHA / RANK)).to(torch.bfloat16)
        assert torch.equal(weight, want)


def test_outputs_change(tiny_model, tmp_path):
    unet, te = load_models(tiny_model)
    ids = torch.tensor([[530, 320, 529, 531]])
    sample = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ctx0 = te(ids)[0]
        out0 = unet(sample, 10, encoder_hidden_states=ctx0).sample
    path = tmp_path / "style.safetensors"
    save_file(kohya_dict(make_lora(10)), str(path))
    apply_lora(unet, te, path, 1.0)
    with torch.no_grad():
        ctx1 = te(ids)[0]
        out1 = unet(sample, 10, encoder_hidden_states=ctx0).sample
    assert not torch.allclose(ctx0, ctx1)
    assert not torch.allclose(out0, out1)


def test_sdxl_shaped_lora_is_refused_and_nothing_changes(tiny_model, tmp_path):
    unet, te = load_models(tiny_model)
    before = snapshot(unet, te)
    sd = kohya_dict(make_lora(11))
    key = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_v"
    sd[f"{key}.lora_down.weight"] = torch.zeros(RANK, 2048)
    sd[f"{key}.lora_up.weight"] = torch.zeros(32, RANK)
    path = tmp_path / "xl.safetensors"
    save_file(sd, str(path))
    with pytest.raises(UserError, match=r"xl\.safetensors.*attn2_to_v\.lora_down\.weight.*2048"):
        apply_lora(unet, te, path)
    assert_unchanged(before, unet, te)

    te_path = tmp_path / "xl_te.safetensors"
    save_file(
        {
            "text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_A.weight": torch.zeros(RANK, 1280),
            "text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_B.weight": torch.zeros(1280, RANK),
        },
        str(te_path),
    )
    with pytest.raises(UserError, match=r"xl_te\.safetensors.*q_proj\.lora_B\.weight"):
        apply_lora(unet, te, te_path)

    te2 = tmp_path / "xl2.safetensors"
    key = "lora_te2_text_model_encoder_layers_0_self_attn_q_proj"
    save_file({f"{key}.lora_down.weight": torch.zeros(2, 1280), f"{key}.lora_up.weight": torch.zeros(32, 2)}, str(te2))
    with pytest.raises(UserError, match=r"xl2\.safetensors.*SDXL"):
        apply_lora(unet, te, te2)
    assert_unchanged(before, unet, te)


@pytest.mark.parametrize(
    ("key", "message"),
    [
        ("lora_unet_down_blocks_9_attentions_0_proj_in.lora_down.weight", "match nothing"),
        ("lora_unet_down_blocks_0_attentions_0_proj_in.lora_sideways.weight", "not LoRA keys"),
        ("model.diffusion_model.input_blocks.0.0.weight", "not LoRA keys"),
        ("lora_unet_down_blocks_0_attentions_0_proj_in.hada_w1_a", "LoHa"),
    ],
)
def test_unknown_key_is_refused(tiny_model, tmp_path, key, message):
    unet, te = load_models(tiny_model)
    before = snapshot(unet, te)
    sd = kohya_dict(make_lora(12))
    sd[key] = torch.zeros(RANK, 32)
    path = tmp_path / "odd.safetensors"
    save_file(sd, str(path))
    with pytest.raises(UserError, match=message) as info:
        apply_lora(unet, te, path)
    assert "odd.safetensors" in str(info.value) and key in str(info.value)
    assert "\n" not in str(info.value)
    assert_unchanged(before, unet, te)


def test_missing_half_and_bad_files(tiny_model, tmp_path):
    unet, te = load_models(tiny_model)
    half = tmp_path / "half.safetensors"
    save_file({"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.zeros(2, 32, 1, 1)}, str(half))
    with pytest.raises(UserError, match="half.safetensors.*'up'"):
        apply_lora(unet, te, half)
    with pytest.raises(UserError, match="no such file"):
        apply_lora(unet, te, tmp_path / "missing.safetensors")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UserError, match="no LoRA file"):
        apply_lora(unet, te, empty)


def test_parse_scaled_path():
    assert parse_scaled_path("style.safetensors") == ("style.safetensors", 1.0)
    assert parse_scaled_path("style.safetensors:0.6") == ("style.safetensors", 0.6)
    assert parse_scaled_path("style.safetensors:-1") == ("style.safetensors", -1.0)
    assert parse_scaled_path(r"C:\loras\x.safetensors") == (r"C:\loras\x.safetensors", 1.0)
    assert parse_scaled_path(r"C:\loras\x.safetensors:0.5") == (r"C:\loras\x.safetensors", 0.5)
    assert parse_scaled_path("org/repo:weights") == ("org/repo:weights", 1.0)
    with pytest.raises(UserError):
        parse_scaled_path("x.safetensors:nan")


def test_describe_lora(tmp_path):
    lora = make_lora(13)
    path = tmp_path / "style.safetensors"
    save_file(kohya_dict(lora), str(path))
    info = describe_lora(path)
    assert info["kind"] == "lora" and info["format"] == "kohya"
    assert info["ranks"] == [RANK] and info["targets"] == ["unet", "text_encoder"]
    assert info["unet_modules"] == len(UNET_TARGETS) and info["text_encoder_modules"] == len(TEXT_TARGETS)
    assert info["count"] == len(lora)
    peft = tmp_path / "peft.safetensors"
    save_file(peft_dict({k: v for k, v in lora.items() if k[0] == "unet"}), str(peft))
    info = describe_lora(peft)
    assert info["format"] == "peft" and info["targets"] == ["unet"] and info["count"] == len(UNET_TARGETS)
