"""Motion modules described from their keys and shapes alone: layout, version, config, frame limit.

Everything here works on names and shapes (a safetensors header, or the shapes of a state dict) and
imports no torch, so the checks before a render (``--window`` against the positional encoding) and
``videodiff inspect`` answer at once. Loading, conversion and MotionLoRA merging, which need tensors,
are in :mod:`videodiff.weights.motion_formats`, which re-exports these names.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from videodiff import families
from videodiff.errors import UserError
from videodiff.weights.hub import WEIGHT_NAMES, locate
from videodiff.weights.safetensors_header import read_header

PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")  # the same as videodiff.weights.checkpoints'

Format = Literal["original", "diffusers", "hotshot"]
Version = Literal["v1", "v2", "v3", "custom", "sdxl", "hotshot-xl"]
VERSION_NAMES = {"sdxl": "AnimateDiff-SDXL", "hotshot-xl": "Hotshot-XL"}  # the rest: "AnimateDiff <version>"

# What tells the released SD1.5 motion modules apart: positional length and a mid block.
VERSION_CONFIGS: dict[str, dict[str, Any]] = {
    "v1": {"motion_max_seq_length": 24, "use_motion_mid_block": False},
    "v2": {"motion_max_seq_length": 32, "use_motion_mid_block": True},
    "v3": {"motion_max_seq_length": 32, "use_motion_mid_block": False},
}
DEFAULT_HEADS = 8  # every original AnimateDiff motion module; heads leave no trace in the weights
DEFAULT_GROUPS = 32
WEIGHT_SUFFIXES = (".safetensors", *PICKLE_SUFFIXES)

_BLOCK_RE = re.compile(
    r"^(?P<block>(?:down_blocks|up_blocks)\.(?P<index>\d+)|mid_block)\.motion_modules\.(?P<module>\d+)\."
)
_TRANSFORMER_RE = re.compile(r"^transformer_blocks\.(\d+)\.(.+)$")
TEMPORAL_PREFIX = "temporal_transformer."
POS_EMBED = "pos_embed.pe"
# Hotshot-XL's U-Net (hotshot_xl/models/unet_blocks.py) holds its temporal transformers as ``temporal_attentions.N``
# of each block, laid out inside as AnimateDiff's, its sinusoidal table a buffer ``pos_encoder.positional_encoding``
_HOTSHOT_RE = re.compile(r"^((?:down_blocks|up_blocks)\.\d+)\.temporal_attentions\.(\d+)\.(.+)$")
WRAPPER_PREFIXES = re.compile(r"^(?:module\.|base_model\.model\.|unet\.)+")


@dataclass(frozen=True)
class MotionInfo:
    """What a motion-module file holds, as detected from its weights."""

    format: Format
    version: Version
    max_frames: int
    has_mid_block: bool
    params: int
    dtype: str
    source: str
    norm_over_frames: bool  # original v1 normalised its spatial ResNets over all frames; the caller applies it
    config: dict[str, Any] = field(default_factory=dict)  # the MotionStack (MotionAdapter) config used


# ---------------------------------------------------------------------------------------------------------------------
# key layouts


def original_key_to_ours(key: str) -> tuple[str, int | None] | None:
    """Our key for an original-layout key, and the attention block a ``pos_encoder.pe`` came from; None: unknown."""
    match = _BLOCK_RE.match(key)
    if match is None:
        return None
    head, rest = key[: match.end()], key[match.end() :]
    if not rest.startswith(TEMPORAL_PREFIX):
        return None
    rest = rest[len(TEMPORAL_PREFIX) :]
    tb = _TRANSFORMER_RE.match(rest)
    if tb is None:  # norm, proj_in, proj_out of the temporal transformer
        return head + rest, None
    n, inner = tb.groups()
    pe = re.fullmatch(r"attention_blocks\.(\d+)\.pos_encoder\.pe", inner)
    if pe is not None:
        return f"{head}transformer_blocks.{n}.{POS_EMBED}", int(pe[1])
    inner = re.sub(r"^attention_blocks\.([01])\.", lambda m: f"attn{int(m[1]) + 1}.", inner)
    inner = re.sub(r"^norms\.([01])\.", lambda m: f"norm{int(m[1]) + 1}.", inner)
    inner = re.sub(r"^ff_norm\.", "norm3.", inner)
    if inner.startswith(("attention_blocks.", "norms.")):  # a third attention block: not an SD1.5 AnimateDiff module
        return None
    return f"{head}transformer_blocks.{n}.{inner}", None


def hotshot_key_to_original(key: str) -> str | None:
    """The original-AnimateDiff-layout key of a Hotshot-XL key (``down_blocks.0.temporal_attentions.1.norm.weight``
    -> ``down_blocks.0.motion_modules.1.temporal_transformer.norm.weight``); None: not a Hotshot-XL key."""
    match = _HOTSHOT_RE.match(key)
    if match is None:
        return None
    block, index, rest = match.groups()
    rest = re.sub(r"\.pos_encoder\.positional_encoding$", ".pos_encoder.pe", rest)
    return f"{block}.motion_modules.{index}.{TEMPORAL_PREFIX}{rest}"


def _ours_to_original(key: str) -> list[str]:
    """The original-layout key(s) for one of ours (``pos_embed.pe`` becomes one per attention block)."""
    match = _BLOCK_RE.match(key)
    if match is None:
        raise ValueError(f"not a motion-module key: {key}")
    head, rest = key[: match.end()] + TEMPORAL_PREFIX, key[match.end() :]
    tb = _TRANSFORMER_RE.match(rest)
    if tb is None:
        return [head + rest]
    n, inner = tb.groups()
    prefix = f"{head}transformer_blocks.{n}."
    if inner == POS_EMBED:
        return [f"{prefix}attention_blocks.{a}.pos_encoder.pe" for a in (0, 1)]
    inner = re.sub(r"^attn([12])\.", lambda m: f"attention_blocks.{int(m[1]) - 1}.", inner)
    inner = re.sub(r"^norm([12])\.", lambda m: f"norms.{int(m[1]) - 1}.", inner)
    inner = re.sub(r"^norm3\.", "ff_norm.", inner)
    return [prefix + inner]


def _strip_wrapper(keys: list[str]) -> str:
    """A prefix (``module.``, ...) every key carries, as saved by wrapped training code; '' if none."""
    if not keys:
        return ""
    match = WRAPPER_PREFIXES.match(keys[0])
    prefix = match.group(0) if match else ""
    return prefix if prefix and all(k.startswith(prefix) for k in keys) else ""


def _looks_like_lora(keys: list[str]) -> bool:
    return any(re.search(r"(_lora\.|\.lora_[AB]\.|\.lora\.(down|up)\.)", k) for k in keys[:200])


def entries_to_ours(entries: Mapping[str, Any], source: str) -> tuple[Format, dict[str, Any]]:
    """Detect the layout of a state dict (tensors or shapes) and rename it to ours; pe duplicates dropped."""
    keys = list(entries)
    prefix = _strip_wrapper(keys)
    if prefix:
        entries = {k[len(prefix) :]: v for k, v in entries.items()}
        keys = list(entries)
    if not keys:
        raise UserError(f"{source}: holds no tensors")
    if _looks_like_lora(keys):
        raise UserError(f"{source}: is a LoRA, not a motion module; pass it as a MotionLoRA (e.g. --motion-lora)")
    hotshot = any(".temporal_attentions." in k for k in keys)
    if hotshot:
        renamed = {hotshot_key_to_original(k) or k: v for k, v in entries.items()}
        return "hotshot", entries_to_ours(renamed, source)[1]
    original = any(TEMPORAL_PREFIX in k for k in keys)
    if not original:
        stray = [k for k in keys if _BLOCK_RE.match(k) is None]
        if len(stray) == len(keys):
            raise UserError(f"{source}: not a motion module (no motion_modules keys; e.g. {keys[0]})")
        if stray:
            raise UserError(f"{source}: {len(stray)} keys are not motion-module weights (e.g. {stray[0]})")
        return "diffusers", dict(entries)
    out: dict[str, Any] = {}
    pes: dict[str, Any] = {}
    unknown: list[str] = []
    for key, value in entries.items():
        mapped = original_key_to_ours(key)
        if mapped is None:
            unknown.append(key)
            continue
        ours, attention = mapped
        if attention is None:
            out[ours] = value
            continue
        if attention not in (0, 1):
            unknown.append(key)
            continue
        if ours in pes:
            a, b = shape_of(pes[ours]), shape_of(value)
            if len(a) != 3 or a[:2] != b[:2]:
                raise UserError(
                    f"{source}: the two positional encodings of {ours.rsplit('.', 2)[0]} differ in length ({a} vs {b})"
                )
            if attention == 0:  # keep the first attention block's table (they are the same table)
                pes[ours] = value
        else:
            pes[ours] = value
    if unknown:
        raise UserError(
            f"{source}: {len(unknown)} keys the SD1.5 AnimateDiff layout lacks (e.g. {unknown[0]}); "
            "not a supported motion module"
        )
    out.update(pes)
    return "original", out


def to_original_state_dict(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """Our/diffusers layout -> original AnimateDiff layout (the positional table written for both attentions)."""
    out: dict[str, Any] = {}
    for key, tensor in state_dict.items():
        names = _ours_to_original(key)
        for i, name in enumerate(names):
            out[name] = tensor if i == 0 else tensor.clone()  # safetensors refuses shared storage
    return out


# ---------------------------------------------------------------------------------------------------------------------
# structure and version detection


def shape_of(value: Any) -> tuple[int, ...]:
    return tuple(value.shape) if hasattr(value, "shape") else tuple(value)


def _compact(values: list[int]) -> int | list[int]:
    return values[0] if len(set(values)) == 1 else values


def _count(keys: list[str], prefix: str, pattern: str, source: str) -> int:
    """How many consecutive indices ``pattern`` finds right after ``prefix``; a gap is an error."""
    found = {int(m[1]) for k in keys if k.startswith(prefix) and (m := re.match(pattern, k[len(prefix) :]))}
    if found != set(range(len(found))):
        raise UserError(f"{source}: numbering gap under {prefix} ({sorted(found)}); not a complete motion module")
    return len(found)


def infer_structure(shapes: Mapping[str, tuple[int, ...]], source: str) -> tuple[dict[str, Any], int | None]:
    """A MotionStack config from the key names and shapes of an our-layout state dict, and the positional length.

    Heads and norm groups leave no trace in weights: 8 and 32 (every AnimateDiff release) are assumed.
    """
    keys = list(shapes)
    n_down = _count(keys, "down_blocks.", r"(\d+)\.", source)
    n_up = _count(keys, "up_blocks.", r"(\d+)\.", source)
    channels, layers, t_layers = [], [], []
    for i in range(n_down):
        prefix = f"down_blocks.{i}.motion_modules."
        proj_in = shapes.get(f"{prefix}0.proj_in.weight")
        if proj_in is None or len(proj_in) != 2:
            raise UserError(f"{source}: no usable {prefix}0.proj_in.weight; not a motion module")
        channels.append(int(proj_in[0]))
        layers.append(_count(keys, prefix, r"(\d+)\.", source))
        t_layers.append(_count(keys, f"{prefix}0.", r"transformer_blocks\.(\d+)\.", source))
    mid_layers = _count(keys, "mid_block.motion_modules.", r"(\d+)\.", source)
    mid_t_layers = _count(keys, "mid_block.motion_modules.0.", r"transformer_blocks\.(\d+)\.", source)
    if n_down == 0:
        raise UserError(f"{source}: no down-block motion modules; not a motion module")
    if n_up != n_down:
        raise UserError(f"{source}: {n_down} down blocks but {n_up} up blocks of motion modules")
    families.require_supported(families.of_motion_channels(channels, mid_layers > 0), f"{source}: a motion module for")
    lengths = {s[1] for k, s in shapes.items() if k.endswith(POS_EMBED) and len(s) == 3}
    if len(lengths) > 1:
        raise UserError(f"{source}: positional encodings of different lengths {sorted(lengths)}")
    pe_len = lengths.pop() if lengths else None
    config = {
        "block_out_channels": channels,
        "motion_layers_per_block": _compact(layers),
        "motion_transformer_layers_per_block": _compact(t_layers),
        "motion_mid_block_layers_per_block": mid_layers or 1,
        "motion_transformer_layers_per_mid_block": mid_t_layers or 1,
        "motion_num_attention_heads": DEFAULT_HEADS,
        "motion_norm_num_groups": DEFAULT_GROUPS,
        "motion_max_seq_length": pe_len or 32,
        "use_motion_mid_block": mid_layers > 0,
    }
    return config, pe_len


def version_of(has_mid_block: bool, max_frames: int, fmt: Format = "original", channels=()) -> Version:
    """The release a motion module looks like: an SDXL family's (three blocks) by its layout, an SD1.5 one's by its
    positional length and mid block."""
    if families.of_motion_channels(channels, has_mid_block) is families.SDXL:
        return "hotshot-xl" if fmt == "hotshot" else "sdxl"
    for name, cfg in VERSION_CONFIGS.items():
        if (cfg["use_motion_mid_block"], cfg["motion_max_seq_length"]) == (has_mid_block, max_frames):
            return name  # type: ignore[return-value]
    return "custom"


def read_motion_config(motion_config: str) -> dict[str, Any]:
    """``v1``/``v2``/``v3`` (that release's settings) or a MotionAdapter ``config.json`` path, as config overrides."""
    if motion_config in VERSION_CONFIGS:
        return dict(VERSION_CONFIGS[motion_config])
    path = Path(motion_config).expanduser()
    if path.is_dir():
        path = path / "config.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"--motion-config {motion_config!r}: neither v1, v2, v3 nor an existing config.json") from None
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: not a MotionAdapter config (expected a JSON object)")
    if data.get("_class_name", "MotionAdapter") != "MotionAdapter":
        raise UserError(f"{path}: configures a {data.get('_class_name')}, not a MotionAdapter")
    return {k: v for k, v in data.items() if not k.startswith("_") and not (k == "conv_in_channels" and v is None)}


def _check_config(config: dict[str, Any], source: str) -> None:
    channels = list(config.get("block_out_channels", []))
    mid = config.get("use_motion_mid_block", True)  # diffusers' MotionAdapter default
    families.require_supported(families.of_motion_channels(channels, mid), f"{source}: a motion module for")
    heads = config.get("motion_num_attention_heads", DEFAULT_HEADS)
    heads = [heads] * len(channels) if isinstance(heads, int) else list(heads)
    groups = config.get("motion_norm_num_groups", DEFAULT_GROUPS)
    for ch, h in zip(channels, heads):
        if h <= 0 or ch % h or ch % groups:
            raise UserError(
                f"{source}: {ch} channels cannot be split into {h} heads and {groups} norm groups; "
                "pass --motion-config with the adapter's config.json"
            )


def dtype_name(dtype: Any) -> str:
    if str(dtype).startswith("torch."):  # a torch.dtype, recognised without importing torch
        return str(dtype).removeprefix("torch.")
    return {"F16": "float16", "F32": "float32", "BF16": "bfloat16", "F64": "float64"}.get(str(dtype), str(dtype))


def _main_dtype(dtypes: list[str]) -> str:
    floats = [d for d in dtypes if d.startswith(("float", "bfloat"))]
    return Counter(floats or dtypes).most_common(1)[0][0] if dtypes else "float32"


def _params(shapes: Mapping[str, tuple[int, ...]]) -> int:
    return sum(math.prod(s) for k, s in shapes.items() if not k.endswith(POS_EMBED))


@dataclass
class _Detected:
    format: Format
    config: dict[str, Any]
    pe_len: int | None
    version: Version
    assumed: bool  # v3 assumed for a file without positional encodings (v1 would look the same)


def detect_layout(
    fmt: Format, shapes: Mapping[str, tuple[int, ...]], source: str, motion_config: str | None, base: dict | None
) -> _Detected:
    """The config to build (inferred, or ``base`` from a folder's config.json, plus overrides) and the version."""
    inferred, pe_len = infer_structure(shapes, source)
    config = dict(base) if base is not None else inferred
    if motion_config:
        config.update(read_motion_config(motion_config))
    _check_config(config, source)
    has_mid = bool(config.get("use_motion_mid_block", True))
    max_frames = int(config.get("motion_max_seq_length", 32))
    assumed = pe_len is None and not motion_config and not has_mid and base is None
    version = version_of(has_mid, max_frames, fmt, config.get("block_out_channels", ()))
    return _Detected(fmt, config, pe_len, version, assumed)


def motion_info(det: _Detected, shapes: Mapping[str, tuple[int, ...]], dtypes: list[str], source: str) -> MotionInfo:
    has_mid = bool(det.config.get("use_motion_mid_block", True))
    return MotionInfo(
        format=det.format,
        version=det.version,
        max_frames=int(det.config.get("motion_max_seq_length", 32)),
        has_mid_block=has_mid,
        params=_params(shapes),
        dtype=_main_dtype(dtypes),
        source=source,
        norm_over_frames=det.format == "original" and det.version == "v1",
        config=dict(det.config),
    )


def detect_motion_state_dict(
    state_dict: Mapping[str, Any], source: str = "<state dict>", motion_config: str | None = None
) -> MotionInfo:
    """Detect layout, version and config of a state dict of tensors (meta or empty ones too); builds nothing."""
    fmt, ours = entries_to_ours(state_dict, source)
    shapes = {k: shape_of(v) for k, v in ours.items()}
    det = detect_layout(fmt, shapes, source, motion_config, None)
    return motion_info(det, shapes, [dtype_name(v.dtype) for v in ours.values() if hasattr(v, "dtype")], source)


def _folder_weights(folder: Path) -> Path:
    for name in WEIGHT_NAMES:
        if (folder / name).is_file():
            return folder / name
    raise UserError(f"{folder}: no weights file found (expected one of {', '.join(WEIGHT_NAMES)})")


def single_weights_file(folder: Path) -> Path | None:
    files = [p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in WEIGHT_SUFFIXES]
    return files[0] if len(files) == 1 else None


def _read_folder_config(folder: Path) -> dict[str, Any]:
    path = folder / "config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(config, dict) or config.get("_class_name", "MotionAdapter") != "MotionAdapter":
        name = config.get("_class_name") if isinstance(config, dict) else type(config).__name__
        raise UserError(f"{folder}: holds a {name}, not a MotionAdapter")
    return {k: v for k, v in config.items() if not k.startswith("_")}


def weights_and_config(path: Path) -> tuple[Path, dict[str, Any] | None]:
    """The weights file of a motion-module file or folder, and the folder's config (None for a file)."""
    if not path.is_dir():
        return path, None
    if (path / "config.json").is_file():
        return _folder_weights(path), _read_folder_config(path)
    single = single_weights_file(path)
    if single is None:
        raise UserError(f"{path}: not a motion-module folder (no config.json and not exactly one weights file)")
    return single, None


def _header_shapes(path: Path) -> tuple[dict[str, tuple[int, ...]], list[str]]:
    """Key shapes and dtypes of a weights file; safetensors from the header alone."""
    if path.suffix.lower() == ".safetensors":
        header = read_header(path)
        return header.shapes, list(header.dtypes.values())
    from videodiff.weights.checkpoints import read_state_dict  # a pickle needs torch; a safetensors header does not

    state_dict = read_state_dict(path, mmap=True)
    return {k: tuple(v.shape) for k, v in state_dict.items()}, [dtype_name(v.dtype) for v in state_dict.values()]


def _header_info(path: str | Path, motion_config: str | None = None) -> tuple[MotionInfo, _Detected]:
    """Detect a motion module from its keys and shapes alone (safetensors headers: no tensor is read)."""
    weights, base = weights_and_config(locate(str(path), "motion module"))
    shapes, dtypes = _header_shapes(weights)
    fmt, ours = entries_to_ours(shapes, str(weights))
    det = detect_layout("diffusers" if base is not None else fmt, ours, str(weights), motion_config, base)
    return motion_info(det, ours, dtypes, str(path)), det


def frame_limit(path: str | Path, motion_config: str | None = None) -> int:
    """The most frames a motion module's positional encoding holds, without loading it."""
    return _header_info(path, motion_config)[0].max_frames


def describe_motion_module(path: str | Path) -> dict[str, Any]:
    """What ``videodiff inspect`` shows about a motion module, read from the state dict only (no model built)."""
    info, det = _header_info(path)
    result = {
        "kind": "motion_module",
        "path": str(path),
        "format": info.format,
        "version": info.version,
        "name": VERSION_NAMES.get(info.version, f"AnimateDiff {info.version}"),
        "family": families.of_motion_channels(
            det.config["block_out_channels"], det.config.get("use_motion_mid_block", True)
        ).title,
        "parameters": info.params,
        "dtype": info.dtype,
        "positional_length": det.pe_len,
        "max_frames": info.max_frames,
        "mid_block": info.has_mid_block,
        "block_out_channels": list(det.config["block_out_channels"]),
        "norm_over_frames": info.norm_over_frames,
    }
    if det.assumed:
        result["note"] = "no positional encodings: v1 and v3 look alike; v3 assumed"
    return result


#: render defaults of motion modules trained at another size or length than their family's default: Hotshot-XL
#: "was trained at various aspect ratios around 512x512 resolution" to make "1 second GIFs at 8 FPS" (its README)
TRAINED_AT: dict[str, dict[str, int]] = {"hotshot-xl": {"height": 512, "width": 512, "frames": 8, "fps": 8}}


def trained_at(motion_module: str | None) -> dict[str, int]:
    """The render defaults :data:`TRAINED_AT` gives a local ``.safetensors`` motion module, from its header
    (``{}`` otherwise: folders, hub ids and pickles get them once loaded, in ``ModelParts.defaults``)."""
    path = Path(motion_module).expanduser() if motion_module else None
    if path is None or path.suffix.lower() != ".safetensors" or not path.is_file():
        return {}
    try:
        return dict(TRAINED_AT.get(describe_motion_module(path)["version"], {}))
    except UserError:  # loading says what is wrong with it
        return {}

