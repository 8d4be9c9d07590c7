"""Single-file (LDM layout) SD1.5 checkpoints: conversion, strict loading, --vae files, safety; all offline."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from ldm_layout import CLIP, UNET, VAE, to_ldm, vae_to_ldm
from safetensors.torch import save_file

from videodiff.errors import UserError
from videodiff.weights import single_file as sf
from videodiff.weights.checkpoints import read_state_dict
from videodiff.weights.single_file import (
    convert_ldm_checkpoint,
    describe_checkpoint,
    is_ldm_checkpoint,
    load_single_file,
    load_vae_file,
    shipped_config,
    shipped_tokenizer,
)


@pytest.fixture(scope="module")
def originals(tiny_model):
    """The tiny model's diffusers/transformers U-Net, VAE and text encoder."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    unet = UNet2DConditionModel.from_pretrained(tiny_model / "unet").eval()
    vae = AutoencoderKL.from_pretrained(tiny_model / "vae").eval()
    text = CLIPTextModel.from_pretrained(tiny_model / "text_encoder").eval()
    return unet, vae, text


@pytest.fixture(scope="module")
def ldm(originals) -> dict[str, torch.Tensor]:
    return {k: v.contiguous() for k, v in to_ldm(*originals).items()}


@pytest.fixture(scope="module")
def single(ldm, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("single") / "tiny.safetensors"
    save_file(ldm, str(path))
    return path


def _save(state: dict, path: Path) -> Path:
    if path.suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save(state, str(path))
    return path


def assert_same_models(parts, originals, atol=None, rtol=None):
    unet, vae, text = originals
    gen = torch.Generator().manual_seed(0)
    sample = torch.randn(2, 4, 8, 8, generator=gen)
    context = torch.randn(2, 77, unet.config.cross_attention_dim, generator=gen)
    image = torch.randn(1, 3, 16, 16, generator=gen)
    latent = torch.randn(1, 4, 8, 8, generator=gen)
    ids = torch.randint(0, text.config.vocab_size, (2, 77), generator=gen)
    tol = {} if atol is None else {"atol": atol, "rtol": rtol}
    with torch.no_grad():
        torch.testing.assert_close(parts["unet"](sample, 10, context).sample, unet(sample, 10, context).sample, **tol)
        torch.testing.assert_close(
            parts["vae"].encode(image).latent_dist.mean, vae.encode(image).latent_dist.mean, **tol
        )
        torch.testing.assert_close(parts["vae"].decode(latent).sample, vae.decode(latent).sample, **tol)
        torch.testing.assert_close(parts["text_encoder"](ids)[0], text(ids)[0], **tol)


# --- shipped assets --------------------------------------------------------------------------------------------------


def test_shipped_tokenizer_gives_the_well_known_ids():
    tokenizer = shipped_tokenizer()
    assert tokenizer("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert len(tokenizer) == 49408
    assert tokenizer.model_max_length == 77
    assert tokenizer.pad_token_id == 49407
    assert tokenizer.decode(tokenizer("A Photo of a CAT").input_ids, skip_special_tokens=True) == "a photo of a cat"


def test_shipped_configs_are_sd15():
    scheduler = shipped_config("scheduler")
    wanted = {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012, "num_train_timesteps": 1000}
    wanted.update(steps_offset=1, prediction_type="epsilon")
    assert {k: scheduler[k] for k in wanted} == wanted
    text = shipped_config("text_encoder")
    assert (text["hidden_size"], text["num_hidden_layers"], text["num_attention_heads"]) == (768, 12, 12)
    assert (text["intermediate_size"], text["hidden_act"], text["max_position_embeddings"]) == (3072, "quick_gelu", 77)
    assert text["vocab_size"] == 49408
    assert shipped_config("unet")["block_out_channels"] == [320, 640, 1280, 1280]
    assert shipped_config("vae")["block_out_channels"] == [128, 256, 512, 512]

    from videodiff.schedulers import make_scheduler

    assert type(make_scheduler("model", scheduler)).__name__ == "PNDMScheduler"
    assert make_scheduler("ddim", scheduler).config.steps_offset == 1


def test_full_size_sd15_layout_converts_to_exactly_the_shipped_configs():
    """A full-size SD1.5 key/shape set (meta tensors: nothing allocated) gives the shipped configs and modules."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    text_cfg = {k: v for k, v in shipped_config("text_encoder").items() if k not in ("architectures", "model_type")}
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(shipped_config("unet"))
        vae = AutoencoderKL.from_config(shipped_config("vae"))
        text = CLIPTextModel(CLIPTextConfig(**text_cfg))
    # The well-known sizes of SD1.5's components.
    assert sum(p.numel() for p in unet.parameters()) == 859_520_964
    assert sum(p.numel() for p in vae.parameters()) == 83_653_863
    assert sum(p.numel() for p in text.parameters()) == 123_060_480

    state = to_ldm(unet, vae, text)
    assert sum(k.startswith(UNET) for k in state) == 686
    assert sum(k.startswith(VAE) for k in state) == 248
    assert sum(k.startswith(CLIP) for k in state) == 196
    # Keys every SD1.5 single file has (the down/up-sampler slots are the easy ones to get wrong).
    for key, shape in {
        "model.diffusion_model.output_blocks.11.0.skip_connection.weight": (320, 640, 1, 1),
        "model.diffusion_model.input_blocks.3.0.op.weight": (320, 320, 3, 3),
        "model.diffusion_model.input_blocks.9.0.op.weight": (1280, 1280, 3, 3),
        "model.diffusion_model.output_blocks.2.1.conv.weight": (1280, 1280, 3, 3),
        "model.diffusion_model.output_blocks.5.2.conv.weight": (1280, 1280, 3, 3),
        "model.diffusion_model.output_blocks.8.2.conv.weight": (640, 640, 3, 3),
        "model.diffusion_model.middle_block.1.transformer_blocks.0.attn2.to_k.weight": (1280, 768),
        "model.diffusion_model.time_embed.0.weight": (1280, 320),
        "first_stage_model.encoder.mid.attn_1.q.weight": (512, 512, 1, 1),
        "first_stage_model.decoder.up.0.block.0.nin_shortcut.weight": (128, 256, 1, 1),
        "first_stage_model.decoder.up.3.upsample.conv.weight": (512, 512, 3, 3),
        "first_stage_model.quant_conv.weight": (8, 8, 1, 1),
        "cond_stage_model.transformer.text_model.encoder.layers.11.mlp.fc1.weight": (3072, 768),
        "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight": (49408, 768),
    }.items():
        assert tuple(state[key].shape) == shape, key
    assert is_ldm_checkpoint(state)

    parts = convert_ldm_checkpoint(state)
    for name, model in (("unet", unet), ("vae", vae), ("text_encoder", text)):
        config, converted = parts[name]
        assert config == shipped_config(name), name
        expected = {k.removeprefix("text_model."): tuple(v.shape) for k, v in model.state_dict().items()}
        assert {k: tuple(v.shape) for k, v in converted.items()} == expected, name


# --- loading -----------------------------------------------------------------------------------------------------


def test_single_file_loads_to_identical_models(single, originals):
    parts = load_single_file(single)
    assert set(parts) == {"tokenizer", "text_encoder", "vae", "unet", "scheduler_config"}
    assert list(parts["unet"].config.block_out_channels) == [32, 64]
    assert parts["unet"].config.cross_attention_dim == 32
    assert parts["text_encoder"].config.num_hidden_layers == 2
    assert all(p.dtype == torch.float32 and not p.requires_grad for p in parts["unet"].parameters())
    assert not parts["unet"].training
    assert parts["tokenizer"]("a photo of a cat").input_ids[:2] == [49406, 320]
    assert parts["scheduler_config"]["_class_name"] == "PNDMScheduler"
    assert_same_models(parts, originals)


def test_ckpt_wrapped_in_state_dict_without_text_model_prefix_loads(ldm, originals, tmp_path):
    """A Lightning-style .ckpt: {"state_dict": ...} plus training leftovers; CLIP keys without text_model."""
    state = {}
    for key, tensor in ldm.items():
        state[key.replace(f"{CLIP}text_model.", CLIP)] = tensor
    state[f"{CLIP}embeddings.position_ids"] = torch.arange(77)[None]
    state["alphas_cumprod"] = torch.linspace(1, 0, 1000)
    path = _save({"state_dict": state, "global_step": 1234, "epoch": 3}, tmp_path / "tiny.ckpt")
    assert_same_models(load_single_file(path), originals)


def test_ema_weights_are_used_when_present(ldm, originals, tmp_path):
    unet, vae, text = originals
    state = dict(ldm)
    shifted = {}
    for key, tensor in ldm.items():
        if key.startswith(UNET):
            state["model_ema." + "".join(key.split(".")[1:])] = tensor + 0.01
            shifted[key] = tensor + 0.01
    assert sum(k.startswith("model_ema.") for k in state) > 100
    parts = load_single_file(_save(state, tmp_path / "ema.safetensors"))
    loaded = dict(parts["unet"].named_parameters())
    torch.testing.assert_close(loaded["conv_in.weight"], unet.conv_in.weight + 0.01)


def test_float16_file_loads_as_float32_or_float16(ldm, originals, tmp_path):
    path = _save({k: v.half() for k, v in ldm.items()}, tmp_path / "half.safetensors")
    unet = originals[0]
    parts = load_single_file(path)
    assert {p.dtype for m in ("unet", "vae", "text_encoder") for p in parts[m].parameters()} == {torch.float32}
    torch.testing.assert_close(parts["unet"].conv_in.weight, unet.conv_in.weight.half().float(), atol=0, rtol=0)
    half = load_single_file(path, dtype=torch.float16)
    assert {p.dtype for m in ("unet", "vae", "text_encoder") for p in half[m].parameters()} == {torch.float16}
    torch.testing.assert_close(half["unet"].conv_in.weight, unet.conv_in.weight.half(), atol=0, rtol=0)


# --- --vae files ---------------------------------------------------------------------------------------------------


def _decode(vae, latent):
    with torch.no_grad():
        return vae.decode(latent).sample


@pytest.mark.parametrize("layout", ["ldm-bare.safetensors", "ldm-prefixed.ckpt", "full-single-file", "diffusers-file"])
def test_vae_files(layout, originals, ldm, single, tiny_model, tmp_path):
    vae = originals[1]
    if layout == "ldm-bare.safetensors":
        path = _save(vae_to_ldm(vae.state_dict(), prefix=""), tmp_path / "vae.safetensors")
    elif layout == "ldm-prefixed.ckpt":
        path = _save({"state_dict": vae_to_ldm(vae.state_dict())}, tmp_path / "vae.ckpt")
    elif layout == "full-single-file":
        path = single
    else:  # a diffusers VAE weights file on its own: the config is inferred (old attention names too)
        old = {"attentions.0.to_q.": "attentions.0.query.", ".to_out.0.": ".proj_attn."}
        state = {}
        for key, tensor in vae.state_dict().items():
            for new_name, old_name in old.items():
                key = key.replace(new_name, old_name)
            state[key] = tensor
        path = _save(state, tmp_path / "diffusion_pytorch_model.safetensors")
    loaded = load_vae_file(path)
    assert type(loaded).__name__ == "AutoencoderKL"
    assert list(loaded.config.block_out_channels) == list(vae.config.block_out_channels)
    latent = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(_decode(loaded, latent), _decode(vae, latent))


def test_vae_folders(originals, tiny_model):
    latent = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(2))
    expected = _decode(originals[1], latent)
    for folder in (tiny_model / "vae", tiny_model):  # a VAE folder, or a model folder with vae/ inside
        torch.testing.assert_close(_decode(load_vae_file(folder), latent), expected)


def test_vae_file_errors(single, ldm, tmp_path):
    text_only = _save({k: v for k, v in ldm.items() if k.startswith(CLIP)}, tmp_path / "text.safetensors")
    with pytest.raises(UserError, match="not a VAE"):
        load_vae_file(text_only)
    with pytest.raises(UserError, match="not found"):
        load_vae_file(tmp_path / "nope.safetensors")
    vae_only = {k.removeprefix(VAE): v for k, v in ldm.items() if k.startswith(VAE)}
    with pytest.raises(UserError, match="holds only a VAE.*--vae"):
        load_single_file(_save(vae_only, tmp_path / "vae-only.safetensors"))


# --- refusing what is not SD1.5, or not readable --------------------------------------------------------------------


def test_sdxl_refiner_and_sd2_files_are_refused(ldm, tmp_path):
    """(SDXL base single files load: tests/test_sdxl_single_file.py.)"""
    sdxl = {
        "conditioner.embedders.0.model.transformer.resblocks.0.mlp.c_proj.bias": torch.zeros(4),
        "model.diffusion_model.input_blocks.0.0.weight": torch.zeros(4, 4, 3, 3),
    }
    with pytest.raises(UserError, match="SDXL refiner checkpoint.*not supported: use an SDXL base model") as info:
        load_single_file(_save(sdxl, tmp_path / "xl.safetensors"))
    assert "\n" not in str(info.value)
    sd2 = {k: v for k, v in ldm.items() if not k.startswith(CLIP)}
    sd2["cond_stage_model.model.transformer.resblocks.0.ln_1.weight"] = torch.ones(32)
    with pytest.raises(UserError, match="SD2.*not an SD1.5-family checkpoint"):
        load_single_file(_save(sd2, tmp_path / "sd2.safetensors"))
    assert describe_checkpoint(tmp_path / "xl.safetensors")["kind"] == "sdxl"
    assert describe_checkpoint(tmp_path / "sd2.safetensors")["kind"] == "sd2"


def test_inpainting_and_mismatched_files_are_refused(ldm, tmp_path):
    inpaint = dict(ldm)
    weight = inpaint[f"{UNET}input_blocks.0.0.weight"]
    inpaint[f"{UNET}input_blocks.0.0.weight"] = torch.zeros(weight.shape[0], 9, *weight.shape[2:])
    with pytest.raises(UserError, match="inpainting checkpoints are not supported"):
        load_single_file(_save(inpaint, tmp_path / "inpaint.safetensors"))

    missing = {k: v for k, v in ldm.items() if k != f"{UNET}middle_block.1.proj_out.weight"}
    path = _save(missing, tmp_path / "missing.safetensors")
    with pytest.raises(UserError, match=r"missing\.safetensors: keys do not match the model: 1 missing") as info:
        load_single_file(path)
    assert "\n" not in str(info.value)

    with pytest.raises(UserError, match="not an SD1.5 or SDXL single-file checkpoint"):
        load_single_file(_save({"foo.weight": torch.zeros(2)}, tmp_path / "other.safetensors"))


@pytest.mark.parametrize("suffix", [".safetensors", ".ckpt"])
def test_truncated_file_is_a_user_error(single, ldm, tmp_path, suffix):
    full = single if suffix == ".safetensors" else _save({"state_dict": ldm}, tmp_path / "full.ckpt")
    data = full.read_bytes()
    path = tmp_path / f"cut{suffix}"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError) as info:
        load_single_file(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(UserError):
        describe_checkpoint(path)


class _Touch:
    def __init__(self, target: Path):
        self.target = target

    def __reduce__(self):
        return (Path.touch, (self.target,))


def test_code_in_a_pickle_never_runs(tmp_path):
    target = tmp_path / "pwned"
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"model.diffusion_model.x": torch.zeros(1)}, "payload": _Touch(target)}, str(path))
    assert not target.exists()
    for load in (load_single_file, load_vae_file, describe_checkpoint):
        with pytest.raises(UserError, match="safetensors") as info:
            load(path)
        assert "\n" not in str(info.value)
    assert not target.exists()


@pytest.mark.parametrize("zipped", [True, False], ids=["zip", "legacy"])
def test_mapped_pickle_reads_the_same_tensors_and_still_refuses_code(tmp_path, zipped):
    tensors = {"a": torch.randn(3, 4), "b": torch.arange(5)}
    path = tmp_path / "plain.ckpt"
    torch.save(tensors, str(path), _use_new_zipfile_serialization=zipped)
    for mmap in (True, False):
        read = read_state_dict(path, mmap=mmap)
        assert read.keys() == tensors.keys() and all(torch.equal(read[k], tensors[k]) for k in tensors)
    target = tmp_path / "pwned"
    evil = tmp_path / "evil.ckpt"
    torch.save({"x": torch.zeros(1), "payload": _Touch(target)}, str(evil), _use_new_zipfile_serialization=zipped)
    with pytest.raises(UserError, match="arbitrary code"):
        read_state_dict(evil, mmap=True)
    assert not target.exists()


# --- describing ----------------------------------------------------------------------------------------------------


def test_describe_reads_only_the_safetensors_header(single, ldm, tmp_path, monkeypatch):
    def no_reading(*args, **kwargs):
        raise AssertionError("describe_checkpoint read the tensors")

    monkeypatch.setattr(sf, "read_state_dict", no_reading)
    monkeypatch.setattr(sf, "_read", no_reading)
    info = describe_checkpoint(single)
    assert info["kind"] == "sd15" and info["format"] == "safetensors"
    assert info["unet_channels"] == [32, 64]
    assert info["in_channels"] == 4 and info["cross_attention_dim"] == 32
    assert info["dtype"] == "float32"
    assert info["parameters"] == sum(v.numel() for v in ldm.values() if v.is_floating_point())
    assert set(info["component_parameters"]) == {"unet", "vae", "text_encoder"}

    half = _save({k: v.half() for k, v in ldm.items()}, tmp_path / "half.safetensors")
    assert describe_checkpoint(half)["dtype"] == "float16"
    vae = _save({k.removeprefix(VAE): v for k, v in ldm.items() if k.startswith(VAE)}, tmp_path / "v.safetensors")
    assert describe_checkpoint(vae)["kind"] == "vae"
    other = _save({"foo.weight": torch.zeros(2)}, tmp_path / "other.safetensors")
    assert describe_checkpoint(other)["kind"] == "unknown"


def test_describe_pickle_checkpoint(ldm, tmp_path):
    path = _save({"state_dict": ldm}, tmp_path / "m.ckpt")
    info = describe_checkpoint(path)
    assert (info["kind"], info["format"], info["unet_channels"]) == ("sd15", "pickle", [32, 64])


def test_is_ldm_checkpoint(ldm, originals):
    assert is_ldm_checkpoint(ldm)
    assert not is_ldm_checkpoint(originals[0].state_dict())
    assert not is_ldm_checkpoint({})


ASSET_FILES = (
    "unet/config.json",
    "vae/config.json",
    "text_encoder/config.json",
    "scheduler/scheduler_config.json",
    "tokenizer/vocab.json",
    "tokenizer/merges.txt",
    "tokenizer/tokenizer_config.json",
    "tokenizer/special_tokens_map.json",
    "tokenizer/README.md",
)


def test_assets_are_shipped_as_package_data():
    for name in ASSET_FILES:
        assert (sf.ASSETS / name).is_file(), name
    pyproject = Path(__file__).resolve().parents[1] / "pyproject.toml"
    if pyproject.is_file():
        assert 'videodiff = ["assets/**/*", "models/**/*"]' in pyproject.read_text(encoding="utf-8")
