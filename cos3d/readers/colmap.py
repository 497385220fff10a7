"""COLMAP sparse models (``images/`` + ``sparse/0/`` or ``sparse/``), binary or text.

COLMAP stores, per registered image, the *world-to-camera* rotation as a unit quaternion ``qvec``
(w, x, y, z) and translation ``tvec``; its image origin is the top-left pixel's corner (pixel centres at
``i + 0.5``). :func:`read_colmap` turns both into this project's conventions (camera-to-world, OpenCV
pixel centres; see :mod:`cos3d.data.scene`).

Camera models read: ``SIMPLE_PINHOLE``, ``PINHOLE``, ``SIMPLE_RADIAL``, ``RADIAL`` and ``OPENCV``. The
radial/tangential coefficients are kept in :attr:`cos3d.data.scene.Camera.dist` but **renderers assume
undistorted images**: for distorted models, run ``colmap image_undistorter`` first (it writes a PINHOLE
model and undistorted images) unless the distortion is negligible. Fisheye and thin-prism models are
refused with that advice.

The binary layout (little-endian), as documented by COLMAP:

- ``cameras.bin``: uint64 count, then per camera int32 id, int32 model id, uint64 width, uint64 height,
  float64 params[n(model)];
- ``images.bin``: uint64 count, then per image int32 id, float64 qvec[4], float64 tvec[3], int32 camera id,
  a NUL-terminated name, uint64 n2d, then n2d × (float64 x, float64 y, int64 point3D id);
- ``points3D.bin``: uint64 count, then per point uint64 id, float64 xyz[3], uint8 rgb[3], float64 error,
  uint64 track length, then track length × (int32 image id, int32 point2D index).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cos3d.core.errors import SceneFormatError
from cos3d.core.paths import inside_folder
from cos3d.readers.scannet import _check_id_maps, _index, note, read_sidecars
from cos3d.core.rotations import quat_to_rotmat
from cos3d.data.scene import Camera, Frame, Scene, frame_names, read_image_size

CAMERA_MODELS: dict[int, tuple[str, int]] = {
    0: ("SIMPLE_PINHOLE", 3),
    1: ("PINHOLE", 4),
    2: ("SIMPLE_RADIAL", 4),
    3: ("RADIAL", 5),
    4: ("OPENCV", 8),
    5: ("OPENCV_FISHEYE", 8),
    6: ("FULL_OPENCV", 12),
    7: ("FOV", 5),
    8: ("SIMPLE_RADIAL_FISHEYE", 4),
    9: ("RADIAL_FISHEYE", 5),
    10: ("THIN_PRISM_FISHEYE", 12),
    11: ("RAD_TAN_THIN_PRISM_FISHEYE", 16),
}
"""COLMAP model id → (name, number of parameters)."""
MODEL_IDS = {name: (i, n) for i, (name, n) in CAMERA_MODELS.items()}
SUPPORTED_MODELS = ("SIMPLE_PINHOLE", "PINHOLE", "SIMPLE_RADIAL", "RADIAL", "OPENCV")
IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}


@dataclass
class ColmapCamera:
    """One entry of ``cameras.bin|txt``, in COLMAP's own conventions."""

    id: int
    model: str
    width: int
    height: int
    params: np.ndarray
    """[P] float64, COLMAP's parameter order for ``model`` (principal point with corner origin)."""


@dataclass
class ColmapImage:
    """One registered image of ``images.bin|txt`` (its 2D observations are not kept)."""

    id: int
    qvec: np.ndarray
    """[4] world-to-camera rotation, unit quaternion (w, x, y, z)."""
    tvec: np.ndarray
    """[3] world-to-camera translation."""
    camera_id: int
    name: str
    """Path relative to the ``images/`` folder."""


# ---------------------------------------------------------------------------------------------- maths


def rotmat_to_qvec(R: np.ndarray) -> np.ndarray:
    """``[3, 3]`` rotation matrix → unit quaternion (w, x, y, z) with w ≥ 0."""
    R = np.asarray(R, dtype=np.float64)
    tr = np.trace(R)
    # Pick the numerically largest component first (Shepperd's method).
    cand = np.array([tr, R[0, 0], R[1, 1], R[2, 2]])
    k = int(np.argmax(cand))
    if k == 0:
        s = 2.0 * np.sqrt(max(1.0 + tr, 1e-300))
        q = [0.25 * s, (R[2, 1] - R[1, 2]) / s, (R[0, 2] - R[2, 0]) / s, (R[1, 0] - R[0, 1]) / s]
    elif k == 1:
        s = 2.0 * np.sqrt(max(1.0 + R[0, 0] - R[1, 1] - R[2, 2], 1e-300))
        q = [(R[2, 1] - R[1, 2]) / s, 0.25 * s, (R[0, 1] + R[1, 0]) / s, (R[0, 2] + R[2, 0]) / s]
    elif k == 2:
        s = 2.0 * np.sqrt(max(1.0 + R[1, 1] - R[0, 0] - R[2, 2], 1e-300))
        q = [(R[0, 2] - R[2, 0]) / s, (R[0, 1] + R[1, 0]) / s, 0.25 * s, (R[1, 2] + R[2, 1]) / s]
    else:
        s = 2.0 * np.sqrt(max(1.0 + R[2, 2] - R[0, 0] - R[1, 1], 1e-300))
        q = [(R[1, 0] - R[0, 1]) / s, (R[0, 2] + R[2, 0]) / s, (R[1, 2] + R[2, 1]) / s, 0.25 * s]
    q = np.asarray(q) / np.linalg.norm(q)
    return -q if q[0] < 0 else q


def image_c2w(image: ColmapImage) -> np.ndarray:
    """``[4, 4]`` camera-to-world of a COLMAP image (inverse of its stored world-to-camera)."""
    R = quat_to_rotmat(image.qvec)
    c2w = np.eye(4)
    c2w[:3, :3] = R.T
    c2w[:3, 3] = -R.T @ np.asarray(image.tvec, dtype=np.float64)
    return c2w


def camera_intrinsics(cam: ColmapCamera, where: str) -> tuple[np.ndarray, np.ndarray]:
    """(K ``[3, 3]`` in OpenCV pixel-centre convention, dist ``[4]`` k1 k2 p1 p2) of a COLMAP camera."""
    p = np.asarray(cam.params, dtype=np.float64)
    m = cam.model
    dist = np.zeros(4)
    if m == "SIMPLE_PINHOLE":
        fx = fy = p[0]
        cx, cy = p[1], p[2]
    elif m == "PINHOLE":
        fx, fy, cx, cy = p[:4]
    elif m == "SIMPLE_RADIAL":
        fx = fy = p[0]
        cx, cy = p[1], p[2]
        dist[0] = p[3]
    elif m == "RADIAL":
        fx = fy = p[0]
        cx, cy = p[1], p[2]
        dist[:2] = p[3:5]
    elif m == "OPENCV":
        fx, fy, cx, cy = p[:4]
        dist[:] = p[4:8]
    else:
        raise SceneFormatError(
            f"{where}: camera {cam.id} uses the {m} model, which cos3d does not read (it reads "
            f"{', '.join(SUPPORTED_MODELS)}); run `colmap image_undistorter` and point cos3d at its output"
        )
    K = np.array([[fx, 0.0, cx - 0.5], [0.0, fy, cy - 0.5], [0.0, 0.0, 1.0]])
    return K, dist


# --------------------------------------------------------------------------------------- binary files


class _Buf:
    """A cursor over a binary file that turns truncation into :class:`SceneFormatError`."""

    def __init__(self, path: Path):
        self.path = path
        self.data = path.read_bytes()
        self.pos = 0

    def unpack(self, fmt: str) -> tuple:
        size = struct.calcsize(fmt)
        if self.pos + size > len(self.data):
            self.truncated()
        out = struct.unpack_from(fmt, self.data, self.pos)
        self.pos += size
        return out

    def skip(self, nbytes: int) -> None:
        if nbytes < 0 or self.pos + nbytes > len(self.data):
            self.truncated()
        self.pos += nbytes

    def cstring(self) -> str:
        end = self.data.find(b"\x00", self.pos)
        if end < 0:
            self.truncated()
        raw = self.data[self.pos : end]
        self.pos = end + 1
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise SceneFormatError(f"{self.path}: an image name is not valid UTF-8 (corrupt file?)") from None

    def truncated(self) -> None:
        raise SceneFormatError(
            f"{self.path}: file is truncated or corrupt (ran out of data at byte {self.pos} of {len(self.data)}); "
            "re-export the model (colmap model_converter)"
        )


def read_cameras_bin(path: Path) -> dict[int, ColmapCamera]:
    buf = _Buf(path)
    (n,) = buf.unpack("<Q")
    cams: dict[int, ColmapCamera] = {}
    for _ in range(n):
        cid, model_id, w, h = buf.unpack("<iiQQ")
        if model_id not in CAMERA_MODELS:
            raise SceneFormatError(
                f"{path}: camera {cid} has unknown model id {model_id}; run `colmap image_undistorter` "
                "to get a PINHOLE model"
            )
        name, nparams = CAMERA_MODELS[model_id]
        params = np.array(buf.unpack(f"<{nparams}d"))
        cams[cid] = ColmapCamera(cid, name, int(w), int(h), params)
    return cams


def read_images_bin(path: Path) -> dict[int, ColmapImage]:
    buf = _Buf(path)
    (n,) = buf.unpack("<Q")
    images: dict[int, ColmapImage] = {}
    for _ in range(n):
        iid, qw, qx, qy, qz, tx, ty, tz, cid = buf.unpack("<i7di")
        name = buf.cstring()
        (n2d,) = buf.unpack("<Q")
        buf.skip(24 * n2d)
        images[iid] = ColmapImage(iid, np.array([qw, qx, qy, qz]), np.array([tx, ty, tz]), cid, name)
    return images


def read_points3d_bin(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(xyz ``[P, 3]`` float64, rgb ``[P, 3]`` uint8)."""
    buf = _Buf(path)
    (n,) = buf.unpack("<Q")
    if n * 51 > len(buf.data) - buf.pos:  # each point takes at least 51 bytes
        buf.truncated()
    xyz = np.empty((n, 3), dtype=np.float64)
    rgb = np.empty((n, 3), dtype=np.uint8)
    for i in range(n):
        _, x, y, z, r, g, b, _err, track = buf.unpack("<Q3d3BdQ")
        xyz[i] = (x, y, z)
        rgb[i] = (r, g, b)
        buf.skip(8 * track)
    return xyz, rgb


# ----------------------------------------------------------------------------------------- text files


def _text_lines(path: Path) -> list[tuple[int, str]]:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise SceneFormatError(f"{path}: not a UTF-8 text file (is it a binary model renamed .txt?)") from None
    return [(i + 1, line.strip()) for i, line in enumerate(text.splitlines())]


def _bad_line(path: Path, lineno: int, expected: str) -> SceneFormatError:
    return SceneFormatError(f"{path}: line {lineno} is malformed; expected {expected}")


def read_cameras_txt(path: Path) -> dict[int, ColmapCamera]:
    cams: dict[int, ColmapCamera] = {}
    for lineno, line in _text_lines(path):
        if not line or line.startswith("#"):
            continue
        tok = line.split()
        try:
            cid, model, w, h = int(tok[0]), tok[1], int(tok[2]), int(tok[3])
            params = np.array([float(t) for t in tok[4:]])
        except (IndexError, ValueError):
            raise _bad_line(path, lineno, "CAMERA_ID MODEL WIDTH HEIGHT PARAMS...") from None
        if model in MODEL_IDS and len(params) != MODEL_IDS[model][1]:
            raise _bad_line(path, lineno, f"{MODEL_IDS[model][1]} parameters for a {model} camera, got {len(params)}")
        cams[cid] = ColmapCamera(cid, model, w, h, params)
    return cams


def read_images_txt(path: Path) -> dict[int, ColmapImage]:
    lines = _text_lines(path)
    images: dict[int, ColmapImage] = {}
    i = 0
    while i < len(lines):
        lineno, line = lines[i]
        i += 1
        if not line or line.startswith("#"):
            continue
        tok = line.split()
        try:
            iid = int(tok[0])
            q = np.array([float(t) for t in tok[1:5]])
            t = np.array([float(t) for t in tok[5:8]])
            cid = int(tok[8])
            name = " ".join(tok[9:])
        except (IndexError, ValueError):
            raise _bad_line(path, lineno, "IMAGE_ID QW QX QY QZ TX TY TZ CAMERA_ID NAME") from None
        if not name:
            raise _bad_line(path, lineno, "IMAGE_ID QW QX QY QZ TX TY TZ CAMERA_ID NAME")
        i += 1  # the next line holds the 2D points (possibly empty)
        images[iid] = ColmapImage(iid, q, t, cid, name)
    return images


def read_points3d_txt(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(xyz ``[P, 3]`` float64, rgb ``[P, 3]`` uint8)."""
    xyz, rgb = [], []
    for lineno, line in _text_lines(path):
        if not line or line.startswith("#"):
            continue
        tok = line.split()
        try:
            xyz.append([float(t) for t in tok[1:4]])
            rgb.append([int(t) for t in tok[4:7]])
        except ValueError:
            raise _bad_line(path, lineno, "POINT3D_ID X Y Z R G B ERROR TRACK...") from None
        if len(xyz[-1]) != 3 or len(rgb[-1]) != 3:
            raise _bad_line(path, lineno, "POINT3D_ID X Y Z R G B ERROR TRACK...")
    return np.asarray(xyz, dtype=np.float64).reshape(-1, 3), np.asarray(rgb, dtype=np.uint8).reshape(-1, 3)


# ------------------------------------------------------------------------------------------ the reader


def find_sparse_dir(root: Path) -> tuple[Path, str]:
    """The model folder (``sparse/0`` preferred over ``sparse``) and its format (``.bin`` or ``.txt``)."""
    for d in (root / "sparse" / "0", root / "sparse"):
        for ext in (".bin", ".txt"):
            if (d / f"cameras{ext}").is_file():
                return d, ext
    raise SceneFormatError(
        f"{root / 'sparse'}: no cameras.bin or cameras.txt in sparse/0/ or sparse/; "
        "run COLMAP's mapper (or point cos3d at the folder that holds images/ and sparse/)"
    )


def read_model(sparse: Path, ext: str) -> tuple[dict[int, ColmapCamera], dict[int, ColmapImage], Path, Path]:
    """Cameras and images of a model folder, plus the paths they came from."""
    cam_path, img_path = sparse / f"cameras{ext}", sparse / f"images{ext}"
    if not img_path.is_file():
        raise SceneFormatError(f"{img_path}: file is missing next to {cam_path.name}; re-export the model")
    if ext == ".bin":
        return read_cameras_bin(cam_path), read_images_bin(img_path), cam_path, img_path
    return read_cameras_txt(cam_path), read_images_txt(img_path), cam_path, img_path


def read_colmap(root: str | Path, images_dir: str = "images") -> Scene:
    """Read a COLMAP scene (``images/`` + ``sparse/0/`` or ``sparse/``, binary or text) into a :class:`Scene`.

    Frames are sorted by image name; a frame's name is the image's file stem (the path without suffix
    if stems collide). ``points3D`` (if present) becomes ``scene.points`` ``[P, 3]`` float32 and
    ``scene.point_colors`` ``[P, 3]`` uint8. ``instance/`` and ``part/<frame name>.png`` maps (uint16 ids, as
    in the ScanNet layout) are read when every frame has one. Distortion is kept in ``Camera.dist``; renderers assume
    undistorted images (see the module docstring). Every image's header is read to check its size
    against its camera (one line naming the image and the camera when they disagree); cameras of
    different sizes are fine.
    """
    root = Path(root)
    sparse, ext = find_sparse_dir(root)
    for name in ("cameras", "images", "points3D"):
        if (sparse / f"{name}{ext}").is_file():
            inside_folder(root, sparse / f"{name}{ext}", source=sparse, field="file", value=f"{name}{ext}")
    cams, images, cam_path, img_path = read_model(sparse, ext)
    if not images:
        raise SceneFormatError(f"{img_path}: the model has no registered images; re-run COLMAP's mapper")
    image_root = root / images_dir
    if not image_root.is_dir():
        raise SceneFormatError(f"{image_root}: folder is missing; put the images the model was built from there")

    intrinsics: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    ordered = sorted(images.values(), key=lambda im: im.name)
    names = frame_names([im.name for im in ordered])
    frames: list[Frame] = []
    for im, name in zip(ordered, names):
        if im.camera_id not in cams:
            raise SceneFormatError(
                f"{img_path}: image {im.name!r} (id {im.id}) references camera {im.camera_id}, which {cam_path.name} "
                "does not define; re-export the model (cameras and images from the same reconstruction)"
            )
        cam = cams[im.camera_id]
        if cam.id not in intrinsics:
            intrinsics[cam.id] = camera_intrinsics(cam, str(cam_path))
            Camera(K=intrinsics[cam.id][0], c2w=np.eye(4), width=cam.width, height=cam.height,
                   dist=intrinsics[cam.id][1]).validate(f"{cam_path} (camera {cam.id})")
        K, dist = intrinsics[cam.id]
        path = inside_folder(root, image_root / im.name, source=img_path, field=f"image {im.id} name", value=im.name)
        if not path.is_file():
            raise SceneFormatError(f"{path}: image listed in {img_path.name} is missing; restore it or re-run COLMAP")
        size = read_image_size(path)  # every image: a header read, no pixels
        if size != (cam.width, cam.height):
            raise SceneFormatError(
                f"{path}: image is {size[0]}x{size[1]} but camera {cam.id} in {cam_path.name} says "
                f"{cam.width}x{cam.height}; use the images the model was built from (or undistorted ones "
                "with the undistorter's model)"
            )
        if not np.all(np.isfinite(im.qvec)) or np.linalg.norm(im.qvec) < 1e-12:
            raise SceneFormatError(
                f"{img_path}: image {im.name!r} has an invalid rotation quaternion {im.qvec.tolist()}"
            )
        camera = Camera(K=K, c2w=image_c2w(im), width=cam.width, height=cam.height, dist=dist)
        camera.validate(f"{img_path} (image {im.name!r}, camera {cam.id})")
        frames.append(Frame(name=name, camera=camera, image_path=path))

    # optional ground truth, as in the ScanNet layout: instance/ and part/<frame name>.png (a capture made
    # from a labelled scene keeps its maps: the oracle-2D protocol on structure-from-motion poses)
    for what in ("instance", "part"):
        maps = _index(root / what, (".png",))
        if maps and all(f.name in maps for f in frames):
            _check_id_maps({f.name: maps[f.name] for f in frames}, what, frames[0].size, frames[0].image_path.name)
            for f in frames:
                setattr(f, f"{what}_path", maps[f.name])

    notes: list[str] = []
    if any(np.any(intrinsics[c][1] != 0) for c in intrinsics):
        note(notes, f"{cam_path}: cameras have lens distortion, which renderers ignore; "
             "run `colmap image_undistorter` for exact results")
    registered = {im.name for im in images.values()}
    unregistered = sum(
        1 for p in image_root.rglob("*")
        if p.suffix.lower() in IMAGE_EXTS and p.relative_to(image_root).as_posix() not in registered
    )
    if unregistered:
        note(notes, f"{image_root}: {unregistered} image(s) are not registered in the COLMAP model and are ignored")

    points = colors = None
    pts_path = sparse / f"points3D{ext}"
    if pts_path.is_file():
        xyz, rgb = read_points3d_bin(pts_path) if ext == ".bin" else read_points3d_txt(pts_path)
        if len(xyz):
            points, colors = xyz.astype(np.float32), rgb
    side = read_sidecars(root, [f.name for f in frames], set(), notes)
    return Scene(root=root, frames=frames, points=points, point_colors=colors, source="colmap", notes=notes, **side)
