"""The scene model every reader produces and every stage consumes.

Conventions (DESIGN.md §4):
- cameras are OpenCV (x right, y down, z forward), ``c2w`` is camera-to-world 4×4 in metres,
  ``K`` the 3×3 pinhole intrinsics of the *colour* image at (width, height);
- images load lazily, as uint8 ``[H, W, 3]``; depth as float32 metres ``[H, W]`` (0 = invalid),
  resampled to the colour resolution; instance and part maps as int64 ``[H, W]`` with 0 = no id;
- ``labels`` maps an instance id to its names/phrasings (first = canonical name);
  ``parts`` maps a part id to its names and its parent instance id;
- ``transform``/``scale`` record what a reader did to the original coordinates
  (``x_scene = scale * (transform @ x_original)``); :meth:`Scene.to_original_space` undoes it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
import numpy as np

from cos3d.errors import SceneFormatError


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
        """Raise :class:`SceneFormatError` naming ``where`` if the camera is unusable."""
        if not np.all(np.isfinite(self.K)) or self.K[0, 0] <= 0 or self.K[1, 1] <= 0:
            raise SceneFormatError(f"{where}: focal length must be positive and finite, got fx={self.K[0, 0]}, fy={self.K[1, 1]}")
        if self.width <= 0 or self.height <= 0:
            raise SceneFormatError(f"{where}: image size must be positive, got {self.width}x{self.height}")
        if not np.all(np.isfinite(self.c2w)):
            raise SceneFormatError(f"{where}: camera pose contains non-finite values")

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

    def scaled(self, width: int, height: int) -> "Camera":
        """The same camera at another resolution (intrinsics rescaled, pixel-centre convention kept)."""
        sx, sy = width / self.width, height / self.height
        K = self.K.copy()
        K[0, 0] *= sx
        K[1, 1] *= sy
        K[0, 2] = (K[0, 2] + 0.5) * sx - 0.5
        K[1, 2] = (K[1, 2] + 0.5) * sy - 0.5
        return dataclasses.replace(self, K=K, width=width, height=height)


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


def _load_depth(path: Path, scale: float, size: tuple[int, int]) -> np.ndarray:
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
    if (d.shape[1], d.shape[0]) != size:
        d = np.asarray(Image.fromarray(d).resize(size, Image.NEAREST), dtype=np.float32)
    return d


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

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of the colour image."""
        return self.camera.width, self.camera.height

    def load_image(self) -> np.ndarray:
        """uint8 ``[H, W, 3]``."""
        return _load_rgb(self.image_path, self.size)

    def load_depth(self) -> np.ndarray | None:
        """float32 ``[H, W]`` metres at colour resolution (0 = invalid), or None."""
        if self.depth_path is None:
            return None
        return _load_depth(self.depth_path, self.depth_scale, self.size)

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

    def __post_init__(self) -> None:
        if not self.frames:
            raise SceneFormatError(f"{self.root}: scene has no usable frames")
        names = [f.name for f in self.frames]
        if len(set(names)) != len(names):
            raise SceneFormatError(f"{self.root}: duplicate frame names")
        self._by_name = {f.name: f for f in self.frames}

    def frame(self, name: str) -> Frame:
        try:
            return self._by_name[name]
        except KeyError:
            raise SceneFormatError(f"{self.root}: no frame named {name!r}") from None

    def split(self, name: str) -> list[Frame]:
        """Frames of split ``name`` (``train``/``test``). Without ``splits.json``: every 8th frame is
        test (the LLFF/3DGS convention), the rest train."""
        if name in self.splits:
            return [self.frame(n) for n in self.splits[name]]
        if name == "train":
            return [f for i, f in enumerate(self.frames) if i % 8 != 0 or len(self.frames) == 1]
        if name == "test":
            return [f for i, f in enumerate(self.frames) if i % 8 == 0]
        if name == "all":
            return list(self.frames)
        raise SceneFormatError(f"{self.root}: unknown split {name!r}; known: {sorted(self.splits) or ['train', 'test']}")

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
