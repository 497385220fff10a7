"""Who answers a served request: :class:`LocalExecutor` (this process: a bounded LRU of loaded runs,
reloaded when retrained) or, with ``--executor ray``, :class:`cos3d.serve.ray_executor.RayExecutor`.

Both satisfy :class:`Executor`: ``call(run, op, body)`` blocks until the answer (a dict or a
:class:`~cos3d.serve.handlers.Blob`) and raises :class:`cos3d.core.errors.Cos3dError` for a bad request. The
web layer runs ``call`` in a worker thread with a deadline.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any, Protocol

from cos3d.core.errors import Cos3dError, ServeError
from cos3d.serve.config import Catalogue
from cos3d.serve.handlers import RESULT_CACHE, Blob, LoadedRun, dispatch, load_run, signature


class Executor(Protocol):
    catalogue: Catalogue

    def call(self, run: str, op: str, body: dict | None) -> dict | Blob:
        """Answer ``op`` on the run named ``run``."""
        ...

    def status(self) -> list[dict[str, Any]]:
        """One dict per known run: ``name``, ``path``, ``loaded`` (and ``version``, ``loaded_at`` when loaded)."""
        ...

    def close(self) -> None: ...


def run_path(catalogue: Catalogue, run: str) -> Path:
    path = catalogue.path(run)
    if path is None:
        names = ", ".join(sorted(catalogue.runs)) or "none"
        raise ServeError(f"unknown run {run!r}; this server serves: {names}", 404)
    return path


def _state(path: Path) -> tuple[str | None, str | None]:
    """``(why it cannot be loaded, why it is being rewritten)``: the first is the run folder's one-line
    error (missing, unfinished), the second names the stages ``run.json`` marks running (a retraining:
    their old outputs stay valid until the stage is marked done, but files of several stages may then be
    of different versions). None when there is nothing to say."""
    from cos3d.pipeline.run_folder import RunFolder

    try:
        rec = RunFolder(path).finished_record()
    except Cos3dError as e:
        return str(e), None
    running = [s for s in rec.stages if rec.running(s)]
    return None, (f"stages {', '.join(running)} are being retrained" if running else None)


class LocalExecutor:
    """Runs loaded in this process, at most ``max_loaded`` (least recently used unloaded first).

    Each request checks the run folder's :func:`~cos3d.serve.handlers.signature` (three ``stat`` calls):
    when it changed and the run is finished again, the run is loaded anew (a load is accepted only when
    the signature held still during it) and later requests get the new version. While the run is being
    retrained (``run.json`` marks a stage unfinished or running), the loaded version keeps answering; a run
    that was never loaded gets 409 with the training state (a run whose retraining was interrupted, its
    finished outputs still valid, is loaded)."""

    def __init__(self, catalogue: Catalogue, *, max_loaded: int = 4, device: str = "auto",
                 allow_paths: bool = False, result_cache: int = RESULT_CACHE, loader=load_run) -> None:
        self.catalogue = catalogue
        self.max_loaded = max_loaded
        self.device = device
        self.allow_paths = allow_paths
        self.result_cache = result_cache
        self._loader = loader
        self._loaded: OrderedDict[str, LoadedRun] = OrderedDict()
        self._lock = threading.Lock()
        self._loading: dict[str, threading.Lock] = {}
        self.loads = 0
        """How many loads happened (reloads included)."""

    def get(self, run: str) -> LoadedRun:
        """The loaded run ``run``, loading or reloading it when needed."""
        path = run_path(self.catalogue, run)
        sig = signature(path)
        with self._lock:
            cur = self._loaded.get(run)
            if cur is not None and cur.signature == sig:
                self._loaded.move_to_end(run)
                return cur
            load_lock = self._loading.setdefault(run, threading.Lock())
        with load_lock:  # one load per run at a time; other runs keep answering
            with self._lock:
                cur = self._loaded.get(run)
            if cur is not None and cur.signature == signature(path):
                return cur
            why, busy = _state(path)
            if cur is not None and (why is not None or busy is not None):
                return cur  # being retrained: the loaded version answers until the new one is finished
            if why is not None:
                raise ServeError(why, 409)
            new = self._loader(run, path, device=self.device, allow_paths=self.allow_paths,
                               cache_size=self.result_cache)
            self.loads += 1
            with self._lock:
                self._loaded[run] = new
                self._loaded.move_to_end(run)
                while len(self._loaded) > self.max_loaded:
                    self._loaded.popitem(last=False)
            return new

    def call(self, run: str, op: str, body: dict | None) -> dict | Blob:
        loaded = self.get(run)
        with loaded.lock:
            return dispatch(loaded, op, body)

    def loaded(self) -> list[str]:
        with self._lock:
            return list(self._loaded)

    def status(self) -> list[dict[str, Any]]:
        self.catalogue.rescan()
        with self._lock:
            loaded = dict(self._loaded)
        out = []
        for name, path in sorted(self.catalogue.runs.items()):
            d: dict[str, Any] = {"name": name, "path": str(Path(path).resolve()), "loaded": name in loaded}
            if name in loaded:
                d["version"] = loaded[name].version
                d["loaded_at"] = loaded[name].loaded_at
            out.append(d)
        return out

    def close(self) -> None:
        with self._lock:
            self._loaded.clear()
