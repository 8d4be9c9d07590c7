"""videodiff.weights.safetensors_header: the one header reader (json and struct, no torch)."""

from __future__ import annotations

import json
import struct
import subprocess
import sys

import pytest
import torch
from safetensors.torch import save_file

from videodiff.errors import UserError
from videodiff.weights.safetensors_header import read_header


def test_header_matches_what_was_saved(tmp_path):
    path = tmp_path / "x.safetensors"
    save_file({"b": torch.zeros(2, 3, dtype=torch.float16), "a": torch.zeros(4, dtype=torch.int64)}, str(path),
              metadata={"k": "v"})  # fmt: skip
    header = read_header(path)
    assert list(header.shapes) == ["a", "b"]
    assert header.shapes == {"a": (4,), "b": (2, 3)}
    assert header.dtypes == {"a": "int64", "b": "float16"}
    assert header.metadata == {"k": "v"}


def _raw(path, header: bytes, length: int | None = None, data: bytes = b"") -> None:
    path.write_bytes(struct.pack("<Q", len(header) if length is None else length) + header + data)


@pytest.mark.parametrize(
    "write, reason",
    [
        (lambda p: p.write_bytes(b"abc"), "bad header size"),
        (lambda p: _raw(p, b"{}", length=1 << 40), "bad header size"),
        (lambda p: _raw(p, b"{not json"), "not a readable safetensors file"),
        (lambda p: _raw(p, b"[1, 2]"), "not a JSON object"),
        (lambda p: _raw(p, json.dumps({"a": {"dtype": "F32", "shape": [4]}}).encode()), "data_offsets"),
        (
            lambda p: _raw(p, json.dumps({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}).encode()),
            "truncated",
        ),
        (lambda p: _raw(p, json.dumps({"__metadata__": {"k": 1}}).encode()), "map of strings"),
    ],
)
def test_bad_headers_are_one_line_user_errors(tmp_path, write, reason):
    path = tmp_path / "bad.safetensors"
    write(path)
    with pytest.raises(UserError, match=reason) as info:
        read_header(path)
    assert "\n" not in str(info.value) and "not a readable safetensors file" in str(info.value)


def test_missing_file(tmp_path):
    with pytest.raises(UserError, match="no such file"):
        read_header(tmp_path / "nope.safetensors")


def test_reading_headers_imports_no_torch():
    modules = "videodiff.weights.safetensors_header, videodiff.weights.hub, videodiff.config, videodiff.media.video"
    code = f"import sys, {modules}, videodiff.media.clips; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
