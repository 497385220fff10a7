"""Stage 0 on scenes without depth that start from sparse (structure-from-motion) points: the densifying
sparse-start schedule, and that scenes with depth are left as they are."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from cos3d.core.errors import Cos3dError
from cos3d.pipeline.recon import ReconConfig, reconstruct, sparse_schedule

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def scenes(tabletop_dir):
    from cos3d.readers import load_scene

    scene = load_scene(tabletop_dir)
    no_depth = dataclasses.replace(scene, frames=[dataclasses.replace(f, depth_path=None) for f in scene.frames])
    lo, hi = np.array([-0.3, -0.3, 0.0]), np.array([0.3, 0.3, 0.2])
    pts = (lo + np.random.default_rng(0).random((300, 3)) * (hi - lo)).astype(np.float32)
    return scene, dataclasses.replace(no_depth, points=pts, point_colors=np.full((300, 3), 128, np.uint8))


def test_sparse_schedule_only_for_sparse_starts_without_depth(scenes):
    depth, sparse = scenes
    fast = ReconConfig.fast()
    assert not fast.densify and fast.iterations == 300
    same, info = sparse_schedule(depth, fast)  # a scene with depth: the preset as it is
    assert same is fast and info is None
    cfg, info = sparse_schedule(sparse, fast)
    assert (cfg.densify, cfg.iterations, cfg.refine_start, cfg.refine_every, cfg.refine_stop) == (True, 1000, 100, 100, 800)
    assert info == {"why": "no depth: densifying from the sparse points", "iterations": 1000, "refine_start": 100,
                    "refine_every": 100, "refine_stop": 800}
    assert cfg.init_max_points == fast.init_max_points and cfg.lr_sh0 == fast.lr_sh0  # the rest of the preset kept
    longer, _ = sparse_schedule(sparse, dataclasses.replace(fast, iterations=2000))
    assert longer.iterations == 2000 and longer.refine_stop == 1600
    for keep in (dataclasses.replace(fast, sparse_densify=False), dataclasses.replace(fast, densify=True),
                 dataclasses.replace(fast, init="random")):
        assert sparse_schedule(sparse, keep) == (keep, None)
    with pytest.raises(Cos3dError, match="sparse_refine_every"):
        ReconConfig(sparse_refine_every=0).validate()


def test_reconstruct_densifies_a_sparse_start(scenes):
    _, sparse = scenes
    few = sparse.frames[:4]  # 3 train views + 1 test view keep it to seconds
    sparse = dataclasses.replace(sparse, frames=few, splits={"train": [f.name for f in few[:3]], "test": [few[3].name]})
    cfg = ReconConfig.fast(iterations=2, sparse_iterations=10, sparse_refine_every=2, grow_grad2d=1e-12, progress=False,
                           checkpoint_every=0)
    _, metrics = reconstruct(sparse, cfg)
    assert metrics["iterations"] == 10 and metrics["init"]["mode"] == "points" and metrics["init"]["points"] == 300
    assert metrics["init"]["sparse_schedule"]["refine_every"] == 2
    assert metrics["n_gaussians"] > 300  # densification ran (every Gaussian with a gradient grows)
