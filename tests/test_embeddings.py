"""Textual-inversion embeddings on the tiny model: each format, multi-vector tokens, refusals."""

from __future__ import annotations

import pathlib
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from videodiff.errors import UserError
from videodiff.weights.embeddings import MULTI_TOKENS_ATTR, describe_embedding, expand_prompt, load_embedding

DIM = 32  # the tiny text encoder's width


def load_text(tiny_model: Path):
    from transformers import CLIPTextModel, CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(tiny_model / "tokenizer")
    text_encoder = CLIPTextModel.from_pretrained(tiny_model / "text_encoder").eval()
    return tokenizer, text_encoder


def vectors(n: int, dim: int = DIM, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, dim, generator=torch.Generator().manual_seed(seed))


def check_rows(tokenizer, text_encoder, tokens: list[str], vecs: torch.Tensor) -> None:
    ids = tokenizer.convert_tokens_to_ids(tokens)
    assert len(set(ids)) == len(tokens) and all(i >= 532 for i in ids)  # new ids past the tiny vocabulary
    weight = text_encoder.get_input_embeddings().weight
    assert weight.shape[0] == len(tokenizer)
    for i, row in zip(ids, vecs):
        assert torch.equal(weight[i], row)


def encoded_ids(tokenizer, prompt: str) -> list[int]:
    return tokenizer(prompt).input_ids[1:-1]


def test_a1111_pt(tiny_model, tmp_path):
    tokenizer, te = load_text(tiny_model)
    vec = vectors(1)
    path = tmp_path / "shinytok.pt"
    torch.save(
        {
            "string_to_token": {"*": 265},
            "string_to_param": {"*": torch.nn.Parameter(vec.clone())},
            "name": "shiny-v2",
            "step": 1500,
            "sd_checkpoint": "abcdef",
            "sd_checkpoint_name": "base",
        },
        str(path),
    )
    tokens = load_embedding(tokenizer, te, path)
    assert tokens == ["shinytok"]  # A1111 names an embedding by its file name
    check_rows(tokenizer, te, tokens, vec)
    new_id = tokenizer.convert_tokens_to_ids("shinytok")
    assert new_id in encoded_ids(tokenizer, "a ShinyTok cat")
    info = describe_embedding(path)
    assert info["format"] == "a1111" and info["token"] == "shinytok" and info["name"] == "shiny-v2"
    assert info["vectors"] == 1 and info["dims"] == DIM


def test_a1111_safetensors_multi_vector(tiny_model, tmp_path):
    tokenizer, te = load_text(tiny_model)
    vec = vectors(3, seed=1)
    path = tmp_path / "mystyle.safetensors"
    save_file({"emb_params": vec}, str(path))
    tokens = load_embedding(tokenizer, te, path)
    assert tokens == ["mystyle", "mystyle_1", "mystyle_2"]
    check_rows(tokenizer, te, tokens, vec)
    mapping = getattr(tokenizer, MULTI_TOKENS_ATTR)
    assert mapping == {"mystyle": tokens}
    prompt = expand_prompt("a cat, mystyle, moving", mapping)
    assert prompt == "a cat, mystyle mystyle_1 mystyle_2, moving"
    assert expand_prompt(prompt, mapping) == prompt  # expanding twice changes nothing
    assert expand_prompt("MyStyle cat", mapping) == "mystyle mystyle_1 mystyle_2 cat"
    assert expand_prompt("mystyles mystyle_1", mapping) == "mystyles mystyle_1"  # whole words only
    ids = tokenizer.convert_tokens_to_ids(tokens)
    got = encoded_ids(tokenizer, prompt)
    assert got[got.index(ids[0]) : got.index(ids[0]) + 3] == ids
    info = describe_embedding(path)
    assert info["format"] == "a1111" and info["vectors"] == 3 and info["token"] == "mystyle"


def test_diffusers_formats(tiny_model, tmp_path):
    tokenizer, te = load_text(tiny_model)
    vec = vectors(1, seed=2)[0]
    st = tmp_path / "learned_embeds.safetensors"
    save_file({"<cat-toy>": vec}, str(st))
    assert load_embedding(tokenizer, te, st) == ["<cat-toy>"]
    check_rows(tokenizer, te, ["<cat-toy>"], vec[None])
    assert tokenizer.convert_tokens_to_ids("<cat-toy>") in encoded_ids(tokenizer, "a <cat-toy>, moving")
    assert describe_embedding(st)["token"] == "<cat-toy>"

    vec2 = vectors(2, seed=3)
    binary = tmp_path / "learned_embeds.bin"
    torch.save({"<toy-car>": vec2}, str(binary))
    assert load_embedding(tokenizer, te, binary) == ["<toy-car>", "<toy-car>_1"]
    check_rows(tokenizer, te, ["<toy-car>", "<toy-car>_1"], vec2)
    # earlier embeddings keep their rows through the second resize
    check_rows(tokenizer, te, ["<cat-toy>"], vec[None])
    mapping = getattr(tokenizer, MULTI_TOKENS_ATTR)
    assert set(mapping) == {"<cat-toy>", "<toy-car>"}
    assert expand_prompt("a<toy-car>!", mapping) == "a<toy-car> <toy-car>_1!"


def test_user_token_overrides(tiny_model, tmp_path):
    tokenizer, te = load_text(tiny_model)
    path = tmp_path / "learned_embeds.safetensors"
    vec = vectors(1, seed=4)
    save_file({"<x>": vec}, str(path))
    assert load_embedding(tokenizer, te, path, token="zorblax") == ["zorblax"]
    check_rows(tokenizer, te, ["zorblax"], vec)


def test_encoding_changes_with_the_new_token(tiny_model, tmp_path):
    from videodiff.text import encode_prompts

    tokenizer, te = load_text(tiny_model)
    path = tmp_path / "glowy.safetensors"
    save_file({"emb_params": vectors(1, seed=5) * 5}, str(path))
    before = encode_prompts(tokenizer, te, ["a glowy cat"], "cpu")
    load_embedding(tokenizer, te, path)
    after = encode_prompts(tokenizer, te, ["a glowy cat"], "cpu")
    assert not torch.allclose(before, after)


@pytest.mark.parametrize(("dim", "hint"), [(1024, "SD2"), (1280, "SDXL"), (768, "")])
def test_dimension_mismatch(tiny_model, tmp_path, dim, hint):
    tokenizer, te = load_text(tiny_model)
    size = len(tokenizer)
    path = tmp_path / "wide.safetensors"
    save_file({"emb_params": vectors(2, dim=dim)}, str(path))
    with pytest.raises(UserError, match=rf"wide\.safetensors.*{dim} dims.*{hint}"):
        load_embedding(tokenizer, te, path)
    assert len(tokenizer) == size and te.get_input_embeddings().weight.shape[0] == size


def test_sdxl_embedding_refused(tiny_model, tmp_path):
    tokenizer, te = load_text(tiny_model)
    path = tmp_path / "xl.safetensors"
    save_file({"clip_l": vectors(1, 768), "clip_g": vectors(1, 1280)}, str(path))
    with pytest.raises(UserError, match=r"xl\.safetensors.*SDXL"):
        load_embedding(tokenizer, te, path)
    assert describe_embedding(path)["base"] == "sdxl"


def test_token_already_in_vocabulary(tiny_model, tmp_path):
    tokenizer, te = load_text(tiny_model)
    path = tmp_path / "learned_embeds.safetensors"
    save_file({"cat": vectors(1)}, str(path))  # "cat" is a word of the tiny vocabulary
    with pytest.raises(UserError, match="learned_embeds.safetensors.*'cat'.*vocabulary"):
        load_embedding(tokenizer, te, path)
    ok = tmp_path / "sparkle.safetensors"
    save_file({"emb_params": vectors(1)}, str(ok))
    load_embedding(tokenizer, te, ok)
    with pytest.raises(UserError, match="'sparkle'.*vocabulary"):
        load_embedding(tokenizer, te, ok)  # twice


class _Touch:
    def __init__(self, target: Path):
        self.target = target

    def __reduce__(self):
        return (pathlib.Path.touch, (self.target,))


def test_pickle_with_code_is_refused(tiny_model, tmp_path):
    tokenizer, te = load_text(tiny_model)
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"string_to_param": {"*": _Touch(marker)}, "name": "evil"}, str(path))
    with pytest.raises(UserError, match=r"evil\.pt: refused"):
        load_embedding(tokenizer, te, path)
    with pytest.raises(UserError, match="refused"):
        describe_embedding(path)
    assert not marker.exists()

    # the payload is real: an unrestricted load would have created the file
    control = tmp_path / "control"
    torch.save({"x": _Touch(control)}, str(tmp_path / "control.pt"))
    torch.load(str(tmp_path / "control.pt"), weights_only=False)
    assert control.exists()


def test_bad_files(tiny_model, tmp_path):
    tokenizer, te = load_text(tiny_model)
    with pytest.raises(UserError, match="no such file"):
        load_embedding(tokenizer, te, tmp_path / "missing.pt")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a safetensors file")
    with pytest.raises(UserError, match="junk.safetensors"):
        load_embedding(tokenizer, te, junk)
    two = tmp_path / "two.safetensors"
    save_file({"<a>": vectors(1), "<b>": vectors(1)}, str(two))
    with pytest.raises(UserError, match="2 embeddings"):
        load_embedding(tokenizer, te, two, token="single")
