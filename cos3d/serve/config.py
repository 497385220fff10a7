"""``cos3d serve``'s settings and the catalogue of runs it serves (no torch, no web stack imported)."""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cos3d.core.errors import Cos3dError

LOOPBACK = "127.0.0.1"
EXECUTORS = ("local", "ray")


@dataclass
class ServeConfig:
    """What ``cos3d serve`` serves and how."""

    run: tuple[Path, ...] = ()
    """Run folders to serve (repeat --run, or comma separated); a folder holding runs serves each of them
    (and runs added to it later)."""
    host: str = LOOPBACK
    """Address to listen on (127.0.0.1: this machine only). Any other address requires --token."""
    port: int = 8765
    """Port to listen on (0: any free port; the URL is printed and written to the discovery file)."""
    token: str | None = None
    """Bearer token every request must carry (Authorization: Bearer TOKEN); required off loopback.
    Also read from $COS3D_SERVE_TOKEN."""
    max_loaded: int = 4
    """Keep at most this many runs loaded; the least recently used is unloaded past it."""
    timeout: float = 30.0
    """Seconds a request may take before it is answered 504 (a request may ask for less with timeout_s)."""
    max_upload_mb: float = 16.0
    """Largest request body (uploaded images and masks, base64 in JSON), in MiB; larger ones get 413."""
    result_cache: int = 64
    """Answers kept per loaded run, by request (a query then its masks or export answer once; 0: none)."""
    device: str = "auto"
    """Device to load runs on (cpu, cuda, auto)."""
    executor: Literal["local", "ray"] = "local"
    """local: this process answers (threads, one query at a time per run); ray: one Ray Serve deployment
    per run (--replicas each), this process only forwards."""
    replicas: int = 1
    """Replicas per run with --executor ray."""
    ray_address: str | None = None
    """Ray cluster to join with --executor ray (default: a new local one)."""
    discovery: bool = True
    """Write a discovery file so that cos3d query and cos3d.serve.client find this server (--no-discovery: don't)."""
    warm: bool = True
    """Load every named run (not folders' runs) before listening (--no-warm: on first request)."""

    def validate(self) -> None:
        if not self.run:
            raise Cos3dError("--run is required: a run folder made by cos3d train (repeat --run for more)")
        if not 0 <= self.port <= 65535:
            raise Cos3dError(f"--port {self.port}: must be between 1 and 65535 (0 = any free port)")
        if self.max_loaded < 1:
            raise Cos3dError(f"--max-loaded {self.max_loaded}: must be at least 1")
        if not self.timeout > 0:
            raise Cos3dError(f"--timeout {self.timeout}: must be a positive number of seconds")
        if not self.max_upload_mb > 0:
            raise Cos3dError(f"--max-upload-mb {self.max_upload_mb}: must be positive")
        if self.result_cache < 0:
            raise Cos3dError(f"--result-cache {self.result_cache}: must be 0 (none) or more")
        if self.replicas < 1:
            raise Cos3dError(f"--replicas {self.replicas}: must be at least 1")
        if not is_loopback(self.host) and not self.token:
            raise Cos3dError(
                f"--host {self.host} is reachable from other machines: give --token SECRET (or $COS3D_SERVE_TOKEN); "
                "clients then send it as 'Authorization: Bearer SECRET'"
            )


def is_loopback(host: str) -> bool:
    """Whether ``host`` only accepts connections from this machine (127.0.0.0/8, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        try:
            return all(ipaddress.ip_address(i[4][0]).is_loopback for i in socket.getaddrinfo(host, None))
        except OSError:
            return False


def is_run(path: Path) -> bool:
    return (path / "run.json").is_file()


@dataclass
class Catalogue:
    """The runs a server serves: ``{name: folder}`` named on the command line, plus folders of runs
    (rescanned when a name is not found)."""

    runs: dict[str, Path]
    folders: list[Path]

    @classmethod
    def from_paths(cls, paths: tuple[Path, ...] | list[Path]) -> "Catalogue":
        runs: dict[str, Path] = {}
        folders: list[Path] = []
        for p in paths:
            p = Path(p)
            if not p.is_dir():
                raise Cos3dError(f"--run {p}: no such folder (a run folder made by cos3d train, or a folder of runs)")
            if is_run(p):
                name = p.resolve().name
                if name in runs and runs[name].resolve() != p.resolve():
                    raise Cos3dError(f"--run {p}: two runs are named {name!r} ({runs[name]} too); serve them from "
                                     "folders with different names")
                runs[name] = p
            elif any(is_run(c) for c in p.iterdir() if c.is_dir()):
                folders.append(p)
            else:
                raise Cos3dError(f"--run {p}: neither a run folder (no run.json) nor a folder of runs")
        cat = cls(runs, folders)
        cat.rescan()
        return cat

    def rescan(self) -> None:
        """Add runs that appeared in the served folders (a name already taken keeps its first folder)."""
        for f in self.folders:
            if not f.is_dir():
                continue
            for c in sorted(f.iterdir()):
                if c.is_dir() and is_run(c) and c.name not in self.runs:
                    self.runs[c.name] = c

    def path(self, name: str) -> Path | None:
        if name not in self.runs:
            self.rescan()
        return self.runs.get(name)
