#!/usr/bin/env python
"""Build the CLIP tokenizer files shipped in ``videodiff/assets/sd15/tokenizer/``.

Where the vocabulary comes from
-------------------------------
OpenAI's CLIP BPE table ``bpe_simple_vocab_16e6.txt.gz`` (MIT licence, Copyright (c) 2021
OpenAI; https://github.com/openai/CLIP). videodiff takes the byte-identical copy that the
``open-clip-torch`` wheel on PyPI ships (``open_clip/bpe_simple_vocab_16e6.txt.gz``, itself
MIT-licensed), so no network access is needed at run time and open-clip-torch is *not* a
dependency of videodiff. The file used for the committed assets has SHA-256
``924691ac288e54409236115652ad4aa250f48203de50a9e4722a6ecd48d6804a`` (open-clip-torch 3.3.0).

To regenerate::

    pip download --no-deps open-clip-torch -d /tmp/oc
    python scripts/make_clip_vocab.py /tmp/oc/open_clip_torch-*.whl

(the argument may also be the extracted ``.txt.gz``). The script rebuilds ``vocab.json`` and
``merges.txt`` exactly as CLIP's ``SimpleTokenizer`` builds its tables (the first 48,894
merges; the 256 byte symbols, the same with ``</w>``, the joined merges and the two special
tokens: 49,408 entries), writes ``tokenizer_config.json`` and ``special_tokens_map.json``, and
checks with transformers' ``CLIPTokenizer`` that "a photo of a cat" gives the well-known ids.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import sys
import zipfile
from pathlib import Path

from videodiff.tiny import bytes_to_unicode

EXPECTED_SHA256 = "924691ac288e54409236115652ad4aa250f48203de50a9e4722a6ecd48d6804a"
MEMBER = "open_clip/bpe_simple_vocab_16e6.txt.gz"
OUT = Path(__file__).resolve().parents[1] / "videodiff" / "assets" / "sd15" / "tokenizer"
N_MERGES = 49152 - 256 - 2  # CLIP keeps lines[1 : 49152 - 256 - 2 + 1]
BOS, EOS = "<|startoftext|>", "<|endoftext|>"
CHECK = ("a photo of a cat", [49406, 320, 1125, 539, 320, 2368, 49407])


def read_gz(source: Path) -> bytes:
    """The compressed vocabulary, from a wheel or from the ``.txt.gz`` itself."""
    if source.suffix == ".whl":
        with zipfile.ZipFile(source) as wheel:
            return wheel.read(MEMBER)
    return source.read_bytes()


def build(gz: bytes) -> tuple[dict[str, int], list[str]]:
    lines = gzip.decompress(gz).decode("utf-8").split("\n")
    merges = lines[1 : N_MERGES + 1]
    if len(merges) != N_MERGES or any(len(m.split(" ")) != 2 for m in merges):
        raise SystemExit("unexpected vocabulary file: the merges are not 48,894 pairs")
    alphabet = list(bytes_to_unicode().values())
    vocab = alphabet + [c + "</w>" for c in alphabet] + ["".join(m.split(" ")) for m in merges] + [BOS, EOS]
    if len(vocab) != 49408 or len(set(vocab)) != len(vocab):
        raise SystemExit(f"unexpected vocabulary: {len(vocab)} entries, {len(set(vocab))} distinct")
    return {tok: i for i, tok in enumerate(vocab)}, merges


def write(vocab: dict[str, int], merges: list[str], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (out / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    special = {"bos_token": BOS, "eos_token": EOS, "unk_token": EOS, "pad_token": EOS}
    config = {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": 77,
        "do_lower_case": True,
        "add_prefix_space": False,
        "errors": "replace",
        **special,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    (out / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n", encoding="utf-8")


def check(out: Path) -> None:
    from transformers import CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(out)
    text, expected = CHECK
    ids = tokenizer(text).input_ids
    if ids != expected or len(tokenizer) != 49408:
        raise SystemExit(f"check failed: {text!r} -> {ids} (expected {expected}), {len(tokenizer)} tokens")
    print(f"ok: {text!r} -> {ids}; {len(tokenizer)} tokens in {out}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", type=Path, help="open-clip-torch wheel, or bpe_simple_vocab_16e6.txt.gz")
    parser.add_argument("--out", type=Path, default=OUT, help=f"output folder (default: {OUT})")
    args = parser.parse_args(argv)
    gz = read_gz(args.source)
    digest = hashlib.sha256(gz).hexdigest()
    if digest != EXPECTED_SHA256:
        print(f"warning: {MEMBER} has SHA-256 {digest}, not the known {EXPECTED_SHA256}", file=sys.stderr)
    vocab, merges = build(gz)
    write(vocab, merges, args.out)
    check(args.out)


if __name__ == "__main__":
    main()
