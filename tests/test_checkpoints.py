"""Strict loading: every tensor checked, whole or as a subset (fine-tuned tensors shipped on their own)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from videodiff.errors import UserError
from videodiff.weights.checkpoints import load_strict


def model() -> nn.Module:
    return nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))


def test_whole_state_dict_loads_and_missing_keys_are_refused():
    source, target = model(), model()
    load_strict(target, source.state_dict(), "x.safetensors")
    assert all(torch.equal(a, b) for a, b in zip(source.state_dict().values(), target.state_dict().values()))
    partial = {"0.weight": torch.zeros(4, 3)}
    with pytest.raises(UserError, match="x.safetensors: keys do not match the model: 3 missing"):
        load_strict(target, partial, "x.safetensors")


def test_subset_loads_only_its_tensors_but_checks_each_one():
    target = model()
    before = {k: v.clone() for k, v in target.state_dict().items()}
    load_strict(target, {"1.bias": torch.ones(2)}, "spatial.safetensors", subset=True)
    assert torch.equal(target.state_dict()["1.bias"], torch.ones(2))
    assert all(torch.equal(target.state_dict()[k], before[k]) for k in before if k != "1.bias")
    with pytest.raises(UserError, match="1 unexpected"):
        load_strict(target, {"2.weight": torch.ones(2)}, "spatial.safetensors", subset=True)
    with pytest.raises(UserError, match=r"1.bias has shape \(3,\), the model expects \(2,\)"):
        load_strict(target, {"1.bias": torch.ones(3)}, "spatial.safetensors", subset=True)
