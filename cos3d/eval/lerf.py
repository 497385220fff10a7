"""LERF-OVS 3D-selection protocol (OpenGaussian, COS3D; README "What is measured") on LangSplat's released labels.

Label format (LangSplat's ``lerf_ovs/label/<scene>/``): per annotated frame a ``frame_XXXXX.json``
(labelme-like) next to its ``frame_XXXXX.jpg``::

    {"info": {"width": W, "height": H, "name": "frame_00041.jpg"},
     "objects": [{"category": "green apple", "segmentation": [[x, y], ...], "bbox": [x0, y0, x1, y1]}, ...]}

``segmentation`` is one polygon in image pixels. Objects of one category in a frame are one GT mask
(the union of their polygons). Polygon vertices are truncated to integers and the polygon filled with
its outline (as the released evaluation rasterises them), here with PIL.

Protocol: every category of an annotated frame is a text query; the query is answered once, in 3D, and
its selection rendered into the frame at the label's resolution (the frame's camera scaled to W×H) by
each 2D mask protocol — ``selected`` (COS3D/OpenGaussian: the selected Gaussians rendered alone, alpha >
0.7) and ``occlusion`` (pixels whose blending weight comes mostly from the selection). Per (frame,
category) pair IoU; a no-target answer is an empty mask (IoU 0). Per scene mIoU, mAcc@0.25, mAcc@0.5
over pairs; the mean over scenes weighs scenes equally.

Frames are matched to the run's scene frames by image stem (``frame_00041``): a COLMAP scene names its
frames by the image file stem (:func:`cos3d.data.scene.frame_names`).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from cos3d.core.errors import Cos3dError
from cos3d.eval.metrics import mask_iou, summarize_ious

if TYPE_CHECKING:  # pragma: no cover
    from cos3d.query.engine import QueryEngine

PROTOCOLS = ("selected", "occlusion")


@dataclass
class LerfFrame:
    """One annotated frame: GT masks per category at the label's resolution."""

    name: str
    """Image stem, e.g. ``frame_00041``."""
    width: int
    height: int
    masks: dict[str, np.ndarray]
    """Category → bool ``[H, W]`` (union of the category's polygons)."""
    path: Path


def polygon_mask(size: tuple[int, int], polygon: Sequence[Sequence[float]]) -> np.ndarray:
    """bool ``[H, W]`` of ``size = (H, W)``: the polygon's interior and outline, vertices truncated to ints."""
    from PIL import Image, ImageDraw

    h, w = size
    pts = [(int(p[0]), int(p[1])) for p in polygon]
    im = Image.new("L", (w, h), 0)
    if len(pts) >= 2:
        ImageDraw.Draw(im).polygon(pts, fill=1, outline=1)
    elif len(pts) == 1 and 0 <= pts[0][0] < w and 0 <= pts[0][1] < h:
        im.putpixel(pts[0], 1)
    return np.asarray(im, dtype=bool)


def read_label_file(path: str | Path) -> LerfFrame:
    """One ``frame_XXXXX.json`` (module docstring). Raises :class:`Cos3dError` naming the file."""
    path = Path(path)
    try:
        d = json.loads(path.read_text())
        info = d["info"]
        h, w = int(info["height"]), int(info["width"])
        name = Path(str(info.get("name") or path.name)).stem
        masks: dict[str, np.ndarray] = {}
        for obj in d["objects"]:
            cat = str(obj["category"])
            seg = obj["segmentation"]
            m = polygon_mask((h, w), seg)
            masks[cat] = masks[cat] | m if cat in masks else m
    except FileNotFoundError:
        raise Cos3dError(f"{path}: no such label file") from None
    except (ValueError, KeyError, TypeError, IndexError) as e:
        raise Cos3dError(f"{path}: not a LERF-OVS label file (LangSplat format: info + objects): {e!r}") from None
    return LerfFrame(name=name, width=w, height=h, masks=masks, path=path)


def read_labels(folder: str | Path) -> list[LerfFrame]:
    """Every ``frame_*.json`` of one scene's label folder, sorted by name."""
    folder = Path(folder)
    files = sorted(folder.glob("frame_*.json"))
    if not files:
        raise Cos3dError(f"{folder}: no frame_*.json label files (LangSplat's lerf_ovs/label/<scene>/ layout)")
    return [read_label_file(f) for f in files]


def find_scenes(run: Path, labels: Path) -> list[tuple[str, Path, Path]]:
    """``(scene name, run folder, label folder)`` pairs: one run + one label folder, or folders of them
    (``runs/<scene>/`` beside ``label/<scene>/``)."""
    run, labels = Path(run), Path(labels)
    if not labels.is_dir():
        raise Cos3dError(f"--labels {labels}: no such folder")
    if any(labels.glob("frame_*.json")):
        if not (run / "run.json").is_file():
            raise Cos3dError(f"--run {run}: not a run folder (no run.json) for the labels of {labels.name}")
        return [(labels.name, run, labels)]
    pairs = []
    for sub in sorted(p for p in labels.iterdir() if p.is_dir() and any(p.glob("frame_*.json"))):
        r = run / sub.name
        if (r / "run.json").is_file():
            pairs.append((sub.name, r, sub))
    if not pairs:
        raise Cos3dError(f"no scene has both labels under {labels} and a run under {run} (runs/<scene>/run.json)")
    return pairs


def evaluate_lerf_scene(engine: "QueryEngine", frames: list[LerfFrame], protocols: Sequence[str] = PROTOCOLS) -> dict[str, Any]:
    """The protocol on one scene (module docstring): ``{"pairs": [...], <protocol>: summary}``."""
    scene = engine.scene
    by_name = {f.name: f for f in scene.frames}
    missing = [lf.name for lf in frames if lf.name not in by_name]
    if missing:
        raise Cos3dError(f"the run's scene has no frames named {', '.join(missing[:5])} (labels are matched by image stem)")
    answers: dict[str, Any] = {}
    rows = []
    for lf in frames:
        cam = by_name[lf.name].camera
        if (cam.width, cam.height) != (lf.width, lf.height):
            cam = cam.scaled(lf.width, lf.height)
        for cat, gt in sorted(lf.masks.items()):
            if cat not in answers:
                t = time.perf_counter()
                res = engine.query(cat)
                answers[cat] = (res, (time.perf_counter() - t) * 1e3)
            res, ms = answers[cat]
            row: dict[str, Any] = {"frame": lf.name, "query": cat, "no_target": bool(res.no_target), "ms": round(ms, 2)}
            for proto in protocols:
                pred = engine.mask(res, cam, proto) if not res.no_target else np.zeros_like(gt)
                row[proto] = mask_iou(pred, gt)
            rows.append(row)
    out: dict[str, Any] = {"frames": len(frames), "queries": len(answers), "pairs": rows}
    for proto in protocols:
        out[proto] = summarize_ious(r[proto] for r in rows)
    return out


def evaluate_lerf(run: Path, labels: Path, protocols: Sequence[str] = PROTOCOLS) -> dict[str, Any]:
    """Every scene of :func:`find_scenes`; per scene results and the equal-weight mean over scenes."""
    import cos3d

    scenes = {}
    for name, r, lab in find_scenes(run, labels):
        ts = cos3d.load(r)
        scenes[name] = evaluate_lerf_scene(ts.engine, read_labels(lab), protocols) | {"run": str(r), "labels": str(lab)}
    mean = {}
    for proto in protocols:
        mean[proto] = {k: float(np.mean([s[proto][k] for s in scenes.values()]))
                       for k in ("mIoU", "mAcc@0.25", "mAcc@0.5")}
    return {"protocol": "LERF-OVS 3D selection (OpenGaussian/COS3D): per (frame, category) 2D IoU",
            "scenes": scenes, "mean": mean}
