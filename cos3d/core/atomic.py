"""Atomic file writes: write to a temporary sibling, fsync, then ``os.replace``.

A crash or a kill never leaves a half-written output where a finished one is expected, so resumable
stages can trust any file that exists.

Permissions are those of a plain ``open()``: a new file gets ``0666 & ~umask`` (the temporary sibling
is created with mode 0666 and the kernel applies the umask); a file that is replaced keeps its
permission bits.

Write errors are caught here, at the edge: no space left, a read-only file system, permission denied,
a file where a folder is expected (and the reverse) raise one :class:`~cos3d.core.errors.Cos3dError` line
naming the path and what to do, and the temporary file is removed, so nothing half-written is left
behind.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import secrets
import stat
import tempfile
from pathlib import Path
from typing import IO, Any, Iterator

from cos3d.core.errors import Cos3dError

_WRITE_ERRNOS: dict[int, str] = {
    errno.ENOSPC: "no space left on the device; free some space (or write to another disk) and run again",
    errno.EDQUOT: "disk quota exceeded; free some space (or write to another disk) and run again",
    errno.EFBIG: "the file is too large for this file system; write to another disk",
    errno.EROFS: "the file system is read-only; write to another folder",
    errno.EACCES: "permission denied; write to a folder you own, or fix its permissions",
    errno.EPERM: "permission denied; write to a folder you own, or fix its permissions",
    errno.EISDIR: "it is a folder; pass a file path (or remove the folder)",
    errno.ENOTDIR: "a part of its folder path is a file, not a folder; pass another path (or remove that file)",
    errno.ENAMETOOLONG: "the file name is too long; pass a shorter path",
}


class OutputWriteError(Cos3dError):
    """An output file could not be written (no space, read-only, permission, a file in the way)."""


_DEVICE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS}
"""Errors that can only come from writing, whichever file the exception names."""


def write_error(path: str | os.PathLike, exc: BaseException, tmp: str | os.PathLike | None = None) -> OutputWriteError | None:
    """The one-line :class:`OutputWriteError` for ``exc`` raised while writing ``path`` (through the
    temporary file ``tmp``), or None when ``exc`` is not a write error of that path (a bug, or an
    error reading some input file)."""
    if isinstance(exc, OutputWriteError):
        return exc
    if not isinstance(exc, OSError) or exc.errno not in _WRITE_ERRNOS:
        return None
    if exc.errno not in _DEVICE_ERRNOS and exc.filename is not None:
        ours = {os.fspath(path), os.fspath(Path(path).parent)} | ({os.fspath(tmp)} if tmp is not None else set())
        if os.fspath(exc.filename) not in ours:
            return None  # e.g. permission denied while reading an input file
    return OutputWriteError(f"cannot write {path}: {_WRITE_ERRNOS[exc.errno]}")


def _disk_full(folder: Path) -> bool:
    """True when the file system holding ``folder`` has (almost) no space left for us."""
    try:
        st = os.statvfs(folder)
    except (OSError, AttributeError):
        return False
    return st.f_bavail * st.f_frsize < (1 << 20)


def _make_parent(path: Path) -> None:
    parent = path.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except FileExistsError:  # a file where the folder should be
        raise OutputWriteError(
            f"cannot write {path}: {parent} is a file, not a folder; pass another path (or remove that file)"
        ) from None
    except OSError as e:  # every error here is about the output's folders
        if e.errno not in _WRITE_ERRNOS:
            raise
        where = f" ({e.filename})" if e.filename is not None and os.fspath(e.filename) != os.fspath(parent) else ""
        raise OutputWriteError(f"cannot write {path}: cannot create its folder{where}: {_WRITE_ERRNOS[e.errno]}") from None
    if path.is_dir():
        raise OutputWriteError(f"cannot write {path}: {_WRITE_ERRNOS[errno.EISDIR]}")


def _create_temp(path: Path) -> Path:
    """Create an empty, unique sibling of ``path`` the way ``open()`` would (mode 0666 & ~umask)."""
    for _ in range(100):
        tmp = path.with_name(f".{path.stem}.{secrets.token_hex(4)}.tmp{path.suffix}")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666)
        except FileExistsError:
            continue
        os.close(fd)
        return tmp
    raise FileExistsError(errno.EEXIST, "could not create a unique temporary file", str(path))  # pragma: no cover


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it is renamed onto ``path``.

    Use for writers that want a filename (``np.savez``, ``torch.save``, PIL ``save``). The temporary
    name keeps the final suffix so format-sniffing writers behave. Raises :class:`OutputWriteError`
    (one line: the path and what to do) when the file cannot be written; the temporary file is
    removed whatever happens.
    """
    path = Path(path)
    _make_parent(path)
    tmp_path: Path | None = None
    try:
        tmp_path = _create_temp(path)
        with contextlib.suppress(FileNotFoundError):
            mode = stat.S_IMODE(os.stat(path).st_mode)
            os.chmod(tmp_path, mode)  # a replaced file keeps its permissions, as with open(path, "w")
        yield tmp_path
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
        tmp_path = None
    except BaseException as e:
        if tmp_path is not None:
            with contextlib.suppress(OSError):
                tmp_path.unlink()
        err = write_error(path, e, tmp_path)
        if err is None and isinstance(e, RuntimeError) and _disk_full(path.parent):
            # torch.save to a filename reports a full disk as a RuntimeError from its C++ writer
            err = OutputWriteError(f"cannot write {path}: {_WRITE_ERRNOS[errno.ENOSPC]}")
        if err is None or err is e:
            raise
        raise err from None


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w") -> Iterator[IO[Any]]:
    """Open a temporary file for writing; it replaces ``path`` only if the block succeeds."""
    assert mode in ("w", "wb"), mode
    with atomic_path(path) as tmp:
        with open(tmp, mode) as f:
            yield f


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    with atomic_open(path, "w") as f:
        json.dump(obj, f, indent=1)
        f.write("\n")


def ensure_output_folder(out: str | os.PathLike, flag: str = "--out") -> Path:
    """Create the folder ``out`` (with its parents) and check that a file can be written in it, *before* a
    long computation writes its results there: an evaluation that runs for an hour and then cannot write
    would lose it all. Raises one :class:`OutputWriteError` line naming ``flag``; returns ``out``."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise OutputWriteError(f"{flag} {out} is a file, not a folder; pass a folder path")

    def why(e: OSError) -> str:
        return _WRITE_ERRNOS.get(e.errno or 0, e.strerror or str(e))

    try:
        out.mkdir(parents=True, exist_ok=True)
    except FileExistsError:  # a file where one of its folders should be
        raise OutputWriteError(f"{flag} {out}: {_WRITE_ERRNOS[errno.ENOTDIR]}") from None
    except OSError as e:  # every error here is about the output folder
        raise OutputWriteError(f"{flag} {out}: cannot create the folder: {why(e)}") from None
    try:
        _create_temp(out / ".cos3d-write-check").unlink()
    except OSError as e:
        raise OutputWriteError(f"{flag} {out}: cannot write a file there: {why(e)}") from None
    return out


def check_writable(path: str | os.PathLike, flag: str, kind: str = "folder") -> Path:
    """Check, before any work, that the output ``path`` (given by ``flag``) can be written, without
    creating anything. ``kind``: ``folder`` (files go into it), ``file`` (written in its folder) or
    ``sibling`` (a folder built beside it and moved in: its parent must take it). A file where a folder
    is expected (or the reverse), a read-only file system, permission denied (EACCES, EPERM: an
    immutable folder) are one :class:`OutputWriteError` line naming ``flag`` and the path. Returns
    ``path``."""
    path = Path(path)
    if kind in ("folder", "sibling") and path.exists() and not path.is_dir():
        raise OutputWriteError(f"{flag} {path} is a file, not a folder; pass a folder path")
    if kind == "file" and path.is_dir():
        raise OutputWriteError(f"{flag} {path} is a folder; pass a file name")
    probe = path if kind == "folder" else path.parent
    while not probe.exists() and not probe.is_symlink() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise OutputWriteError(f"{flag} {path}: a part of its folder path is a file, not a folder ({probe}); "
                               "pass another path (or remove that file)")
    try:
        _create_temp(probe / ".cos3d-write-check").unlink()
    except OSError as e:
        raise OutputWriteError(f"{flag} {path}: cannot write in {probe}: "
                               f"{_WRITE_ERRNOS.get(e.errno or 0, e.strerror or str(e))}") from None  # fmt: skip
    return path


# --------------------------------------------------------------------------------------------------
# Whole folders


def check_output_folder(out: Path, force: bool, flag: str = "--out") -> None:
    """Refuse an ``out`` that is a file, or a non-empty folder unless ``force`` (one line naming ``flag``)."""
    if out.exists() and not out.is_dir():
        raise Cos3dError(f"{flag} {out} exists and is not a folder; choose another path")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise Cos3dError(f"{flag} {out} already exists and is not empty; pass --force to replace it")


def _remove_stale_siblings(out: Path) -> None:
    """Delete temporary siblings of ``out`` (``.<name>.tmp-<pid>-*`` / ``.old-<pid>-*``) left by killed
    runs: those whose process no longer exists."""
    import glob
    import shutil

    for d in out.parent.glob(f".{glob.escape(out.name)}.*-*-*"):
        kind, _, rest = d.name[len(out.name) + 2 :].partition("-")
        pid = rest.split("-", 1)[0]
        if kind not in ("tmp", "old") or not pid.isdigit() or not d.is_dir():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(d, ignore_errors=True)
        except (PermissionError, OverflowError):  # someone else's live process, or not a pid
            continue


def _make_sibling_dir(out: Path) -> Path:
    """A new empty hidden sibling ``.<name>.tmp-<pid>-<random>`` of ``out``, created with mode 0777 so the
    kernel applies the umask (the permissions a plain ``mkdir`` gives; no process-wide umask change)."""
    for _ in range(100):
        tmp = out.parent / f".{out.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
        try:
            os.mkdir(tmp, 0o777)
        except FileExistsError:
            continue
        return tmp
    raise FileExistsError(errno.EEXIST, "could not create a unique temporary folder", str(out))  # pragma: no cover


@contextlib.contextmanager
def atomic_dir(out: str | os.PathLike, *, force: bool = False, flag: str = "--out") -> Iterator[Path]:
    """Build a folder aside and move it onto ``out`` whole when the block succeeds.

    Yields an empty hidden sibling (``.<name>.tmp-<pid>-*``, made with the umask's permissions); on
    success it replaces ``out`` (an old non-empty ``out``, allowed by ``force``, is swapped aside first,
    then removed); on any error or interrupt it is deleted and ``out`` is untouched. Siblings left by
    killed runs are cleaned up first. An ``out`` whose folder cannot be written is one
    :class:`OutputWriteError` line naming ``flag``, before the block runs.
    """
    import shutil

    out = Path(out).absolute()
    check_output_folder(out, force, flag)
    check_writable(out, flag, kind="sibling")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale_siblings(out)
        tmp = _make_sibling_dir(out)
    except OSError as e:
        raise OutputWriteError(f"{flag} {out}: cannot create a folder beside it: "
                               f"{_WRITE_ERRNOS.get(e.errno or 0, e.strerror or str(e))}") from None  # fmt: skip
    try:
        yield tmp
        check_output_folder(out, force, flag)  # it may have appeared meanwhile
        old = None
        if out.is_dir():
            if any(out.iterdir()):
                old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-{os.getpid()}-", dir=out.parent))
                os.replace(out, old / "previous")
            else:
                out.rmdir()
        os.replace(tmp, out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
