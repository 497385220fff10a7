"""Serving: bind the socket, build the executor and the app, write the discovery file, run uvicorn.

:func:`serve` blocks until Ctrl-C / SIGTERM (the discovery file is removed on the way out);
:func:`start_in_thread` runs the same server in a background thread (tests, benchmarks).
"""

from __future__ import annotations

import errno
import os
import socket
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any

from cos3d.core.errors import Cos3dError
from cos3d.serve import discovery
from cos3d.serve.config import Catalogue, ServeConfig, is_loopback


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on exactly ``host:port`` (0: any free port), or a one-line error."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise Cos3dError(f"--host {host}: cannot resolve it ({e.strerror}); use e.g. 127.0.0.1") from None
    fam, typ, proto, _, addr = infos[0]
    s = socket.socket(fam, typ, proto)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        s.bind(addr)
        s.listen(128)
    except OSError as e:
        s.close()
        if e.errno == errno.EADDRINUSE:
            raise Cos3dError(f"port {port} on {host} is already in use; pick another with --port (0 = any free port)") from None
        raise Cos3dError(f"cannot listen on {host}:{port} ({e.strerror}); change --port or --host") from None
    s.set_inheritable(True)
    return s


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    if host in ("0.0.0.0", "::"):
        host = "127.0.0.1"
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}"


def make_executor(cfg: ServeConfig, catalogue: Catalogue) -> Any:
    allow_paths = is_loopback(cfg.host)
    if cfg.executor == "ray":
        from cos3d.serve.ray_executor import RayExecutor

        return RayExecutor(catalogue, replicas=cfg.replicas, device=cfg.device, allow_paths=allow_paths,
                           address=cfg.ray_address, max_loaded=cfg.max_loaded, result_cache=cfg.result_cache)
    from cos3d.serve.executor import LocalExecutor

    return LocalExecutor(catalogue, max_loaded=cfg.max_loaded, device=cfg.device, allow_paths=allow_paths,
                         result_cache=cfg.result_cache)


@dataclass
class Running:
    """A server started by :func:`start_in_thread`."""

    url: str
    server: Any
    thread: threading.Thread
    executor: Any
    entry: discovery.ServerEntry | None = None

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        if self.entry is not None:
            discovery.remove(self.entry)
        self.executor.close()


def _uvicorn(app: Any, sock: socket.socket) -> Any:
    import uvicorn

    config = uvicorn.Config(app, log_level="warning", access_log=False, timeout_graceful_shutdown=2)
    return uvicorn.Server(config)


def prepare(cfg: ServeConfig, *, log=print) -> tuple[socket.socket, Any, Any, discovery.ServerEntry]:
    """Bind, build the executor (warming the named runs) and the app; the discovery entry (unwritten)."""
    from cos3d.serve.app import build_app

    token = cfg.token or os.environ.get("COS3D_SERVE_TOKEN") or None
    cfg.token = token
    cfg.validate()
    catalogue = Catalogue.from_paths(cfg.run)
    sock = bind(cfg.host, cfg.port)
    try:
        executor = make_executor(cfg, catalogue)
        if cfg.warm:
            for name in list(catalogue.runs)[: cfg.max_loaded]:
                t0 = time.perf_counter()
                try:
                    executor.call(name, "info", None)
                    log(f"cos3d serve: loaded {name} ({catalogue.runs[name]}) in {time.perf_counter() - t0:.1f} s")
                except Cos3dError as e:
                    log(f"cos3d serve: {name} not loaded yet: {e}")
        app = build_app(executor, token=token, timeout=cfg.timeout, max_body=int(cfg.max_upload_mb * 2**20))
    except BaseException:
        sock.close()
        raise
    url = url_of(sock)
    entry = discovery.new_entry(url=url, host=cfg.host, port=sock.getsockname()[1], runs=catalogue.runs,
                                folders=catalogue.folders, token=token, executor=cfg.executor)
    return sock, executor, app, entry


def serve(cfg: ServeConfig, *, log=print) -> None:
    """Serve until interrupted (Ctrl-C or SIGTERM)."""
    sock, executor, app, entry = prepare(cfg, log=log)
    server = _uvicorn(app, sock)
    if not is_loopback(cfg.host):
        log(f"cos3d serve: WARNING: listening on {cfg.host}: anyone who can reach port {entry.port} and holds the "
            "token can query these runs")
    app.state.on_shutdown.append(lambda: discovery.remove(entry))
    try:
        if cfg.discovery:
            discovery.write(entry)
        names = ", ".join(sorted(executor.catalogue.runs))
        log(f"cos3d serve: {entry.url} serving {names} ({cfg.executor}); API schema {entry.url}/openapi.json, "
            f"docs {entry.url}/docs; Ctrl-C stops")
        sys.stdout.flush()
        server.run(sockets=[sock])
    finally:
        discovery.remove(entry)
        executor.close()
        sock.close()


def start_in_thread(cfg: ServeConfig, *, write_discovery: bool = False, log=lambda *_: None) -> Running:
    """Start the server of ``cfg`` in a daemon thread; returns when it accepts connections."""
    sock, executor, app, entry = prepare(cfg, log=log)
    server = _uvicorn(app, sock)
    th = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True, name="cos3d-serve")
    th.start()
    t0 = time.time()
    while not server.started and th.is_alive() and time.time() - t0 < 30:
        time.sleep(0.02)
    if not server.started:
        raise Cos3dError(f"the server did not start on {entry.url}")
    running = Running(url=entry.url, server=server, thread=th, executor=executor)
    if write_discovery:
        discovery.write(entry)
        running.entry = entry
    return running
