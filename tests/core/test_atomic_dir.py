"""cos3d.core.atomic.atomic_dir: folders built aside and moved in whole (tabletop scenes, .sens exports)."""

from __future__ import annotations

import os
import stat

import pytest

from cos3d.core.atomic import atomic_dir
from cos3d.core.errors import Cos3dError


def test_folder_appears_whole_or_not_at_all(tmp_path):
    out = tmp_path / "scene"
    with pytest.raises(KeyboardInterrupt):
        with atomic_dir(out) as tmp:
            (tmp / "a.txt").write_text("half")
            raise KeyboardInterrupt
    assert not out.exists() and list(tmp_path.iterdir()) == []  # no sibling left either
    with atomic_dir(out) as tmp:
        (tmp / "a.txt").write_text("done")
        assert not out.exists()
    assert (out / "a.txt").read_text() == "done"
    mode = stat.S_IMODE(out.stat().st_mode)
    umask = os.umask(0)
    os.umask(umask)
    assert mode == 0o777 & ~umask  # not mkdtemp's private 0700


def test_existing_output_needs_force_and_is_replaced_whole(tmp_path):
    out = tmp_path / "scene"
    out.mkdir()
    (out / "old.txt").write_text("old")
    with pytest.raises(Cos3dError, match="--force"):
        with atomic_dir(out):
            pass
    with atomic_dir(out, force=True) as tmp:
        (tmp / "new.txt").write_text("new")
    assert sorted(p.name for p in out.iterdir()) == ["new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scene"]
    (tmp_path / "file").write_text("x")
    with pytest.raises(Cos3dError, match="not a folder"):
        with atomic_dir(tmp_path / "file", force=True):
            pass


def test_siblings_of_killed_runs_are_cleaned(tmp_path):
    dead = tmp_path / ".scene.tmp-999999999-abc"  # no such process
    dead.mkdir()
    alive = tmp_path / f".scene.tmp-{os.getpid()}-xyz"  # this process: kept
    alive.mkdir()
    with atomic_dir(tmp_path / "scene"):
        pass
    assert not dead.exists() and alive.exists()
