"""`cos3d prepare images|video`: poses by structure-from-motion, honest failures, resume, train's implicit use.

The end-to-end tests render a small tabletop on a handheld sweep, encode it as a video (or keep the
photos), throw its poses away and compare what structure-from-motion finds with them.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cos3d.capture import CaptureConfig, prepare_capture, scene_for_training
from cos3d.capture import sfm as sfm_mod
from cos3d.capture.align import pose_errors
from cos3d.capture.inputs import choose_frames, sharpness, stage_photos, write_video
from cos3d.cli import entrypoint

pytest.importorskip("pycolmap")
pytest.importorskip("av")

SWEEP = dict(seed=3, views=24, width=320, height=240, trajectory="scan")


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """A 24-frame handheld tabletop sweep (ScanNet layout, true poses) and the same frames as an MP4."""
    from cos3d.tabletop import TabletopConfig, generate_tabletop

    root = tmp_path_factory.mktemp("capture")
    scene = generate_tabletop(TabletopConfig(out=root / "truth", **SWEEP))
    frames = sorted((scene / "color").glob("*.png"), key=lambda p: int(p.stem))
    photos = root / "photos"
    photos.mkdir()
    for p in frames:
        shutil.copyfile(p, photos / f"IMG_{int(p.stem):04d}.png")
    video = write_video(frames, root / "walk.mp4")
    return scene, photos, video


def _errors(out: Path, truth: Path, by_index: bool):
    from cos3d.readers import load_scene

    cap, true = load_scene(out), load_scene(truth)
    meta = json.loads((out / "capture.json").read_text())
    est, ref = [], []
    for f in cap.frames:
        i = meta["frame_source_index"][f.image_path.name] if by_index else int(f.name.split("_")[1])
        est.append(f.camera.c2w)
        ref.append(true.frame(str(i)).camera.c2w)
    return pose_errors(np.array(est), np.array(ref)), meta, cap


def _no_leftovers(out: Path) -> None:
    assert not out.exists()
    assert [p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")] == []


# ------------------------------------------------------------------------------------------ units


def test_choose_frames_takes_the_sharpest_of_each_stretch():
    scores = np.ones(100)
    scores[[3, 27, 40, 74, 99]] = 5.0
    picked = choose_frames(scores, 5)
    assert picked == [3, 27, 40, 74, 99]
    assert choose_frames(np.ones(4), 10) == [0, 1, 2, 3]
    assert len(choose_frames(np.random.default_rng(0).random(1000), 37)) == 37


def test_loop_pairs_tie_the_ends_of_a_sequence_together():
    names = [f"f{i:02d}" for i in range(10)]
    pairs = sfm_mod.loop_pairs(names, 4)  # every 3rd frame: f00, f03, f06, f09
    assert pairs == [("f00", "f03"), ("f00", "f06"), ("f00", "f09"), ("f03", "f06"), ("f03", "f09"), ("f06", "f09")]
    eleven = sfm_mod.loop_pairs(names + ["f10"], 4)  # the last frame replaces the last keyframe: still 4
    assert {a for p in eleven for a in p} == {"f00", "f03", "f06", "f10"} and len(eleven) == 6
    assert sfm_mod.loop_pairs(names, 0) == [] and sfm_mod.loop_pairs(names[:2], 30) == []
    assert len(sfm_mod.loop_pairs([f"{i}" for i in range(150)], 30)) == 30 * 29 // 2
    with pytest.raises(Exception, match="loop_keyframes"):
        CaptureConfig(loop_keyframes=-1).validate()


def test_sharpness_prefers_a_sharp_image_to_its_blurred_copy():
    from scipy.ndimage import uniform_filter

    img = (np.random.default_rng(0).random((60, 80)) > 0.5).astype(np.float32) * 255
    assert sharpness(img) > 10 * sharpness(uniform_filter(img, 5))


def test_normalising_similarity_puts_up_on_z_and_unit_distance():
    rng = np.random.default_rng(1)
    R_true = np.linalg.qr(rng.normal(size=(3, 3)))[0]
    R_true *= np.linalg.det(R_true)
    up = R_true @ np.array([0.0, 0.0, 1.0])
    table = np.c_[rng.uniform(-1, 1, (300, 2)), np.zeros(300)]
    pts = (3.0 * table) @ R_true.T + [5, -2, 1]
    centres = (3.0 * np.c_[np.cos(np.linspace(0, 3, 12)), np.sin(np.linspace(0, 3, 12)), np.full(12, 1.0)]) \
        @ R_true.T + [5, -2, 1]
    tilted = np.array([np.cos(a) * np.array([1, 0, 0]) * 0.4 + np.array([0, 0, 1]) for a in np.linspace(0, 3, 12)])
    ups = tilted @ R_true.T  # cameras' ups lean 20° the same way: their mean is not gravity
    s, R, t, how = sfm_mod.normalising_similarity(centres, ups, pts)
    assert how == "plane"
    np.testing.assert_allclose(R @ up, [0, 0, 1], atol=1e-6)
    moved = s * centres @ R.T + t
    assert np.median(np.linalg.norm(moved, axis=1)) == pytest.approx(1.0, rel=0.05)


def test_exif_rotation_is_applied_when_staging(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for i in range(5):
        im = Image.new("RGB", (40, 20), (i, 0, 0))
        exif = im.getexif()
        exif[0x0112] = 6  # rotate 90° clockwise to display
        im.save(src / f"{i}.jpg", exif=exif)
    staged = stage_photos(sorted(src.iterdir()), tmp_path / "out", max_side=1600)
    assert staged.size == (20, 40) and staged.rotated == 5


# ------------------------------------------------------------------------------------- failures


def _run_cli(argv, capsys):
    rc = entrypoint(argv)
    err = capsys.readouterr().err.strip().splitlines()
    return rc, err[-1] if err else ""


def test_too_few_photos(tmp_path, capsys):
    src = tmp_path / "few"
    src.mkdir()
    for i in range(3):
        Image.new("RGB", (32, 32)).save(src / f"{i}.png")
    rc, line = _run_cli(["prepare", "images", str(src), "--out", str(tmp_path / "s"), "--no-progress"], capsys)
    assert rc == 2 and "found 3 photo(s)" in line and "at least 5" in line
    _no_leftovers(tmp_path / "s")


def test_heic_is_refused_with_advice(tmp_path, capsys):
    src = tmp_path / "heic"
    src.mkdir()
    for i in range(6):
        (src / f"IMG_{i}.HEIC").write_bytes(b"\0" * 10)
    rc, line = _run_cli(["prepare", "images", str(src), "--out", str(tmp_path / "s")], capsys)
    assert rc == 2 and "HEIC" in line and "JPEG" in line
    _no_leftovers(tmp_path / "s")


def test_mixed_sizes_are_refused(tmp_path, capsys):
    src = tmp_path / "mixed"
    src.mkdir()
    for i in range(6):
        Image.new("RGB", (64, 48) if i < 4 else (48, 64)).save(src / f"{i}.png")
    rc, line = _run_cli(["prepare", "images", str(src), "--out", str(tmp_path / "s"), "--no-progress"], capsys)
    assert rc == 2 and "4 are 64x48, 2 are 48x64" in line
    _no_leftovers(tmp_path / "s")


def test_still_video_is_refused(tmp_path, capsys):
    frame = tmp_path / "f.png"
    Image.fromarray((np.random.default_rng(0).random((64, 96, 3)) * 255).astype(np.uint8)).save(frame)
    video = write_video([frame] * 20, tmp_path / "still.mp4")
    rc, line = _run_cli(["prepare", "video", str(video), "--out", str(tmp_path / "s"), "--no-progress"], capsys)
    assert rc == 2 and "does not move" in line
    _no_leftovers(tmp_path / "s")


def test_not_a_video(tmp_path, capsys):
    bad = tmp_path / "clip.mp4"
    bad.write_bytes(b"not a video at all" * 100)
    rc, line = _run_cli(["prepare", "video", str(bad), "--out", str(tmp_path / "s")], capsys)
    assert rc == 2 and "cannot open the video" in line
    _no_leftovers(tmp_path / "s")


def test_photos_that_do_not_overlap(tmp_path, capsys):
    src = tmp_path / "noise"
    src.mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):  # unrelated random textures: plenty of features, no shared ones
        Image.fromarray((rng.random((120, 160, 3)) * 255).astype(np.uint8)).resize((320, 240)).save(src / f"{i}.png")
    rc, line = _run_cli(["prepare", "images", str(src), "--out", str(tmp_path / "s"), "--no-progress",
                         "--threads", "1"], capsys)
    assert rc == 2 and "do not overlap" in line
    _no_leftovers(tmp_path / "s")


def test_partial_registration_names_the_counts(sweep, tmp_path, capsys):
    _, photos, _ = sweep
    src = tmp_path / "partial"
    src.mkdir()
    for p in sorted(photos.iterdir())[:16]:
        shutil.copyfile(p, src / p.name)
    rng = np.random.default_rng(0)
    for i in range(6):  # 6 stray shots of something else among 16 good ones
        Image.fromarray((rng.random((120, 160, 3)) * 255).astype(np.uint8)).resize((320, 240)).save(src / f"ZZ_{i}.png")
    rc, line = _run_cli(["prepare", "images", str(src), "--out", str(tmp_path / "s"), "--no-progress",
                         "--threads", "1", "--min-registered", "0.9"], capsys)
    assert rc == 2, line
    assert "of the 22 frames registered (need 20" in line and "--min-registered" in line
    _no_leftovers(tmp_path / "s")


# ------------------------------------------------------------------------------------ end to end


def test_video_to_scene_matches_true_poses_and_resumes(sweep, tmp_path, monkeypatch):
    truth, _, video = sweep
    out = tmp_path / "scene"
    cfg = CaptureConfig(source=video, out=out, kind="video", threads=1, progress=False, camera_model="SIMPLE_PINHOLE")

    def killed(*a, **k):  # the run is interrupted during undistortion: mapping is finished
        raise KeyboardInterrupt

    monkeypatch.setattr(sfm_mod, "undistort", killed)
    with pytest.raises(KeyboardInterrupt):
        prepare_capture(cfg)
    assert not out.exists() and (tmp_path / ".scene.sfm-work" / "state.json").is_file()
    monkeypatch.undo()

    result = prepare_capture(cfg)
    assert result.resumed == ("frames", "features", "matches", "mapping")
    assert not (tmp_path / ".scene.sfm-work").exists()
    assert result.frames == 24 and result.registered >= 21
    err, meta, scene = _errors(out, truth, by_index=True)
    summary = err.summary()
    assert summary["rot_err_deg_median"] < 1.0, summary
    assert summary["trans_err_median_pct_extent"] < 2.0, summary
    # +z is up: the true up (tabletop world +z) seen through the alignment
    z_in_truth = err.T_true_est[:3, 2] / np.linalg.norm(err.T_true_est[:3, 2])
    assert z_in_truth[2] > np.cos(np.radians(5)), z_in_truth
    assert meta["kind"] == "video" and meta["matcher"] == "exhaustive" and meta["scale"] > 0
    assert scene.points is not None and len(scene.points) > 100
    assert np.all([f.camera.dist == 0 for f in scene.frames])
    # ground truth carried over by frame (the oracle-2D protocol on SfM poses) is read with the frames
    from cos3d.readers import load_scene
    from cos3d.readers.writers import save_id_map

    assert not scene.has_instances
    for what in ("instance", "part"):
        for f in scene.frames:
            save_id_map(out / what / f"{f.name}.png", np.full((240, 320), 7, np.uint16))
    again = load_scene(out)
    assert again.has_instances and int(again.frames[0].load_part()[5, 5]) == 7


def test_photos_exhaustive(sweep, tmp_path):
    truth, photos, _ = sweep
    r = prepare_capture(CaptureConfig(source=photos, out=tmp_path / "p", threads=1, progress=False))
    assert r.registered == 24
    err, meta, _ = _errors(tmp_path / "p", truth, by_index=False)
    assert meta["matcher"] == "exhaustive" and meta["camera_model"] == "SIMPLE_RADIAL"
    assert err.summary()["rot_err_deg_median"] < 1.5, err.summary()


def test_train_poses_a_photo_folder_first(tmp_path, monkeypatch):
    from cos3d.pipeline.train_config import TrainConfig

    photos = tmp_path / "shots"
    photos.mkdir()
    for i in range(6):
        Image.new("RGB", (32, 32)).save(photos / f"{i}.jpg")
    calls = []

    def fake_prepare(cfg):
        calls.append(cfg)
        cfg.out.mkdir()
        (cfg.out / "capture.json").write_text(json.dumps({"source": str(cfg.source.resolve())}))

    monkeypatch.setattr("cos3d.capture.prepare_capture", fake_prepare)
    cfg = scene_for_training(TrainConfig(scene=str(photos)))
    assert cfg.scene == str(tmp_path / "shots_scene") and calls[0].kind == "images"
    again = scene_for_training(TrainConfig(scene="", images=photos))
    assert again.scene == cfg.scene and len(calls) == 1  # posed once, reused
    plain = TrainConfig(scene=str(tmp_path / "shots_scene"))
    assert scene_for_training(plain) is plain


def test_train_video_poses_then_starts_stage0_from_sfm_points(sweep, tmp_path, capsys):
    _, _, video = sweep
    run, posed = tmp_path / "run", tmp_path / "posed"
    rc = entrypoint(["train", "--video", str(video), "--capture-out", str(posed), "--out", str(run), "--stage",
                     "recon", "--recon.iterations", "2", "--recon.sparse-iterations", "3", "--threads", "1",
                     "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 0, err
    assert "no camera poses; posing it by structure-from-motion" in err
    rec = json.loads((run / "run.json").read_text())
    cap = json.loads((posed / "capture.json").read_text())
    assert rec["capture"]["scale"] == pytest.approx(cap["scale"]) and "not metres" in rec["capture"]["units"]
    assert rec["config"]["scene"] == str(posed)
    init = rec["stages"]["recon"]["metrics"]["init"]  # stage 0 started from the SfM points: there is no depth
    assert init["mode"] == "points" and init["points"] == cap["points"]
    # no depth: the densifying sparse-start schedule ran (3 steps here), recorded with the run
    assert init["sparse_schedule"]["iterations"] == 3 and rec["stages"]["recon"]["metrics"]["iterations"] == 3
