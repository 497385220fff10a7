"""The scene model every reader produces and every stage consumes.

Conventions (docs/architecture.md):
- cameras are OpenCV (x right, y down, z forward), ``c2w`` is camera-to-world 4×4 in metres,
  ``K`` the 3×3 pinhole intrinsics of the *colour* image at (width, height);
- pixel coordinates are OpenCV's too: pixel (0, 0) is the *centre* of the top-left pixel, so an
  ideal centred camera has ``cx = (width - 1) / 2``. COLMAP, nerfstudio and gsplat's rasterizer put
  the image origin at the top-left *corner* (pixel centres at ``i + 0.5``); readers convert, and
  :attr:`Camera.K_corner` gives the intrinsics to hand to such a renderer;
- images load lazily, as uint8 ``[H, W, 3]``; depth as float32 metres ``[H, W]`` (0 = invalid),
  resampled to the colour resolution; instance and part maps as int64 ``[H, W]`` with 0 = no id;
- ``labels`` maps an instance id to its names/phrasings (first = canonical name);
  ``parts`` maps a part id to its names and its parent instance id;
- ``transform``/``scale`` record what a reader did to the original coordinates
  (``x_scene = scale * (transform @ x_original)``); :meth:`Scene.to_original_space` undoes it.
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cos3d.core.errors import SceneFormatError


@dataclass
class Camera:
    """A pinhole camera. Distortion (OpenCV k1, k2, p1, p2) is recorded but not applied by renderers."""

    K: np.ndarray
    """[3, 3] float64 intrinsics at (width, height)."""
    c2w: np.ndarray
    """[4, 4] float64 camera-to-world, OpenCV axes."""
    width: int
    height: int
    dist: np.ndarray = field(default_factory=lambda: np.zeros(4))
    """[4] OpenCV distortion k1, k2, p1, p2 (zeros for an undistorted pinhole)."""

    def __post_init__(self) -> None:
        self.K = np.asarray(self.K, dtype=np.float64).reshape(3, 3)
        self.c2w = np.asarray(self.c2w, dtype=np.float64).reshape(4, 4)
        self.dist = np.asarray(self.dist, dtype=np.float64).reshape(-1)
        self.width, self.height = int(self.width), int(self.height)

    def validate(self, where: str) -> None:
        """Raise :class:`SceneFormatError` naming ``where`` (a file) if the camera is unusable.

        Checks: positive finite focal lengths, finite principal point and distortion, positive image
        size, a finite pose whose rotation part is orthonormal and right-handed (a reflection means
        the file uses another axis convention).
        """
        fx, fy = self.K[0, 0], self.K[1, 1]
        if not (np.isfinite(fx) and np.isfinite(fy)) or fx <= 0 or fy <= 0:
            raise SceneFormatError(
                f"{where}: focal length must be positive and finite, got fx={fx}, fy={fy}; fix the intrinsics"
            )
        if not np.all(np.isfinite(self.K)) or not np.all(np.isfinite(self.dist)):
            raise SceneFormatError(f"{where}: intrinsics or distortion contain non-finite values; fix the intrinsics")
        if self.width <= 0 or self.height <= 0:
            raise SceneFormatError(f"{where}: image size must be positive, got {self.width}x{self.height}")
        if not np.all(np.isfinite(self.c2w)):
            raise SceneFormatError(f"{where}: camera pose contains non-finite values; drop this frame or fix its pose")
        R = self.c2w[:3, :3]
        err = float(np.abs(R.T @ R - np.eye(3)).max())
        if err > 1e-2 or np.linalg.det(R) < 0:
            raise SceneFormatError(
                f"{where}: the pose's rotation is not a rotation (|RᵀR − I| = {err:.3g}, "
                f"det = {np.linalg.det(R):.3g}); poses must be rigid camera-to-world matrices "
                "without scale or axis flips"
            )

    @property
    def fx(self) -> float:
        return float(self.K[0, 0])

    @property
    def fy(self) -> float:
        return float(self.K[1, 1])

    @property
    def cx(self) -> float:
        """Principal point x, OpenCV pixel-centre convention."""
        return float(self.K[0, 2])

    @property
    def cy(self) -> float:
        """Principal point y, OpenCV pixel-centre convention."""
        return float(self.K[1, 2])

    @property
    def K_corner(self) -> np.ndarray:
        """[3, 3] the same intrinsics with the image origin at the top-left pixel's *corner* (pixel
        centres at ``i + 0.5``): the convention of COLMAP, nerfstudio and gsplat's rasterizer."""
        K = self.K.copy()
        K[0, 2] += 0.5
        K[1, 2] += 0.5
        return K

    @property
    def w2c(self) -> np.ndarray:
        """[4, 4] world-to-camera (gsplat's ``viewmats``)."""
        return np.linalg.inv(self.c2w)

    @property
    def center(self) -> np.ndarray:
        """[3] camera centre in world coordinates."""
        return self.c2w[:3, 3].copy()

    def project(self, points_world: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Project ``[N, 3]`` world points; returns pixel coords ``[N, 2]`` (x, y) and depth ``[N]``.

        Pixel (0, 0) is the *centre* of the top-left pixel (OpenCV convention).
        """
        p = np.asarray(points_world, dtype=np.float64)
        cam = (self.w2c[:3, :3] @ p.T + self.w2c[:3, 3:4]).T
        z = cam[:, 2]
        uv = (self.K @ cam.T).T
        with np.errstate(divide="ignore", invalid="ignore"):
            uv = uv[:, :2] / uv[:, 2:3]
        return uv, z

    def backproject(self, depth: np.ndarray) -> np.ndarray:
        """Lift a depth map ``[H, W]`` (metres, 0 = invalid) to world points ``[H, W, 3]``."""
        h, w = depth.shape
        ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)
        x = (xs - self.K[0, 2]) / self.K[0, 0] * depth
        y = (ys - self.K[1, 2]) / self.K[1, 1] * depth
        cam = np.stack([x, y, depth.astype(np.float64)], -1)
        return cam @ self.c2w[:3, :3].T + self.c2w[:3, 3]

    def scaled(self, width: int, height: int) -> Camera:
        """The same camera at another resolution (intrinsics rescaled, pixel-centre convention kept)."""
        K = _scaled_K(self.K, (self.width, self.height), (width, height))
        return dataclasses.replace(self, K=K, width=width, height=height)

    def cropped(self, x0: int, y0: int, x1: int, y1: int) -> Camera:
        """The window ``[x0, x1) × [y0, y1)`` of this camera's image as a camera of its own (principal
        point shifted). Rendering it gives those pixels of the full image up to the EWA projection's
        frustum clamp: a Gaussian centred far outside the window is projected with the window's limits,
        so its tail inside the window can differ slightly (≤ 0.02 in colour on the test scene)."""
        if not (0 <= x0 < x1 <= self.width and 0 <= y0 < y1 <= self.height):
            raise ValueError(f"crop [{x0}, {x1}) x [{y0}, {y1}) is not inside the {self.width}x{self.height} image")
        K = self.K.copy()
        K[0, 2] -= x0
        K[1, 2] -= y0
        return dataclasses.replace(self, K=K, width=x1 - x0, height=y1 - y0)

    def key(self) -> str:
        """A 16-hex-digit hash of ``K``, ``c2w`` and the image size: what a renderer sees of the camera
        (caches of per-view blending weights are keyed by it; distortion is not rendered, so not in it)."""
        data = self.K.tobytes() + self.c2w.tobytes() + f"{self.width}x{self.height}".encode()
        return hashlib.sha1(data).hexdigest()[:16]


def _load_rgb(path: Path, size: tuple[int, int]) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.load()
            arr = np.asarray(im.convert("RGB"))
    except FileNotFoundError:
        raise SceneFormatError(f"{path}: image file is missing") from None
    except Exception as e:  # PIL raises OSError / SyntaxError / UnidentifiedImageError
        raise SceneFormatError(f"{path}: cannot read image ({e}); re-export or delete this frame") from None
    if (arr.shape[1], arr.shape[0]) != size:
        raise SceneFormatError(
            f"{path}: image is {arr.shape[1]}x{arr.shape[0]} but its camera says {size[0]}x{size[1]}; "
            "fix the intrinsics or resize the image"
        )
    return arr


def _load_id_map(path: Path, size: tuple[int, int]) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.load()
            arr = np.asarray(im).astype(np.int64)
    except FileNotFoundError:
        raise SceneFormatError(f"{path}: id map is missing") from None
    except Exception as e:
        raise SceneFormatError(f"{path}: cannot read id map ({e})") from None
    if arr.ndim != 2:
        raise SceneFormatError(f"{path}: id map must be single-channel, got shape {arr.shape}")
    if (arr.shape[1], arr.shape[0]) != size:
        arr = np.asarray(Image.fromarray(arr.astype(np.int32)).resize(size, Image.NEAREST)).astype(np.int64)
    return arr


def resample_depth(depth: np.ndarray, depth_K: np.ndarray, K: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resample a depth map ``[h, w]`` with intrinsics ``depth_K`` onto the pixel grid of a colour camera
    with intrinsics ``K`` and ``size`` = (width, height), nearest neighbour (depth is never blended across
    edges); both cameras share the pose. Pixels that fall outside the depth image get 0 (invalid).

    Returns float32 ``[height, width]``.
    """
    h, w = depth.shape
    width, height = size
    Kd = np.asarray(depth_K, dtype=np.float64)
    Kc = np.asarray(K, dtype=np.float64)
    # Both are pinhole cameras with the same pose and no skew: the map is separable and affine.
    u = (np.arange(width) - Kc[0, 2]) / Kc[0, 0] * Kd[0, 0] + Kd[0, 2]
    v = (np.arange(height) - Kc[1, 2]) / Kc[1, 1] * Kd[1, 1] + Kd[1, 2]
    ui = np.floor(u + 0.5).astype(np.int64)
    vi = np.floor(v + 0.5).astype(np.int64)
    ok_u = (ui >= 0) & (ui < w)
    ok_v = (vi >= 0) & (vi < h)
    out = depth[np.clip(vi, 0, h - 1)[:, None], np.clip(ui, 0, w - 1)[None, :]].astype(np.float32)
    out[~(ok_v[:, None] & ok_u[None, :])] = 0.0
    return out


def _load_depth(
    path: Path, scale: float, size: tuple[int, int], K: np.ndarray, depth_K: np.ndarray | None = None
) -> np.ndarray:
    from PIL import Image

    try:
        if path.suffix == ".npy":
            d = np.load(path).astype(np.float32)
        else:
            with Image.open(path) as im:
                im.load()
                d = np.asarray(im).astype(np.float32)
    except FileNotFoundError:
        raise SceneFormatError(f"{path}: depth file is missing") from None
    except Exception as e:
        raise SceneFormatError(f"{path}: cannot read depth ({e})") from None
    if d.ndim != 2:
        raise SceneFormatError(f"{path}: depth must be single-channel, got shape {d.shape}")
    d = d / float(scale)
    d[~np.isfinite(d)] = 0.0
    same_size = (d.shape[1], d.shape[0]) == size
    if depth_K is None:
        if same_size:
            return d
        # No depth intrinsics: assume the depth image covers the colour image's field of view.
        depth_K = _scaled_K(K, size, (d.shape[1], d.shape[0]))
    elif same_size and np.allclose(depth_K, K):
        return d
    return resample_depth(d, depth_K, K, size)


def _scaled_K(K: np.ndarray, size: tuple[int, int], new_size: tuple[int, int]) -> np.ndarray:
    """``K`` at ``size`` = (w, h) rescaled to ``new_size``, OpenCV pixel-centre convention."""
    sx, sy = new_size[0] / size[0], new_size[1] / size[1]
    K = np.array(K, dtype=np.float64)
    K[0, 0] *= sx
    K[1, 1] *= sy
    K[0, 2] = (K[0, 2] + 0.5) * sx - 0.5
    K[1, 2] = (K[1, 2] + 0.5) * sy - 0.5
    return K


@dataclass
class Frame:
    """One posed view. Pixel data is read from disk on demand, never held."""

    name: str
    """Frame name, unique within the scene (ScanNet: the file stem, e.g. ``"12"``)."""
    camera: Camera
    image_path: Path
    depth_path: Path | None = None
    depth_scale: float = 1000.0
    """Raw depth units per metre (1000 for ScanNet uint16 mm PNG, 1 for float .npy in metres)."""
    instance_path: Path | None = None
    part_path: Path | None = None
    depth_K: np.ndarray | None = None
    """[3, 3] intrinsics of the depth image when they differ from a rescaled ``camera.K`` (ScanNet's
    ``intrinsic_depth.txt``); None = the depth image covers the colour image's field of view."""
    file_size: tuple[int, int] | None = None
    """(width, height) of the colour image on disk when the frame was rescaled (:meth:`at_size`);
    None = the camera's own size. Pixel data then loads resampled to the camera's size."""

    def at_size(self, width: int, height: int) -> "Frame":
        """This frame with its camera (intrinsics) rescaled to ``width`` × ``height``; its images, depth
        and id maps load resampled to that size (colour: area average, depth and ids: nearest)."""
        native = self.file_size or self.size
        if (width, height) == native:
            return dataclasses.replace(self, camera=self.camera.scaled(width, height), file_size=None)
        return dataclasses.replace(self, camera=self.camera.scaled(width, height), file_size=native)

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of the colour image."""
        return self.camera.width, self.camera.height

    def load_image(self) -> np.ndarray:
        """uint8 ``[H, W, 3]`` at the camera's size."""
        if self.file_size is None:
            return _load_rgb(self.image_path, self.size)
        from PIL import Image

        rgb = _load_rgb(self.image_path, self.file_size)
        return np.asarray(Image.fromarray(rgb).resize(self.size, Image.BOX))

    def load_depth(self) -> np.ndarray | None:
        """float32 ``[H, W]`` metres at colour resolution (0 = invalid), or None."""
        if self.depth_path is None:
            return None
        return _load_depth(self.depth_path, self.depth_scale, self.size, self.camera.K, self.depth_K)

    def load_instance(self) -> np.ndarray | None:
        """int64 ``[H, W]`` instance ids (0 = none), or None."""
        return None if self.instance_path is None else _load_id_map(self.instance_path, self.size)

    def load_part(self) -> np.ndarray | None:
        """int64 ``[H, W]`` part ids (0 = none), or None."""
        return None if self.part_path is None else _load_id_map(self.part_path, self.size)


@dataclass
class PartInfo:
    names: list[str]
    parent: int
    """The instance id this part belongs to."""


@dataclass
class Scene:
    """A posed image collection with optional depth, instance/part ground truth and points."""

    root: Path
    frames: list[Frame]
    labels: dict[int, list[str]] = field(default_factory=dict)
    parts: dict[int, PartInfo] = field(default_factory=dict)
    points: np.ndarray | None = None
    """[P, 3] float32 sparse/initial points (COLMAP), or None."""
    point_colors: np.ndarray | None = None
    """[P, 3] uint8, or None."""
    splits: dict[str, list[str]] = field(default_factory=dict)
    transform: np.ndarray = field(default_factory=lambda: np.eye(4))
    """[4, 4] applied by the reader to original coordinates (before ``scale``)."""
    scale: float = 1.0
    source: str = ""
    """Which reader produced the scene (``scannet``, ``colmap``, ``nerfstudio``)."""
    notes: list[str] = field(default_factory=list)
    """What the reader had to work around (skipped frames, ignored files), one sentence each; also
    logged as warnings on the ``cos3d`` logger."""

    def __post_init__(self) -> None:
        if not self.frames:
            raise SceneFormatError(f"{self.root}: scene has no usable frames")
        self._by_name: dict[str, Frame] = {}
        for f in self.frames:
            other = self._by_name.setdefault(f.name, f)
            if other is not f:
                raise SceneFormatError(
                    f"{self.root}: two frames are named {f.name!r} ({other.image_path} and {f.image_path}); "
                    "frame names must be unique: rename one of the images"
                )

    @property
    def cameras(self) -> list[Camera]:
        """The frames' cameras, in frame order."""
        return [f.camera for f in self.frames]

    def frame(self, name: str) -> Frame:
        try:
            return self._by_name[name]
        except KeyError:
            raise SceneFormatError(f"{self.root}: no frame named {name!r}") from None

    def split(self, name: str) -> list[Frame]:
        """Frames of split ``name`` (``train``/``test``/``all``). Without ``splits.json``: every 8th frame
        (0, 8, 16, ...) is test (the LLFF/3DGS convention), the rest train. When only one of train/test
        is listed, the other is its complement."""
        if name in self.splits:
            return [self.frame(n) for n in self.splits[name]]
        other = {"train": "test", "test": "train"}.get(name)
        if other in self.splits:
            listed = set(self.splits[other])
            return [f for f in self.frames if f.name not in listed]
        if name == "train":
            return [f for i, f in enumerate(self.frames) if i % 8 != 0 or len(self.frames) == 1]
        if name == "test":
            return [f for i, f in enumerate(self.frames) if i % 8 == 0]
        if name == "all":
            return list(self.frames)
        known = sorted(set(self.splits) | {"train", "test", "all"})
        raise SceneFormatError(f"{self.root}: unknown split {name!r}; known: {', '.join(known)}")

    @property
    def has_depth(self) -> bool:
        return all(f.depth_path is not None for f in self.frames)

    @property
    def has_instances(self) -> bool:
        return all(f.instance_path is not None for f in self.frames)

    def names_of(self, instance_id: int) -> list[str]:
        return self.labels.get(int(instance_id), [])

    def to_original_space(self, points: np.ndarray) -> np.ndarray:
        """Map ``[N, 3]`` scene points back to the dataset's original coordinates."""
        p = np.asarray(points, dtype=np.float64) / self.scale
        inv = np.linalg.inv(self.transform)
        return p @ inv[:3, :3].T + inv[:3, 3]


def read_image_size(path: Path) -> tuple[int, int]:
    """(width, height) of an image from its header only (no pixel decoding)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            return int(im.size[0]), int(im.size[1])
    except FileNotFoundError:
        raise SceneFormatError(f"{path}: image file is missing") from None
    except Exception as e:
        raise SceneFormatError(f"{path}: cannot read image header ({e}); re-export or delete this frame") from None


def frame_names(rel_paths: list[str]) -> list[str]:
    """Frame names for image paths relative to the scene: the file stem (``images/frame_001.jpg`` →
    ``frame_001``) when stems are unique, else the relative path without its suffix."""
    stems = [Path(p).stem for p in rel_paths]
    if len(set(stems)) == len(stems):
        return stems
    return [Path(p).with_suffix("").as_posix() for p in rel_paths]
