"""The output gate: what a command that writes may replace, decided in one place.

- A symbolic link, a device, a FIFO or a socket is never written to or replaced (:func:`check_replaceable`).
- A plain file the user names as the output is replaced only with ``--overwrite`` (:func:`prepare_output`),
  and ``--overwrite`` counts only from the command line or the web form, never from a settings file.
- What videodiff derives (a PNG-frames folder, a sidecar, a training run's files, a latent cache, a data
  folder) is replaced only when it is recognisably videodiff's own: a folder carries a *receipt*, a small
  JSON file listing every file videodiff wrote there with its size and SHA-256; a file counts as ours only
  while its bytes still match the receipt, and nothing the receipt does not list is ever deleted.
  A single side file is recognised by its own keys (a sidecar by its ``info`` part, a latent cache by
  its header's metadata), never by how its first byte looks.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from videodiff.errors import UserError
from videodiff.media.atomic import check_replaceable, os_reason

__all__ = [
    "RECEIPT",
    "RECEIPT_FORMAT",
    "check_owned",
    "file_digest",
    "folder_is_ours",
    "owned_files",
    "read_receipt",
    "record",
    "remove_owned",
    "write_receipt",
]

RECEIPT = ".videodiff-written.json"  # in a training run's folder and a data folder
RECEIPT_FORMAT = "videodiff-receipt/1"
_MAX_RECEIPT = 64 << 20  # a receipt is a list of names and digests; anything larger is not one


def file_digest(path: str | os.PathLike[str]) -> str:
    """The SHA-256 (hex) of the file ``path``."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _entry(path: Path) -> dict[str, Any]:
    return {"size": path.stat().st_size, "sha256": file_digest(path)}


def _files_under(path: Path, root: Path) -> list[str]:
    """``path`` (a file) or every regular file under the folder ``path``, relative to ``root``, POSIX-style."""
    if path.is_dir() and not path.is_symlink():
        return sorted(p.relative_to(root).as_posix() for p in path.rglob("*") if p.is_file() and not p.is_symlink())
    return [path.relative_to(root).as_posix()]


def write_receipt(folder: Path, kind: str, names: Iterable[str], *, marker: str = RECEIPT) -> Path:
    """Write ``folder/marker``: each of ``names`` (relative, files or folders) with its size and SHA-256."""
    folder = Path(folder)
    files: dict[str, Any] = {}
    for name in names:
        for rel in _files_under(folder / name, folder):
            if rel != marker:
                files[rel] = _entry(folder / rel)
    receipt = folder / marker
    receipt.write_text(json.dumps({"format": RECEIPT_FORMAT, "kind": kind, "files": files}, indent=1) + "\n")
    return receipt


def read_receipt(folder: Path, kind: str, *, marker: str = RECEIPT) -> dict[str, dict[str, Any]] | None:
    """The files a valid receipt of ``kind`` in ``folder`` lists; None when there is none (or it is not one)."""
    path = Path(folder) / marker
    try:
        st = os.lstat(path)
        if not stat.S_ISREG(st.st_mode) or st.st_size > _MAX_RECEIPT:
            return None
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("format") != RECEIPT_FORMAT or data.get("kind") != kind:
        return None
    files = data.get("files")
    if not isinstance(files, dict):
        return None
    return {
        str(k): v
        for k, v in files.items()
        if isinstance(v, dict) and isinstance(v.get("size"), int) and isinstance(v.get("sha256"), str)
    }


def _unchanged(folder: Path, rel: str, entry: dict[str, Any]) -> bool:
    """Whether ``folder/rel`` is a regular file (not through a link) whose size and SHA-256 match ``entry``."""
    parts = Path(rel).parts
    if not parts or Path(rel).is_absolute() or ".." in parts:
        return False
    path = folder
    for part in parts:  # no link anywhere on the way
        path = path / part
        try:
            if stat.S_ISLNK(os.lstat(path).st_mode):
                return False
        except OSError:
            return False
    try:
        st = os.lstat(path)
        return stat.S_ISREG(st.st_mode) and st.st_size == entry["size"] and file_digest(path) == entry["sha256"]
    except OSError:
        return False


def owned_files(folder: Path, kind: str, *, marker: str = RECEIPT) -> set[str]:
    """The files in ``folder`` that its receipt lists and that are still as videodiff wrote them."""
    receipt = read_receipt(folder, kind, marker=marker)
    if receipt is None:
        return set()
    return {rel for rel, entry in receipt.items() if _unchanged(Path(folder), rel, entry)}


def folder_is_ours(folder: Path, kind: str, *, marker: str = RECEIPT) -> bool:
    """Whether everything under ``folder`` is its receipt and files the receipt lists, unchanged: then the
    whole folder may be replaced. Any other file, a link, a device, or a changed file makes it the user's."""
    folder = Path(folder)
    ours = owned_files(folder, kind, marker=marker)
    if read_receipt(folder, kind, marker=marker) is None:
        return False
    for dirpath, dirnames, filenames in os.walk(folder):
        for name in filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
            rel = Path(dirpath, name).relative_to(folder).as_posix()
            if rel != marker and rel not in ours:
                return False
    return True


def record(folder: Path, kind: str, written: Iterable[str | os.PathLike[str]], *, marker: str = RECEIPT) -> None:
    """Add the files (or folders' files) ``written`` into ``folder`` to its receipt, keeping the entries of
    files that are still unchanged (a training run writes its folder in several steps)."""
    folder = Path(folder)
    keep = sorted(owned_files(folder, kind, marker=marker))
    new = [Path(os.path.abspath(p)).relative_to(os.path.abspath(folder)).as_posix() for p in written]
    write_receipt(folder, kind, [*keep, *(n for n in new if os.path.lexists(folder / n))], marker=marker)


def check_owned(folder: Path, names: Iterable[str], kind: str, *, marker: str = RECEIPT, what: str = "") -> None:
    """Refuse (:class:`UserError`) if any of ``names`` (files or folders in ``folder``) exists and holds
    anything that is not an unchanged file of ``folder``'s receipt: a write would replace the user's file."""
    folder = Path(folder)
    ours = owned_files(folder, kind, marker=marker)
    for name in names:
        path = folder / name
        if not os.path.lexists(path):
            continue
        mode = os.lstat(path).st_mode
        if stat.S_ISDIR(mode):
            found = []
            for dirpath, dirnames, filenames in os.walk(path):
                found += [os.path.join(dirpath, n) for n in filenames]
                found += [os.path.join(dirpath, d) for d in dirnames if os.path.islink(os.path.join(dirpath, d))]
            foreign = [f for f in found if Path(f).relative_to(folder).as_posix() not in ours]
            if foreign:
                raise UserError(
                    f"{foreign[0]} was not written by videodiff{what} (or was changed since); "
                    "refusing to replace it: move it away or choose another folder"
                )
        elif name not in ours:
            check_replaceable(path, kind="file")  # a link, device or FIFO: said as such
            raise UserError(
                f"{path} was not written by videodiff{what} (or was changed since); "
                "refusing to replace it: move it away or choose another folder"
            )


def remove_owned(folder: Path, kind: str, *, marker: str = RECEIPT) -> None:
    """Delete the files of ``folder``'s receipt that are unchanged, then folders left empty, then the receipt;
    nothing the receipt does not list is touched."""
    folder = Path(folder)
    for rel in sorted(owned_files(folder, kind, marker=marker)):
        try:
            (folder / rel).unlink()
        except OSError as exc:
            raise UserError(f"cannot remove {folder / rel}: {os_reason(exc)}") from None
        parent = (folder / rel).parent
        while parent != folder:
            try:
                parent.rmdir()  # only when empty
            except OSError:
                break
            parent = parent.parent
    (folder / marker).unlink(missing_ok=True)
