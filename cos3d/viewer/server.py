"""``cos3d view``'s plumbing: its config, the port check, the server, the addresses it prints, serving.

Loopback (127.0.0.1) by default. Bound to another interface, :func:`serve` prints one warning line (anyone
who can reach the port can query the run and make it write exports) and the real addresses to open.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from cos3d.core.errors import Cos3dError
from cos3d.serve.config import is_loopback
from cos3d.viewer.helpers import DEFAULT_MAX_SPLATS

if TYPE_CHECKING:  # pragma: no cover
    import viser

    from cos3d.pipeline.trained import TrainedScene
    from cos3d.viewer.app import ViewerApp

LOOPBACK = "127.0.0.1"


@dataclass
class ViewConfig:
    """What ``cos3d view`` serves and how."""

    run: Path
    """Run folder made by cos3d train."""
    host: str = LOOPBACK
    """Address to listen on (127.0.0.1: this machine only; 0.0.0.0: every interface, reachable by others)."""
    port: int = 8080
    """Port to serve on (0 = any free port; the URL is printed)."""
    max_splats: int = DEFAULT_MAX_SPLATS
    """Show at most this many Gaussians, the most opaque ones (the panel shows the count)."""
    cameras: bool = True
    """Show the training cameras as frustums at start (--no-cameras hides them)."""
    export_dir: Path | None = None
    """Where the page's Export buttons write (default: RUN/export)."""
    device: str = "auto"
    """Device to load the run on (cpu, cuda, auto)."""

    def validate(self) -> None:
        if str(self.run) in ("", "."):
            raise Cos3dError("--run is required: the run folder made by cos3d train")
        if self.max_splats <= 0:
            raise Cos3dError(f"--max-splats {self.max_splats}: must be a positive number of Gaussians")
        if not 0 <= self.port <= 65535:
            raise Cos3dError(f"--port {self.port}: must be between 1 and 65535 (0 = any free port)")


def _in_use(host: str, port: int) -> Cos3dError:
    return Cos3dError(
        f"port {port} on {host} is already in use; pick another with --port (e.g. --port {port + 1}) "
        "or stop the program using it"
    )


def check_port_free(host: str, port: int) -> None:
    """Raise :class:`Cos3dError` naming the port and ``--port`` unless ``host:port`` can be listened on.

    ``port`` 0 means any free port (always fine). Binds with ``SO_REUSEADDR`` like the server will.
    """
    if not 0 <= port <= 65535:
        raise Cos3dError(f"--port {port}: must be between 1 and 65535 (0 = any free port)")
    if port == 0:
        return
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise Cos3dError(f"--host {host}: cannot resolve it ({e.strerror}); use e.g. 127.0.0.1 or 0.0.0.0") from None
    fam, typ, proto, _, addr = infos[0]
    with socket.socket(fam, typ, proto) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(addr)
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise _in_use(host, port) from None
            raise Cos3dError(f"cannot listen on {host}:{port} ({e.strerror}); change --port or --host") from None


def start_server(host: str, port: int) -> viser.ViserServer:
    """A started ``viser.ViserServer`` on exactly ``host:port`` (viser itself would move to the next free
    port); raises :class:`Cos3dError` when the port is taken."""
    import viser

    check_port_free(host, port)
    server = viser.ViserServer(host=host, port=port, verbose=False)
    if port != 0 and server.get_port() != port:  # lost a race for the port
        server.stop()
        raise _in_use(host, port)
    return server


def interface_addresses() -> list[str]:
    """This machine's non-loopback IPv4 addresses as its host name resolves (best effort; no socket is
    opened towards any other address), loopback last."""
    found: list[str] = []
    for name in dict.fromkeys((socket.gethostname(), socket.getfqdn())):
        try:
            found += [info[4][0] for info in socket.getaddrinfo(name, None, socket.AF_INET)]
        except OSError:
            continue
    out = []
    for a in found:
        if a not in out and not ipaddress.ip_address(a).is_loopback:
            out.append(a)
    return out + [LOOPBACK]


def viewer_urls(host: str, port: int) -> list[str]:
    """The URLs to open: loopback → ``http://localhost:PORT``; a wildcard host → one per interface
    address; another host → that host."""
    if is_loopback(host):
        return [f"http://localhost:{port}"]
    if host in ("0.0.0.0", "::", ""):
        return [f"http://{a}:{port}" for a in interface_addresses()]
    shown = f"[{host}]" if ":" in host else host
    return [f"http://{shown}:{port}"]


def viewer_url(host: str, port: int) -> str:
    """The first of :func:`viewer_urls`."""
    return viewer_urls(host, port)[0]


def exposure_warning(host: str, port: int) -> str | None:
    """One line when ``host`` is not loopback: who can reach the viewer, and what they can do."""
    if is_loopback(host):
        return None
    return (f"cos3d view: warning: listening on {host}:{port}, not loopback: anyone who can reach this port can "
            "query this run and make it write exports (use --host 127.0.0.1 and an SSH tunnel to keep it private)")


def serve(
    trained: TrainedScene,
    *,
    host: str = LOOPBACK,
    port: int = 8080,
    max_splats: int = DEFAULT_MAX_SPLATS,
    show_cameras: bool = True,
    export_dir: Path | None = None,
    block: bool = True,
    log: Callable[[str], None] = print,
) -> ViewerApp:
    """Start the viewer for ``trained``; with ``block`` serve until Ctrl-C, then stop the server."""
    from cos3d.viewer.app import ViewerApp

    server = start_server(host, port)
    try:
        app = ViewerApp(server, trained, max_splats=max_splats, show_cameras=show_cameras, export_dir=export_dir)
    except BaseException:
        server.stop()
        raise
    threading.Thread(target=app.warm_up, name="cos3d-view-warm-up", daemon=True).start()
    if app.cameras_note:
        log(f"cos3d view: {app.cameras_note}")
    real_port = server.get_port()
    warn = exposure_warning(host, real_port)
    if warn:
        log(warn)
    urls = viewer_urls(host, real_port)
    log(f"cos3d view: open {' or '.join(urls)} in a browser (Ctrl-C to stop)")
    if block:
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            log("cos3d view: stopped")
        finally:
            server.stop()
            app.close()
    return app
