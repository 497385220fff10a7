"""``cos3d prepare masks --executor ray``: per-view 2D preprocessing on model-holding Ray actors.

Each actor (:class:`MaskWorker`) loads the scene and the 2D models once — one actor per GPU of the
cluster, or a pool of CPU actors — and then runs :func:`cos3d.vision.cache.process_view` on the views
the driver hands it: the same function ``--executor local`` runs, writing the same per-view files into
the same cache folder. Workers write only their views' files (atomically); the driver alone writes
``manifest.json`` (:func:`~cos3d.vision.cache.open_manifest` / :func:`~cos3d.vision.cache.close_manifest`).

Fault tolerance: a view is finished once its file exists with the right key, so

- a re-run (or a retry) skips finished views: idempotent and resumable;
- when a worker dies mid-run (killed, OOM, lost node), Ray restarts the actor and the driver hands the
  views it held to the workers again; a view that was being computed had written nothing (atomic
  writes), a view whose file was written before the death is a cache hit (with ``force`` too: a
  retried view whose file this run wrote is not forced again). No finished view is ever computed
  twice, and the job finishes with every view.
- a view whose computation raises (or whose worker dies ``max_attempts`` times) is reported by name at
  the end, after the manifest has recorded every other view.
"""

from __future__ import annotations

import os
import sys
import time
from collections import deque
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

from cos3d.core.errors import Cos3dError
from cos3d.vision.cache import PrepareStats, ViewOutcome

__all__ = ["ModelsFactory", "MaskWorker", "RayPrepareStats", "prepare_masks_ray", "plan_workers"]


@dataclass(frozen=True)
class ModelsFactory:
    """Builds a worker's ``(provider, embedder)``: picklable, so it travels to the actors."""

    models: Any
    """A :class:`cos3d.vision.models.ModelsConfig`."""

    def __call__(self, scene: Any, device: str) -> tuple[Any, Any]:
        return self.models.create_provider(scene, device=device), self.models.create_embedder(device=device)


class MaskWorker:
    """A Ray actor holding one scene's 2D models (made a Ray actor class by :func:`prepare_masks_ray`)."""

    def __init__(self, scene: str, data_root: str | None, factory: Callable[[Any, str], tuple[Any, Any]],
                 device: str, threads: int) -> None:
        from cos3d.readers import load_scene
        from cos3d.vision.cache import manifest_header

        self.scene = load_scene(scene, data_root)
        self.device = device
        self.provider, self.embedder = factory(self.scene, device)
        if "torch" in sys.modules:  # the models use torch: one thread per CPU the actor declared
            sys.modules["torch"].set_num_threads(max(1, int(threads)))
        self.header = manifest_header(self.provider, self.embedder)

    def identity(self) -> dict[str, Any]:
        """The manifest header of this worker's models, their names, the worker's pid and device."""
        return {
            "header": self.header,
            "provider": self.provider.name,
            "embedder": self.embedder.name,
            "pid": os.getpid(),
            "device": self.device,
        }

    def run(self, name: str, cache_dir: str, force: bool, since: float | None = None) -> dict[str, Any]:
        """Make sure view ``name`` is cached (:func:`~cos3d.vision.cache.process_view`); its outcome + pid.

        ``since`` (a retried view of a ``force`` run): a file written after this time was written by this
        run before a worker died, so it is checked like any cached file instead of being recomputed."""
        from cos3d.vision.cache import process_view, view_path

        if force and since is not None:
            path = view_path(cache_dir, name)
            if path.is_file() and path.stat().st_mtime >= since:
                force = False

        out = process_view(self.scene.frame(name), self.provider, self.embedder, cache_dir,
                           self.header["models_key"], force=force, note=print)
        return {**asdict(out), "pid": os.getpid()}


@dataclass
class RayPrepareStats(PrepareStats):
    """:class:`~cos3d.vision.cache.PrepareStats` plus what the cluster did."""

    workers: str = ""
    """The worker plan (:meth:`WorkerPlan.describe`)."""
    lost_workers: int = 0
    """Views handed back to the queue because their worker died."""

    def summary(self) -> str:
        lost = f", {self.lost_workers} views re-queued after a worker died" if self.lost_workers else ""
        return f"{super().summary()} on {self.workers}{lost}"


@dataclass
class WorkerPlan:
    """How many actors, with which resources, on which device."""

    workers: int
    num_cpus: float
    num_gpus: float
    device: str

    def describe(self) -> str:
        kind = "GPU" if self.num_gpus else "CPU"
        return f"{self.workers} {kind} worker{'s' if self.workers != 1 else ''} ({self.device})"


def plan_workers(resources: dict[str, float], *, views: int, workers: int | None, device: str,
                 cpus_per_worker: float = 1.0) -> WorkerPlan:
    """One actor per GPU of the cluster (``device`` auto or cuda), else a pool of CPU actors (one per
    ``cpus_per_worker`` CPUs); ``workers`` overrides the count; never more actors than views."""
    gpus = int(resources.get("GPU", 0))
    cpus = resources.get("CPU", 1.0)
    use_gpu = device != "cpu" and gpus > 0
    if device.startswith("cuda") and gpus == 0:
        raise Cos3dError(f"--device {device}: the Ray cluster has no GPU; use --device cpu or auto")
    if use_gpu:
        n = workers or gpus
        plan = WorkerPlan(n, cpus_per_worker, 1.0, "cuda")
    else:
        n = workers or max(1, int(cpus // max(cpus_per_worker, 1e-9)))
        plan = WorkerPlan(n, cpus_per_worker, 0.0, "cpu" if device == "auto" else device)
    plan.workers = max(1, min(plan.workers, max(views, 1)))
    return plan


def prepare_masks_ray(
    scene: str | Path,
    frames: list[str] | None,
    factory: Callable[[Any, str], tuple[Any, Any]],
    cache_dir: str | Path | None = None,
    *,
    data_root: str | Path | None = None,
    workers: int | None = None,
    device: str = "auto",
    cpus_per_worker: float = 1.0,
    force: bool = False,
    progress: bool = True,
    address: str | None = None,
    max_attempts: int = 3,
    in_flight: int = 2,
    on_view: Callable[[dict[str, Any]], None] | None = None,
) -> tuple[RayPrepareStats, Path]:
    """Fill the per-view cache of ``frames`` (names; None = every frame) on Ray actors built by ``factory``.

    Connects as :func:`cos3d.distributed.ray_session` says (a cluster already initialised in this
    process is used as it is). ``cache_dir`` None = the models' default folder in the scene
    (:func:`cos3d.vision.models.mask_cache_dir`). Each actor holds up to ``in_flight`` views at a time
    (so it never waits for the driver). ``on_view(outcome dict)`` is called on the driver after each
    finished view (tests kill workers from it). Returns ``(stats, cache folder)``; raises
    :class:`Cos3dError` naming the views that could not be computed, after recording all the others.
    """
    from tqdm import tqdm

    from cos3d.distributed import cluster_resources, error_line, ray_session
    from cos3d.readers import load_scene
    from cos3d.vision.cache import close_manifest, open_manifest

    t_start, t_wall = time.perf_counter(), time.time() - 1.0  # (mtimes may be coarser than the clock)
    sc = load_scene(str(scene), data_root)
    names = [f.name for f in sc.frames] if frames is None else [str(f) for f in frames]
    for n in names:
        sc.frame(n)  # unknown names fail here, before any worker starts
    stats = RayPrepareStats(total=len(names))
    with ray_session(address) as ray:
        plan = plan_workers(cluster_resources(ray), views=len(names), workers=workers, device=device,
                            cpus_per_worker=cpus_per_worker)
        stats.workers = plan.describe()
        actor_cls = ray.remote(MaskWorker).options(
            num_cpus=plan.num_cpus, num_gpus=plan.num_gpus, max_restarts=max_attempts, max_task_retries=0
        )
        root = str(sc.root)
        actors = [actor_cls.remote(root, None, factory, plan.device, max(1, int(plan.num_cpus)))
                  for _ in range(plan.workers)]
        try:
            ident = ray.get(actors[0].identity.remote())
        except Exception as e:  # the models could not be built (missing weights, bad settings)
            for a in actors:
                ray.kill(a)
            raise Cos3dError(f"the Ray mask workers could not start: {error_line(e)}") from None
        if cache_dir is None:
            key = ident["header"]["models_key"][:10]
            cache_dir = sc.root / "cos3d_masks" / f"{ident['provider']}-{ident['embedder']}-{key}"
        cache_dir = Path(cache_dir)
        manifest = open_manifest(cache_dir, ident["header"], sc.root)

        lost = tuple(c for c in (getattr(ray.exceptions, n, None) for n in (
            "RayActorError", "ActorDiedError", "ActorUnavailableError", "WorkerCrashedError",
            "NodeDiedError", "ObjectLostError", "OwnerDiedError")) if c is not None)
        unavailable = getattr(ray.exceptions, "ActorUnavailableError", ())
        queue: deque[str] = deque(names)
        pending: dict[Any, tuple[int, str | None]] = {}  # view tasks (i, name) and restart probes (i, None)
        load = [0] * len(actors)
        state = ["up"] * len(actors)  # up | restarting | dead
        attempts: dict[str, int] = {}
        failed: dict[str, str] = {}
        finished: set[str] = set()
        lost_workers = 0
        bar = tqdm(total=len(names), unit="view", desc=f"masks+embeddings [{plan.describe()}]",
                   disable=not progress, dynamic_ncols=True)

        def probe(i: int) -> None:
            """Ask actor i who it is: the answer comes once Ray has restarted it."""
            state[i] = "restarting"
            pending[actors[i].identity.remote()] = (i, None)

        try:
            while queue or pending:
                for i, a in enumerate(actors):
                    while queue and state[i] == "up" and load[i] < in_flight:
                        name = queue.popleft()
                        since = t_wall if name in attempts else None
                        pending[a.run.remote(name, str(cache_dir), force, since)] = (i, name)
                        load[i] += 1
                if not pending:  # every worker is dead for good (restarts exhausted)
                    for name in queue:
                        failed[name] = "every Ray worker died (restarts exhausted)"
                    queue.clear()
                    break
                ready, _ = ray.wait(list(pending), num_returns=1)
                for ref in ready:
                    i, name = pending.pop(ref)
                    if name is None:  # a restart probe
                        try:
                            ray.get(ref)
                            state[i] = "up"
                        except unavailable:
                            time.sleep(0.2)
                            probe(i)
                        except Exception:  # noqa: BLE001 - dead for good
                            state[i] = "dead"
                        continue
                    load[i] -= 1
                    try:
                        out = ray.get(ref)
                    except lost as e:  # the worker died: Ray restarts it; its views go back in the queue
                        lost_workers += 1
                        attempts[name] = attempts.get(name, 0) + 1
                        if attempts[name] >= max_attempts:
                            failed[name] = f"its worker died {attempts[name]} times ({error_line(e)})"
                            bar.update(1)
                        else:
                            queue.appendleft(name)
                        if state[i] == "up":
                            probe(i)
                        continue
                    except Exception as e:  # noqa: BLE001 - the view itself failed (unreadable image, model error)
                        failed[name] = error_line(e)
                        bar.update(1)
                        continue
                    fields = {k: out[k] for k in ("name", "computed", "corrupt", "masks", "seconds")}
                    stats.add(ViewOutcome(**fields))
                    finished.add(name)
                    bar.update(1)
                    bar.set_postfix(done=stats.done, skipped=stats.skipped, lost=lost_workers)
                    if on_view is not None:
                        on_view(out)
        finally:
            bar.close()
            close_manifest(cache_dir, manifest, finished)
            for a in actors:
                ray.kill(a)
    stats.seconds = time.perf_counter() - t_start
    stats.lost_workers = lost_workers
    if failed:
        listed = "; ".join(f"{n}: {msg}" for n, msg in sorted(failed.items())[:5])
        more = f" (+{len(failed) - 5} more)" if len(failed) > 5 else ""
        raise Cos3dError(
            f"{len(failed)} of {len(names)} views could not be computed ({listed}{more}); the other "
            f"{len(finished)} are cached in {cache_dir}: run the same command again to retry the failed ones"
        )
    return stats, cache_dir
