"""Where running ``cos3d serve`` processes say which runs they serve, so that ``cos3d query`` and
:func:`cos3d.serve.client.load` find them without being told a URL.

One JSON file per server, ``<dir>/servers/<pid>-<port>.json``::

    {"pid": 1234, "url": "http://127.0.0.1:8765", "host": "127.0.0.1", "port": 8765, "token": null,
     "executor": "local", "runs": {"tabletop": "/abs/runs/tabletop"}, "folders": ["/abs/runs"],
     "started": 1733490000.0}

``<dir>`` is ``$COS3D_RUNTIME_DIR``, else ``$XDG_RUNTIME_DIR/cos3d``, else ``<tmp>/cos3d-<uid>``; it is
made with mode 0700 and each file with 0600 (a file may hold the server's token). A file is written
whole (a temporary sibling, then ``os.replace``), so a reader never sees half of one. An entry whose
process is gone (a server killed with SIGKILL leaves its file behind) is stale: :func:`find` removes it
and looks further. Nothing here imports torch.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["ServerEntry", "discovery_dir", "find", "remove", "servers", "write"]


def discovery_dir() -> Path:
    """The folder holding one file per running server (module docstring)."""
    env = os.environ.get("COS3D_RUNTIME_DIR")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg and Path(xdg).is_dir():
        return Path(xdg) / "cos3d"
    uid = os.getuid() if hasattr(os, "getuid") else "user"
    return Path(tempfile.gettempdir()) / f"cos3d-{uid}"


@dataclass
class ServerEntry:
    """One running server as its discovery file describes it."""

    pid: int
    url: str
    host: str
    port: int
    runs: dict[str, str]
    """``{name: absolute run folder}``."""
    folders: list[str] = field(default_factory=list)
    """Folders of runs it serves (a run added there later is served too)."""
    token: str | None = None
    executor: str = "local"
    started: float = 0.0
    path: Path | None = None
    """The discovery file itself."""

    def to_dict(self) -> dict:
        return {"pid": self.pid, "url": self.url, "host": self.host, "port": self.port, "runs": self.runs,
                "folders": self.folders, "token": self.token, "executor": self.executor, "started": self.started}

    def name_of(self, run: str | os.PathLike) -> str | None:
        """The name this server knows ``run`` (a folder) by, or None when it does not serve it."""
        try:
            p = str(Path(run).resolve())
        except OSError:
            return None
        for name, path in self.runs.items():
            if path == p:
                return name
        parent = str(Path(p).parent)
        if parent in self.folders and (Path(p) / "run.json").is_file():
            return Path(p).name
        return None


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive, but not ours to use
        return True
    return True


def write(entry: ServerEntry) -> Path:
    """Write ``entry``'s file atomically (mode 0600); returns its path."""
    d = discovery_dir() / "servers"
    d.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = d / f"{entry.pid}-{entry.port}.json"
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=d)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(entry.to_dict(), f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    entry.path = path
    return path


def remove(entry: ServerEntry) -> None:
    """Remove ``entry``'s file (a server shutting down)."""
    if entry.path is not None:
        entry.path.unlink(missing_ok=True)


def servers(*, prune: bool = True) -> list[ServerEntry]:
    """The live servers, newest first; files of dead processes are removed when ``prune``."""
    d = discovery_dir() / "servers"
    out = []
    if not d.is_dir():
        return out
    for p in d.glob("*.json"):
        try:
            data = json.loads(p.read_text())
            e = ServerEntry(
                pid=int(data["pid"]), url=str(data["url"]), host=str(data["host"]), port=int(data["port"]),
                runs={str(k): str(v) for k, v in dict(data["runs"]).items()},
                folders=[str(x) for x in data.get("folders", [])], token=data.get("token"),
                executor=str(data.get("executor", "local")), started=float(data.get("started", 0.0)), path=p,
            )
        except (OSError, ValueError, KeyError, TypeError):
            continue  # unreadable: not ours to judge (and never half-written: files are replaced whole)
        if not _alive(e.pid):
            if prune:
                p.unlink(missing_ok=True)
            continue
        out.append(e)
    out.sort(key=lambda e: -e.started)
    return out


def find(run: str | os.PathLike) -> tuple[ServerEntry, str] | None:
    """The newest live server that serves the run folder ``run``, with the run's name there, or None."""
    for e in servers():
        name = e.name_of(run)
        if name is not None:
            return e, name
    return None


def new_entry(*, url: str, host: str, port: int, runs: dict[str, Path], folders: list[Path], token: str | None,
              executor: str) -> ServerEntry:
    """The entry of this process's server."""
    return ServerEntry(pid=os.getpid(), url=url, host=host, port=port,
                       runs={k: str(Path(v).resolve()) for k, v in runs.items()},
                       folders=[str(Path(f).resolve()) for f in folders], token=token, executor=executor,
                       started=time.time())
