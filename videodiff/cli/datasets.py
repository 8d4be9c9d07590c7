"""``videodiff data``: make training data (``data shapes``: clips of the shapes world)."""

from __future__ import annotations

import click


@click.group()
def data() -> None:
    """Make training data."""


@data.command("shapes")
@click.option("--out", required=True, help="Folder for the clips, their .txt captions and manifest.jsonl.")
@click.option("--count", type=click.IntRange(min=1), default=1000, show_default=True, help="Number of clips.")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True, help="Seed of every random choice.")
@click.option(
    "--split",
    type=click.Choice(["train", "heldout", "all"]),
    default="train",
    show_default=True,
    help="Combinations drawn: the training ones, the 10 held-out ones, or all 96.",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["gif", "mp4", "png"]),
    default="gif",
    show_default=True,
    help="gif (keeps the colours), mp4 (H.264 crf 10: smaller, blurs colour edges), or PNG folders "
    "(lossless; listed in the manifest only, videodiff train reads video files).",
)
@click.option(
    "--maps",
    is_flag=True,
    help="Also write each clip's control maps beside it (NAME.maps.gif): a white disc on the object's centre in "
    "each frame, on black; what `videodiff train --controlnet` learns from.",
)
@click.option(
    "--paths",
    is_flag=True,
    help="Objects follow random drawn paths (2 to 4 points; never the held-out kinds of `eval shapes "
    "--controlled`) instead of straight lines; the prompt names the path's net direction.",
)
@click.option("--overwrite", is_flag=True, help="Replace the clips of an earlier dataset in --out.")
def data_shapes(
    out: str, count: int, seed: int, split: str, fmt: str, maps: bool, paths: bool, overwrite: bool
) -> None:
    """Clips of the shapes world: "a {color} {shape} moving {direction}", 16 frames of 64x64.

    \b
    Example:
      videodiff data shapes --out data/shapes --count 2000 --seed 0
      videodiff train --data data/shapes --output runs/shapes --resolution 64 --frames 16 --steps 200 --cache-latents
    (no --model: train on top of the built-in shapes model; --model ./sd15 for another)
      videodiff data shapes --out data/blobs --count 2000 --maps --paths
      videodiff train --controlnet --data data/blobs/manifest.jsonl --output runs/blobs --resolution 64 \\
          --frames 16 --stride 1 --steps 1000 --lr 2e-4 --cache-latents
    """
    from videodiff.shapes import write_dataset
    from videodiff.shapes.blobs import along_training_path

    draw = along_training_path if paths else None
    written = write_dataset(out, count, seed=seed, split=split, format=fmt, overwrite=overwrite, maps=maps, draw=draw)
    also = ", control maps" if maps else ""
    click.echo(f"{out}: {len(written)} clips ({split} combinations){also}, captions and manifest.jsonl")
