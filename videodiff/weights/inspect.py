"""``videodiff inspect``: what a file or folder is, read from its keys and shapes only.

Besides the files people download (checkpoints, motion modules, LoRAs, embeddings), it
recognises everything videodiff writes: model folders with their ``videodiff.json``, motion
priors, latent caches, training checkpoints and runs, the trained image-U-Net tensors
(``spatial.safetensors``), datasets, videos with their sidecars, and evaluation reports.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from videodiff.errors import UserError
from videodiff.motion_prior import FORMAT as PRIOR_FORMAT
from videodiff.motion_prior import PRIOR_FILE
from videodiff.settings.render import VIDEO_SUFFIXES
from videodiff.weights.checkpoints import read_state_dict
from videodiff.weights.controlnets import CONTROLNET_CLASSES, describe_controlnet, is_controlnet
from videodiff.weights.embeddings import describe_embedding
from videodiff.weights.hub import DEFAULTS_FILE, describe_vocabulary, model_triggers, model_vocabulary
from videodiff.weights.ip_adapter import describe_ip_adapter
from videodiff.weights.lora import describe_lora
from videodiff.weights.motion_formats import SPATIAL_FILE, companion_files, describe_motion_module
from videodiff.weights.safetensors_header import read_header
from videodiff.weights.single_file import describe_checkpoint


def _keys(path: Path) -> list[str]:
    if path.suffix.lower() == ".safetensors":
        return list(read_header(path).shapes)
    try:
        return list(read_state_dict(path))
    except UserError:
        return []  # nested pickles (A1111 embeddings) are recognised by their own reader below



def _json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{path}: not valid JSON ({exc})") from None


def _motion_extras(location: Path) -> dict[str, Any]:
    """What videodiff keeps beside motion modules (a folder or a file): a motion prior, trained image-U-Net tensors."""
    out: dict[str, Any] = {}
    found = companion_files(location)
    if PRIOR_FILE in found:
        out["motion_prior"] = f"{found[PRIOR_FILE]} ({describe_motion_prior(found[PRIOR_FILE])['summary']})"
    if SPATIAL_FILE in found:
        out["spatial_weights"] = f"{found[SPATIAL_FILE]} ({len(_keys(found[SPATIAL_FILE]))} image U-Net tensors)"
    return out


def describe_motion_prior(path: Path) -> dict[str, Any]:
    """A motion prior (``videodiff train --motion-prior``): its sizes and the fit's own figures."""
    header = read_header(path)
    meta = header.metadata
    fit = json.loads(meta.get("info") or "{}")
    mean = header.shapes.get("mean", ())
    info: dict[str, Any] = {
        "kind": "videodiff motion prior",
        "path": str(path),
        "text_width": mean[0] if mean else None,
        "latent_channels": int(meta.get("channels", 0)) or None,
        "patch": int(meta.get("patch", 0)) or None,
        "contrast": float(meta.get("contrast", "nan")),
        "fit": fit,
    }
    summary = f"{info['text_width']}-wide text, {info['latent_channels']}-channel latents"
    if "clips" in fit:
        summary += f", fitted to {fit['clips']} clips"
    if "direction_agreement" in fit:
        summary += f", direction agrees on {100 * fit['direction_agreement']:.0f}%"
    info["summary"] = summary
    info["use"] = "render --motion-prior F starts from it (it sits beside the motion modules it was fitted with)"
    return info


def describe_model_folder(p: Path) -> dict[str, Any]:
    """A diffusers model folder, with what its ``videodiff.json`` records (defaults, triggers, vocabulary)."""
    info: dict[str, Any] = {
        "kind": "diffusers model folder",
        "path": str(p),
        "components": sorted(d.name for d in p.iterdir() if d.is_dir()),
        "own motion modules": (p / "motion_adapter").is_dir(),
    }
    if (p / "motion_adapter").is_dir():
        info.update(_motion_extras(p / "motion_adapter"))
    if (p / DEFAULTS_FILE).is_file():
        recorded = _json(p / DEFAULTS_FILE)
        defaults = recorded.get("defaults", {}) if isinstance(recorded, dict) else {}
        info["defaults"] = ", ".join(f"{k} {v}" for k, v in defaults.items()) or "none"
        triggers = model_triggers(p)
        if triggers:
            info["motion_lora_triggers"] = ", ".join(f"{w}={v}" for w, v in triggers.items())
        vocabulary = model_vocabulary(p)
        if vocabulary.get("grammar"):
            info["vocabulary"] = describe_vocabulary(vocabulary)
    return info


def _describe_video(p: Path) -> dict[str, Any]:
    from videodiff.media.clips import probe
    from videodiff.media.video import sidecar_path

    try:
        v = probe(p)
    except Exception as exc:  # noqa: BLE001 - an unreadable video is one line
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UserError(f"{p}: not a readable video ({reason})") from None
    info: dict[str, Any] = {
        "kind": "video",
        "path": str(p),
        "frames": v.num_frames,
        "size": f"{v.width}x{v.height}",
        "fps": round(v.fps, 3),
        "duration_s": round(v.num_frames / v.fps, 3) if v.fps else None,
    }
    if p.suffix.lower() == ".gif":  # PyAV reads a GIF's rate from one frame's delay; the delays vary (centiseconds)
        from PIL import Image

        total = 0
        try:
            with Image.open(p, formats=["GIF"]) as im:  # only GIF: never a plugin picked by content
                for k in range(im.n_frames):
                    im.seek(k)
                    total += im.info.get("duration", 0)
        except (OSError, SyntaxError, ValueError):  # not a GIF inside (PyAV read it): keep PyAV's rate
            total = 0
        if total:
            info["duration_s"] = total / 1000
            info["fps"] = round(v.num_frames * 1000 / total, 3)
    side = sidecar_path(p)
    info["sidecar"] = str(side) if side.is_file() else "none"
    return info


def _describe_json(p: Path) -> dict[str, Any] | None:
    data = _json(p)
    if not isinstance(data, dict):
        return None
    if "prompt" in data and "info" in data:
        keys = ("prompt", "seed", "frames", "steps", "guidance", "scheduler", "motion_prior", "model")
        return {
            "kind": "videodiff render sidecar",
            "path": str(p),
            **{k: data[k] for k in keys if k in data},
            "use": f"videodiff render --config {p} renders the same video again",
        }
    if "ground_truth" in data and "settings" in data:
        out = {"kind": "videodiff shapes evaluation report", "path": str(p), "settings": data["settings"]}
        if isinstance(data.get("model"), dict):
            out["model"] = {k: data["model"].get(k) for k in ("all", "train", "heldout")}
        return out
    if p.name == "train_config.json" and "data" in data:
        return {"kind": "videodiff training settings", "path": str(p), **data}
    if p.name == "state.json" and "step" in data:
        return {"kind": "videodiff training checkpoint state", "path": str(p), "step": data["step"]}
    return None


def _describe_videodiff_folder(p: Path) -> dict[str, Any] | None:
    if (p / "state.json").is_file() and (p / "trainable.safetensors").is_file():
        state = _json(p / "state.json")
        return {
            "kind": "videodiff training checkpoint",
            "path": str(p),
            "step": state.get("step") if isinstance(state, dict) else None,
            "tensors": len(_keys(p / "trainable.safetensors")),
            "use": f"videodiff train --resume {p} (with the run's settings: --config <run>/train_config.json)",
        }
    if (p / "train_config.json").is_file():
        info: dict[str, Any] = {"kind": "videodiff training run", "path": str(p)}
        for name in ("motion_module", "motion_lora.safetensors", "checkpoints", "metrics.jsonl", "validation"):
            if (p / name).exists():
                info[name] = str(p / name)
        if (p / "motion_module").is_dir():
            info.update(_motion_extras(p / "motion_module"))
        return info
    if (p / "manifest.jsonl").is_file():
        lines = (p / "manifest.jsonl").read_text(encoding="utf-8").splitlines()
        clips = sum(1 for line in lines if line.strip())
        return {"kind": "dataset (clips with captions)", "path": str(p), "clips": clips}
    if (p / "0000.png").is_file():
        frames = len(list(p.glob("[0-9]*.png")))
        return {"kind": "video as PNG frames", "path": str(p), "frames": frames}
    return None


def describe(path: str) -> dict[str, Any]:
    """Kind-specific description of a model folder, motion module, SD checkpoint, ControlNet, LoRA or embedding,
    or of anything videodiff writes (motion prior, latent cache, checkpoint, run, video, sidecar, report)."""
    p = Path(path).expanduser()
    if not p.exists():
        raise UserError(f"{path}: no such file or folder")
    if not (p.is_dir() or p.is_file()):  # a FIFO would block the read forever, /dev/zero never ends
        raise UserError(f"{path}: not a regular file or folder (a device, FIFO or socket)")
    if p.is_dir():
        if (p / "model_index.json").is_file() or (p / "unet").is_dir():
            return describe_model_folder(p)
        config = p / "config.json"
        declared = _json(config) if config.is_file() else {}
        class_name = declared.get("_class_name") if isinstance(declared, dict) else None
        if class_name == "MotionAdapter":
            return {**describe_motion_module(p), **_motion_extras(p)}
        if class_name == "AutoencoderKL":
            return {"kind": "diffusers VAE folder", "path": str(p)}
        if class_name in CONTROLNET_CLASSES:
            return describe_controlnet(p)
        found = _describe_videodiff_folder(p)
        if found is not None:
            return found
        raise UserError(
            f"{path}: a folder that is neither a diffusers model, a MotionAdapter, a VAE, a ControlNet, a training "
            "run or checkpoint, a dataset nor PNG frames"
        )
    suffix = p.suffix.lower()
    if suffix in VIDEO_SUFFIXES:
        return _describe_video(p)
    if suffix == ".json":
        found = _describe_json(p)
        if found is None:
            raise UserError(f"{path}: a JSON file that videodiff did not write (not a sidecar, report or run setting)")
        return found
    if suffix == ".safetensors":
        header = read_header(p)
        if header.metadata.get("format") == PRIOR_FORMAT:
            return describe_motion_prior(p)
        if "latents" in header.shapes and "key" in header.metadata and "captions" in header.metadata:
            shape = header.shapes["latents"]
            return {
                "kind": "videodiff latent cache",
                "path": str(p),
                "clips": shape[0] if shape else 0,
                "latents": list(shape[1:]),
                "use": "train --cache-latents --latent-cache FILE reads it when clips, settings and VAE match",
            }
        if p.name == "trainable.safetensors" and (p.parent / "state.json").is_file():
            return _describe_videodiff_folder(p.parent) or {}
        if p.name.endswith(SPATIAL_FILE):
            return {
                "kind": "image U-Net tensors trained with motion modules",
                "path": str(p),
                "tensors": len(header.shapes),
                "use": "loaded with the motion module folder it sits in",
            }
        found = describe_ip_adapter(p, dict(header.shapes))  # from the header: nothing loaded
        if found is not None:
            return found
    keys = _keys(p)
    if suffix != ".safetensors" and (not keys or any(k.startswith("image_proj.") for k in keys)):
        found = describe_ip_adapter(p)  # before LoRAs: FaceID adapters hold LoRA keys; .bin files may be nested
        if found is not None:
            return found
    if is_controlnet(keys):  # before checkpoints: ControlNet 1.0 files hold a whole SD model beside their own
        return describe_controlnet(p)
    if any(
        k.startswith(("model.diffusion_model.", "first_stage_model.", "encoder.", "decoder.", "conditioner."))
        for k in keys
    ):
        return describe_checkpoint(p)
    if any("lora" in k for k in keys):
        if any("motion_modules" in k for k in keys):
            return {"kind": "motion LoRA", "path": str(p), "tensors": len(keys)}
        return describe_lora(p)
    if any("motion_modules" in k for k in keys):
        return {**describe_motion_module(p), **_motion_extras(p)}
    return describe_embedding(p)
