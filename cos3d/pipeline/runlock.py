"""One writer per run folder: an OS-level exclusive lock on ``RUN/.cos3d-lock``.

``cos3d train`` (``--resume`` and ``--restart`` included) holds the lock for as long as it writes
into the run; a second writer fails at once with one line naming the process that holds it, so two
trainings can never mix their stages, checkpoints or settings in one folder. The lock is
``flock(2)``: the kernel drops it when the process ends, however it ends (``kill -9`` included), so
a crashed run never leaves a stale lock behind; the PID written in the file is only what the
message quotes.

Readers (query, view, export, eval) never take it: every file of a run is replaced atomically
(:mod:`cos3d.core.atomic`), so a reader sees the old file or the new one, never half of one. A reader
that wants to know whether a run is being written (say, a query server deciding to reload later)
asks :func:`lock_holder`, which never blocks and never creates anything.

Public API (also exported by :mod:`cos3d.pipeline.run_folder`)::

    with writer_lock(run, flag="--out", what="train"):   # RunLockedError if another process holds it
        ...                                               # write into the run
    lock_holder(run)                                      # PID of the writer, or None

This module imports no torch, so the CLI takes the lock before its heavy imports: a second writer
exits within a fraction of a second.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import time
from pathlib import Path
from typing import Iterator

from cos3d.core.atomic import OutputWriteError, ensure_output_folder
from cos3d.core.errors import Cos3dError

try:  # POSIX; elsewhere runs are unlocked
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

__all__ = ["LOCK_NAME", "RunLockedError", "lock_holder", "writer_lock"]

LOCK_NAME = ".cos3d-lock"
"""The lock file inside a run folder, there while a writer holds it (removed when it ends; one left by a
killed process is harmless: holding the lock is what counts, not the file)."""


_NO_LOCKS = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS}
log = logging.getLogger("cos3d")


class RunLockedError(Cos3dError):
    """Another process is writing the run folder."""


_held: dict[Path, list] = {}
"""Locks this process holds: resolved run folder → [fd, depth] (re-entering is free)."""


def _read_holder(path: Path) -> str:
    try:
        text = path.read_text(errors="replace").split()
    except OSError:
        return ""
    return text[0] if text and text[0].isdigit() else ""


def _created_by(out: Path) -> list[Path]:
    """The folders ``mkdir -p out`` would create, deepest first."""
    missing = []
    p = out.absolute()
    while not p.exists() and p != p.parent:
        missing.append(p)
        p = p.parent
    return missing


@contextlib.contextmanager
def writer_lock(run: str | os.PathLike, *, flag: str = "--out", what: str = "train") -> Iterator[Path]:
    """Hold the run folder ``run``'s writer lock for the block (created with its parents if missing).

    Raises :class:`RunLockedError` (one line: the folder, the PID holding it, what to do) when another
    process holds it, and :class:`~cos3d.core.atomic.OutputWriteError` naming ``flag`` when the folder
    cannot be created or written. Re-entering in the same process is allowed. On exit the lock file is
    removed, and so are the folders this call created if nothing was written into them.
    """
    run = Path(run)
    created = _created_by(run)
    ensure_output_folder(run, flag)
    key = run.resolve()
    if key in _held:
        _held[key][1] += 1
        try:
            yield run
        finally:
            _held[key][1] -= 1
        return
    path = run / LOCK_NAME
    try:
        fd = _acquire(path, run, flag, what)
    except BaseException:
        _remove_empty(created)
        raise
    _held[key] = [fd, 1]
    try:
        yield run
    finally:
        del _held[key]
        with contextlib.suppress(OSError):
            path.unlink()  # while still locked: a waiting process sees the inode change and retries
        _remove_empty(created)  # folders made for a run that wrote nothing (a failed start)
        os.close(fd)  # releases the lock


def _remove_empty(folders: list[Path]) -> None:
    for d in folders:  # deepest first; a folder with anything in it stays
        with contextlib.suppress(OSError):
            d.rmdir()


def _flock_soon(fd: int, tries: int = 5) -> None:
    """``flock(LOCK_EX)`` without waiting for a writer, but past a reader's momentary shared lock
    (:func:`lock_holder`): a few tries 20 ms apart."""
    for i in range(tries):
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if i == tries - 1:
                raise
            time.sleep(0.02)


def _acquire(path: Path, run: Path, flag: str, what: str) -> int:
    for _ in range(10):
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o666)
        except OSError as e:
            raise OutputWriteError(f"{flag} {run}: cannot create the run's lock file {path.name}: "
                                   f"{e.strerror or e}") from None  # fmt: skip
        if fcntl is None:  # pragma: no cover
            return fd
        try:
            _flock_soon(fd)
        except OSError as e:
            if e.errno in _NO_LOCKS:  # a file system without locks (some NFS mounts): run unlocked, and say so
                log.warning("%s %s: the file system cannot lock the run folder (%s); make sure no other "
                            "training writes into it", flag, run, e.strerror or e)
                return fd
            os.close(fd)
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise OutputWriteError(f"{flag} {run}: cannot lock the run folder ({e.strerror or e})") from None
            pid = _read_holder(path)
            who = f"process {pid}" if pid else "another process"
            raise RunLockedError(
                f"{flag} {run} is being written by {who} (it holds {path}); wait for it to finish or stop it, "
                "or write to another folder"
            ) from None
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if not same:  # the previous holder removed the file after we opened it: lock the new one
            os.close(fd)
            continue
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {what}\n".encode(), 0)
        return fd
    raise RunLockedError(f"{flag} {run}: the run's lock file keeps changing; is another cos3d process starting?")


def lock_holder(run: str | os.PathLike) -> int | None:
    """The PID of the process writing the run folder ``run``, or None when no process holds its lock
    (or the PID cannot be read: then 0). Never blocks, never creates a file; for readers that want to
    wait for a training to finish before trusting a run."""
    path = Path(run) / LOCK_NAME
    if fcntl is None or not path.is_file():
        return None
    if Path(run).resolve() in _held:
        return os.getpid()
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        pid = _read_holder(path)
        return int(pid) if pid else 0
    finally:
        os.close(fd)  # also releases the shared lock taken when free
    return None
