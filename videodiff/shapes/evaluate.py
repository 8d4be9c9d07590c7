"""Score models on the shapes world: render every combination with fixed seeds, detect, report.

:func:`evaluate_model` scores any ``render_fn(prompt, seed) -> frames`` (the generator
itself, a VAE round trip, a model) into a :class:`Report` split into trained and held-out
combinations (see :data:`videodiff.shapes.HELDOUT`); :func:`run_shapes_eval` is ``videodiff eval shapes``.
The detector is :mod:`videodiff.shapes.detect`, the reports :mod:`videodiff.shapes.report`; their public
names are importable from here too.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from videodiff.shapes.detect import (
    Detection,
    as_frames,
    detect,
    is_steady,
    keyframe_track,
    label_components,
    psnr,
    seam,
)
from videodiff.shapes.report import Report, Scored, fidelity_summary
from videodiff.shapes.world import (
    ALL_COMBOS,
    Combo,
    draw_clip,
    parse_prompt,
    prompt_of,
    split_of,
)

__all__ = [
    "Detection",
    "Report",
    "Scored",
    "detect",
    "evaluate",
    "evaluate_ground_truth",
    "evaluate_model",
    "fidelity_summary",
    "ground_truth_render_fn",
    "is_steady",
    "label_components",
    "model_render_fn",
    "psnr",
    "roundtrip",
    "run_shapes_eval",
    "seam",
    "vae_roundtrip",
    "with_roundtrip",
]


def evaluate(
    videos: Iterable[tuple[str, Any]], *, label: str = "", seeds: Iterable[int | None] | None = None
) -> Report:
    """Detect the object in each ``(prompt, frames)`` and score it against the prompt."""
    start = time.perf_counter()
    items = []
    seed_list = list(seeds) if seeds is not None else None
    for i, (prompt, frames) in enumerate(videos):
        color, shape, direction = parse_prompt(prompt)
        seed = seed_list[i] if seed_list is not None else None
        items.append(Scored(prompt, color, shape, direction, split_of((color, shape, direction)), seed, detect(frames)))
    return Report(items, label, time.perf_counter() - start)


RenderFn = Callable[[str, int], Any]


def evaluate_model(
    render_fn: RenderFn,
    seeds: Iterable[int],
    combos: Iterable[Combo] = ALL_COMBOS,
    *,
    label: str = "",
    progress: Callable[[int, int], None] | None = None,
    stage: str | None = None,
) -> Report:
    """Score ``render_fn(prompt, seed) -> uint8 [F, H, W, 3]`` on every combination with every seed.

    The same code scores the generator (:func:`ground_truth_render_fn`), round trips
    through a codec or a VAE (wrap a render_fn, e.g. :func:`with_roundtrip`) and models.
    The videos done and the time left are shown on stderr as they go (:class:`videodiff.log.Progress`, the
    stage named ``stage``, else ``scoring {label}``); ``progress(done, total)`` is called after each video too.
    """
    from videodiff.log import Progress

    start = time.perf_counter()
    seeds, combos = [int(s) for s in seeds], list(combos)
    items, total = [], len(seeds) * len(combos)
    with Progress(stage or " ".join(("scoring", label)).strip(), total) as shown:
        for combo in combos:
            prompt = prompt_of(*combo)
            for seed in seeds:
                detection = detect(render_fn(prompt, seed))
                items.append(Scored(prompt, *combo, split_of(combo), seed, detection))
                shown.update()
                if progress:
                    progress(len(items), total)
    return Report(items, label, time.perf_counter() - start)


def ground_truth_render_fn(seed: int = 0, *, noise: bool = True) -> RenderFn:
    """``render_fn`` drawing clips with the dataset generator; each (prompt, seed) gives its own clip."""

    def render(prompt: str, clip_seed: int) -> np.ndarray:
        combo = parse_prompt(prompt)
        rng = np.random.default_rng([int(seed), ALL_COMBOS.index(combo), int(clip_seed)])
        return draw_clip(*combo, rng=rng, noise=noise).frames

    return render


def roundtrip(frames: Any, suffix: str = ".gif", *, crf: int = 10, fps: float = 8) -> np.ndarray:
    """``frames`` written with :func:`videodiff.media.video.save_video` and read back with PyAV."""
    import tempfile

    import av

    from videodiff.media.video import save_video

    with tempfile.TemporaryDirectory(prefix="videodiff-roundtrip-") as tmp:
        path = save_video(frames, Path(tmp) / f"clip{suffix}", fps, crf=crf)
        # decodes every frame in order: what videodiff.media.clips.read_frames gives, without its seeking
        with av.open(str(path)) as container:
            return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def with_roundtrip(render_fn: RenderFn, suffix: str = ".gif", *, crf: int = 10) -> RenderFn:
    """``render_fn`` whose frames went through a file of type ``suffix`` (as the training data does)."""
    return lambda prompt, seed: roundtrip(render_fn(prompt, seed), suffix, crf=crf)


def evaluate_ground_truth(
    n_per_combo: int = 2,
    seed: int = 0,
    combos: Iterable[Combo] = ALL_COMBOS,
    *,
    roundtrip_suffix: str | None = None,
    crf: int = 10,
) -> Report:
    """The detector on freshly generated clips (optionally after a file round trip): its own error."""
    fn = ground_truth_render_fn(seed)
    label = "ground truth"
    if roundtrip_suffix:
        fn = with_roundtrip(fn, roundtrip_suffix, crf=crf)
        quality = f" (crf {crf})" if roundtrip_suffix in (".mp4", ".webm") else ""
        label += f" after {roundtrip_suffix.lstrip('.')} round trip{quality}"
    return evaluate_model(fn, range(n_per_combo), combos, label=label)


# What a model report records of the resolved render settings (not the prior's velocity: it follows the prompt).
RENDER_SETTINGS = (
    "frames",
    "steps",
    "guidance",
    "scheduler",
    "timestep_spacing",
    "guidance_interval",
    "noise",
    "noise_alpha",
    "motion_prior",
    "height",
    "width",
    "cache",
)


def model_render_fn(
    pipe: Any,
    *,
    steps: int | None = None,
    guidance: float | None = None,
    motion_prior: float | None = None,
    frames: int = 16,
    img2vid: dict[str, Any] | None = None,
    cache: int | None = None,
    overrides: dict[str, Any] | None = None,
    post: Any = None,
) -> tuple[RenderFn, dict[str, Any], list[dict[str, float]] | None]:
    """``render_fn`` of a loaded pipeline, the settings it renders with (filled in by its first render; settings
    left ``None`` are resolved by the pipeline: the model's recorded defaults), and ``None``.

    With ``img2vid`` (keywords of :meth:`VideoPipeline.img2vid`) each video animates the first frame of the
    ground-truth clip of its (prompt, seed) (a picture of the prompt's shape where it has room to move the asked
    way), and the third value is a list that collects, per video, frame 0's PSNR against the picture, the
    picture's own PSNR after the model's VAE (the best frame 0 can be without pasting) and the :func:`seam`.
    With ``img2vid["keyframes"]`` the clip's first and last frames are both pinned (keyframes) and each video's
    :func:`keyframe_track` is collected too (``track``: the object moves from one picture to the other).
    ``overrides``: any other sampling settings (``eval shapes --set KEY=VALUE``); ``post``: the post-processing
    settings (:class:`~videodiff.settings.post.PostSettings`), run on every video as a render runs them.
    """
    settings: dict[str, Any] = {}
    fidelity: list[dict[str, float]] | None = None if img2vid is None else []
    truth = ground_truth_render_fn(0)
    given = dict(num_frames=frames, num_inference_steps=steps, guidance_scale=guidance, motion_prior=motion_prior)
    if cache is not None:  # feature caching (--cache N)
        given["cache"] = cache
    given.update(overrides or {})

    def render(prompt: str, seed: int) -> np.ndarray:
        if fidelity is None:
            result = pipe(prompt, seed=seed, post=post, **given)
        else:
            clip = truth(prompt, seed)
            picture = clip[0]
            paste = bool(post is not None and post.paste)
            options = {k: v for k, v in img2vid.items() if k != "keyframes"}
            pinned = {"image_at": {0: clip[0], -1: clip[-1]}} if img2vid.get("keyframes") else {"image": picture}
            result = pipe.img2vid(prompt=prompt, seed=seed, paste=paste, **pinned, **given, **options)
            vae_best = psnr(vae_roundtrip(pipe, picture[None])[0], picture)
            entry = {"frame0": psnr(result.frames[0], picture), "vae": vae_best, "seam": seam(result.frames)}
            if img2vid.get("keyframes"):
                entry["track"] = keyframe_track(result.frames, clip[0], clip[-1])["ok"]
            fidelity.append(entry)
        if not settings:
            settings.update({k: result.settings[k] for k in (*RENDER_SETTINGS, *(overrides or {}))})
            settings["post"] = result.post
            if fidelity is not None:
                settings.update({**img2vid, "strength": result.settings["strength"]})
        return result.frames

    return render, settings, fidelity


def vae_roundtrip(pipe: Any, frames: Any) -> np.ndarray:
    """``frames`` (uint8 ``[F H W 3]``) encoded by ``pipe``'s VAE (posterior mean) and decoded again."""
    import torch

    from videodiff import vae

    pixels = torch.from_numpy(as_frames(frames)).permute(3, 0, 1, 2)[None].float() / 127.5 - 1  # [1 3 F H W]
    latents = vae.encode(pipe.vae, pixels.to(pipe.device))
    return vae.to_uint8(vae.decode(pipe.vae, latents))[0]


def is_eval_report(path: Path) -> bool:
    """Whether ``path`` holds a report ``videodiff eval shapes --out`` wrote (what ``--overwrite`` may replace)."""
    try:
        if path.stat().st_size > 64 * 2**20:
            return False
        report = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    return isinstance(report, dict) and isinstance(report.get("settings"), dict) and "seeds" in report["settings"]


def refuse_fixed(overrides: dict[str, Any], fixed: Iterable[str]) -> None:
    """One line (:class:`UserError`) for a ``--set`` of a setting the evaluation sets itself (``fixed``)."""
    from videodiff.errors import UserError

    for name in fixed:
        if name in overrides:
            raise UserError(f"--set {name}: the evaluation sets the {name.replace('_', ' ')} itself")


def run_shapes_eval(
    *,
    model: str | None = None,
    motion_module: str | None = None,
    seeds: int = 2,
    combos: str = "all",
    ground_truth_only: bool = False,
    roundtrip_suffix: str | None = ".gif",
    device: str | None = "auto",
    dtype: str | None = "auto",
    steps: int | None = None,
    guidance: float | None = None,
    motion_prior: float | None = None,
    img2vid: dict[str, Any] | None = None,
    echo: Callable[[str], None] = print,
    cache: int | None = None,
    settings: tuple[str, ...] = (),
) -> dict[str, Any]:
    """What ``videodiff eval shapes`` does, each report printed through ``echo``; returns JSON-ready results.

    1. The detector on generated ground-truth clips, raw and after a file round trip
       (``roundtrip_suffix``): its own error. 2. The same clips after the model's VAE
       (encode, decode): what the latent space can express at all. 3. The model's videos,
       from fixed seeds. ``model=None`` scores the built-in shapes model. ``img2vid`` (keywords of
       :meth:`VideoPipeline.img2vid`, e.g. ``{"strength": 0.85}``): the model animates each clip's first
       frame instead, and frame 0's fidelity to it is reported too (:func:`model_render_fn`). ``settings``:
       ``KEY=VALUE`` strings of any sampling or post-processing setting (``eval shapes --set``), for sweeps.
    """
    from videodiff.errors import UserError
    from videodiff.shapes.world import combos_of

    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
        raise UserError(f"--seeds must be a positive integer, got {seeds!r}")
    if cache is not None:  # before the ground truth is scored: a bad --cache fails at once
        from videodiff.config import SampleSettings

        SampleSettings(cache=cache).validate()
    from videodiff.settings.files import parse_settings
    from videodiff.settings.post import PostSettings
    from videodiff.settings.sample import SampleSettings as Sample

    overrides, post_given = parse_settings(settings, Sample, PostSettings)
    refuse_fixed(overrides, ("prompt", "prompt_at", "seed"))
    post = PostSettings(**post_given)
    chosen = combos_of(combos)
    held = [prompt_of(*c) for c in chosen if split_of(c) == "heldout"]
    results: dict[str, Any] = {"settings": {"seeds": list(range(seeds)), "combos": combos, "heldout": held}}

    def record(key: str, report: Report) -> None:  # each table as soon as its stage ends
        results[key] = report.to_dict()
        echo(report.table() + "\n")

    pipe = None
    if not ground_truth_only:  # first: a model that does not load fails before minutes of scoring
        from videodiff.pipelines import load_pipeline

        pipe = load_pipeline(model, motion_module, device=device, dtype=dtype)
    record("ground_truth", evaluate_ground_truth(seeds, 0, chosen))
    if roundtrip_suffix:
        record("ground_truth_roundtrip", evaluate_ground_truth(seeds, 0, chosen, roundtrip_suffix=roundtrip_suffix))
    if pipe is None:
        return results
    truth = ground_truth_render_fn(0)
    vae_label = "ground truth after the model's VAE"
    trip_fn = lambda prompt, seed: vae_roundtrip(pipe, truth(prompt, seed))  # noqa: E731
    record("ground_truth_vae", evaluate_model(trip_fn, range(seeds), chosen, label=vae_label))
    render_fn, settings, fidelity = model_render_fn(
        pipe,
        steps=steps,
        guidance=guidance,
        motion_prior=motion_prior,
        img2vid=img2vid,
        cache=cache,
        overrides=overrides,
        post=post,
    )
    mode = "" if img2vid is None else " keyframes" if img2vid.get("keyframes") else " img2vid"
    name = (model or "built-in shapes") + mode
    stage = f"rendering and scoring {name}"
    report = evaluate_model(render_fn, range(seeds), chosen, label=f"model {name}", stage=stage)
    results["settings"]["model"] = {"model": name, "motion_module": motion_module, **settings}
    results["model"] = report.to_dict()
    echo(report.table())
    if fidelity is not None:
        results["frame0"] = summary = fidelity_summary(fidelity)
        echo(
            f"frame 0 against the picture: PSNR {summary['frame0_psnr']} dB (the picture after the VAE: "
            f"{summary['vae_psnr']} dB); within 1 dB of the VAE in {summary['within_1db']}% of "
            f"{summary['videos']} videos; frame 0 to 1 changes {summary['seam']}x the median step (median)"
        )
        if "track" in summary:
            echo(
                f"keyframes: the object moves from the first picture to the last (one object in every frame, ends "
                f"within 4 px, no step over twice the even pace + 2 px) in {summary['track']}% of the videos"
            )
    return results
