"""``cos3d batch train|eval SCENES.txt``: one task per scene, locally or on Ray.

``SCENES.txt`` lists scene folders (or names under ``--data-root``), one a line; blank lines and
``#`` comments are ignored. Scene ``S`` trains into ``OUT_ROOT/<folder name of S>`` with the common
train flags (:class:`cos3d.pipeline.train_config.TrainConfig`, ``--resume`` implied so that a re-run continues where
the last one stopped); ``batch eval`` evaluates those run folders with the tabletop protocol
(:func:`cos3d.eval.tabletop.evaluate`).

Executors (:mod:`cos3d.distributed`): ``local`` runs the scenes one after another in this process
(no Ray import); ``ray`` submits one task per scene with declared resources (``--cpus-per-scene``,
``--gpus-per-scene``, ``--memory-gib-per-scene``), so Ray runs as many at once as the cluster holds.
A scene whose worker dies (killed, OOM, lost node) is run again up to ``--retries`` times, resuming
its finished stages; an error raised by the scene itself is not retried (it would fail again). A bad
scene fails alone: the others finish, and its one-line error is in the summary table and the summary
JSON (``OUT_ROOT/batch-train.json`` by default). Each scene's output goes to ``OUT_ROOT/logs/<name>.log``.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Literal

from cos3d.core.errors import Cos3dError

__all__ = ["BatchConfig", "BatchReport", "SceneResult", "read_scene_list", "run_batch", "batch_train", "batch_eval"]


@dataclass
class BatchConfig:
    """How ``cos3d batch`` runs its scenes (the flags shared by ``batch train`` and ``batch eval``)."""

    out_root: Path = Path("runs")
    """Run folders: OUT_ROOT/<scene folder name>."""
    executor: Literal["local", "ray"] = "local"
    """local: scenes one after another in this process; ray: one Ray task per scene (pip install 'cos3d[ray]')."""
    ray_address: str | None = None
    """Ray cluster to use (auto, HOST:PORT); default: start a local one on 127.0.0.1 for this command."""
    cpus_per_scene: float = 1.0
    """Ray: CPUs each scene's task declares (also its torch threads unless --threads is given)."""
    gpus_per_scene: float | None = None
    """Ray: GPUs each scene's task declares (default: 1 when the cluster has GPUs, else 0)."""
    memory_gib_per_scene: float | None = None
    """Ray: memory each scene's task declares, so a node runs no more scenes than its memory holds."""
    retries: int = 1
    """Ray: run a scene again (resuming it) this many times when its worker dies; its own errors are not retried."""
    summary: Path | None = None
    """Summary JSON (default: OUT_ROOT/batch-<train|eval>.json)."""
    progress: bool = True
    """Show a progress bar over the scenes."""

    def validate(self) -> None:
        for key, v in (("cpus_per_scene", self.cpus_per_scene), ("gpus_per_scene", self.gpus_per_scene),
                       ("memory_gib_per_scene", self.memory_gib_per_scene)):
            if v is not None and v < 0:
                raise Cos3dError(f"--{key.replace('_', '-')} must not be negative, got {v}")
        if self.retries < 0:
            raise Cos3dError(f"--retries must not be negative, got {self.retries}")
        if self.executor == "local" and self.ray_address is not None:
            raise Cos3dError("--ray-address applies to --executor ray only")


@dataclass
class SceneResult:
    """One scene's row of the summary."""

    name: str
    scene: str
    run: str
    status: Literal["ok", "failed"] = "failed"
    seconds: float = 0.0
    error: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    log: str | None = None
    host: str | None = None


@dataclass
class BatchReport:
    """What a batch did: one :class:`SceneResult` per scene, in the list's order."""

    kind: str
    executor: str
    results: list[SceneResult]
    seconds: float
    resources: dict[str, Any] = field(default_factory=dict)

    @property
    def failed(self) -> list[SceneResult]:
        return [r for r in self.results if r.status != "ok"]

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "executor": self.executor,
            "seconds": round(self.seconds, 2),
            "scenes": len(self.results),
            "ok": len(self.results) - len(self.failed),
            "failed": len(self.failed),
            "resources_per_scene": self.resources,
            "results": [
                {"name": r.name, "scene": r.scene, "run": r.run, "status": r.status, "seconds": round(r.seconds, 2),
                 "error": r.error, "metrics": r.metrics, "log": r.log, "host": r.host}
                for r in self.results
            ],
        }

    def table(self) -> str:
        """A plain-text table: scene, status, time, the key numbers or the error."""
        rows = [("scene", "status", "time", "result")]
        for r in self.results:
            if r.status == "ok":
                detail = ", ".join(f"{k} {_fmt(v)}" for k, v in r.metrics.items() if not isinstance(v, (dict, list)))
            else:
                detail = r.error or "failed"
            rows.append((r.name, r.status, f"{r.seconds:.1f} s", detail))
        widths = [max(len(row[i]) for row in rows) for i in range(3)]
        lines = ["  ".join(c.ljust(w) for c, w in zip(row[:3], widths)) + "  " + row[3] for row in rows]
        ok = len(self.results) - len(self.failed)
        lines.append(f"{ok}/{len(self.results)} scenes ok, {len(self.failed)} failed, {self.seconds:.1f} s "
                     f"({self.executor} executor)")
        return "\n".join(lines)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3f}" if abs(v) < 100 else f"{v:.0f}"
    return f"{v:,}" if isinstance(v, int) else str(v)


def read_scene_list(path: str | Path) -> list[str]:
    """The scenes of a SCENES.txt: one a line; blank lines and ``#`` comments skipped."""
    p = Path(path)
    try:
        text = p.read_text()
    except FileNotFoundError:
        raise Cos3dError(f"{p}: no such scene list (a text file naming one scene folder a line)") from None
    except (OSError, UnicodeDecodeError) as e:
        raise Cos3dError(f"{p}: unreadable scene list ({type(e).__name__})") from None
    scenes = [ln.split("#", 1)[0].strip() for ln in text.splitlines()]
    scenes = [s for s in scenes if s]
    if not scenes:
        raise Cos3dError(f"{p}: lists no scenes (one scene folder a line; # starts a comment)")
    return scenes


def run_names(scenes: list[str]) -> list[str]:
    """Each scene's run-folder name (its folder name, escaped like a frame name: ``..`` or ``.`` never
    names a folder outside OUT_ROOT); two scenes with the same name are refused."""
    from cos3d.core.paths import safe_name

    names = [safe_name(Path(s.rstrip("/")).name or s) for s in scenes]
    seen: dict[str, str] = {}
    for s, n in zip(scenes, names):
        if n in seen:
            raise Cos3dError(f"scenes {seen[n]} and {s} would both train into a run folder named {n!r}; "
                             "list scenes whose folder names differ")
        seen[n] = s
    return names


# ---- per-scene work (runs in a Ray worker or in this process) --------------------------------------
@contextlib.contextmanager
def _logged(log: Path):
    """Send this scene's stdout and stderr to ``log`` (appended: a retried scene's attempts follow each other)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a", buffering=1) as f, contextlib.redirect_stdout(f), contextlib.redirect_stderr(f):
        print(f"==== {time.strftime('%Y-%m-%d %H:%M:%S')} on {socket.gethostname()} pid {os.getpid()}", flush=True)
        yield


def train_scene(cfg: Any, log: str, config_files: tuple[str, ...] = ()) -> dict[str, Any]:
    """Train one scene (``cfg``: a :class:`~cos3d.pipeline.train_config.TrainConfig`) with its output in ``log``;
    returns its metrics (Gaussians, stage times, peak memory) from the run's ``run.json``."""
    from cos3d.pipeline.runner import train

    with _logged(Path(log)):
        run_dir = train(cfg, config_files=config_files)
    rec = json.loads((Path(run_dir) / "run.json").read_text())
    counts = rec.get("counts", {}) or {}
    metrics: dict[str, Any] = {}
    for k, label in (("n_gaussians", "gaussians"), ("n_views", "views")):
        if isinstance(counts.get(k), (int, float)):
            metrics[label] = counts[k]
    psnr = (rec.get("stages", {}).get("recon", {}) or {}).get("psnr_test")
    if isinstance(psnr, (int, float)):
        metrics["psnr_test"] = round(float(psnr), 2)
    stages = rec.get("stages", {}) or {}
    times = {k: round(float(v.get("time_s", 0.0)), 1) for k, v in stages.items() if isinstance(v, dict) and v.get("time_s")}
    if times:
        metrics["stage_s"] = times
    return {"run": str(run_dir), "metrics": metrics}


def eval_run(run: str, log: str, protocol: str = "occlusion", device: str = "auto", threads: int | None = None) -> dict[str, Any]:
    """Evaluate one run folder with the tabletop protocol (:func:`cos3d.eval.tabletop.evaluate`)."""
    import cos3d.pipeline.trained
    from cos3d.eval.tabletop import evaluate
    from cos3d.query.engine import QueryEngine

    if threads:
        import torch

        torch.set_num_threads(int(threads))
    if not (Path(run) / "run.json").is_file():
        raise Cos3dError(f"{run}: no trained run here (no run.json); run `cos3d batch train` first")
    with _logged(Path(log)):
        engine = QueryEngine(cos3d.pipeline.trained.load(run, device=device))
        rep = evaluate(engine, protocol=protocol)
        print(json.dumps({k: v for k, v in rep.to_dict().items() if k != "queries"}, indent=1, default=str))
    metrics = {"mIoU": rep.miou, "mAcc@0.25": rep.macc25, "no_target_accuracy": rep.no_target_accuracy,
               "pairs": rep.num_pairs, "queries": len(rep.per_query), "by_kind": rep.by_kind}
    return {"run": str(run), "metrics": metrics}


def _call(fn: Callable[..., dict[str, Any]], args: tuple, kwargs: dict[str, Any]) -> dict[str, Any]:
    """Run one scene's work and time it (the body of a scene's task)."""
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return {**out, "seconds": time.perf_counter() - t0, "host": socket.gethostname()}


# ---- the driver ------------------------------------------------------------------------------------
@dataclass
class _Item:
    name: str
    scene: str
    run: str
    log: str
    fn: Callable[..., dict[str, Any]]
    args: tuple
    kwargs: dict[str, Any]
    gpu_kw: str | None = None
    """A keyword of ``kwargs`` naming the device: set to cpu for tasks that declare no GPU."""


def run_batch(kind: str, items: list[_Item], bcfg: BatchConfig) -> BatchReport:
    """Run ``items`` with ``bcfg.executor``; each scene's failure is recorded, never raised."""
    from tqdm import tqdm

    t0 = time.perf_counter()
    results = {it.name: SceneResult(it.name, it.scene, it.run, log=it.log) for it in items}
    bar = tqdm(total=len(items), unit="scene", desc=f"batch {kind}", disable=not bcfg.progress, dynamic_ncols=True,
               file=sys.stderr)

    def record(it: _Item, out: dict[str, Any] | None, err: BaseException | None, seconds: float) -> None:
        from cos3d.distributed import error_line

        r = results[it.name]
        if err is None and out is not None:
            r.status, r.seconds, r.metrics, r.host = "ok", out["seconds"], out["metrics"], out.get("host")
        else:
            r.status, r.seconds, r.error = "failed", seconds, error_line(err) if err else "failed"
        bar.update(1)
        n_failed = sum(x.status == "failed" for x in results.values())
        bar.set_postfix(last=f"{it.name} {r.status}", failed=n_failed)

    resources: dict[str, Any] = {}
    if bcfg.executor == "local":
        for it in items:
            t = time.perf_counter()
            try:
                out, err = _call(it.fn, it.args, it.kwargs), None
            except KeyboardInterrupt:
                raise
            except Exception as e:  # noqa: BLE001 - a bad scene fails alone
                out, err = None, e
            record(it, out, err, time.perf_counter() - t)
    else:
        resources = _run_ray(items, bcfg, record)
    bar.close()
    return BatchReport(kind, bcfg.executor, [results[it.name] for it in items], time.perf_counter() - t0, resources)


def _run_ray(items: list[_Item], bcfg: BatchConfig, record: Callable[..., None]) -> dict[str, Any]:
    from cos3d.distributed import cluster_resources, error_line, ray_session

    with ray_session(bcfg.ray_address) as ray:
        total = cluster_resources(ray)
        gpus = bcfg.gpus_per_scene if bcfg.gpus_per_scene is not None else (1.0 if total.get("GPU", 0) >= 1 else 0.0)
        opts: dict[str, Any] = dict(num_cpus=bcfg.cpus_per_scene, num_gpus=gpus, max_retries=bcfg.retries,
                                    retry_exceptions=False)
        if bcfg.memory_gib_per_scene:
            opts["memory"] = int(bcfg.memory_gib_per_scene * 2**30)
        for key, need, have in (("cpus-per-scene", bcfg.cpus_per_scene, total.get("CPU", 0.0)),
                                ("gpus-per-scene", gpus, total.get("GPU", 0.0)),
                                ("memory-gib-per-scene", (bcfg.memory_gib_per_scene or 0) * 2**30, total.get("memory", 0.0))):
            if need > have:
                raise Cos3dError(f"--{key}: no node of the Ray cluster can hold one scene "
                                 f"(asks {need:g}, the cluster has {have:g} in all)")
        task = ray.remote(_call).options(**opts)
        died = tuple(c for c in (getattr(ray.exceptions, n, None) for n in (
            "WorkerCrashedError", "NodeDiedError", "OutOfMemoryError")) if c is not None)
        started: dict[Any, tuple[_Item, float]] = {}
        for it in items:
            kwargs = dict(it.kwargs)
            if it.gpu_kw and not gpus and kwargs.get(it.gpu_kw, "auto") == "auto":
                kwargs[it.gpu_kw] = "cpu"  # a task without a GPU must not use one it happens to see
            started[task.remote(it.fn, it.args, kwargs)] = (it, time.perf_counter())
        pending = list(started)
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            for ref in ready:
                it, t = started[ref]
                try:
                    out, err = ray.get(ref), None
                except died as e:
                    tries = bcfg.retries + 1
                    out, err = None, Cos3dError(f"its worker died {tries} time{'s' if tries > 1 else ''} "
                                                f"(--retries {bcfg.retries}): {error_line(e)}")
                except Exception as e:  # noqa: BLE001 - the scene's own error: not retried
                    out, err = None, e
                record(it, out, err, time.perf_counter() - t)
        res = {"num_cpus": bcfg.cpus_per_scene, "num_gpus": gpus, "max_retries": bcfg.retries}
        if bcfg.memory_gib_per_scene:
            res["memory_gib"] = bcfg.memory_gib_per_scene
        return res


def _finish(report: BatchReport, bcfg: BatchConfig) -> Path:
    from cos3d.core.atomic import write_json

    path = bcfg.summary or bcfg.out_root / f"batch-{report.kind}.json"
    write_json(path, report.to_dict())
    return path


def batch_train(scenes: list[str], train_cfg: Any, bcfg: BatchConfig, config_files: tuple[str, ...] = ()) -> tuple[BatchReport, Path]:
    """Train every scene into ``OUT_ROOT/<name>`` (``train_cfg``: the common
    :class:`~cos3d.pipeline.train_config.TrainConfig`; its scene and out are set per scene); returns the report and
    the summary JSON's path."""
    bcfg.validate()
    names = run_names(scenes)
    items = []
    for scene, name in zip(scenes, names):
        run = bcfg.out_root / name
        cfg = replace(train_cfg, scene=scene, out=run, progress=False, resume=not train_cfg.restart)
        if bcfg.executor == "ray" and cfg.threads is None:
            cfg = replace(cfg, threads=max(1, int(bcfg.cpus_per_scene)))
        items.append(_Item(name, scene, str(run), str(bcfg.out_root / "logs" / f"{name}.log"), _train_item,
                           (cfg, str(bcfg.out_root / "logs" / f"{name}.log"), tuple(config_files)), {"device": cfg.device},
                           gpu_kw="device"))
    report = run_batch("train", items, bcfg)
    return report, _finish(report, bcfg)


def _train_item(cfg: Any, log: str, config_files: tuple[str, ...], device: str = "auto") -> dict[str, Any]:
    return train_scene(replace(cfg, device=device), log, config_files)


def batch_eval(scenes: list[str], bcfg: BatchConfig, *, protocol: str = "occlusion", device: str = "auto",
               threads: int | None = None) -> tuple[BatchReport, Path]:
    """Evaluate the runs ``batch train`` made for ``scenes`` (``OUT_ROOT/<name>``)."""
    bcfg.validate()
    names = run_names(scenes)
    items = []
    for scene, name in zip(scenes, names):
        run = str(bcfg.out_root / name)
        log = str(bcfg.out_root / "logs" / f"{name}.eval.log")
        th = threads if threads is not None else (max(1, int(bcfg.cpus_per_scene)) if bcfg.executor == "ray" else None)
        items.append(_Item(name, scene, run, log, eval_run, (run, log),
                           {"protocol": protocol, "device": device, "threads": th}, gpu_kw="device"))
    report = run_batch("eval", items, bcfg)
    return report, _finish(report, bcfg)
