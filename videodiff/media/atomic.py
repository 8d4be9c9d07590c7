"""Write files and folders atomically: either the complete result appears, or nothing.

Everything is first written to a temporary name in the *same* folder (so the final
``os.replace`` / ``os.rename`` is a same-filesystem rename) and moved into place only
when writing succeeded; on failure (an exception, Ctrl-C, SIGTERM) the temporary is removed.
Several files that belong together (a video and its sidecar) are staged together and moved
into place in one step with SIGINT/SIGTERM held (:func:`staged`).

What may be replaced is decided here too (:func:`check_replaceable`): never a symbolic link
(it is not followed to write elsewhere), a device, a FIFO or a socket, and a folder or a file
only when the caller recognises it as its own kind of output.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import signal
import stat
import threading
import uuid

try:
    import fcntl
except ImportError:  # not POSIX: moves are not serialised between processes
    fcntl = None  # type: ignore[assignment]
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from videodiff.errors import UserError

__all__ = [
    "prepare_output",
    "remove_stale_temporaries",
    "check_replaceable",
    "atomic_file",
    "atomic_dir",
    "staged",
    "signals_held",
    "write_text_atomic",
    "os_reason",
    "user_mode",
]

Check = Callable[[Path], bool]


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


def os_reason(exc: OSError) -> str:
    """The human part of an OSError ("No space left on device"), without errno numbers or a traceback."""
    return exc.strerror or (errno.errorcode.get(exc.errno or 0) if exc.errno else None) or type(exc).__name__


def _lstat(path: Path, shown: object) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except FileNotFoundError:
        return None
    except OSError as exc:  # a name too long, a parent that is a file, no permission...
        if exc.errno == errno.ENOTDIR:
            return None  # reported by the folder checks, which name the file in the way
        raise UserError(f"cannot use output {shown}: {os_reason(exc)}") from None


def check_replaceable(
    path: str | os.PathLike[str],
    *,
    file_ok: Check | None = None,
    folder_ok: Check | None = None,
    kind: str = "output",
    shown: object = None,
) -> bool:
    """Whether ``path`` exists; raise :class:`UserError` if it exists as something this write may not replace.

    A symbolic link, a device, a FIFO or a socket is never replaced (whatever ``--overwrite`` says);
    a regular file only if ``file_ok(path)`` (default: any), a folder only if ``folder_ok(path)``
    (default: none). ``kind`` names what was expected in the message.
    """
    path = Path(path)
    shown = path if shown is None else shown
    st = _lstat(path, shown)
    if st is None:
        return False
    mode = st.st_mode
    if stat.S_ISLNK(mode):
        raise UserError(
            f"{shown} is a symbolic link; videodiff does not write through links: remove it or choose another name"
        )
    if stat.S_ISDIR(mode):
        if folder_ok is not None and folder_ok(path):
            return True
        raise UserError(
            f"{shown} is a folder that is not a videodiff {kind}; refusing to replace it (choose another name)"
        )
    if stat.S_ISREG(mode):
        if file_ok is None or file_ok(path):
            return True
        raise UserError(f"{shown} exists and is not a {kind}; refusing to replace it (choose another name)")
    raise UserError(f"{shown} is not a regular file (a device, FIFO or socket); refusing to write to it")


def _plain_name(path: str | os.PathLike[str]) -> bool:
    name = os.path.basename(os.path.normpath(os.fspath(path)))
    return name not in ("", ".", "..", os.sep)


def check_appendable(path: str | os.PathLike[str], flag: str = "--out") -> Path:
    """A JSON-lines file that results are appended to (``eval long``/``sweep --out``): a new file, or a regular file
    (not a link, device, FIFO, socket or folder) whose lines so far are JSON (one an earlier run wrote), so that
    appending never touches a user's other file. One-line :class:`UserError` otherwise; nothing is created."""
    import json

    out = Path(os.path.abspath(os.path.expanduser(os.fspath(path))))
    if not check_replaceable(out, kind="JSON-lines file", shown=path):
        return out
    with open(out, "rb") as fh:
        head = fh.read(1 << 16)
    lines = [line for line in head.splitlines()[: -1 if len(head) == 1 << 16 else None] if line.strip()]
    try:
        for line in lines:
            json.loads(line)
    except ValueError:
        raise UserError(
            f"{flag} {path} is a file that is not JSON lines; results are appended only to a file an earlier "
            "run wrote: choose another name"
        ) from None
    return out


def prepare_output(
    path: str | os.PathLike[str],
    *,
    overwrite: bool,
    create: bool = True,
    file_ok: Check | None = None,
    folder_ok: Check | None = None,
    kind: str = "output",
) -> Path:
    """Check that ``path`` may be written and create its parent folders.

    Raises :class:`UserError` if the path exists and ``overwrite`` is false, if it exists as something
    that may not be replaced (:func:`check_replaceable`), or if its folder cannot be created or written
    to. Returns the absolute path (symbolic links in it are not resolved, so a link as the output is
    refused, not followed). With ``create=False`` (a check before long work) nothing is created: the
    nearest existing folder above must be writable instead, so a failed run leaves no folders.
    """
    if not _plain_name(path):
        raise UserError(f"output {str(path)!r} names no file: give a file or folder name, e.g. out/clip.mp4")
    out = Path(os.path.abspath(os.path.expanduser(os.fspath(path))))
    if check_replaceable(out, file_ok=file_ok, folder_ok=folder_ok, kind=kind, shown=path) and not overwrite:
        raise UserError(f"{path} already exists; pass --overwrite to replace it")
    parent = out.parent
    if not create:
        try:
            existing = next(p for p in (parent, *parent.parents) if p.exists())
        except OSError as exc:
            raise UserError(f"cannot use output folder {parent}: {os_reason(exc)}") from None
        if not existing.is_dir():
            raise UserError(f"cannot create output folder {parent}: {existing} is not a folder")
        if not os.access(existing, os.W_OK | os.X_OK):
            raise UserError(f"output folder {existing} is not writable")
        return out
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create output folder {parent}: {os_reason(exc)}") from None
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"output folder {parent} is not writable")
    return out


def _start_time(pid: int) -> int:
    """When process ``pid`` started (clock ticks since boot; Linux), 0 where unknown: with the pid, who wrote."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            return int(fh.read().rsplit(b")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return 0


_writers: dict[int, str] = {}


def _writer() -> str:
    """This process, as its temporaries' names carry it (looked up again in a forked child)."""
    pid = os.getpid()
    if pid not in _writers:
        _writers[pid] = f"{pid}-{_start_time(pid)}"
    return _writers[pid]


def _writer_alive(pid: int, start: int) -> bool:
    """Whether the process that named a temporary ``pid``-``start`` still runs (a reused pid has another start)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # another user's process: alive
        pass
    return start == 0 or _start_time(pid) in (0, start)


def _temp_sibling(final_path: Path, tag: str = "tmp") -> Path:
    # Hidden, unique, and ending with the real suffix so encoders that choose the
    # container from the extension (PyAV, Pillow) still pick the right format.
    # The stem is shortened so that a long (valid) name does not become too long with the tag.
    # The writer's pid and start time are in the name: a later write of the same output removes the
    # temporaries of a writer that is gone (killed with SIGKILL), never those of one still running.
    name = f".{final_path.stem[:120]}.{_writer()}-{uuid.uuid4().hex[:6]}.{tag}{final_path.suffix}"
    return final_path.with_name(name)


_TEMP_NAME = re.compile(r"\.(?P<stem>.*)\.(?P<pid>\d+)-(?P<start>\d+)-[0-9a-f]{6}\.tmp(?P<suffix>(\.[^.]*)?)")


def remove_stale_temporaries(final_path: str | os.PathLike[str]) -> list[Path]:
    """Remove the temporaries of ``final_path`` (of videodiff's own naming) whose writer no longer runs: what a
    ``kill -9`` during a write left. A concurrent writer's temporaries are kept. Returns what was removed."""
    final = Path(final_path)
    removed = []
    try:
        entries = list(os.scandir(final.parent))
    except OSError:
        return removed
    for entry in entries:
        m = _TEMP_NAME.fullmatch(entry.name)
        if not m or m["stem"] != final.stem[:120] or m["suffix"] != final.suffix:
            continue
        if _writer_alive(int(m["pid"]), int(m["start"])):
            continue
        path = Path(entry.path)
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(path, ignore_errors=True)
        elif entry.is_file(follow_symlinks=False):
            path.unlink(missing_ok=True)
        else:
            continue
        removed.append(path)
    return removed


@contextmanager
def signals_held() -> Iterator[None]:
    """SIGINT and SIGTERM wait until the block ends (then they act): moves that belong together are not torn.

    Held in Python, not with a signal mask: a process-directed signal may land on any thread (torch starts
    several), and Python runs its handlers in the main thread whichever thread received it.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[int] = []

    def hold(signum: int, frame: object) -> None:
        pending.append(signum)

    previous = {}
    for signum in (signal.SIGINT, signal.SIGTERM):
        if signal.getsignal(signum) is not None:  # None: a handler not set from Python, which cannot be restored
            previous[signum] = signal.signal(signum, hold)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        for signum in dict.fromkeys(pending):
            signal.raise_signal(signum)  # now, as it would have acted


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _move_into_place(tmp: Path, final: Path) -> None:
    """Rename ``tmp`` to ``final``; a folder replaces an existing one by moving the old one aside first."""
    if not tmp.is_dir():
        os.replace(tmp, final)
        return
    st = _lstat(final, final)
    if st is None:
        os.rename(tmp, final)
    elif stat.S_ISDIR(st.st_mode):
        aside = _temp_sibling(final, "aside")  # never removed as stale: after a kill it holds the earlier output
        os.rename(final, aside)
        try:
            os.rename(tmp, final)
        except BaseException:
            os.rename(aside, final)
            raise
        shutil.rmtree(aside, ignore_errors=True)
    elif stat.S_ISREG(st.st_mode):
        os.unlink(final)
        os.rename(tmp, final)
    else:
        raise UserError(f"{final} is not a regular file or folder; refusing to replace it")


class Staging:
    """Temporary siblings of the final paths, moved into place together by :func:`staged`."""

    def __init__(self) -> None:
        self.moves: list[tuple[Path, Path]] = []

    def file(self, final: str | os.PathLike[str]) -> Path:
        remove_stale_temporaries(final)
        tmp = _temp_sibling(Path(final))
        self.moves.append((tmp, Path(final)))
        return tmp

    def dir(self, final: str | os.PathLike[str]) -> Path:
        remove_stale_temporaries(final)
        tmp = _temp_sibling(Path(final))
        self.moves.append((tmp, Path(final)))
        tmp.mkdir()
        return tmp


@contextmanager
def folders_locked(folders: Iterable[Path]) -> Iterator[None]:
    """Hold an exclusive ``flock`` on each folder (in a fixed order): moves into them from other
    videodiff processes wait, so a check and the moves after it are one step for them. No lock file is
    left behind (the lock is on the folder itself); where a folder cannot be locked, nothing is held."""
    with ExitStack() as stack:
        for folder in sorted(set(folders)) if fcntl is not None else ():
            try:
                fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
            except OSError:
                continue
            stack.callback(os.close, fd)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
            except OSError:
                continue
            stack.callback(fcntl.flock, fd, fcntl.LOCK_UN)
        yield


@contextmanager
def staged(exclusive: bool = False) -> Iterator[Staging]:
    """Stage several outputs; on success move them into place in the order staged, with signals held.

    The moves hold a lock on the outputs' folders, so two processes staging the same outputs move them
    one after the other: the pair that ends in place is one process's, never a mix. ``exclusive``: an
    output that appeared meanwhile (another render finished first) is not replaced; the loser's
    temporaries are removed and it raises :class:`UserError` saying so.

    Stage the file that must never be missing *first* (a sidecar before its video): a failure
    between the moves removes what was already moved, so a video never appears without its sidecar.
    On any failure (also Ctrl-C or SIGTERM, which the CLI turns into exceptions) every temporary is removed.
    """
    staging = Staging()
    committed = False
    try:
        yield staging
        for tmp, _ in staging.moves:
            user_mode(tmp)
        with signals_held(), folders_locked(final.parent for _, final in staging.moves):
            if exclusive:
                for _, final in staging.moves:
                    if _lstat(final, final) is not None:
                        raise UserError(f"{final} was written by another process while this one ran; "
                                        "nothing was replaced (pass --overwrite to replace it)")
            done: list[Path] = []
            try:
                for tmp, final in staging.moves:
                    _move_into_place(tmp, final)
                    done.append(final)
            except BaseException:
                for final in done:
                    _remove(final)
                raise
            committed = True
    except KeyboardInterrupt as exc:
        if committed:  # the signal was held until the outputs were in place: say they are kept
            names = ", ".join(str(final) for _, final in staging.moves)
            exc.kept = f"{names} had been written whole and are kept"  # type: ignore[attr-defined]
            raise
        for tmp, _ in staging.moves:
            _remove(tmp)
        raise
    except BaseException:
        for tmp, _ in staging.moves:
            _remove(tmp)
        raise


@contextmanager
def atomic_file(final_path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``final_path``; move it into place on success.

    On an exception inside the block the temporary file is deleted and the
    exception re-raised, so ``final_path`` is either untouched or complete.
    """
    with staged() as stage:
        yield stage.file(final_path)


@contextmanager
def atomic_dir(final_path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a fresh temporary folder beside ``final_path``; rename it into place on success.

    An existing folder at ``final_path`` (the overwrite case; :func:`prepare_output` decides whether it
    may be replaced) is moved aside, the new one renamed into place, then the old one removed. On an
    exception the temporary folder tree is removed and the exception re-raised.
    """
    with staged() as stage:
        yield stage.dir(final_path)


def write_text_atomic(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_file(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
