"""The view and resolution policy (cos3d/pipeline/views.py) and the stage-1 memory budget (cos3d/pipeline/runner.py)."""

from __future__ import annotations

import types

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter

from cos3d.core.config import ConfigError
from cos3d.data.scene import Camera, Frame, Scene
from cos3d.pipeline.session import BYTES_PER_PIXEL, BYTES_PER_WEIGHT, pixels_within
from cos3d.pipeline.views import ViewPolicy, select_views, sharpness, training_scene


def _frames(tmp_path, n: int, blurred: set[int], size=(160, 120)) -> list[Frame]:
    rng = np.random.default_rng(0)
    w, h = size
    K = np.array([[100.0, 0, (w - 1) / 2], [0, 100.0, (h - 1) / 2], [0, 0, 1]])
    frames = []
    for i in range(n):
        img = Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
        if i in blurred:
            img = img.filter(ImageFilter.GaussianBlur(3))
        p = tmp_path / f"{i}.jpg"
        img.save(p, quality=95)
        c2w = np.eye(4)
        c2w[0, 3] = i * 0.1
        frames.append(Frame(name=str(i), camera=Camera(K=K, c2w=c2w, width=w, height=h), image_path=p))
    return frames


def test_sharpness_ranks_blurred_frames_lower(tmp_path):
    frames = _frames(tmp_path, 4, blurred={1, 3})
    s = [sharpness(f) for f in frames]
    assert min(s[0], s[2]) > 5 * max(s[1], s[3])


def test_select_views_even_runs_and_the_sharpest_of_each(tmp_path):
    frames = _frames(tmp_path, 12, blurred={0, 4, 5, 9})
    kept, info = select_views(frames, 4)
    names = [f.name for f in kept]
    assert len(kept) == 4 and info == {**info, "from": 12, "kept": 4, "scored": 12}
    # runs [0..2], [3..5], [6..8], [9..11]: one frame each, never a blurred one
    for name, run in zip(names, ([0, 1, 2], [3, 4, 5], [6, 7, 8], [9, 10, 11])):
        assert int(name) in run and int(name) not in {0, 4, 5, 9}
    assert info["sharpness_kept_median"] > info["sharpness_passed_median"]
    same, info = select_views(frames, 50)
    assert same == frames and info["scored"] == 0  # nothing to choose: nothing scored


def test_training_scene_rescales_cameras_and_pixels(tmp_path):
    frames = _frames(tmp_path, 10, blurred=set(), size=(200, 100))
    depth = tmp_path / "d.png"
    Image.fromarray((np.arange(50 * 100).reshape(50, 100) % 3000 + 500).astype(np.uint16)).save(depth)
    inst = tmp_path / "i.png"
    ids = np.zeros((100, 200), np.uint16)
    ids[:, 100:] = 7
    Image.fromarray(ids).save(inst)
    frames = [
        Frame(name=f.name, camera=f.camera, image_path=f.image_path, depth_path=depth, instance_path=inst)
        for f in frames
    ]
    scene = Scene(root=tmp_path, frames=frames, splits={"train": [str(i) for i in range(8)], "test": ["8", "9"]})
    sub, rec = training_scene(scene, ViewPolicy(max_views=4, max_test_views=1, max_size=100))
    assert [len(sub.split("train")), len(sub.split("test"))] == [4, 1]
    assert rec["train_size"] == [100, 50] and rec["native_size"] == [200, 100] and rec["frames"] == 10
    f = sub.split("train")[0]
    native = scene.frame(f.name)
    assert f.size == (100, 50) and f.camera.fx == pytest.approx(native.camera.fx / 2)
    # pixel centres keep their meaning: a point projects to the same place, halved
    pts = np.array([[0.3, -0.1, 2.0]])
    uv_small, _ = f.camera.project(pts)
    uv_big, _ = native.camera.project(pts)
    np.testing.assert_allclose((uv_small + 0.5) * 2, uv_big + 0.5, atol=1e-9)
    img = f.load_image()
    assert img.shape == (50, 100, 3)
    big = native.load_image().astype(np.float64)
    np.testing.assert_allclose(img, big.reshape(50, 2, 100, 2, 3).mean((1, 3)), atol=1.0)  # area average
    assert f.load_depth().shape == (50, 100) and f.load_instance().shape == (50, 100)
    assert (f.load_instance()[:, :50] == 0).all() and (f.load_instance()[:, 50:] == 7).all()
    same, _ = training_scene(scene, ViewPolicy(max_views=None, max_size=None))
    assert same.frame("0").size == (200, 100) and same.frame("0").load_image().shape == (100, 200, 3)


def test_pixels_within_the_budget():
    # 1000 covered pixels, 10 weights each
    contrib = types.SimpleNamespace(pixel=torch.arange(1000).repeat_interleave(10), nnz=10_000)
    per_pixel = 10 * BYTES_PER_WEIGHT + BYTES_PER_PIXEL
    assert pixels_within(1e9, contrib, None) is None  # everything fits: no sampling
    assert pixels_within(1e9, contrib, 300) == 300  # an explicit cap still applies
    big = types.SimpleNamespace(pixel=torch.arange(100_000).repeat_interleave(10), nnz=1_000_000)
    assert pixels_within(10_000 * per_pixel, big, None) == 10_000
    assert pixels_within(10_000 * per_pixel, big, 5_000) == 5_000
    with pytest.raises(ConfigError, match="--max-views|max-views"):
        pixels_within(100 * per_pixel, big, None)


def test_stage1_stays_within_the_memory_budget(trained_run, tabletop_dir, tmp_path):
    """The same views with a budget a third of what they need: every view is sampled to fit."""
    import json
    import shutil
    from pathlib import Path

    from cos3d.pipeline.runner import train
    from cos3d.pipeline.train_config import TrainConfig

    scene = tmp_path / "scene"
    shutil.copytree(tabletop_dir, scene)
    splits = json.loads((scene / "splits.json").read_text())
    splits["train"] = splits["train"][:3]
    (scene / "splits.json").write_text(json.dumps(splits))
    run = tmp_path / "run"
    common = dict(scene=str(scene), out=run, progress=False, threads=1, iterations=5)
    train(TrainConfig(**common, stage="masks", gaussians=Path(trained_run) / "gaussians.ply"))
    train(TrainConfig(**common, stage="instance"))
    full = json.loads((run / "run.json").read_text())["stages"]["instance"]
    assert full["views_sampled_to_budget"] == 0
    budget = full["weights_mib"] / 3 / 1024  # GiB
    train(TrainConfig(**common, stage="instance", restart=True, memory_budget_gib=budget))
    st = json.loads((run / "run.json").read_text())["stages"]["instance"]
    assert st["views_sampled_to_budget"] == st["n_views"] == 3
    assert st["weights_mib"] <= budget * 1024 * 1.05 and st["weights_mib"] > budget * 1024 * 0.5
    assert st["peak_rss_gib"] > 0
