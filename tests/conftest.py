"""Session fixtures shared across the suite.

Expensive artefacts (a tabletop scene, a trained run) are built once per test session in a temporary
folder and shared read-only; tests that modify a run copy it first.
"""

from __future__ import annotations

import os

import pytest

# Keep the suite deterministic and within the 2-core budget.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# One torch thread per training run: on 2 shared cores two threads measured 2-8x slower.
os.environ.setdefault("COS3D_THREADS", "1")

TEST_TABLETOP = dict(seed=0, views=20, width=160, height=120)
"""The tabletop every end-to-end test shares (small: CPU, 2 cores). Seed 0 holds a same-kind pair
(two soda cans), two mugs (blue, red coffee) and a robot with named parts."""


@pytest.fixture
def one_torch_thread():
    """Run a test on one torch thread, then restore the setting: on the 2 shared cores OpenMP's
    second thread measured 2-10x slower for these small tensors."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="session")
def tabletop_dir(tmp_path_factory):
    """A small tabletop scene in the ScanNet layout (cos3d.tabletop)."""
    from cos3d.tabletop import TabletopConfig, generate_tabletop

    out = tmp_path_factory.mktemp("tabletop") / "scene"
    generate_tabletop(TabletopConfig(out=out, **TEST_TABLETOP))
    return out


@pytest.fixture(scope="session")
def trained_run(tabletop_dir, tmp_path_factory):
    """The tabletop trained end to end with the offline (oracle-2D) providers, fast settings."""
    from cos3d.core.config import apply_config
    from cos3d.pipeline.runner import train
    from cos3d.pipeline.train_config import TrainConfig

    out = tmp_path_factory.mktemp("run") / "run"
    train(apply_config(TrainConfig(scene=str(tabletop_dir), out=out), "fast"), config_files=("fast",))
    return out
