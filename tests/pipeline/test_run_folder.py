"""A run folder is movable and its files keep their meaning (issue 24): the scene is recorded relative to the
run and absolute; fields.pt is one typed class for its writer and its reader; a run.json of the previous version
(no relative scene) still loads."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

import cos3d
from cos3d.core.errors import Cos3dError
from cos3d.pipeline.fields_file import FieldsFile, LevelRecord
from cos3d.pipeline.run_folder import RunFolder


def _copy(trained_run, tabletop_dir, root):
    """The run and its scene copied under ``root`` side by side (as a user moves a project)."""
    run, scene = root / "runs" / "r", root / "scenes" / "s"
    shutil.copytree(trained_run, run)
    shutil.copytree(tabletop_dir, scene, ignore=shutil.ignore_patterns("cos3d_masks"))
    return run, scene


def test_a_run_moved_with_its_scene_finds_it(trained_run, tabletop_dir, tmp_path):
    rec = json.loads((trained_run / "run.json").read_text())
    assert rec["scene"] == str(tabletop_dir.resolve()) and not rec["scene_rel"].startswith("/")
    a, scene_a = _copy(trained_run, tabletop_dir, tmp_path / "a")
    data = json.loads((a / "run.json").read_text())
    data["scene_rel"] = "../../scenes/s"  # as train records it for this layout
    data["scene"] = str(tmp_path / "gone")  # the machine it was trained on
    (a / "run.json").write_text(json.dumps(data))
    ts = cos3d.load(a, device="cpu", segmenter="none")
    assert ts.scene_path.resolve() == scene_a.resolve()
    assert len(ts.scene.frames) == len(cos3d.load(trained_run, device="cpu", segmenter="none").scene.frames)
    shutil.rmtree(scene_a)
    with pytest.raises(Cos3dError) as ei:
        _ = cos3d.load(a, device="cpu", segmenter="none").scene
    msg = str(ei.value)
    assert "\n" not in msg and str(scene_a) in msg and str(tmp_path / "gone") in msg  # both paths it tried


def test_a_run_json_of_the_previous_version_loads(trained_run, tmp_path):
    """Before issue 24 run.json had only the absolute scene; fields.pt was the same dict (no class)."""
    old = tmp_path / "old"
    shutil.copytree(trained_run, old)
    data = json.loads((old / "run.json").read_text())
    data.pop("scene_rel")
    (old / "run.json").write_text(json.dumps(data))
    ts = cos3d.load(old, device="cpu", segmenter="none")
    assert ts.scene_path == Path(data["scene"])  # the absolute path, as that version recorded it
    new = cos3d.load(trained_run, device="cpu", segmenter="none")
    assert torch.equal(ts.fields["l"].language, new.fields["l"].language)


def test_fields_file_round_trips_and_refuses_what_it_cannot_read(trained_run, tmp_path):
    ff = RunFolder(trained_run).read_fields()
    assert set(ff.levels) == {"l", "s"} and all(r.has_language for r in ff.levels.values())
    lv = ff.levels["l"]
    n = ff.n_gaussians
    assert lv.instance.shape == (n, ff.instance_dim) and lv.language.shape == (n, ff.language_dim)
    assert lv.anchors.shape[0] == lv.targets.shape[0] == len(lv.anchor_view) == lv.anchor_mask.shape[0]
    back = FieldsFile.from_dict(ff.to_dict())
    assert back.header() == ff.header() and set(back.levels) == set(ff.levels)
    for k, rec in ff.levels.items():
        for name in ("instance", "language", "anchors", "targets", "anchor_mask"):
            assert torch.equal(getattr(back.levels[k], name), getattr(rec, name)), (k, name)
        assert back.levels[k].dbar == rec.dbar and back.levels[k].anchor_view == rec.anchor_view
    # stage 1 alone (no language yet) is a valid file; load() refuses it with one line saying what to run
    folder = RunFolder(tmp_path / "r")
    shutil.copytree(trained_run, folder.root)
    folder.write_fields(FieldsFile(n_gaussians=n, instance_dim=ff.instance_dim,
                                   levels={"l": LevelRecord(instance=lv.instance)}))
    with pytest.raises(Cos3dError, match="no language field.*--resume"):
        cos3d.load(folder.root, device="cpu")
    for bad, why in (({"format": "other"}, "not a cos3d fields file"),
                     ({**ff.to_dict(), "version": 99}, "version 99"),
                     ({**ff.to_dict(), "levels": {"l": {"instance": lv.instance, "extra": 1}}}, "unknown entries")):
        with pytest.raises(ValueError, match=why):
            FieldsFile.from_dict(bad)
