"""Write files and folders atomically: either the complete result appears, or nothing.

Everything is first written to a temporary name in the *same* folder (so the final
``os.replace`` / ``os.rename`` is a same-filesystem rename) and moved into place only
when writing succeeded; on failure the temporary is removed.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from videodiff.errors import UserError

__all__ = ["prepare_output", "atomic_file", "atomic_dir", "user_mode", "write_text_atomic"]


def _umask() -> int:
    mask = os.umask(0o022)  # reading the umask means setting it; put it straight back
    os.umask(mask)
    return mask


def user_mode(path: str | os.PathLike[str]) -> None:
    """Give the file ``path`` (or every file under the folder ``path``) the mode the user's umask asks for.

    Some writers create files that only their owner may read (safetensors' ``save_file`` and
    temporary files make them 0600); everything videodiff writes gets ``0666 & ~umask``, as
    ``open()`` would give it, like the files beside it.
    """
    mode = 0o666 & ~_umask()
    p = Path(path)
    files = [p] if not p.is_dir() else [q for q in p.rglob("*") if q.is_file() and not q.is_symlink()]
    for f in files:
        os.chmod(f, mode)


def prepare_output(path: str | os.PathLike[str], *, overwrite: bool, create: bool = True) -> Path:
    """Check that ``path`` may be written and create its parent folders.

    Raises :class:`UserError` if the path exists and ``overwrite`` is false, or if
    its folder cannot be created or written to. Returns the resolved path. With
    ``create=False`` (a check before long work) nothing is created: the nearest
    existing folder above must be writable instead, so a failed run leaves no folders.
    """
    out = Path(path).expanduser().resolve()
    if out.exists() and not overwrite:
        raise UserError(f"{path} already exists; pass --overwrite to replace it")
    parent = out.parent
    if not create:
        existing = next(p for p in (parent, *parent.parents) if p.exists())
        if not existing.is_dir():
            raise UserError(f"cannot create output folder {parent}: {existing} is not a folder")
        if not os.access(existing, os.W_OK | os.X_OK):
            raise UserError(f"output folder {existing} is not writable")
        return out
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise UserError(f"cannot create output folder {parent}: {reason}") from None
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"output folder {parent} is not writable")
    return out


def _temp_sibling(final_path: Path) -> Path:
    # Hidden, unique, and ending with the real suffix so encoders that choose the
    # container from the extension (PyAV, Pillow) still pick the right format.
    return final_path.with_name(f".{final_path.stem}.{uuid.uuid4().hex[:8]}.tmp{final_path.suffix}")


@contextmanager
def atomic_file(final_path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``final_path``; move it into place on success.

    On an exception inside the block the temporary file is deleted and the
    exception re-raised, so ``final_path`` is either untouched or complete.
    """
    final = Path(final_path)
    tmp = _temp_sibling(final)
    try:
        yield tmp
        user_mode(tmp)
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextmanager
def atomic_dir(final_path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a fresh temporary folder beside ``final_path``; rename it into place on success.

    An existing ``final_path`` (the overwrite case) is removed just before the
    rename. On an exception the temporary folder tree is removed and the
    exception re-raised.
    """
    final = Path(final_path)
    tmp = _temp_sibling(final)
    tmp.mkdir()
    try:
        yield tmp
        user_mode(tmp)
        if final.is_dir() and not final.is_symlink():
            shutil.rmtree(final)
        elif final.exists() or final.is_symlink():
            final.unlink()
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_text_atomic(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_file(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
