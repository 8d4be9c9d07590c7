"""SDXL textual-inversion embeddings: ``clip_l`` vectors into the first text encoder, ``clip_g`` ones into the second,
under the same token; the wrong family's embedding is refused in one line."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from videodiff.errors import UserError
from videodiff.pipeline import prompts
from videodiff.weights.models import load_model_parts


def embedding(path, vectors: int = 2):
    g = torch.Generator().manual_seed(4)
    tensors = {"clip_l": torch.randn(vectors, 32, generator=g), "clip_g": torch.randn(vectors, 32, generator=g)}
    save_file(tensors, str(path))
    return tensors


def test_an_sdxl_embedding_reaches_both_text_encoders(tiny_sdxl_model, tiny_sdxl_motion, tmp_path):
    from videodiff import load_pipeline

    tensors = embedding(tmp_path / "shiny.safetensors")
    pipe = load_pipeline(str(tiny_sdxl_model), str(tiny_sdxl_motion), device="cpu",
                         embedding=(str(tmp_path / "shiny.safetensors"),))  # fmt: skip
    for tokenizer, encoder, key in zip(pipe.parts.tokenizers, pipe.text_encoders, ("clip_l", "clip_g")):
        ids = tokenizer.convert_tokens_to_ids(["shiny", "shiny_1"])
        torch.testing.assert_close(encoder.get_input_embeddings().weight[ids], tensors[key])
    with_token, pooled = prompts.encode(pipe, "a shiny circle")
    plain, plain_pooled = prompts.encode(pipe, "a circle")
    assert with_token.shape == plain.shape and not torch.equal(pooled, plain_pooled)


def test_the_wrong_familys_embedding_is_refused_in_one_line(tiny_sdxl_model, tiny_sdxl_motion, tiny_model, tiny_motion,
                                                            tmp_path):  # fmt: skip
    embedding(tmp_path / "xl.safetensors")
    with pytest.raises(UserError, match="an SDXL embedding .*this model is SD1.5-family"):
        load_model_parts(str(tiny_model), str(tiny_motion), embeddings=(str(tmp_path / "xl.safetensors"),))
    save_file({"emb_params": torch.randn(1, 32)}, str(tmp_path / "sd15.safetensors"))
    with pytest.raises(UserError, match="not an SDXL embedding .*this model is SDXL$"):
        load_model_parts(str(tiny_sdxl_model), str(tiny_sdxl_motion), embeddings=(str(tmp_path / "sd15.safetensors"),))
