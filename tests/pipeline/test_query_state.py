"""The refinement index and no-target calibration saved in the run folder (query_state.pt) and reused."""

from __future__ import annotations

import os
import shutil

import pytest
import torch

import cos3d
from cos3d.pipeline.run_folder import RunFolder

PROMPTS = ("blue mug", "soda can", "elephant", "bowl")


@pytest.fixture()
def run_copy(trained_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    return run


def test_training_saves_the_state_and_a_new_process_adopts_it(run_copy):
    assert RunFolder(run_copy).query_state.is_file()  # written at the end of training
    saved = cos3d.load(run_copy, device="cpu")
    assert saved.engine is not None and saved.query_state_loaded
    (run_copy / "query_state.pt").unlink()
    rebuilt = cos3d.load(run_copy, device="cpu")
    assert rebuilt.engine is not None and not rebuilt.query_state_loaded
    for p in PROMPTS:  # the same answers from the saved state as from a fresh build
        a, b = saved.query(text=p), rebuilt.query(text=p)
        assert torch.equal(a.selected, b.selected) and a.no_target == b.no_target, p
    lv = saved.engine.level
    assert saved.engine.calibration_for(lv).threshold == rebuilt.engine.calibration_for(lv).threshold
    assert (saved.engine.index(lv).order == rebuilt.engine.index(lv).order).all()


def test_stale_corrupt_or_foreign_state_is_rebuilt_not_trusted(run_copy):
    folder = RunFolder(run_copy)
    state = torch.load(folder.query_state, weights_only=True)
    # older than fields.pt: ignored
    st = folder.fields.stat()
    os.utime(folder.query_state, ns=(st.st_atime_ns, st.st_mtime_ns - 10**9))
    assert not _loaded(run_copy)
    # garbage: ignored
    folder.query_state.write_bytes(b"\x00not a checkpoint")
    assert not _loaded(run_copy)
    # another engine's state (other settings): the key differs, ignored
    state["key"] = "0" * 16
    folder.write_query_state(state)
    assert not _loaded(run_copy)


def _loaded(run) -> bool:
    ts = cos3d.load(run, device="cpu")
    assert ts.engine is not None
    return ts.query_state_loaded
