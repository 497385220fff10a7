"""Running cos3d's independent work on Ray: per-view 2D preprocessing and per-scene training/eval.

Ray is optional (``pip install 'cos3d[ray]'``): nothing outside this package imports it, and this
module imports it only inside :func:`ray_session`. Two executors do the same work:

- ``local``: in this process, one item after another (no Ray import);
- ``ray``: on a Ray cluster — a local one started for the command (bound to 127.0.0.1 only, no
  dashboard) or an existing one (``--ray-address auto`` or ``HOST:PORT``). Workers must be able to
  import cos3d and read the scene folders (a shared file system on a multi-node cluster).

:mod:`cos3d.distributed.masks` runs ``cos3d prepare masks`` views on model-holding actors;
:mod:`cos3d.apps.batch` runs ``cos3d batch train|eval`` with one task per scene.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any, Iterator, Literal

from cos3d.core.errors import Cos3dError

Executor = Literal["local", "ray"]

RAY_HINT = "install it with `pip install 'cos3d[ray]'` (or `bash scripts/install.sh test`), or use --executor local"


def ray_available() -> bool:
    """True when ``import ray`` would work (checked without importing it)."""
    import importlib.util

    return importlib.util.find_spec("ray") is not None


def require_ray() -> Any:
    """The ``ray`` module, or a one-line :class:`Cos3dError` saying how to get it."""
    try:
        import ray
    except ImportError:
        raise Cos3dError(f"--executor ray needs Ray, which is not installed; {RAY_HINT}") from None
    return ray


@contextlib.contextmanager
def ray_session(address: str | None = None, *, num_cpus: int | None = None, num_gpus: int | None = None) -> Iterator[Any]:
    """Connect to Ray for the duration of a command and yield the ``ray`` module.

    Already initialised (a test, a notebook): use that cluster and leave it running. ``address``
    given (``auto``, ``HOST:PORT``, ``ray://HOST:PORT``): connect to that cluster. Otherwise start a
    local one for this process on loopback only (127.0.0.1; no dashboard) and shut it down at the end.
    """
    ray = require_ray()
    if ray.is_initialized():
        yield ray
        return
    if address:
        try:
            ray.init(address=address, log_to_driver=True)
        except (ConnectionError, ValueError, RuntimeError) as e:
            raise Cos3dError(f"cannot connect to the Ray cluster at --ray-address {address}: {e}") from None
    else:
        init_local_ray(num_cpus=num_cpus, num_gpus=num_gpus)
    try:
        yield ray
    finally:
        ray.shutdown()


def init_local_ray(num_cpus: int | None = None, num_gpus: int | None = None, **kw: Any) -> None:
    """Start a single-node Ray cluster bound to 127.0.0.1 (never another address) without a dashboard.

    Ray otherwise resolves ``127.0.0.1`` to the machine's outward IP address and binds its services
    there; with ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` (read when Ray is imported, hence also set on
    the imported module) it keeps the loopback address for every service.
    """
    ray = require_ray()
    _loopback_only()
    opts: dict[str, Any] = dict(
        num_cpus=num_cpus,
        num_gpus=num_gpus,
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
        configure_logging=False,
    )
    opts.update(kw)
    ray.init(**opts)


def _loopback_only() -> None:
    """Make Ray resolve this node's address to 127.0.0.1: in this process (the constant Ray read
    when it was imported) and in the processes it starts (the environment variable)."""
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    try:
        from ray._private import ray_constants
    except ImportError:  # pragma: no cover - another Ray layout: the variable still reaches new processes
        return
    ray_constants.ENABLE_RAY_CLUSTER = False


def cluster_resources(ray: Any) -> dict[str, float]:
    """The cluster's total resources (``CPU``, ``GPU``, ``memory`` bytes, ...)."""
    return {k: float(v) for k, v in ray.cluster_resources().items()}


def error_line(exc: BaseException) -> str:
    """One line for an exception, also one that came back from a Ray worker (then its cause's)."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, BaseException):
        exc = cause
    lines = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()]
    text = lines[0] if lines else ""
    if isinstance(exc, Cos3dError):
        return text
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
