"""Scene readers (ScanNet, COLMAP, transforms.json) and the Camera/Frame/Scene model.

Every fixture is written into ``tmp_path`` by :mod:`cos3d.readers.writers`; hand-written files check
the conventions independently of the writers (a shared mistake in a writer and a reader would
otherwise round-trip unnoticed).
"""

from __future__ import annotations

import json
import logging
import math
import struct

import numpy as np
import pytest

from cos3d.core.errors import Cos3dError, SceneFormatError
from cos3d.readers import detect_format, load_scene, resolve_scene_path
from cos3d.readers.colmap import ColmapCamera, read_colmap, rotmat_to_qvec
from cos3d.readers.nerfstudio import read_nerfstudio
from cos3d.readers.scannet import read_scannet
from cos3d.readers.writers import (
    colmap_image,
    save_image,
    write_cameras_bin,
    write_colmap,
    write_images_bin,
    write_scannet,
    write_scannet_frame,
    write_transforms_json,
)
from cos3d.core.rotations import quat_to_rotmat
from cos3d.data.scene import Camera, Frame, PartInfo, Scene

W, H = 40, 30


def look_at(eye, target=(0.0, 0.0, 0.0), up=(0.0, 0.0, 1.0)) -> np.ndarray:
    """[4, 4] OpenCV camera-to-world at ``eye`` looking at ``target``."""
    eye, target, up = (np.asarray(v, dtype=np.float64) for v in (eye, target, up))
    z = target - eye
    z /= np.linalg.norm(z)
    x = np.cross(z, up)
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    c2w = np.eye(4)
    c2w[:3, :3] = np.stack([x, y, z], 1)
    c2w[:3, 3] = eye
    return c2w


def rig(n: int = 5, K: np.ndarray | None = None, dist=None, w: int = W, h: int = H) -> list[Camera]:
    """``n`` cameras on a ring looking at the origin, sharing ``K``."""
    if K is None:
        K = np.array([[45.0, 0.0, 19.25], [0.0, 47.5, 14.75], [0.0, 0.0, 1.0]])
    cams = []
    for i in range(n):
        a = 2 * math.pi * i / n
        eye = (2.0 * math.cos(a), 2.0 * math.sin(a), 0.7 + 0.1 * i)
        cams.append(Camera(K=K, c2w=look_at(eye), width=w, height=h, dist=np.zeros(4) if dist is None else dist))
    return cams


def assert_same_cameras(expected: list[Camera], got: list[Camera]) -> None:
    assert len(expected) == len(got)
    for a, b in zip(expected, got):
        np.testing.assert_allclose(b.K, a.K, atol=1e-6)
        np.testing.assert_allclose(b.c2w, a.c2w, atol=1e-6)
        np.testing.assert_allclose(b.dist, a.dist, atol=1e-9)
        assert (b.width, b.height) == (a.width, a.height)


def error_of(fn, *args, **kwargs) -> str:
    """The message of the SceneFormatError ``fn`` raises (asserted one line)."""
    with pytest.raises(SceneFormatError) as ei:
        fn(*args, **kwargs)
    msg = str(ei.value)
    assert "\n" not in msg
    assert isinstance(ei.value, Cos3dError)
    return msg


# ---------------------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("rows", [3, 4])
def test_scannet_round_trip(tmp_path, rows):
    cams = rig()
    labels = {1: ["red mug", "mug", "cup"], 2: "bowl"}
    parts = {11: PartInfo(names=["handle"], parent=1)}
    write_scannet(tmp_path, cams, labels=labels, parts=parts, splits={"train": ["0", "1", "2"], "test": [3, 4]},
                  intrinsic_rows=rows)
    scene = load_scene(tmp_path)
    assert scene.source == "scannet" and not scene.notes
    assert_same_cameras(cams, scene.cameras)
    assert [f.name for f in scene.frames] == ["0", "1", "2", "3", "4"]
    assert scene.labels == {1: ["red mug", "mug", "cup"], 2: ["bowl"]}
    assert scene.parts == {11: PartInfo(names=["handle"], parent=1)}
    assert [f.name for f in scene.split("test")] == ["3", "4"]
    assert scene.frames[0].load_image().shape == (H, W, 3)
    assert scene.frames[0].load_depth() is None and not scene.has_depth


def test_scannet_frames_sort_numerically_and_load_ids(tmp_path):
    cams = rig(3)
    ids = np.zeros((H, W), dtype=np.int64)
    ids[5:10, 5:20] = 7
    ids[20:, :] = 300
    write_scannet(tmp_path, cams, names=["10", "2", "1"], instances=[ids] * 3, part_maps=[ids * 2] * 3,
                  image_ext=".jpg")
    scene = read_scannet(tmp_path)
    assert [f.name for f in scene.frames] == ["1", "2", "10"]
    assert_same_cameras([cams[2], cams[1], cams[0]], scene.cameras)
    np.testing.assert_array_equal(scene.frame("10").load_instance(), ids)
    np.testing.assert_array_equal(scene.frame("10").load_part(), ids * 2)
    assert scene.has_instances


MODELS = ["PINHOLE", "SIMPLE_PINHOLE", "SIMPLE_RADIAL", "RADIAL", "OPENCV"]


@pytest.mark.parametrize("binary", [True, False], ids=["bin", "txt"])
@pytest.mark.parametrize("model", MODELS)
def test_colmap_round_trip(tmp_path, model, binary):
    K = np.array([[45.0, 0.0, 19.25], [0.0, 45.0 if "SIMPLE" in model or model == "RADIAL" else 47.5, 14.75],
                  [0.0, 0.0, 1.0]])
    dist = {"SIMPLE_RADIAL": [0.01, 0, 0, 0], "RADIAL": [0.01, -0.002, 0, 0],
            "OPENCV": [0.01, -0.002, 0.001, 0.0005]}.get(model, [0, 0, 0, 0])
    cams = rig(4, K=K, dist=np.array(dist, dtype=np.float64))
    pts = np.random.default_rng(0).normal(size=(6, 3))
    rgb = np.arange(18, dtype=np.uint8).reshape(6, 3)
    write_colmap(tmp_path, cams, binary=binary, model=model, points=pts, point_colors=rgb)
    ext = ".bin" if binary else ".txt"
    assert (tmp_path / "sparse" / "0" / f"cameras{ext}").is_file()
    scene = load_scene(tmp_path)
    assert scene.source == "colmap"
    assert_same_cameras(cams, scene.cameras)
    np.testing.assert_allclose(scene.points, pts, atol=1e-6)
    np.testing.assert_array_equal(scene.point_colors, rgb)
    assert any("distortion" in n for n in scene.notes) == (model in ("SIMPLE_RADIAL", "RADIAL", "OPENCV"))


def test_colmap_cameras_differ_and_sparse_without_0(tmp_path):
    cams = rig(3)
    cams[1] = Camera(K=np.diag([60.0, 60.0, 1.0]) + np.array([[0, 0, 20.0], [0, 0, 15.0], [0, 0, 0]]),
                     c2w=cams[1].c2w, width=W, height=H)
    write_colmap(tmp_path, cams, names=["b", "a", "c"], sparse_subdir="sparse")
    scene = read_colmap(tmp_path)
    assert [f.name for f in scene.frames] == ["a", "b", "c"]  # sorted by image name
    assert_same_cameras([cams[1], cams[0], cams[2]], scene.cameras)
    assert scene.points is None


def test_colmap_text_with_observations(tmp_path):
    """images.txt as COLMAP writes it: a populated POINTS2D line after each image, some left empty."""
    cams = rig(3)
    write_colmap(tmp_path, cams, binary=False)
    img_txt = tmp_path / "sparse/0/images.txt"
    lines = img_txt.read_text().splitlines()
    heads = [i for i, line in enumerate(lines) if line and not line.startswith("#")]
    lines[heads[0] + 1] = "10.5 3.25 1 11.0 4.0 -1"
    lines[heads[2] + 1] = "1.0 2.0 3"
    img_txt.write_text("\n".join(lines) + "\n\n")
    assert_same_cameras(cams, read_colmap(tmp_path).cameras)


def test_colmap_quaternion_helpers():
    rng = np.random.default_rng(1)
    for _ in range(50):
        q = rng.normal(size=4)
        q /= np.linalg.norm(q)
        q = q if q[0] >= 0 else -q
        R = quat_to_rotmat(q)
        np.testing.assert_allclose(R @ R.T, np.eye(3), atol=1e-12)
        np.testing.assert_allclose(rotmat_to_qvec(R), q, atol=1e-10)
    # Rotations of 180 degrees (w = 0) take the other branches.
    for R in (np.diag([1.0, -1.0, -1.0]), np.diag([-1.0, 1.0, -1.0]), np.diag([-1.0, -1.0, 1.0])):
        np.testing.assert_allclose(quat_to_rotmat(rotmat_to_qvec(R)), R, atol=1e-12)


@pytest.mark.parametrize("per_frame", [False, True])
def test_nerfstudio_round_trip(tmp_path, per_frame):
    cams = rig(4)
    if per_frame:
        cams[2] = Camera(K=cams[2].K * [[1.1], [1.1], [1]], c2w=cams[2].c2w, width=W, height=H)
    pts = np.random.default_rng(2).normal(size=(5, 3)).astype(np.float32)
    rgb = np.full((5, 3), 200, np.uint8)
    write_transforms_json(tmp_path, cams, points=pts, point_colors=rgb)
    meta = json.loads((tmp_path / "transforms.json").read_text())
    assert ("fl_x" in meta["frames"][0]) == per_frame
    scene = load_scene(tmp_path)
    assert scene.source == "nerfstudio"
    assert_same_cameras(cams, scene.cameras)
    np.testing.assert_allclose(scene.points, pts, atol=1e-6)
    np.testing.assert_array_equal(scene.point_colors, rgb)
    np.testing.assert_array_equal(scene.transform, np.eye(4))


def test_instant_ngp_camera_angle_and_blender_paths(tmp_path):
    K = np.array([[40.0, 0.0, (W - 1) / 2], [0.0, 40.0, (H - 1) / 2], [0.0, 0.0, 1.0]])
    cams = rig(3, K=K)
    write_transforms_json(tmp_path, cams, instant_ngp=True)
    meta = json.loads((tmp_path / "transforms.json").read_text())
    assert set(meta) == {"camera_angle_x", "frames"}
    for fr in meta["frames"]:  # Blender synthetic: file paths without a suffix
        fr["file_path"] = "./" + fr["file_path"][: -len(".png")]
    (tmp_path / "transforms.json").write_text(json.dumps(meta))
    scene = read_nerfstudio(tmp_path)
    assert_same_cameras(cams, scene.cameras)
    assert scene.frames[0].image_path.name == "0.png"


def test_nerfstudio_applied_transform_and_splits(tmp_path):
    cams = rig(4)
    T = look_at((0.3, -0.2, 0.5), target=(1.0, 2.0, 0.0))  # any rigid transform
    write_transforms_json(tmp_path, cams, applied_transform=T)
    meta = json.loads((tmp_path / "transforms.json").read_text())
    meta["train_filenames"] = ["images/0.png", "images/1.png", "./images/3.png"]
    meta["test_filenames"] = ["images/2.png"]
    (tmp_path / "transforms.json").write_text(json.dumps(meta))
    scene = read_nerfstudio(tmp_path)
    np.testing.assert_allclose(scene.transform, T, atol=1e-12)
    x_orig = np.random.default_rng(3).normal(size=(7, 3))
    x_scene = x_orig @ T[:3, :3].T + T[:3, 3]
    np.testing.assert_allclose(scene.to_original_space(x_scene), x_orig, atol=1e-12)
    assert [f.name for f in scene.split("train")] == ["0", "1", "3"]
    assert [f.name for f in scene.split("test")] == ["2"]


# ------------------------------------------------------------------------------------ one 3D point, every reader


def test_reprojection_agrees_across_readers(tmp_path):
    """One world point lands on the same pixel whichever format carried the rig."""
    cams = rig(5)
    X = np.array([[0.1, -0.2, 0.15], [0.0, 0.0, 0.0]])
    scenes = {
        "scannet": read_scannet(write_scannet(tmp_path / "scannet", cams)),
        "colmap_bin": read_colmap(write_colmap(tmp_path / "colmap_bin", cams)),
        "colmap_txt": read_colmap(write_colmap(tmp_path / "colmap_txt", cams, binary=False)),
        "nerfstudio": read_nerfstudio(write_transforms_json(tmp_path / "ns", cams)),
    }
    for i, cam in enumerate(cams):
        # Independent OpenCV projection from the rig's own K and pose.
        cam_pts = (X - cam.c2w[:3, 3]) @ cam.c2w[:3, :3]
        ref = cam_pts[:, :2] / cam_pts[:, 2:] * [cam.K[0, 0], cam.K[1, 1]] + [cam.K[0, 2], cam.K[1, 2]]
        assert np.all((ref >= 0) & (ref < [W, H])), "the test point must be in view"
        for fmt, scene in scenes.items():
            uv, z = scene.frames[i].camera.project(X)
            np.testing.assert_allclose(uv, ref, atol=1e-6, err_msg=fmt)
            np.testing.assert_allclose(z, cam_pts[:, 2], atol=1e-9, err_msg=fmt)


def test_hand_written_files_follow_each_convention(tmp_path):
    """Files written by hand, not by our writers: the conventions of each format, spelled out."""
    fx, fy = 50.0, 60.0
    # COLMAP: world-to-camera; 90 degrees about z (qvec wxyz), t = (1, 2, 3); principal point with the
    # corner origin, so an image-centred COLMAP cx = W/2 is OpenCV's (W-1)/2.
    root = tmp_path / "colmap"
    pinhole = ColmapCamera(1, "PINHOLE", W, H, np.array([fx, fy, W / 2, H / 2]))
    write_cameras_bin(root / "sparse/0/cameras.bin", [pinhole])
    s = math.sqrt(0.5)
    with open(root / "sparse/0/images.bin", "wb") as f:
        f.write(struct.pack("<Q", 1) + struct.pack("<i7di", 1, s, 0, 0, s, 1.0, 2.0, 3.0, 1) + b"a.png\x00")
        f.write(struct.pack("<Q", 0))
    save_image(root / "images/a.png", np.zeros((H, W, 3), np.uint8))
    cam = read_colmap(root).frames[0].camera
    # X = (1, 0, 0) → R X + t = (0, 1, 0) + (1, 2, 3) = (1, 3, 3)
    uv, z = cam.project(np.array([[1.0, 0.0, 0.0]]))
    np.testing.assert_allclose(uv[0], [fx / 3 + (W - 1) / 2, fy + (H - 1) / 2], atol=1e-9)
    np.testing.assert_allclose(z, [3.0])

    # transforms.json: OpenGL axes. An identity transform_matrix looks down -z with +y up, so a point
    # above the optical axis (world +y) is in the upper half of the image (smaller v).
    root = tmp_path / "ns"
    save_image(root / "im.png", np.zeros((H, W, 3), np.uint8))
    (root / "transforms.json").write_text(json.dumps({
        "fl_x": fx, "fl_y": fy, "cx": W / 2, "cy": H / 2, "w": W, "h": H,
        "frames": [{"file_path": "im.png", "transform_matrix": np.eye(4).tolist()}],
    }))
    cam = read_nerfstudio(root).frames[0].camera
    uv, z = cam.project(np.array([[0.2, 0.1, -2.0]]))
    np.testing.assert_allclose(uv[0], [(W - 1) / 2 + fx * 0.1, (H - 1) / 2 - fy * 0.05], atol=1e-9)
    np.testing.assert_allclose(z, [2.0])

    # ScanNet: OpenCV c2w and K used as written.
    root = tmp_path / "scannet"
    write_scannet_frame(root, "0", np.eye(4), image=np.zeros((H, W, 3), np.uint8))
    (root / "intrinsic").mkdir()
    (root / "intrinsic/intrinsic_color.txt").write_text(f"{fx} 0 20\n0 {fy} 15\n0 0 1\n")
    cam = read_scannet(root).frames[0].camera
    uv, _ = cam.project(np.array([[0.1, 0.2, 1.0]]))
    np.testing.assert_allclose(uv[0], [20 + fx * 0.1, 15 + fy * 0.2], atol=1e-9)


# ----------------------------------------------------------------------------------- ScanNet specifics


def test_scannet_skips_non_finite_poses(tmp_path, caplog):
    cams = rig(5)
    write_scannet(tmp_path, cams, splits={"train": ["0", "1", "3"], "test": ["2", "4"]})
    (tmp_path / "pose" / "2.txt").write_text("\n".join(["-inf -inf -inf -inf"] * 4) + "\n")
    with caplog.at_level(logging.WARNING, logger="cos3d"):
        scene = read_scannet(tmp_path)
    assert [f.name for f in scene.frames] == ["0", "1", "3", "4"]
    assert any("skipped 1 of 5 frames" in n for n in scene.notes)
    assert "skipped 1 of 5 frames" in caplog.text
    assert [f.name for f in scene.split("test")] == ["4"]

    for name in ("0", "1", "3", "4"):
        (tmp_path / "pose" / f"{name}.txt").write_text("\n".join(["nan nan nan nan"] * 4) + "\n")
    assert "all 5 poses are non-finite" in error_of(read_scannet, tmp_path)


def test_depth_at_another_resolution(tmp_path):
    cams = rig(2)
    d = np.arange(15 * 20, dtype=np.float64).reshape(15, 20) * 0.001 + 0.5  # half resolution, metres
    write_scannet(tmp_path, cams, depths=[d, d])
    scene = read_scannet(tmp_path)
    assert scene.has_depth
    out = scene.frames[0].load_depth()
    assert out.shape == (H, W) and out.dtype == np.float32
    ys, xs = np.mgrid[0:H, 0:W]
    np.testing.assert_allclose(out, d[ys // 2, xs // 2], atol=1e-6)  # nearest: colour pixel → depth pixel


def test_depth_with_its_own_intrinsics(tmp_path):
    """ScanNet-style: the depth camera (intrinsic_depth.txt) has another field of view than colour."""
    cams = rig(1)
    Kd = np.array([[26.0, 0.0, 9.5], [0.0, 26.0, 7.0], [0.0, 0.0, 1.0]])  # a narrower field of view
    cols = np.tile(np.arange(1, 21, dtype=np.float64), (15, 1))  # depth value = 1 + its column, in mm
    write_scannet(tmp_path, cams, depths=[cols / 1000.0], depth_K=Kd)
    frame = read_scannet(tmp_path).frames[0]
    out = frame.load_depth() * 1000.0
    Kc = cams[0].K
    u = np.arange(W)
    ud = np.floor((u - Kc[0, 2]) / Kc[0, 0] * Kd[0, 0] + Kd[0, 2] + 0.5).astype(int)
    inside = (ud >= 0) & (ud < 20)
    assert inside.any() and (~inside).any()  # the colour camera sees beyond the depth image
    v = np.arange(H)
    vd = np.floor((v - Kc[1, 2]) / Kc[1, 1] * Kd[1, 1] + Kd[1, 2] + 0.5).astype(int)
    rows = (vd >= 0) & (vd < 15)
    np.testing.assert_allclose(out[np.ix_(rows, inside)], np.broadcast_to(ud[inside] + 1.0, (rows.sum(), inside.sum())),
                               atol=1e-3)
    assert np.all(out[:, ~inside] == 0) and np.all(out[~rows] == 0)


def test_depth_npy_in_metres(tmp_path):
    cams = rig(1)
    write_scannet(tmp_path, cams)
    d = np.full((H, W), 1.25, np.float32)
    (tmp_path / "depth").mkdir()
    np.save(tmp_path / "depth" / "0.npy", d)
    np.testing.assert_allclose(read_scannet(tmp_path).frames[0].load_depth(), d)


# ---------------------------------------------------------------------------------------- bad inputs


def test_missing_intrinsics(tmp_path):
    write_scannet(tmp_path, rig(2))
    (tmp_path / "intrinsic" / "intrinsic_color.txt").unlink()
    msg = error_of(read_scannet, tmp_path)
    assert "intrinsic_color.txt" in msg and "missing" in msg


def test_pose_with_three_rows(tmp_path):
    cams = rig(3)
    write_scannet(tmp_path, cams)
    (tmp_path / "pose" / "1.txt").write_text("1 0 0 0\n0 1 0 0\n0 0 1 0\n")
    msg = error_of(read_scannet, tmp_path)
    assert "1.txt" in msg and "got 3x4" in msg


def test_missing_pose_file(tmp_path):
    write_scannet(tmp_path, rig(2))
    (tmp_path / "pose" / "1.txt").unlink()
    assert "1.txt" in error_of(read_scannet, tmp_path)


def test_empty_folders(tmp_path):
    msg = error_of(load_scene, tmp_path)
    assert str(tmp_path) in msg and "layout" in msg
    (tmp_path / "color").mkdir()
    msg = error_of(read_scannet, tmp_path)
    assert "color" in msg and "no .jpg/.png images" in msg


def test_truncated_and_corrupt_images(tmp_path):
    cams = rig(3)
    rng = np.random.default_rng(0)
    write_scannet(tmp_path, cams, images=[rng.integers(0, 255, (H, W, 3), dtype=np.uint8) for _ in cams])
    p = tmp_path / "color" / "1.png"
    p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2])
    scene = read_scannet(tmp_path)  # the header survived the truncation: the pixels fail when loaded
    assert "1.png" in error_of(scene.frames[1].load_image)
    (tmp_path / "color" / "0.png").write_bytes(b"not an image at all")
    assert "0.png" in error_of(read_scannet, tmp_path)


def test_image_size_differs_from_camera(tmp_path):
    cams = rig(2)
    write_scannet(tmp_path, cams)
    save_image(tmp_path / "color" / "1.png", np.zeros((H + 2, W, 3), np.uint8))
    msg = error_of(read_scannet, tmp_path)  # every header is read at load, not after stage 0
    assert "0.png" in msg and "1.png" in msg and f"{W}x{H + 2}" in msg and "different sizes" in msg

    write_colmap(tmp_path / "c", cams)
    save_image(tmp_path / "c" / "images" / "0.png", np.zeros((H, W + 4, 3), np.uint8))
    msg = error_of(read_colmap, tmp_path / "c")
    assert "0.png" in msg and "cameras.bin" in msg
    write_colmap(tmp_path / "c2", rig(3))  # one shared camera: the second image used to go unchecked
    save_image(tmp_path / "c2" / "images" / "1.png", np.zeros((H, W + 4, 3), np.uint8))
    msg = error_of(read_colmap, tmp_path / "c2")
    assert "1.png" in msg and f"{W + 4}x{H}" in msg and "cameras.bin" in msg

    write_transforms_json(tmp_path / "n", cams)
    save_image(tmp_path / "n" / "images" / "0.png", np.zeros((H, W + 4, 3), np.uint8))
    assert "0.png" in error_of(read_nerfstudio, tmp_path / "n")
    write_transforms_json(tmp_path / "n2", rig(3))
    save_image(tmp_path / "n2" / "images" / "2.png", np.zeros((H, W + 4, 3), np.uint8))
    msg = error_of(read_nerfstudio, tmp_path / "n2")
    assert "2.png" in msg and f"{W + 4}x{H}" in msg
    meta = json.loads((tmp_path / "n2" / "transforms.json").read_text())
    for fr in [meta, *meta["frames"]]:  # no w/h anywhere: sizes come from the images, which differ
        fr.pop("w", None), fr.pop("h", None)
    (tmp_path / "n2" / "transforms.json").write_text(json.dumps(meta))
    msg = error_of(read_nerfstudio, tmp_path / "n2")
    assert "0.png" in msg and "2.png" in msg and "different sizes" in msg


def test_scannet_depth_disagrees_with_its_intrinsics(tmp_path):
    """Depth at twice the resolution intrinsic_depth.txt was made for: refused at load with the size the
    intrinsics fit (it used to be misregistered silently)."""
    cams = rig(2)
    Kd = cams[0].scaled(W // 2, H // 2).K  # made for 20x15 depth
    write_scannet(tmp_path, cams, depths=[np.ones((H, W))] * 2, depth_K=Kd)
    msg = error_of(read_scannet, tmp_path)
    assert "intrinsic_depth.txt" in msg and f"{W}x{H} depth" in msg and "about 20x15" in msg
    np.save(tmp_path / "depth" / "1.npy", np.ones((H // 2, W // 2), np.float32))  # now 0.png and 1.npy differ
    (tmp_path / "depth" / "1.png").unlink()
    msg = error_of(read_scannet, tmp_path)
    assert "0.png" in msg and "1.npy" in msg and "different sizes" in msg


def test_scannet_depth_of_another_aspect_without_depth_intrinsics(tmp_path):
    cams = rig(2)
    write_scannet(tmp_path, cams, depths=[np.ones((H, W // 2))] * 2)
    (tmp_path / "intrinsic" / "intrinsic_depth.txt").unlink()
    msg = error_of(read_scannet, tmp_path)
    assert "0.png" in msg and f"{W // 2}x{H}" in msg and "aspect ratio" in msg and "intrinsic_depth.txt" in msg


@pytest.mark.parametrize("what", ["instance", "part"])
def test_scannet_id_map_of_another_aspect_is_refused(tmp_path, what):
    cams = rig(2)
    ids = np.ones((H, W), np.int64)
    write_scannet(tmp_path, cams, instances=[ids] * 2, part_maps=[ids] * 2)
    np.testing.assert_array_equal(read_scannet(tmp_path).frames[0].load_instance(), ids)
    from cos3d.readers.writers import save_id_map

    save_id_map(tmp_path / what / "1.png", np.ones((H // 2, W // 2), np.int64))  # same aspect: resized, fine
    read_scannet(tmp_path)
    save_id_map(tmp_path / what / "1.png", np.ones((H, W // 2), np.int64))  # would be stretched
    msg = error_of(read_scannet, tmp_path)
    assert f"{what}/1.png" in msg and f"{W // 2}x{H}" in msg and "aspect ratio" in msg


def test_nerfstudio_depth_of_another_aspect(tmp_path):
    cams = rig(2)
    write_transforms_json(tmp_path, cams, depths=[np.ones((H, W // 2))] * 2)
    msg = error_of(read_nerfstudio, tmp_path)
    assert f"{W // 2}x{H}" in msg and "aspect ratio" in msg


def test_scannet_intrinsics_for_another_resolution(tmp_path):
    write_scannet(tmp_path, rig(1, K=np.array([[80.0, 0, 39.5], [0, 80.0, 29.5], [0, 0, 1]])))
    save_image(tmp_path / "color" / "0.png", np.zeros((H // 2, W // 2, 3), np.uint8))
    msg = error_of(read_scannet, tmp_path)
    assert "intrinsic_color.txt" in msg and "another resolution" in msg


def test_colmap_image_references_missing_camera(tmp_path):
    cams = rig(2)
    write_colmap(tmp_path, cams)
    write_images_bin(tmp_path / "sparse/0/images.bin",
                     [colmap_image(cams[0], 1, 1, "0.png"), colmap_image(cams[1], 2, 99, "1.png")])
    msg = error_of(read_colmap, tmp_path)
    assert "images.bin" in msg and "camera 99" in msg and "1.png" in msg


def test_colmap_unsupported_model(tmp_path):
    write_colmap(tmp_path, rig(1))
    write_cameras_bin(tmp_path / "sparse/0/cameras.bin",
                      [ColmapCamera(1, "OPENCV_FISHEYE", W, H, np.array([40.0, 40, 20, 15, 0.1, 0, 0, 0]))])
    msg = error_of(read_colmap, tmp_path)
    assert "OPENCV_FISHEYE" in msg and "image_undistorter" in msg and "cameras.bin" in msg


def test_colmap_truncated_and_malformed(tmp_path):
    write_colmap(tmp_path, rig(2))
    p = tmp_path / "sparse/0/images.bin"
    p.write_bytes(p.read_bytes()[:-20])
    msg = error_of(read_colmap, tmp_path)
    assert "images.bin" in msg and "truncated" in msg

    write_colmap(tmp_path / "t", rig(2), binary=False)
    (tmp_path / "t/sparse/0/cameras.txt").write_text("1 PINHOLE 40 30 45.0 47.5\n")
    msg = error_of(read_colmap, tmp_path / "t")
    assert "cameras.txt" in msg and "line 1" in msg

    (tmp_path / "x" / "sparse").mkdir(parents=True)
    assert "cameras.bin" in error_of(read_colmap, tmp_path / "x")


def test_colmap_missing_image(tmp_path):
    write_colmap(tmp_path, rig(3))
    (tmp_path / "images" / "2.png").unlink()
    msg = error_of(read_colmap, tmp_path)
    assert "2.png" in msg and "images.bin" in msg


def test_transforms_json_missing_image(tmp_path):
    write_transforms_json(tmp_path, rig(3))
    (tmp_path / "images" / "2.png").unlink()
    msg = error_of(read_nerfstudio, tmp_path)
    assert "2.png" in msg and "transforms.json" in msg


@pytest.mark.parametrize("focal", [0.0, -30.0])
def test_bad_focal_length_in_every_reader(tmp_path, focal):
    bad = np.array([[focal, 0.0, 19.5], [0.0, 40.0, 14.5], [0.0, 0.0, 1.0]])
    good = rig(2)
    write_scannet(tmp_path / "s", good)
    (tmp_path / "s/intrinsic/intrinsic_color.txt").write_text(f"{focal} 0 19.5\n0 40 14.5\n0 0 1\n")
    msg = error_of(read_scannet, tmp_path / "s")
    assert "intrinsic_color.txt" in msg and "focal length" in msg

    write_colmap(tmp_path / "c", good)
    write_cameras_bin(tmp_path / "c/sparse/0/cameras.bin",
                      [ColmapCamera(1, "PINHOLE", W, H, np.array([focal, 40.0, 20.0, 15.0]))])
    msg = error_of(read_colmap, tmp_path / "c")
    assert "cameras.bin" in msg and "focal length" in msg

    write_transforms_json(tmp_path / "n", good)
    meta = json.loads((tmp_path / "n/transforms.json").read_text())
    meta["fl_x"] = focal
    (tmp_path / "n/transforms.json").write_text(json.dumps(meta))
    msg = error_of(read_nerfstudio, tmp_path / "n")
    assert "transforms.json" in msg and "focal length" in msg

    assert "focal length" in error_of(Camera(K=bad, c2w=np.eye(4), width=W, height=H).validate, "somewhere")


def test_bad_sidecars(tmp_path):
    write_scannet(tmp_path, rig(2))
    (tmp_path / "labels.json").write_text('{"1": ["mug"], ')
    assert "labels.json" in error_of(read_scannet, tmp_path)
    (tmp_path / "labels.json").write_text('{"mug": ["mug"]}')
    assert "labels.json" in error_of(read_scannet, tmp_path)
    (tmp_path / "labels.json").unlink()
    (tmp_path / "parts.json").write_text('{"3": {"names": ["lid"]}}')
    assert "parts.json" in error_of(read_scannet, tmp_path)
    (tmp_path / "parts.json").unlink()
    (tmp_path / "splits.json").write_text('{"train": ["0", "7"]}')
    msg = error_of(read_scannet, tmp_path)
    assert "splits.json" in msg and "'7'" in msg


def test_reflected_pose_is_rejected(tmp_path):
    cams = rig(1)
    write_scannet(tmp_path, cams)
    (tmp_path / "pose" / "0.txt").write_text("1 0 0 0\n0 1 0 0\n0 0 -1 0\n0 0 0 1\n")
    msg = error_of(read_scannet, tmp_path)
    assert "0.txt" in msg and "rotation" in msg


# ---------------------------------------------------------------------------------------- scene model


def test_camera_scaled():
    cam = rig(1)[0]
    big = cam.scaled(2 * W, 2 * H)
    assert (big.width, big.height) == (2 * W, 2 * H)
    X = np.array([[0.05, 0.1, -0.1], [0.0, 0.0, 0.0]])
    uv, _ = cam.project(X)
    uv2, _ = big.project(X)
    np.testing.assert_allclose(uv2, (uv + 0.5) * 2 - 0.5, atol=1e-9)  # pixel centres map to pixel centres
    back = big.scaled(W, H)
    np.testing.assert_allclose(back.K, cam.K, atol=1e-12)
    np.testing.assert_allclose(big.c2w, cam.c2w)
    np.testing.assert_allclose(cam.K_corner[:2, 2], cam.K[:2, 2] + 0.5)


def test_backproject_then_project_is_identity():
    cam = rig(1)[0]
    depth = np.random.default_rng(4).uniform(0.5, 3.0, size=(H, W))
    pts = cam.backproject(depth)
    assert pts.shape == (H, W, 3)
    uv, z = cam.project(pts.reshape(-1, 3))
    ys, xs = np.mgrid[0:H, 0:W]
    np.testing.assert_allclose(uv, np.stack([xs.ravel(), ys.ravel()], -1), atol=1e-9)
    np.testing.assert_allclose(z, depth.ravel(), atol=1e-12)


def _scene(tmp_path, n: int, splits=None) -> Scene:
    cam = rig(1)[0]
    return Scene(root=tmp_path, frames=[Frame(name=str(i), camera=cam, image_path=tmp_path / f"{i}.png")
                                         for i in range(n)], splits=splits or {})


def test_scene_split_default_every_eighth(tmp_path):
    scene = _scene(tmp_path, 17)
    assert [f.name for f in scene.split("test")] == ["0", "8", "16"]
    train = [f.name for f in scene.split("train")]
    assert len(train) == 14 and not {"0", "8", "16"} & set(train)
    assert len(scene.split("all")) == 17
    assert "unknown split" in error_of(scene.split, "holdout")


def test_scene_split_from_splits_json(tmp_path):
    write_scannet(tmp_path, rig(5), splits={"test": ["1", "3"]})
    scene = read_scannet(tmp_path)
    assert [f.name for f in scene.split("test")] == ["1", "3"]
    assert [f.name for f in scene.split("train")] == ["0", "2", "4"]  # the complement


def test_to_original_space_inverts_transform_and_scale(tmp_path):
    scene = _scene(tmp_path, 2)
    scene.transform = look_at((1.0, 2.0, 3.0), target=(0.0, 1.0, 0.0))
    scene.scale = 0.25
    x = np.random.default_rng(5).normal(size=(9, 3))
    x_scene = scene.scale * (x @ scene.transform[:3, :3].T + scene.transform[:3, 3])
    np.testing.assert_allclose(scene.to_original_space(x_scene), x, atol=1e-12)


# --------------------------------------------------------------------------------------- name resolution


def test_scene_resolves_under_data_root(tmp_path, monkeypatch):
    data = tmp_path / "datasets"
    write_scannet(data / "scannet" / "scene0000", rig(2))
    monkeypatch.chdir(tmp_path)

    assert resolve_scene_path("scannet/scene0000", data) == data / "scannet" / "scene0000"
    assert load_scene("scannet/scene0000", data_root=data).source == "scannet"

    monkeypatch.setenv("COS3D_DATA", str(data))
    assert load_scene("scannet/scene0000").source == "scannet"

    monkeypatch.delenv("COS3D_DATA")
    msg = error_of(load_scene, "scannet/scene0000")  # ./data/scannet/scene0000 does not exist
    assert "scannet/scene0000" in msg and "--data-root" in msg
    (tmp_path / "data").symlink_to(data)
    assert load_scene("scannet/scene0000").source == "scannet"  # the ./data default

    assert detect_format(data / "scannet" / "scene0000") == "scannet"
    assert "unknown scene format" in error_of(load_scene, data / "scannet" / "scene0000", format="ply")
