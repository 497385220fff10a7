"""The LERF-OVS reader + evaluator and the ScanNet evaluator on small fixtures in their exact formats.

LERF-OVS labels as LangSplat releases them (``label/<scene>/frame_XXXXX.json`` next to the frame's jpg:
``info`` {width, height, name} and ``objects`` [{category, segmentation: one polygon [[x, y], ...],
bbox}]); ScanNet's ``<scan>_vh_clean_2.labels.ply`` (binary little-endian: vertex x y z float, red green
blue alpha uchar, label ushort; faces). Engines and trained scenes are small stand-ins, so the numbers
are hand-computed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from cos3d.core.errors import Cos3dError
from cos3d.eval.lerf import evaluate_lerf_scene, find_scenes, polygon_mask, read_label_file, read_labels
from cos3d.eval.scannet import CLASS_SETS, class_names, evaluate_scannet_scene, read_gt, remap_labels
from cos3d.data.scene import Camera


# ----------------------------------------------------------------------------------------------- LERF
def _write_lerf(folder: Path) -> None:
    folder.mkdir(parents=True)
    objs = [
        {"category": "mug", "segmentation": [[2, 2], [6, 2], [6, 5], [2, 5]], "bbox": [2, 2, 6, 5]},
        {"category": "mug", "segmentation": [[10, 1], [12, 1], [12, 3], [10, 3]], "bbox": [10, 1, 12, 3]},
        {"category": "duck", "segmentation": [[0, 7.9], [3.6, 7.9], [3.6, 9], [0, 9]], "bbox": [0, 7, 3, 9]},
    ]
    (folder / "frame_00002.json").write_text(json.dumps(
        {"info": {"width": 16, "height": 10, "name": "frame_00002.jpg"}, "objects": objs}))
    (folder / "frame_00005.json").write_text(json.dumps(
        {"info": {"width": 16, "height": 10, "name": "frame_00005.jpg"},
         "objects": [{"category": "elephant toy", "segmentation": [[1, 1], [4, 1], [4, 4], [1, 4]], "bbox": [1, 1, 4, 4]}]}))


def test_lerf_label_reader(tmp_path):
    _write_lerf(tmp_path / "label" / "teatime")
    frames = read_labels(tmp_path / "label" / "teatime")
    assert [f.name for f in frames] == ["frame_00002", "frame_00005"]
    f = frames[0]
    assert (f.width, f.height) == (16, 10) and set(f.masks) == {"mug", "duck"}
    mug = f.masks["mug"]
    assert mug.shape == (10, 16) and mug.dtype == bool
    # two rectangles, outline included: 5x4 + 3x3 pixels, unioned into one GT mask
    assert int(mug.sum()) == 20 + 9 and mug[2, 2] and mug[5, 6] and mug[1, 10] and not mug[0, 0]
    # vertices are truncated to ints (7.9 -> 7, 3.6 -> 3) as the released evaluation does
    assert polygon_mask((10, 16), [[0, 7.9], [3.6, 7.9], [3.6, 9], [0, 9]]).sum() == 4 * 3
    with pytest.raises(Cos3dError, match="no frame_"):
        read_labels(tmp_path)
    (tmp_path / "frame_00009.json").write_text("{}")
    with pytest.raises(Cos3dError, match="not a LERF-OVS label file"):
        read_label_file(tmp_path / "frame_00009.json")


@dataclass
class _Res:
    selected: torch.Tensor
    no_target: bool
    objects: list = field(default_factory=list)


class _Engine:
    """An engine that answers each category with a fixed 2D mask (a stand-in for the 3D selection)."""

    def __init__(self, answers: dict[str, np.ndarray | None], frames: list[str]):
        cam = Camera(K=np.array([[10.0, 0, 8], [0, 10.0, 5], [0, 0, 1]]), c2w=np.eye(4), width=16, height=10)
        self.scene = SimpleNamespace(frames=[SimpleNamespace(name=n, camera=cam) for n in frames])
        self.answers = answers
        self.asked: list[str] = []

    def query(self, text):
        self.asked.append(text)
        m = self.answers.get(text)
        return _Res(torch.zeros(0, dtype=torch.long), True) if m is None else _Res(torch.arange(3), False, [text])

    def mask(self, res, camera, protocol):
        assert (camera.width, camera.height) == (16, 10)
        return self.answers[res.objects[0]].copy()


def test_lerf_evaluator_perfect_empty_and_partial(tmp_path):
    _write_lerf(tmp_path / "teatime")
    frames = read_labels(tmp_path / "teatime")
    gt_mug, gt_duck = frames[0].masks["mug"], frames[0].masks["duck"]
    half_duck = gt_duck.copy()
    half_duck[:, 2:] = False  # 2 of the duck's 4 columns: IoU 0.5
    eng = _Engine({"mug": gt_mug, "duck": half_duck, "elephant toy": None}, ["frame_00002", "frame_00005", "x"])
    res = evaluate_lerf_scene(eng, frames, protocols=("selected", "occlusion"))
    ious = {(r["frame"], r["query"]): r["selected"] for r in res["pairs"]}
    assert ious == {("frame_00002", "duck"): pytest.approx(0.5), ("frame_00002", "mug"): 1.0,
                    ("frame_00005", "elephant toy"): 0.0}  # perfect, partial, empty (no-target) prediction
    s = res["selected"]
    assert s["pairs"] == 3 and s["mIoU"] == pytest.approx(0.5)
    assert s["mAcc@0.25"] == pytest.approx(2 / 3) and s["mAcc@0.5"] == pytest.approx(1 / 3)  # 0.5 is not > 0.5
    assert sorted(eng.asked) == ["duck", "elephant toy", "mug"]  # each category answered once
    with pytest.raises(Cos3dError, match="no frames named frame_00005"):
        evaluate_lerf_scene(_Engine({}, ["frame_00002"]), frames)


def test_lerf_scene_pairing(tmp_path):
    _write_lerf(tmp_path / "label" / "teatime")
    _write_lerf(tmp_path / "label" / "ramen")
    (tmp_path / "runs" / "teatime").mkdir(parents=True)
    (tmp_path / "runs" / "teatime" / "run.json").write_text("{}")
    assert [s[0] for s in find_scenes(tmp_path / "runs", tmp_path / "label")] == ["teatime"]
    assert find_scenes(tmp_path / "runs" / "teatime", tmp_path / "label" / "teatime")[0][0] == "teatime"
    with pytest.raises(Cos3dError, match="not a run folder"):
        find_scenes(tmp_path / "runs", tmp_path / "label" / "ramen")


# -------------------------------------------------------------------------------------------- ScanNet
def _write_scannet_ply(path: Path, xyz: np.ndarray, label: np.ndarray) -> None:
    from plyfile import PlyData, PlyElement

    v = np.zeros(len(xyz), dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("red", "u1"), ("green", "u1"),
                                  ("blue", "u1"), ("alpha", "u1"), ("label", "<u2")])
    v["x"], v["y"], v["z"] = xyz.T
    v["alpha"] = 255
    v["label"] = label
    f = np.zeros(1, dtype=[("vertex_indices", "O")])
    f["vertex_indices"][0] = np.array([0, 1, 2], np.int32)
    PlyData([PlyElement.describe(v, "vertex"), PlyElement.describe(f, "face")], byte_order="<").write(str(path))


class _OneHotEmbedder:
    """Class name → one-hot row over the 19 class names."""

    names = class_names(19)

    def embed_text(self, texts):
        out = torch.zeros(len(texts), len(self.names))
        for i, t in enumerate(texts):
            out[i, self.names.index(t)] = 1.0
        return out


def _fake_ts(means: np.ndarray, opacity: np.ndarray, classes: np.ndarray):
    lang = torch.zeros(len(means), 19)
    lang[torch.arange(len(means)), torch.as_tensor(classes) - 1] = 1.0
    g = SimpleNamespace(means=torch.as_tensor(means, dtype=torch.float32), opacities=torch.as_tensor(opacity))
    scene = SimpleNamespace(to_original_space=lambda p: np.asarray(p, np.float64) + 1.0)  # run frame = original - 1
    return SimpleNamespace(gaussians=g, scene=scene, embedder=_OneHotEmbedder(),
                           fields={"l": SimpleNamespace(language=lang)})


def test_scannet_protocol(tmp_path):
    rng = np.random.default_rng(0)
    xyz = rng.uniform(0, 4, (8, 3)).astype(np.float32)
    nyu = np.array([1, 1, 2, 5, 5, 39, 0, 13])  # wall, wall, floor, chair, chair, other furniture, none, blinds
    scan = tmp_path / "scene0000_00"
    scan.mkdir()
    _write_scannet_ply(scan / "scene0000_00_vh_clean_2.labels.ply", xyz, nyu)
    pts, lab = read_gt(scan / "scene0000_00_vh_clean_2.labels.ply")
    assert np.allclose(pts, xyz) and list(lab) == list(nyu)
    gt19 = remap_labels(nyu, 19)
    assert list(gt19) == [1, 1, 2, 5, 5, 0, 0, 0]  # 39 and 13 are not among the 19 classes
    assert len(CLASS_SETS[19]) == 19 and len(CLASS_SETS[15]) == 15 and len(CLASS_SETS[10]) == 10

    opacity = np.full(8, 0.9, np.float32)
    means = xyz - 1.0  # the run's frame; to_original_space adds 1 back: identity correspondence
    perfect = _fake_ts(means, opacity, np.where(gt19 > 0, gt19, 3))
    r = evaluate_scannet_scene(perfect, scan, 19)
    assert r["correspondence"] == "identity" and r["mIoU"] == 1.0 and r["mAcc"] == 1.0 and r["vertices"] == 8 and r["points"] == 5
    wrong = _fake_ts(means, opacity, np.full(8, 19))  # every point "bathtub": an empty prediction of the GT classes
    assert evaluate_scannet_scene(wrong, scan, 19)["mIoU"] == 0.0
    # one wall point predicted floor: wall IoU 1/2 (TP 1, FN 1), floor IoU 1/2 (TP 1, FP 1), chair 1
    cls = np.where(gt19 > 0, gt19, 3).copy()
    cls[1] = 2
    r = evaluate_scannet_scene(_fake_ts(means, opacity, cls), scan, 19)
    assert r["mIoU"] == pytest.approx((0.5 + 0.5 + 1.0) / 3) and r["mAcc"] == pytest.approx((0.5 + 1 + 1) / 3)
    # opacity < 0.1 is ignored: hiding the wrong point restores a perfect score
    op = opacity.copy()
    op[1] = 0.05
    r = evaluate_scannet_scene(_fake_ts(means, op, cls), scan, 19)
    assert r["mIoU"] == 1.0 and r["ignored_low_opacity"] == 1
    # other Gaussians than the vertices: each vertex takes its nearest Gaussian's class
    near = _fake_ts(np.concatenate([means, means + 0.001]), np.concatenate([opacity, opacity]),
                    np.concatenate([np.where(gt19 > 0, gt19, 3), np.full(8, 19)]))
    r = evaluate_scannet_scene(near, scan, 19)
    assert r["correspondence"] == "nearest" and r["mIoU"] == 1.0
    with pytest.raises(Cos3dError, match="--classes must be one of"):
        evaluate_scannet_scene(perfect, scan, 20)
    with pytest.raises(Cos3dError, match="no \\*_vh_clean_2.labels.ply"):
        evaluate_scannet_scene(perfect, tmp_path, 19)
