"""ScanNet per-point protocol (OpenGaussian; README "What is measured").

Ground truth: the scan's ``<scene>_vh_clean_2.labels.ply`` (ScanNet's release: one vertex per mesh
vertex with ``x y z`` and the NYU40 ``label``, 0 = unlabelled). The evaluated classes are 19, 15 or 10
of the NYU40 ids (:data:`CLASS_SETS`); every other label becomes 0 (not counted).

Prediction: each Gaussian's language feature (object level ``l``) takes the class whose text embedding
(the class name through the run's embedder) has the largest cosine with it. OpenGaussian's Gaussians
*are* the mesh vertices (initialised there and never moved), so point i is Gaussian i; points whose
Gaussian has opacity < 0.1 are not counted. A cos3d run whose Gaussians are the mesh vertices (same
count, positions within :data:`IDENTITY_TOL` metres in the scene's original frame: train with
``--gaussians`` on a PLY of the vertices) is evaluated exactly so (``correspondence: identity``); any
other run is evaluated by giving each vertex the class and the opacity of its nearest Gaussian
(``correspondence: nearest``; the median vertex-to-Gaussian distance is reported) — a different
protocol, labelled as such.

Metrics per scene (:func:`cos3d.eval.metrics.semantic_metrics`): IoU per class over counted points,
mIoU and mAcc over the classes present in the scene's GT; the mean over scenes weighs scenes equally.
OpenGaussian's 10 scenes: :data:`SCENES`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cos3d.core.errors import Cos3dError
from cos3d.eval.metrics import semantic_metrics

if TYPE_CHECKING:  # pragma: no cover
    from cos3d.pipeline.trained import TrainedScene

NYU40 = (
    "wall", "floor", "cabinet", "bed", "chair", "sofa", "table", "door", "window", "bookshelf",
    "picture", "counter", "blinds", "desk", "shelves", "curtain", "dresser", "pillow", "mirror", "floor mat",
    "clothes", "ceiling", "books", "refrigerator", "television", "paper", "towel", "shower curtain", "box",
    "whiteboard", "person", "nightstand", "toilet", "sink", "lamp", "bathtub", "bag", "other structure",
    "other furniture", "other prop",
)
"""NYU40 class names, id 1..40 (index + 1); spaces where ScanNet's table joins words."""

CLASS_SETS: dict[int, tuple[int, ...]] = {
    19: (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 14, 16, 24, 28, 33, 34, 36),
    15: (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 12, 14, 16, 33, 34),
    10: (1, 2, 4, 5, 6, 7, 8, 9, 10, 33),
}
"""Evaluated NYU40 ids per class count (ScanNet's 20 benchmark classes without "other furniture", and
OpenGaussian's 15- and 10-class subsets)."""

SCENES = ("scene0000_00", "scene0062_00", "scene0070_00", "scene0097_00", "scene0140_00",
          "scene0200_00", "scene0347_00", "scene0400_00", "scene0590_00", "scene0645_00")
OPACITY_MIN = 0.1
IDENTITY_TOL = 1e-3


def class_names(num_classes: int) -> list[str]:
    if num_classes not in CLASS_SETS:
        raise Cos3dError(f"--classes must be one of {sorted(CLASS_SETS)}, got {num_classes}")
    return [NYU40[i - 1] for i in CLASS_SETS[num_classes]]


def remap_labels(nyu40: np.ndarray, num_classes: int) -> np.ndarray:
    """NYU40 ids ``[V]`` → ``0..K`` (class k = the k-th id of :data:`CLASS_SETS`; others 0)."""
    lut = np.zeros(max(41, int(nyu40.max(initial=0)) + 1), np.int64)
    for k, i in enumerate(CLASS_SETS[num_classes], start=1):
        lut[i] = k
    return lut[np.asarray(nyu40, np.int64)]


def find_gt_ply(scene_dir: str | Path) -> Path:
    scene_dir = Path(scene_dir)
    if scene_dir.is_file():
        return scene_dir
    hits = sorted(scene_dir.glob("*_vh_clean_2.labels.ply"))
    if not hits:
        raise Cos3dError(f"--scene {scene_dir}: no *_vh_clean_2.labels.ply (ScanNet's labelled mesh) in it")
    return hits[0]


def read_gt(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """``(points [V, 3] float64, NYU40 labels [V] int64)`` of a ``*_vh_clean_2.labels.ply``."""
    from plyfile import PlyData

    try:
        v = PlyData.read(str(path))["vertex"].data
        pts = np.stack([np.asarray(v[c], np.float64) for c in ("x", "y", "z")], 1)
        labels = np.asarray(v["label"], np.int64)
    except (KeyError, ValueError) as e:
        raise Cos3dError(f"{path}: not a ScanNet labelled mesh (vertex x, y, z, label): {e}") from None
    return pts, labels


def predict_classes(language: Any, text: Any) -> np.ndarray:
    """``[N]`` class ids 1..K: argmax cosine of each row of ``language [N, D]`` with ``text [K, D]``."""
    import torch

    L = torch.nn.functional.normalize(torch.as_tensor(language).float(), dim=1)
    T = torch.nn.functional.normalize(torch.as_tensor(text).float(), dim=1)
    out = torch.empty(L.shape[0], dtype=torch.long)
    for s in range(0, L.shape[0], 65536):
        out[s:s + 65536] = (L[s:s + 65536] @ T.T).argmax(1)
    return out.numpy() + 1


def correspond(means_orig: np.ndarray, points: np.ndarray) -> tuple[np.ndarray, str, float]:
    """``(Gaussian index per GT point [V], "identity"|"nearest", median distance)``."""
    if len(means_orig) == len(points):
        d = np.linalg.norm(means_orig - points, axis=1)
        if float(d.max(initial=0.0)) <= IDENTITY_TOL:
            return np.arange(len(points)), "identity", float(np.median(d)) if len(d) else 0.0
    from scipy.spatial import cKDTree

    d, idx = cKDTree(means_orig).query(points, k=1)
    return np.asarray(idx, np.int64), "nearest", float(np.median(d)) if len(d) else 0.0


def evaluate_scannet_scene(ts: "TrainedScene", scene_dir: str | Path, num_classes: int = 19,
                           level: str = "l") -> dict[str, Any]:
    """The protocol on one scan (module docstring)."""
    names = class_names(num_classes)
    ply = find_gt_ply(scene_dir)
    points, nyu = read_gt(ply)
    gt = remap_labels(nyu, num_classes)
    if level not in ts.fields:
        raise Cos3dError(f"the run has no {level!r}-level field; levels: {sorted(ts.fields)}")
    g = ts.gaussians
    means = ts.scene.to_original_space(g.means.detach().cpu().numpy())
    opacity = g.opacities.detach().cpu().numpy()
    idx, how, dist = correspond(means, points)
    text = ts.embedder.embed_text(names)
    pred_g = predict_classes(ts.fields[level].language.detach().cpu(), text)
    pred = pred_g[idx]
    gt = np.where(opacity[idx] < OPACITY_MIN, 0, gt)
    m = semantic_metrics(gt, pred, num_classes)
    return {"gt": str(ply), "classes": num_classes, "correspondence": how, "median_distance_m": dist,
            "vertices": int(len(points)), "ignored_low_opacity": int((opacity[idx] < OPACITY_MIN).sum()),
            **m.to_dict(names)}


def evaluate_scannet(run: Path, scene: Path, num_classes: int = 19) -> dict[str, Any]:
    """One run + one scan folder, or a folder of runs beside a folder of scans (``runs/<scan>/``)."""
    import cos3d

    run, scene = Path(run), Path(scene)
    if (run / "run.json").is_file():
        pairs = [(scene.name, run, scene)]
    else:
        pairs = [(s.name, run / s.name, s) for s in sorted(p for p in scene.iterdir() if p.is_dir())
                 if (run / s.name / "run.json").is_file() and any(s.glob("*_vh_clean_2.labels.ply"))] if scene.is_dir() else []
        if not pairs:
            raise Cos3dError(f"no scan has both a *_vh_clean_2.labels.ply under {scene} and a run under {run}")
    scenes = {name: evaluate_scannet_scene(cos3d.load(r), s, num_classes) | {"run": str(r)} for name, r, s in pairs}
    mean = {k: float(np.mean([v[k] for v in scenes.values()])) for k in ("mIoU", "mAcc")}
    return {"protocol": f"ScanNet per-point (OpenGaussian), {num_classes} classes", "scenes": scenes, "mean": mean}
