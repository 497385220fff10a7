"""``cos3d serve --executor ray``: one Ray Serve deployment per run, ``replicas`` replicas each.

The web front (:mod:`cos3d.serve.app`) stays in the ``cos3d serve`` process; each request is forwarded
to its run's deployment through a Serve handle. A replica holds the run in a one-run
:class:`~cos3d.serve.executor.LocalExecutor` (so it reloads a retrained run the same way) and answers
with :func:`~cos3d.serve.handlers.dispatch`. Deployments are made on a run's first request (or at
start with ``--warm``); past ``max_loaded`` runs the least recently used deployment is deleted.

A replica that dies (killed, out of memory) is replaced by Serve's controller. A request that was
in flight on it, or routed to it before the controller noticed, is retried once on the deployment
(:data:`RETRY_WAIT` s later); failing again, it is answered 503 with the run's name and Ray's reason.

Without ``--ray-address`` a local single-node cluster on 127.0.0.1 (no dashboard) is started and shut
down with the server; Serve's own HTTP proxy is not started (only the ``cos3d serve`` port listens).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any

from cos3d.core.errors import Cos3dError, ServeError, brief
from cos3d.serve.config import Catalogue
from cos3d.serve.executor import run_path
from cos3d.serve.handlers import Blob

RETRY_WAIT = 1.0
"""Seconds before a request whose replica died is retried."""
APP_PREFIX = "cos3d-"


class RunReplica:
    """The body of one run's Serve deployment (wrapped by ``serve.deployment`` in :meth:`RayExecutor._deploy`)."""

    def __init__(self, name: str, path: str, device: str, allow_paths: bool, result_cache: int) -> None:
        from cos3d.serve.executor import LocalExecutor

        self.name = name
        self.executor = LocalExecutor(Catalogue({name: Path(path)}, []), max_loaded=1, device=device,
                                      allow_paths=allow_paths, result_cache=result_cache)
        self.executor.get(name)  # load now: the deployment is ready when the run is

    def answer(self, op: str, body: dict | None) -> Any:
        """``(ok, payload)``: the answer, or ``(False, (status, one line))`` for a refused request (Serve
        would wrap a raised exception in its own type)."""
        try:
            return True, self.executor.call(self.name, op, body)
        except ServeError as e:
            return False, (e.status, str(e))
        except Cos3dError as e:
            return False, (400, str(e))
        except (ValueError, TypeError) as e:
            return False, (400, f"bad request: {brief(e)}")

    def pid(self) -> int:
        import os

        return os.getpid()


class RayExecutor:
    """Forwards each request to its run's Ray Serve deployment (module docstring)."""

    def __init__(self, catalogue: Catalogue, *, replicas: int = 1, device: str = "auto", allow_paths: bool = False,
                 address: str | None = None, max_loaded: int = 4, num_cpus: int | None = None,
                 replica_cpus: float = 0.0, result_cache: int = 64) -> None:
        from cos3d.distributed import init_local_ray, require_ray

        ray = require_ray()
        try:
            from ray import serve
        except ImportError:
            raise Cos3dError("--executor ray needs Ray Serve: pip install 'ray[serve]' (or 'cos3d[serve]')") from None
        self._ray, self._serve = ray, serve
        self._owns_ray = not ray.is_initialized()
        if self._owns_ray:
            if address:
                ray.init(address=address, log_to_driver=False)
            else:
                init_local_ray(num_cpus=num_cpus, log_to_driver=False)
        serve.start(proxy_location="Disabled")
        self.catalogue = catalogue
        self.replicas = replicas
        self.device = device
        self.allow_paths = allow_paths
        self.max_loaded = max_loaded
        self.replica_cpus = replica_cpus
        self.result_cache = result_cache
        self._handles: OrderedDict[str, Any] = OrderedDict()
        self._lock = threading.Lock()
        self._deploying: dict[str, threading.Lock] = {}
        self.retries = 0
        """Requests retried after a replica died."""

    def app_name(self, run: str) -> str:
        return APP_PREFIX + run

    def _deploy(self, run: str) -> Any:
        path = run_path(self.catalogue, run)
        with self._lock:
            h = self._handles.get(run)
            if h is not None:
                self._handles.move_to_end(run)
                return h
            dep_lock = self._deploying.setdefault(run, threading.Lock())
        with dep_lock:
            with self._lock:
                if run in self._handles:
                    return self._handles[run]
            dep = self._serve.deployment(
                RunReplica, name=f"run-{run}", num_replicas=self.replicas,
                ray_actor_options={"num_cpus": self.replica_cpus}, max_ongoing_requests=8,
                health_check_period_s=2.0, health_check_timeout_s=30.0, graceful_shutdown_timeout_s=2.0,
            )
            try:
                handle = self._serve.run(dep.bind(run, str(Path(path).resolve()), self.device, self.allow_paths,
                                                  self.result_cache),
                                         name=self.app_name(run), route_prefix=None)
            except Exception as e:  # noqa: BLE001 - a replica that cannot load the run: one line, 503
                self._forget(run)
                raise ServeError(f"run {run!r} could not be deployed on Ray Serve ({brief(e, 200)})", 503) from None
            with self._lock:
                self._handles[run] = handle
                while len(self._handles) > self.max_loaded:
                    old, _ = self._handles.popitem(last=False)
                    threading.Thread(target=self._forget, args=(old,), daemon=True).start()
            return handle

    def _forget(self, run: str) -> None:
        try:
            self._serve.delete(self.app_name(run), _blocking=False)
        except Exception:  # noqa: BLE001 - already gone
            pass

    def call(self, run: str, op: str, body: dict | None) -> dict | Blob:
        handle = self._deploy(run)
        last: Exception | None = None
        for attempt in range(2):
            try:
                ok, payload = handle.answer.remote(op, body).result()
            except Exception as e:  # noqa: BLE001 - a dead replica (RayActorError and Serve's wrappers)
                last = e
                if attempt == 0:
                    self.retries += 1
                    time.sleep(RETRY_WAIT)
                    continue
                break
            if ok:
                return payload
            status, msg = payload
            raise ServeError(msg, status)
        raise ServeError(f"run {run!r}: its Ray Serve replica failed twice ({brief(last)}); retry later", 503)

    def replica_pids(self, run: str) -> set[int]:
        """The process ids answering ``run`` (a few calls; for tests)."""
        handle = self._deploy(run)
        return {handle.pid.remote().result() for _ in range(4 * self.replicas)}

    def status(self) -> list[dict[str, Any]]:
        self.catalogue.rescan()
        with self._lock:
            up = set(self._handles)
        return [{"name": n, "path": str(Path(p).resolve()), "loaded": n in up, "replicas": self.replicas}
                for n, p in sorted(self.catalogue.runs.items())]

    def close(self) -> None:
        with self._lock:
            names = list(self._handles)
            self._handles.clear()
        try:
            if self._owns_ray:
                self._serve.shutdown()
                self._ray.shutdown()
            else:
                for n in names:
                    self._forget(n)
        except Exception:  # noqa: BLE001 - shutting down anyway
            pass
