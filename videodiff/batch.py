"""Batch rendering: many prompts and seeds with one model load, in one process or split across processes.

    videodiff render --prompt-file prompts.yaml --seeds 1,2 --output clips/
    ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 -m videodiff render --prompt-file ...

Stages: :func:`read_prompt_file` (items), :func:`plan_batch` (one :class:`RenderConfig`
per video, with deterministic output names), :func:`run_batch` (skip or refuse existing
outputs, split the plan between processes, load the model once per process, render).
A plain, unlaunched run never touches accelerate.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import fields
from datetime import datetime
from pathlib import Path
from typing import Any

from videodiff.config import (
    FIELD_NAMES,
    OUTPUT_FORMATS,
    PostSettings,
    RenderConfig,
    SampleSettings,
    WriteSettings,
    merge,
    named,
    parse_yaml,
    read_text_file,
    shown,
    to_dict,
)
from videodiff.errors import UserError
from videodiff.launch import close, launch_state, launched
from videodiff.log import notice

__all__ = [
    "FORMATS",
    "ITEM_KEYS",
    "MAX_VIDEOS",
    "launch_state",
    "launched",
    "parse_seeds",
    "plan_batch",
    "read_prompt_file",
    "render_batch",
    "run_batch",
]

# Settings one item of a prompt file may set for itself: what to sample, what to do after decoding and how to
# write it. What to load (model, LoRAs, device...) is shared: the model is loaded once per process.
ITEM_KEYS = (*(f.name for s in (SampleSettings, PostSettings) for f in fields(s)), "controls", "ip_adapters",
             *(f.name for f in fields(WriteSettings) if f.name not in ("overwrite", "quiet")))  # fmt: skip
FORMATS = OUTPUT_FORMATS  # --format names and their suffixes (png: a folder of frames)
YAML_SUFFIXES = (".yaml", ".yml")
SEED_LIMIT = 2**32  # drawn seeds, as a single render draws them
MAX_VIDEOS = 10_000  # videos a batch renders (--num-videos, --seeds, prompts x seeds), counted before its plan is made


# ---------------------------------------------------------------- 1. prompt files


def read_prompt_file(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Items of a prompt file, each ``{"prompt": ..., <per-item settings>}``.

    Plain text: one prompt per line; blank lines and lines starting with ``#`` are ignored.
    ``.yaml``/``.yml``: a list whose items are a prompt, or a mapping of settings (``prompt``
    required, any of :data:`ITEM_KEYS`). Mistakes are a :class:`UserError` naming the item (1-based).
    """
    path = Path(path)
    text = read_text_file(path, "prompt file")
    if path.suffix.lower() in YAML_SUFFIXES:
        items = _yaml_items(path, text)
    else:
        lines = (line.strip() for line in text.splitlines())
        items = [{"prompt": line} for line in lines if line and not line.startswith("#")]
    if not items:
        raise UserError(f"prompt file {path} holds no prompts")
    return items


def _yaml_items(path: Path, text: str) -> list[dict[str, Any]]:
    data = parse_yaml(text, path, "prompt file")
    if data is None:
        return []
    if not isinstance(data, list):
        raise UserError(f"prompt file {path} must hold a list of prompts, not a {type(data).__name__}")
    items = []
    for number, entry in enumerate(data, 1):
        where = f"prompt file {path}, item {number}"
        if isinstance(entry, str):
            entry = {"prompt": entry}
        elif isinstance(entry, dict):
            entry = {str(k): v for k, v in entry.items()}
        else:
            raise UserError(f"{where}: expected a prompt or a mapping of settings, got {shown(entry)}")
        _check_item(entry, where)
        items.append(entry)
    return items


def _check_item(item: Mapping[str, Any], where: str) -> None:
    shared = sorted(k for k in item if k not in ITEM_KEYS and k in FIELD_NAMES)
    if shared:
        raise UserError(
            f"{where}: {', '.join(shared)} cannot differ per item (the model is loaded once); "
            "set it on the command line or in --config"
        )
    unknown = sorted(k for k in item if k not in ITEM_KEYS)
    if unknown:
        raise UserError(f"{where}: unknown key(s) {named(unknown)}; valid keys: {', '.join(ITEM_KEYS)}")
    prompt = item.get("prompt")
    if prompt is None:
        raise UserError(f"{where}: no 'prompt'")
    if not isinstance(prompt, str) or not prompt.strip():
        raise UserError(f"{where}: 'prompt' must be non-empty text, got {shown(prompt)}")


# ---------------------------------------------------------------- 2. the plan


def parse_seeds(text: str) -> list[int]:
    """``"1,2,3"`` -> ``[1, 2, 3]``; each a whole number from 0 to 2^64-1, none twice, at most
    :data:`MAX_VIDEOS` of them."""
    parts = str(text).split(",")
    if len(parts) > MAX_VIDEOS:
        raise UserError(f"--seeds lists {len(parts)} seeds; at most {MAX_VIDEOS} per batch")
    seeds: list[int] = []
    seen: set[int] = set()
    for part in parts:
        part = part.strip()
        try:
            seed = int(part)
        except ValueError:
            raise UserError(f"--seeds takes whole numbers separated by commas (1,2,3), got {text!r}") from None
        if not 0 <= seed < 2**64:
            raise UserError(f"--seeds: {seed} is not a whole number from 0 to 2^64-1")
        if seed in seen:
            raise UserError(f"--seeds: {seed} is listed twice")
        seen.add(seed)
        seeds.append(seed)
    return seeds


def draw_seeds(count: int) -> list[int]:
    """``count`` distinct random seeds, in the order drawn (linear in ``count``: a set of those drawn)."""
    seeds: list[int] = []
    seen: set[int] = set()
    while len(seeds) < count:
        seed = secrets.randbelow(SEED_LIMIT)
        if seed not in seen:
            seen.add(seed)
            seeds.append(seed)
    return seeds


def check_num_videos(num_videos: Any) -> None:
    """``--num-videos``: a whole number from 1 to :data:`MAX_VIDEOS`, or ``None``."""
    if num_videos is not None and (type(num_videos) is not int or not 1 <= num_videos <= MAX_VIDEOS):  # not bool
        raise UserError(f"--num-videos must be a whole number from 1 to {MAX_VIDEOS}, got {shown(num_videos)}")


def count_videos(items: Sequence[Mapping[str, Any]], per_item: int) -> int:
    """How many videos a plan of ``items`` holds, ``per_item`` seeds each (an item's own ``seed``: one), counted
    before a config is made for any of them."""
    pinned = sum(1 for item in items if item.get("seed") is not None)
    return pinned + (len(items) - pinned) * per_item


def plan_batch(
    base: RenderConfig,
    items: Sequence[Mapping[str, Any]],
    seeds: Sequence[int] | None = None,
    num_videos: int | None = None,
    output: str | os.PathLike[str] | None = None,
    fmt: str | None = None,
    *,
    batch: bool | None = None,
    name: str | None = None,
    source: str = "prompt file",
    announce: bool = True,
) -> list[RenderConfig]:
    """One validated :class:`RenderConfig` per video: every item once per seed, in item order.

    Seeds: an item's own ``seed`` renders it once with that seed; otherwise ``seeds``, or
    ``num_videos`` distinct drawn seeds (the same for every item); with neither, the base
    config's seed, else one drawn per item. Drawn seeds are announced (``announce``).

    Outputs, for a ``batch`` (default: several items, several seeds or ``num_videos`` > 1):
    ``<folder>/<item:04d>-<prompt-slug>-<seed><.fmt>``, item numbers starting at 1, where the
    folder is ``output`` (else ``base.output``), else ``outputs/batch-<name>``; an item's own
    ``output`` is kept (relative paths are taken inside the folder; ``-<seed>`` is added before
    the suffix when the item has several seeds). Not a batch: ``output`` is the file itself,
    else ``outputs/<date-time>-<slug>-<seed><.fmt>``. Names never depend on the process.
    """
    from videodiff.media.video import VIDEO_SUFFIXES
    from videodiff.render import slug

    if not items:
        raise UserError("nothing to render: no prompts given")
    if seeds is not None and num_videos is not None:
        raise UserError("pass --seeds or --num-videos, not both")
    check_num_videos(num_videos)
    if seeds is not None and not seeds:
        raise UserError("--seeds needs at least one seed")
    per_item = len(seeds) if seeds is not None else num_videos or 1
    total = count_videos(items, per_item)
    if total > MAX_VIDEOS:
        raise UserError(
            f"the batch would render {total} videos ({len(items)} prompts x {per_item} seeds); "
            f"at most {MAX_VIDEOS} per batch: split the prompt file or use fewer seeds"
        )
    fmt = (fmt or "mp4").lower()
    if fmt not in FORMATS:
        raise UserError(f"unknown --format {fmt!r}; choose one of: {', '.join(FORMATS)}")
    suffix = FORMATS[fmt]
    output = output if output is not None else base.output
    if batch is None:
        batch = len(items) > 1 or len(seeds or ()) > 1 or (num_videos or 1) > 1

    shared_seeds = list(seeds) if seeds is not None else draw_seeds(num_videos) if num_videos else None
    if num_videos and announce:
        listed = ",".join(map(str, shared_seeds or ()))
        notice(f"seeds {listed.replace(',', ', ')} drawn (pass --seeds {listed} to render these again)")

    if batch:
        if output is not None:
            folder = Path(output)
            if folder.suffix.lower() in VIDEO_SUFFIXES:
                raise UserError(f"with several videos --output is a folder, got the file name {output}")
            if folder.exists() and not folder.is_dir():
                raise UserError(f"with several videos --output is a folder, but {output} is a file")
        else:
            folder = Path("outputs") / f"batch-{slug(name or items[0]['prompt'])}"
    elif output is not None:
        own = Path(output).suffix.lower()
        if fmt != "mp4" and own != suffix:  # mp4 is the default: only an explicit other format can disagree
            raise UserError(f"--format {fmt} disagrees with --output {output}")
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")  # taken once for the whole plan

    base_values = to_dict(base)
    plan: list[RenderConfig] = []
    owners: dict[Path, int] = {}
    around: dict[Path, int] = {}  # the folders that hold an output: another item's output may not be one of them
    for number, item in enumerate(items, 1):
        where = f"{source}, item {number}" if batch else "settings"
        _check_item(item, where)
        if item.get("seed") is not None:
            item_seeds = [item["seed"]]
        elif shared_seeds is not None:
            item_seeds = shared_seeds
        elif base.seed is not None:
            item_seeds = [base.seed]
        else:
            item_seeds = draw_seeds(1)
            if announce:
                label = f"item {number}" if batch else "this video"
                notice(f"seed {item_seeds[0]} drawn for {label} (pass --seed {item_seeds[0]} to render it again)")
        for seed in item_seeds:
            overrides = {**item, "seed": seed}
            try:
                config = merge(base_values, overrides)
                if not isinstance(config.prompt, str) or not config.prompt.strip():
                    raise UserError(f"'prompt' must be non-empty text, got {shown(config.prompt)}")
                config.validate()
            except UserError as exc:
                raise UserError(f"{where}: {exc}") from None
            own = item.get("output")
            if batch and own is not None:
                path = folder / _inside_folder(own, f"{where}: output", folder)
                if len(item_seeds) > 1:
                    path = path.with_name(f"{path.stem}-{seed}{path.suffix}")
            elif batch:
                path = folder / f"{number:04d}-{slug(config.prompt)}-{seed}{suffix}"
            elif output is not None:
                path = Path(output)
            else:
                path = Path("outputs") / f"{stamp}-{slug(config.prompt)}-{seed}{suffix}"
            key = Path(os.path.abspath(path))
            if key in owners:
                raise UserError(f"{source} items {owners[key]} and {number} would both write {path}")
            # a folder of PNG frames and a file inside it (x and x/y.gif) collide too, whichever comes first
            inside = next((owners[k] for k in key.parents if k in owners), None) or around.get(key)
            if inside is not None:
                raise UserError(f"{source} items {inside} and {number} collide: one writes inside the other ({path})")
            owners[key] = number
            around.update((k, around.get(k, number)) for k in key.parents)
            plan.append(config.replace(output=str(path)))
    return plan


def _inside_folder(own: Any, where: str, folder: Path | None = None) -> Path:
    """An item's own output, relative and inside the batch folder (a prompt file may come from anyone): a name
    (not the folder itself, ``.``), without ``..``, and not through a symbolic link inside ``folder``."""
    if not isinstance(own, str) or not own.strip():
        raise UserError(f"{where} must be a file name, got {own!r}")
    path = Path(own)
    if path.is_absolute() or os.path.isabs(own) or ".." in path.parts or path.drive:
        raise UserError(f"{where} {own!r} must stay inside the batch folder (a relative path without '..')")
    if not path.parts:
        raise UserError(f"{where} {own!r} names the batch folder itself; give a file name inside it")
    if folder is not None:
        for depth in range(1, len(path.parts)):  # the folders on the way (the output itself: the gate refuses a link)
            if os.path.islink(folder.joinpath(*path.parts[:depth])):
                raise UserError(
                    f"{where} {own!r} goes through the symbolic link {folder.joinpath(*path.parts[:depth])}: "
                    "it must stay inside the batch folder"
                )
    return path


# ---------------------------------------------------------------- 3. processes


def _broadcast(value: Any, state) -> Any:
    """The main process's ``value`` on every process (plans hold drawn seeds and a time stamp)."""
    if state.num_processes == 1:
        return value
    from accelerate.utils import broadcast_object_list

    return broadcast_object_list([value], from_process=0)[0]


def _gather(value: list, state) -> list:
    if state.num_processes == 1:
        return value
    from accelerate.utils import gather_object

    return gather_object(value)


# ---------------------------------------------------------------- 4. rendering


def _sort_existing(
    configs: Sequence[RenderConfig], skip_existing: bool, overwrite: bool, announce: bool
) -> tuple[list[RenderConfig], list[RenderConfig]]:
    """(to render, skipped); fails on the first existing output unless told what to do with it."""
    from videodiff.media.video import check_output, check_sidecar, sidecar_path

    if skip_existing and overwrite:
        raise UserError("pass --skip-existing or --overwrite, not both")
    todo, skipped, existing = [], [], []
    for config in configs:
        out = Path(config.output)
        have_out, have_side = os.path.lexists(out), os.path.lexists(sidecar_path(out))
        if not (have_out or have_side):
            todo.append(config)
        elif overwrite or config.overwrite:
            todo.append(config.replace(overwrite=True))
        elif skip_existing and have_out and have_side:
            skipped.append(config)
            if announce:
                notice(f"skipping {out}: it exists with its sidecar")
        elif skip_existing:  # never replaced: renders leave no half pair, so this one is not ours to remove
            # a user's folder, a device...: refused as --overwrite would refuse it, not silently skipped
            check_output(out, fps=config.fps, crf=config.crf, overwrite=True, create=False)
            check_sidecar(out, overwrite=True)
            skipped.append(config)
            if announce:
                present, missing = ("it exists", "sidecar") if have_out else ("its sidecar exists", "output")
                notice(f"skipping {out}: {present} without its {missing}; remove it to render this item again")
        else:
            existing.append(out if have_out else sidecar_path(out))
    if existing:
        more = f" (and {len(existing) - 1} more)" if len(existing) > 1 else ""
        raise UserError(
            f"{existing[0]} already exists{more}; pass --skip-existing to keep existing outputs "
            "or --overwrite to replace them"
        )
    return todo, skipped


def _device_for(config: RenderConfig, state) -> tuple[str, str]:
    """(device to load on, --device recorded in the sidecar): the process's own device under a launcher."""
    device = getattr(state, "device", None)
    if state.num_processes == 1 or device is None or config.device not in ("auto", device.type):
        return config.device, config.device
    return str(device), device.type


def _load(config: RenderConfig, device: str):
    from videodiff.pipelines import VideoPipeline

    return VideoPipeline.load(config.load, device)


def run_batch(
    configs: Sequence[RenderConfig],
    *,
    skip_existing: bool = False,
    overwrite: bool = False,
    state: Any = None,
    echo: Callable[[str], None] | None = None,
    plain: bool = False,
) -> list[Path]:
    """Render ``configs`` (from :func:`plan_batch`), sharing them between the launched processes.

    Before anything is rendered: an output (or sidecar) that exists fails the whole batch,
    unless ``skip_existing`` (skip it, when complete) or ``overwrite``; every output is checked
    and every item's frame count is checked against the model. Each process then loads the
    model once and renders its share, printing ``rendered <path>`` (`` (process k)`` when launched); the main process
    ends with ``rendered N, skipped M``. ``plain``: print only the output's path (a single video, as a
    plain render does; a skipped one too). Returns the outputs this process wrote.
    """
    from videodiff.media.video import check_output, check_sidecar
    from videodiff.render import check_frame_limit, check_inputs, render

    echo = echo or (lambda line: print(line, flush=True))
    state = state if state is not None else launch_state()
    configs = list(_broadcast(list(configs), state))
    main = state.is_main_process
    todo, skipped = _sort_existing(configs, skip_existing, overwrite, announce=main)
    for config in todo:  # type, crf, folder, and what an existing output or sidecar is (never a user's folder)
        check_output(config.output, fps=config.fps, crf=config.crf, overwrite=config.overwrite, create=False)
        check_sidecar(config.output, overwrite=config.overwrite)
        check_inputs(config)  # each item's own control maps, before the load
    for config in {(c.frames, c.window, c.overlap, c.scheduler, c.steps): c for c in todo}.values():
        check_frame_limit(config)  # windows and lcm steps before the load, once per distinct setting
    written: list[Path] = []
    pipe, recorded = None, None
    with state.split_between_processes(todo) as mine:
        mine = list(mine)
    if mine:
        load_on, recorded = _device_for(mine[0], state)
        pipe = _load(mine[0], load_on)
        for config in todo:  # every process checks every item: no process fails after another has begun
            pipe.check_frames(config.frames)
    state.wait_for_everyone()
    try:
        for config in mine:
            outcome = render(config.replace(device=recorded), pipe=pipe)
            written.append(outcome.output)
            which = f" (process {state.process_index})" if state.num_processes > 1 else ""  # only under a launcher
            echo(str(outcome.output) if plain else f"rendered {outcome.output}{which}")
    except KeyboardInterrupt as exc:  # Ctrl-C or SIGTERM: say what is kept (each written video is whole)
        if written:
            exc.kept = f"kept the {len(written)} video(s) rendered before it; --skip-existing resumes"  # type: ignore[attr-defined]
        raise
    if plain:
        for config in skipped:
            echo(str(Path(config.output).resolve()))
        return written
    everyone = _gather([str(p) for p in written], state)
    if main:
        processes = f" on {state.num_processes} processes" if state.num_processes > 1 else ""
        echo(f"rendered {len(everyone)}, skipped {len(skipped)}{processes}")
    state.wait_for_everyone()
    close(state)
    return written


def render_batch(
    base: RenderConfig,
    *,
    prompt_file: str | os.PathLike[str] | None = None,
    seeds: str | Sequence[int] | None = None,
    num_videos: int | None = None,
    fmt: str | None = None,
    skip_existing: bool = False,
    seed_given: bool = False,
    prompt_given: bool = False,
    echo: Callable[[str], None] | None = None,
) -> list[Path]:
    """The ``videodiff render`` batch path: read, plan (on every process, the main one's plan wins), run."""
    echo = echo or (lambda line: print(line, flush=True))
    if prompt_file is not None and prompt_given:
        raise UserError("pass PROMPT or --prompt-file, not both")
    if seed_given and (seeds is not None or num_videos is not None):
        raise UserError("pass --seed, or --seeds/--num-videos, not both")
    if skip_existing and base.overwrite:
        raise UserError("pass --skip-existing or --overwrite, not both")
    check_num_videos(num_videos)  # before any file is read
    if isinstance(seeds, str):
        seeds = parse_seeds(seeds)
    if prompt_file is not None:
        items = read_prompt_file(prompt_file)
    elif base.prompt:
        items = [{"prompt": base.prompt}]
    else:
        raise UserError("no prompt given: pass PROMPT, --prompt-file, or set 'prompt' in the --config file")
    state = launch_state()
    single = prompt_file is None and len(seeds or ()) <= 1 and (num_videos or 1) <= 1
    plan = plan_batch(
        base,
        items,
        seeds,
        num_videos,
        fmt=fmt,
        batch=not single,
        name=Path(prompt_file).stem if prompt_file is not None else None,
        source=f"prompt file {prompt_file}" if prompt_file is not None else "prompt",
        announce=state.is_main_process,
    )
    plain = single and state.num_processes == 1  # one video, one process: print its path, as a plain render does
    return run_batch(plan, skip_existing=skip_existing, overwrite=base.overwrite, state=state, echo=echo, plain=plain)
