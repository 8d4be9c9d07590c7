"""Single-file SDXL checkpoints (original SGM key layout, as civitai distributes them): conversion with diffusers'
helpers onto the shipped SDXL base configs, strict loading, renders equal to the diffusers folder's, the refiner
refused by name; all offline, on tiny models written out in the SGM layout by tests/ldm_layout.py."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_helpers import assert_user_error, invoke, ok, read_json
from ldm_layout import CLIP_L, OPEN_CLIP, UNET, VAE, sdxl_to_ldm
from PIL import Image
from test_single_file import _save

from videodiff.errors import UserError
from videodiff.weights.single_file import (
    convert_ldm_checkpoint,
    describe_checkpoint,
    load_single_file,
    shipped_config,
    shipped_tokenizer,
)

NAMES = ("unet", "vae", "text_encoder", "text_encoder_2")


def _originals(folder: Path) -> dict:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    return {
        "unet": UNet2DConditionModel.from_pretrained(folder / "unet").eval(),
        "vae": AutoencoderKL.from_pretrained(folder / "vae").eval(),
        "text_encoder": CLIPTextModel.from_pretrained(folder / "text_encoder").eval(),
        "text_encoder_2": CLIPTextModelWithProjection.from_pretrained(folder / "text_encoder_2").eval(),
    }


def _as_released(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """What released SDXL files hold besides the weights: CLIP's position ids and OpenCLIP's logit scale."""
    return {
        **state,
        f"{CLIP_L}text_model.embeddings.position_ids": torch.arange(77)[None],
        f"{OPEN_CLIP}logit_scale": torch.tensor(4.6052),
    }


@pytest.fixture(scope="module")
def originals(tiny_sdxl_model):
    return _originals(tiny_sdxl_model)


@pytest.fixture(scope="module")
def sgm(originals) -> dict[str, torch.Tensor]:
    return _as_released(sdxl_to_ldm(*(originals[n] for n in NAMES)))


@pytest.fixture(scope="module")
def xl_file(sgm, tmp_path_factory) -> Path:
    return _save(sgm, tmp_path_factory.mktemp("sdxl-single") / "tiny-xl.safetensors")


def assert_same_tensors(parts: dict, originals: dict) -> None:
    for name in NAMES:
        ours, theirs = parts[name].state_dict(), originals[name].state_dict()
        assert ours.keys() == theirs.keys(), name
        for key, tensor in theirs.items():
            assert torch.equal(ours[key], tensor), f"{name}.{key}"


# --- loading -----------------------------------------------------------------------------------------------------


def test_sdxl_single_file_loads_every_tensor_of_the_folder_model(xl_file, originals):
    parts = load_single_file(xl_file)
    assert set(parts) == {"tokenizer", "tokenizer_2", *NAMES, "scheduler_config"}
    assert_same_tensors(parts, originals)
    unet = parts["unet"].config
    assert (unet.addition_embed_type, unet.addition_time_embed_dim) == ("text_time", 8)  # (72 - 24 pooled) / 6
    assert unet.projection_class_embeddings_input_dim == 72 and unet.cross_attention_dim == 64
    assert list(unet.transformer_layers_per_block) == [1, 1, 2]
    assert type(parts["text_encoder_2"]).__name__ == "CLIPTextModelWithProjection"
    assert parts["text_encoder_2"].config.projection_dim == 24
    assert parts["vae"].config.force_upcast is True and parts["vae"].config.scaling_factor == 0.13025
    assert parts["scheduler_config"]["_class_name"] == "EulerDiscreteScheduler"
    assert parts["tokenizer"].pad_token == "<|endoftext|>" and parts["tokenizer_2"].pad_token == "!"
    assert parts["tokenizer_2"]("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert not any(p.requires_grad for n in NAMES for p in parts[n].parameters())


def test_a_ckpt_loads_weights_only_like_the_safetensors(sgm, originals, tmp_path):
    """A Lightning-style ``.ckpt`` ({"state_dict": ...} and training leftovers), read with weights_only."""
    path = _save({"state_dict": sgm, "global_step": 7}, tmp_path / "tiny-xl.ckpt")
    assert_same_tensors(load_single_file(path), originals)


def test_float16_file_keeps_float16(sgm, originals, tmp_path):
    path = _save({k: v.half() if v.is_floating_point() else v for k, v in sgm.items()}, tmp_path / "half.safetensors")
    half = load_single_file(path, dtype=torch.float16)
    assert {p.dtype for n in NAMES for p in half[n].parameters()} == {torch.float16}
    expected = originals["text_encoder_2"].text_projection.weight.half()
    torch.testing.assert_close(half["text_encoder_2"].text_projection.weight, expected, atol=0, rtol=0)


def test_full_size_sdxl_layout_converts_to_exactly_the_shipped_configs():
    """A full-size SDXL base key/shape set (meta tensors: nothing allocated) gives the shipped SDXL configs."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    def text(part, cls):
        cfg = {k: v for k, v in shipped_config(part, "sdxl").items() if k not in ("architectures", "model_type")}
        return cls(CLIPTextConfig(**cfg))

    with torch.device("meta"):
        models = {
            "unet": UNet2DConditionModel.from_config(shipped_config("unet", "sdxl")),
            "vae": AutoencoderKL.from_config(shipped_config("vae", "sdxl")),
            "text_encoder": text("text_encoder", CLIPTextModel),
            "text_encoder_2": text("text_encoder_2", CLIPTextModelWithProjection),
        }
    # The well-known sizes of SDXL base's components.
    sizes = {name: sum(p.numel() for p in m.parameters()) for name, m in models.items()}
    assert sizes == {
        "unet": 2_567_463_684,
        "vae": 83_653_863,
        "text_encoder": 123_060_480,
        "text_encoder_2": 694_659_840,
    }
    state = sdxl_to_ldm(*(models[n] for n in NAMES))
    for key, shape in {
        "model.diffusion_model.label_emb.0.0.weight": (1280, 2816),
        "model.diffusion_model.input_blocks.3.0.op.weight": (320, 320, 3, 3),
        "model.diffusion_model.input_blocks.8.1.transformer_blocks.9.attn2.to_k.weight": (1280, 2048),
        "model.diffusion_model.output_blocks.2.2.conv.weight": (1280, 1280, 3, 3),
        "model.diffusion_model.output_blocks.5.2.conv.weight": (640, 640, 3, 3),
        "model.diffusion_model.middle_block.1.transformer_blocks.9.ff.net.2.weight": (1280, 5120),
        "conditioner.embedders.0.transformer.text_model.encoder.layers.11.mlp.fc1.weight": (3072, 768),
        "conditioner.embedders.1.model.transformer.resblocks.31.attn.in_proj_weight": (3840, 1280),
        "conditioner.embedders.1.model.text_projection": (1280, 1280),
        "conditioner.embedders.1.model.positional_embedding": (77, 1280),
        "first_stage_model.decoder.up.3.upsample.conv.weight": (512, 512, 3, 3),
    }.items():
        assert tuple(state[key].shape) == shape, key
    assert describe_checkpoint_kind(state) == "sdxl"
    parts = convert_ldm_checkpoint(_as_released(state))
    for name in NAMES:
        config, converted = parts[name]
        assert config == shipped_config(name, "sdxl"), name
        expected = {k.removeprefix("text_model."): tuple(v.shape) for k, v in models[name].state_dict().items()}
        assert {k: tuple(v.shape) for k, v in converted.items()} == expected, name


def describe_checkpoint_kind(state) -> str:
    from videodiff.weights.ldm_layout import classify

    return classify({k: tuple(v.shape) for k, v in state.items()})[0]


# --- rendering ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def released_like(tiny_sdxl_model, tmp_path_factory) -> tuple[Path, Path]:
    """A tiny SDXL folder whose settings beyond the tensor shapes are SDXL base's, as a single file cannot say
    them: the shipped tokenizers (CLIP vocabulary), quick_gelu in the first encoder, 64-/8-wide attention heads
    and the shipped scheduler; and its SGM single file."""
    import shutil

    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    folder = tmp_path_factory.mktemp("released-like") / "tiny-xl"
    shutil.copytree(tiny_sdxl_model, folder)
    torch.manual_seed(5)
    for name in ("tokenizer", "tokenizer_2"):
        shutil.rmtree(folder / name)
        shipped_tokenizer(name, "sdxl").save_pretrained(folder / name)
    encoders = (("text_encoder", CLIPTextModel, "quick_gelu"), ("text_encoder_2", CLIPTextModelWithProjection, "gelu"))
    widths = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "projection_dim")
    for name, cls, act in encoders:
        config = json.loads((folder / name / "config.json").read_text())
        shutil.rmtree(folder / name)
        cls(CLIPTextConfig(**{k: config[k] for k in widths}, hidden_act=act)).save_pretrained(folder / name)
    unet = json.loads((folder / "unet" / "config.json").read_text())
    shutil.rmtree(folder / "unet")
    UNet2DConditionModel.from_config({**unet, "attention_head_dim": [4, 1, 1]}).save_pretrained(folder / "unet")
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(shipped_config("scheduler", "sdxl")))
    state = sdxl_to_ldm(*(m for m in _originals(folder).values()))
    return folder, _save(_as_released(state), folder.parent / "tiny-xl.safetensors")


def _frames(folder: Path) -> np.ndarray:
    return np.stack([np.asarray(Image.open(p)) for p in sorted(folder.glob("*.png"))])


def test_a_render_from_the_single_file_equals_the_render_from_the_folder(
    released_like, tiny_sdxl_motion, tmp_path, monkeypatch
):
    folder, single = released_like
    monkeypatch.chdir(tmp_path)
    small = ["--frames", "3", "--steps", "2", "--height", "32", "--width", "32", "--seed", "4", "--format", "png", "-q"]
    base = ["render", "a red circle moving right", "--motion-module", tiny_sdxl_motion, *small]
    ok(invoke(*base, "--model", folder, "-o", "folder"))
    ok(invoke(*base, "--model", single, "-o", "single"))
    from_folder, from_file = _frames(tmp_path / "folder"), _frames(tmp_path / "single")
    assert from_folder.shape == (3, 32, 32, 3) and from_folder.std() > 1
    assert np.array_equal(from_folder, from_file)
    sources = read_json(tmp_path / "single.json")["info"]["sources"]
    assert sources["model"]["id"] == str(single)


def test_inspect_names_an_sdxl_single_file(xl_file, sgm):
    info = json.loads(ok(invoke("inspect", xl_file, "--json")).stdout)
    assert info["kind"] == "sdxl" and info["description"].startswith("SDXL checkpoint")
    assert info["unet_channels"] == [32, 64, 64] and info["cross_attention_dim"] == 64
    counts = info["component_parameters"]
    assert set(counts) == {"unet", "vae", "text_encoder", "text_encoder_2"}
    assert counts["text_encoder_2"] == sum(v.numel() for k, v in sgm.items() if k.startswith(OPEN_CLIP))
    assert describe_checkpoint(xl_file)["kind"] == "sdxl"


# --- refusals ----------------------------------------------------------------------------------------------------


def test_a_refiner_checkpoint_is_refused_by_name(sgm, tmp_path):
    refiner = {k: v for k, v in sgm.items() if not k.startswith("conditioner.")}
    for key, tensor in sgm.items():  # the refiner's one text encoder is OpenCLIP, as embedder 0
        if key.startswith(OPEN_CLIP):
            refiner[key.replace(OPEN_CLIP, "conditioner.embedders.0.model.")] = tensor
    path = _save(refiner, tmp_path / "refiner.safetensors")
    with pytest.raises(UserError, match="SDXL refiner checkpoint.*the SDXL refiner is not supported") as info:
        load_single_file(path)
    assert "\n" not in str(info.value)
    assert describe_checkpoint(path)["description"].startswith("SDXL refiner checkpoint")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("drop:" + UNET + "middle_block.1.proj_out.weight", "keys do not match the model: 1 missing"),
        (
            "drop:" + UNET + "label_emb.0.2.bias",
            "keys do not match the model: missing model.diffusion_model.label_emb.0",
        ),
        ("rename:" + OPEN_CLIP + "transformer.resblocks.1.ln_2.weight", "keys do not match the model: 1 missing"),
        (
            "drop:" + OPEN_CLIP + "text_projection",
            "keys do not match the model: missing " + OPEN_CLIP + "text_projection",
        ),
        ("drop:" + VAE + "decoder.mid.attn_1.q.weight", "keys do not match the model: 1 missing"),
        ("rename:" + CLIP_L + "text_model.final_layer_norm.bias", "keys do not match the model: 1 missing"),
    ],
    ids=["unet", "label_emb", "open_clip-renamed", "text_projection", "vae", "clip-renamed"],
)
def test_a_missing_or_renamed_key_fails_strictly_in_one_line(sgm, tiny_sdxl_motion, tmp_path, change, message):
    how, key = change.split(":", 1)
    state = {k: v for k, v in sgm.items() if k != key}
    if how == "rename":
        state[key.replace(".weight", ".wieght").replace(".bias", ".bais")] = sgm[key]
    path = _save(state, tmp_path / "broken.safetensors")
    with pytest.raises(UserError, match=message) as info:
        load_single_file(path)
    assert "\n" not in str(info.value)
    if how == "rename":  # and through the command line: exit 2, one line, nothing written
        line = assert_user_error(invoke("render", "a cat", "--model", path, "--motion-module", tiny_sdxl_motion,
                                        "-o", tmp_path / "out.gif", "-q"))  # fmt: skip
        assert line.startswith(f"{path}: keys do not match the model") and not (tmp_path / "out.gif").exists()


def test_sdxl_assets_ship_settings_and_reuse_the_sd15_vocabulary():
    from videodiff.weights.ldm_layout import ASSETS, SDXL_ASSETS

    for name in ("unet", "vae", "text_encoder", "text_encoder_2"):
        assert (SDXL_ASSETS / name / "config.json").is_file(), name
    assert (SDXL_ASSETS / "scheduler" / "scheduler_config.json").is_file()
    for name in ("tokenizer", "tokenizer_2"):  # settings only: the BPE files are sd15's, not a second copy
        assert (SDXL_ASSETS / name / "tokenizer_config.json").is_file()
        assert not (SDXL_ASSETS / name / "vocab.json").exists() and not (SDXL_ASSETS / name / "merges.txt").exists()
    assert shipped_tokenizer("tokenizer", "sdxl").get_vocab() == shipped_tokenizer().get_vocab()
    assert (ASSETS / "tokenizer" / "vocab.json").is_file()


def test_ema_weights_are_used_when_present(sgm, originals, tmp_path):
    state = dict(sgm)
    for key, tensor in sgm.items():
        if key.startswith(UNET):
            state["model_ema." + "".join(key.split(".")[1:])] = tensor + 0.01
    parts = load_single_file(_save(state, tmp_path / "ema.safetensors"))
    torch.testing.assert_close(parts["unet"].conv_in.weight, originals["unet"].conv_in.weight + 0.01)
    torch.testing.assert_close(
        parts["unet"].add_embedding.linear_2.bias, originals["unet"].add_embedding.linear_2.bias + 0.01
    )


def test_an_ldm_vae_file_for_an_sdxl_model_takes_the_sdxl_vae_settings(xl_file, tiny_sdxl_motion, sgm, tmp_path):
    """``--vae`` with an LDM-layout VAE file (no config of its own) on an SDXL model: SDXL's scaling factor and
    ``force_upcast``, not SD1.5's."""
    from videodiff.weights.models import load_model_parts

    vae = _save(
        {k.removeprefix(VAE): v for k, v in sgm.items() if k.startswith(VAE)}, tmp_path / "sdxl_vae.safetensors"
    )
    parts = load_model_parts(str(xl_file), str(tiny_sdxl_motion), vae=str(vae))
    assert parts.family.name == "sdxl" and parts.text_encoder_2 is not None
    assert (parts.vae.config.scaling_factor, parts.vae.config.force_upcast) == (0.13025, True)


def test_the_memory_estimate_reads_an_sdxl_single_file_as_the_model_it_loads(xl_file, tiny_sdxl_motion, tmp_path):
    """Before torch loads, the header and the shipped configs give the estimate what the loaded models' configs
    give it in a folder (first attention level, widths, heads, the model's own size), not SD1.5's figures."""
    from dataclasses import replace

    from videodiff.config import RenderConfig
    from videodiff.heap import Architecture
    from videodiff.render import model_architecture

    from_file = model_architecture(RenderConfig(model=str(xl_file), motion_module=str(tiny_sdxl_motion)))
    parts = load_single_file(xl_file)
    folder = tmp_path / "configs-only"
    for name in ("unet", "vae"):
        parts[name].save_config(folder / name)
    from_folder = model_architecture(RenderConfig(model=str(folder), motion_module=str(tiny_sdxl_motion)))
    assert replace(from_file, parameters=0) == replace(from_folder, parameters=0)
    assert (from_file.attention_level, from_file.unet_width, from_file.size) == (1, 32, 256)  # 128 latents x 2
    assert from_file != replace(Architecture(), parameters=from_file.parameters, motion_heads=from_file.motion_heads)
    assert from_file.parameters > from_folder.parameters  # the file's own tensors, counted from its header


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("--sparsectrl", "NET", "--sparse-at", "AT"), "SparseCtrl is not supported for SDXL models yet"),
        (("--ip-adapter", "ADAPTER", "--ip-image", "PIC"), "SD1.5 (32-wide cross-attention); the model is SDXL"),
    ],
)
def test_sd15_add_ons_on_an_sdxl_single_file_are_refused_before_it_loads(
    xl_file, tiny_sdxl_motion, tiny_model, tmp_path, monkeypatch, args, expected
):
    """SparseCtrl by name; an SD1.5 IP-Adapter (its header against the file's cross-attention keys) naming both
    families."""
    from test_sdxl import add_on_refused_before_loading

    assert expected in add_on_refused_before_loading(xl_file, tiny_sdxl_motion, args, tiny_model, tmp_path, monkeypatch)
