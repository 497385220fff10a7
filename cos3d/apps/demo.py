"""``cos3d demo``: make a tabletop, train it, answer prompts of every kind, print a table.

Steps (each resumable with ``resume=True``):

1. ``WORKDIR/scene``: the default tabletop (:mod:`cos3d.tabletop`, demo size);
2. ``WORKDIR/run``: ``cos3d train`` with the fast presets and the offline providers (dataset masks +
   ``labels`` embedder: the **oracle-2D protocol**); SAM2 + OpenCLIP instead when both real weights are
   configured (``$COS3D_SAM2_CHECKPOINT`` and ``$COS3D_CLIP_CHECKPOINT``);
3. prompts: object names, held-out phrasings (``eval_prompts.json``: "something to sip a latte from" for the
   mugs), the plural of the same-kind pair ("mugs"), an absent "walrus" (in no word list of cos3d), a click on an object in a held-out view, an image
   prompt (a box cut from a training view), and a part within its object ("head" within "toy robot");
4. a table: prompt, kind, objects found, IoU against the ground truth in the held-out views (mean over
   those where the target is visible; occlusion-aware masks), latency. ``WORKDIR/demo.json`` keeps it.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cos3d.core.atomic import write_json
from cos3d.core.errors import Cos3dError

if TYPE_CHECKING:  # pragma: no cover
    from cos3d.query.engine import QueryEngine

DEMO_MARKER = "demo.json"


@dataclass
class DemoConfig:
    """What ``cos3d demo`` does."""

    workdir: Path = Path("cos3d-demo")
    """Folder for the scene, the run and the report."""
    resume: bool = False
    """Reuse a finished scene and the finished training stages."""
    seed: int = 0
    """Tabletop seed (0: the default scene, with a blue and a red mug and two soda cans)."""
    views: int = 20
    """Tabletop views (train + held-out)."""
    width: int = 160
    """Image width: the demo renders the default scene at the test size (160×120) to finish in minutes."""
    height: int = 120
    protocol: str = "occlusion"
    """2D mask protocol for the IoU column (``occlusion`` or ``selected``)."""
    train_options: dict[str, Any] = field(default_factory=dict)
    """Extra :class:`cos3d.pipeline.train_config.TrainConfig` fields (e.g. ``iterations``)."""
    progress: bool = True


@dataclass
class DemoRow:
    prompt: str
    kind: str
    objects: int
    iou: float | None
    ms: float
    note: str = ""


def _real_models_configured() -> bool:
    return bool(os.environ.get("COS3D_SAM2_CHECKPOINT")) and bool(os.environ.get("COS3D_CLIP_CHECKPOINT"))


def _check_workdir(cfg: DemoConfig) -> None:
    wd = Path(cfg.workdir)
    if wd.exists() and not wd.is_dir():
        raise Cos3dError(f"--workdir {wd} exists and is not a folder")
    if wd.is_dir() and any(wd.iterdir()) and not (wd / DEMO_MARKER).exists() and not (wd / "scene").is_dir():
        raise Cos3dError(f"--workdir {wd} is not empty and is not a demo folder; choose another --workdir")


def _log(msg: str) -> None:
    print(f"[demo] {msg}", flush=True)


def prepare_scene(cfg: DemoConfig) -> Path:
    from cos3d.tabletop import TabletopConfig, generate_tabletop

    out = Path(cfg.workdir) / "scene"
    if cfg.resume and (out / "splits.json").is_file():
        _log(f"scene: reusing {out}")
        return out
    t = time.perf_counter()
    generate_tabletop(TabletopConfig(out=out, seed=cfg.seed, views=cfg.views, width=cfg.width, height=cfg.height,
                                     force=True))
    _log(f"scene: {cfg.views} views at {cfg.width}x{cfg.height} in {time.perf_counter() - t:.1f} s -> {out}")
    return out


def train_scene(cfg: DemoConfig, scene_dir: Path) -> tuple[Path, str]:
    from cos3d.core.config import apply_config
    from cos3d.pipeline.runner import train
    from cos3d.pipeline.train_config import TrainConfig
    from cos3d.vision.models import ModelsConfig

    run = Path(cfg.workdir) / "run"
    real = _real_models_configured()
    masks, embedder = ("sam2", "openclip") if real else ("dataset", "labels")
    if not cfg.resume and run.exists():
        shutil.rmtree(run)
    t = time.perf_counter()
    tcfg = TrainConfig(scene=str(scene_dir), out=run, models=ModelsConfig(masks=masks, embedder=embedder),
                       resume=cfg.resume, progress=cfg.progress, **cfg.train_options)
    train(apply_config(tcfg, "fast"), config_files=("fast",))
    _log(f"train: {masks} masks + {embedder} embedder, fast presets, {time.perf_counter() - t:.1f} s -> {run}")
    return run, ("real 2D models (SAM2 + OpenCLIP)" if real else "oracle-2D (dataset masks + labels embedder)")


def _interior_pixel(mask: np.ndarray) -> tuple[int, int]:
    """(x, y) of the pixel of ``mask`` farthest from its border."""
    from scipy.ndimage import distance_transform_edt

    d = distance_transform_edt(mask)
    y, x = np.unravel_index(int(np.argmax(d)), d.shape)
    return int(x), int(y)


def demo_prompts(scene: Any) -> list[dict[str, Any]]:
    """The demo's prompts for ``scene`` (see the module docstring); each a dict of query kwargs + GT."""
    from cos3d.eval.tabletop import tabletop_queries

    qs = tabletop_queries(scene)
    by_kind: dict[str, list] = {}
    for q in qs:
        by_kind.setdefault(q.kind, []).append(q)
    labels = {int(k): v for k, v in scene.labels.items()}
    background = {i for i, n in labels.items() if n and n[0] in ("floor", "table")}
    objects = [i for i in sorted(labels) if i not in background]
    prompts: list[dict[str, Any]] = []

    def add(kind: str, prompt: str, query: dict[str, Any], gt: list[int], gt_level: str = "instance", note: str = ""):
        prompts.append(dict(kind=kind, prompt=prompt, query=query, gt=gt, gt_level=gt_level, note=note))

    names = [q for q in by_kind.get("name", []) if not set(q.gt_ids) & background]
    for q in names[:3]:
        add("name", q.text, {"text": q.text}, q.gt_ids)
    paras = [q for q in by_kind.get("paraphrase", []) if not set(q.gt_ids) & background]
    paras.sort(key=lambda q: (len(q.gt_ids) < 2, q.text))  # a phrasing of several instances first, when there is one
    for q in paras[:2]:
        add("paraphrase", q.text, {"text": q.text}, q.gt_ids)
    plurals = sorted(by_kind.get("plural", []), key=lambda q: q.text != "mugs")
    for q in plurals[:1]:
        add("plural", q.text, {"text": q.text}, q.gt_ids)
    add("absent", "walrus", {"text": "walrus"}, [])

    test = scene.split("test")
    train = scene.split("train")
    # image prompt: a box around the largest object of a training view
    fr = train[len(train) // 2]
    inst = fr.load_instance()
    image_obj = None
    if inst is not None:
        areas = {i: int((inst == i).sum()) for i in objects}
        if areas and max(areas.values()) > 0:
            image_obj = max(areas, key=areas.get)
            ys, xs = np.nonzero(inst == image_obj)
            box = [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1]
            add("image", f"image {fr.name} box {','.join(map(str, box))}",
                {"image": str(fr.image_path), "box": box}, [image_obj], note=f"{labels[image_obj][0]} (oracle-2D)")
    # click: the most visible other object of the first held-out view, at its most interior pixel
    f = test[0]
    inst = f.load_instance()
    if inst is not None:
        areas = {i: int((inst == i).sum()) for i in objects if i != image_obj}
        if areas and max(areas.values()) > 0:
            oid = max(areas, key=areas.get)
            x, y = _interior_pixel(inst == oid)
            add("click", f"click {f.name}:{x},{y}", {"click": f"{f.name}:{x},{y}"}, [oid],
                note=f"on {labels[oid][0]}")
    # a part within its object
    parts = by_kind.get("part", [])
    if parts:
        pick = next((q for q in parts if q.text == "head"), parts[0])
        add("part", f"{pick.text} within {pick.within}", {"text": pick.text, "within": pick.within}, pick.gt_ids,
            gt_level="part")
    return prompts


def answer_prompts(engine: QueryEngine, prompts: list[dict[str, Any]], protocol: str = "occlusion") -> list[DemoRow]:
    from cos3d.eval.metrics import iou

    test = engine.scene.split("test")
    rows = []
    for p in prompts:
        t = time.perf_counter()
        res = engine.query(**p["query"])
        ms = (time.perf_counter() - t) * 1e3
        score = None
        if p["gt"]:
            vals = []
            for f in test:
                m = f.load_part() if p["gt_level"] == "part" else f.load_instance()
                if m is None:
                    continue
                gt = np.isin(m, p["gt"])
                if not gt.any():
                    continue
                pred = np.zeros_like(gt) if res.no_target else engine.mask(res, f.camera, protocol)
                vals.append(iou(pred, gt))
            score = float(np.mean(vals)) if vals else None
        note = p.get("note", "")
        if p["kind"] == "absent":
            note = "correct: empty answer" if res.no_target else "WRONG: should be empty"
        elif res.no_target:
            note = (note + "; " if note else "") + "answered no-target"
        rows.append(DemoRow(p["prompt"], p["kind"], len(res.objects), score, ms, note))
    return rows


def print_table(rows: list[DemoRow], protocol_note: str, wall_s: float | None = None) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"cos3d demo — {protocol_note}", caption="IoU: mean over held-out views where the target is visible")
    for col, j in (("prompt", "left"), ("kind", "left"), ("objects", "right"), ("IoU", "right"), ("ms", "right"),
                   ("note", "left")):
        t.add_column(col, justify=j)
    for r in rows:
        t.add_row(r.prompt, r.kind, str(r.objects), "-" if r.iou is None else f"{r.iou:.3f}", f"{r.ms:.0f}", r.note)
    Console().print(t)
    if wall_s is not None:
        print(f"demo finished in {wall_s:.1f} s")


def run_demo(cfg: DemoConfig) -> list[DemoRow]:
    """Run the whole demo (module docstring); returns the table rows."""
    import cos3d

    t0 = time.perf_counter()
    _check_workdir(cfg)
    Path(cfg.workdir).mkdir(parents=True, exist_ok=True)
    scene_dir = prepare_scene(cfg)
    run, protocol_note = train_scene(cfg, scene_dir)
    engine = cos3d.load(run).engine
    t = time.perf_counter()
    engine.calibration  # noqa: B018 - computed once, reported
    cal = engine.calibration.to_dict()
    thr = cal["cosine_threshold"]
    _log(f"no-target calibration: {cal['rule']}, cosine threshold {'-' if thr is None else f'{thr:.3f}'} "
         f"({time.perf_counter() - t:.1f} s)")
    prompts = demo_prompts(engine.scene)
    rows = answer_prompts(engine, prompts, cfg.protocol)
    wall = time.perf_counter() - t0
    print_table(rows, protocol_note, wall)
    write_json(Path(cfg.workdir) / DEMO_MARKER, {
        "protocol": protocol_note, "mask_protocol": cfg.protocol, "wall_s": round(wall, 2),
        "calibration": engine.calibration.to_dict(),
        "rows": [r.__dict__ for r in rows],
    })
    return rows
