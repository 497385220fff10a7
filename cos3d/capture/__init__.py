"""From a phone: a folder of photos or a video in, a posed scene out (``cos3d prepare images|video``).

Steps, each reported as it runs and recorded when finished, so that an interrupted run continues from
the finished ones (the work lives in a hidden sibling ``.<out>.sfm-work/`` of ``--out``):

1. ``frames``: photos copied (EXIF orientation applied), or the sharpest frame of each of ``--max-frames``
   equal stretches of a video (PyAV decodes it; no system FFmpeg);
2. ``features``: SIFT on the CPU (pycolmap), one shared camera;
3. ``matches``: sequential for a video of more than 40 chosen frames (each frame with its successors at
   offsets 1, 2, 4, 8, ...: COLMAP's quadratic overlap), plus every pair of ``--loop-keyframes`` frames
   spread over the capture (the loop closure a vocabulary tree would find: a sweep that returns to its
   start is tied together), exhaustive for shorter ones and for photo sets of up to 120 photos
   (sequential by file name beyond), see :data:`EXHAUSTIVE_MAX`;
4. ``mapping``: incremental mapping; the largest model is kept, and refused unless ``--min-registered`` of
   the frames registered (the counts are in the message);
5. ``undistort``: images and cameras undistorted to PINHOLE, in the normalised frame below;
6. ``scene``: ``images/`` + ``sparse/0/`` (the COLMAP layout every cos3d command reads) and
   ``capture.json``, built aside and moved onto ``--out`` whole.

**Scale and up.** Images alone fix a scene only up to a similarity. The scene is written with +z along the
normal of the dominant plane of the sparse points (a table, a floor) when it lies within 30° of the
cameras' average up direction, else along that average (``up_from`` in ``capture.json``), the sparse
points' median at the origin, and the median camera distance
to it equal to 1 unit. ``capture.json`` records ``sfm_to_scene`` (the 4×4 similarity applied to the
mapper's output) and ``scale``. To work in metres: measure one distance ``d_m`` (metres) whose two
ends are at scene points ``a`` and ``b``; every scene length × ``d_m / |a − b|`` is in metres. For a
robot, pick three or more points known in both frames (scene coordinates from a query's object
centroids, robot-base coordinates from the robot) and pass them to
:func:`cos3d.robot.transform_from_correspondences` with ``scale=True``: the returned ``T_base_scene``
carries the scale.

User errors (too few frames, unsupported formats, mixed sizes, a still camera, frames that do not overlap,
a capture of which too few frames registered) are one :class:`~cos3d.core.errors.Cos3dError` line; the work
folder is removed and ``--out`` is not created.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from cos3d.core.atomic import atomic_dir, check_output_folder, write_json
from cos3d.capture.inputs import IMAGE_EXTS, VIDEO_EXTS, list_photos
from cos3d.core.config import ConfigError
from cos3d.core.errors import Cos3dError

__all__ = ["CaptureConfig", "CaptureResult", "prepare_capture", "is_photo_folder", "STEPS"]

STEPS = ("frames", "features", "matches", "mapping", "undistort", "scene")
EXHAUSTIVE_MAX = {"images": 120, "video": 40}
"""Captures of up to this many frames are matched exhaustively (every pair), larger ones sequentially: a
16-frame handheld tabletop sweep registered 2 frames with sequential matching (10 successors) and all 16
with exhaustive matching, whose cost (n²/2 pairs) is small at these counts."""
CAPTURE_FILE = "capture.json"


@dataclass
class CaptureConfig:
    """What ``cos3d prepare images|video`` does: every field is a flag."""

    source: Path = field(default=Path(""), metadata={"positional": True})
    """The folder of photos, or the video file."""
    out: Path = Path("")
    """Scene folder to create (absent or empty unless --force)."""
    kind: Literal["auto", "images", "video"] = "auto"
    """What the source is (auto: a folder is photos, a file a video)."""
    max_frames: int = 150
    """Most frames kept from a video: the sharpest of each of this many equal stretches."""
    max_size: int = 1600
    """Longest side (pixels) of the frames kept; larger photos and video frames are shrunk."""
    matcher: Literal["auto", "sequential", "exhaustive"] = "auto"
    """auto: sequential for videos of over 40 chosen frames and photo sets of over 120 (by file name),
    exhaustive otherwise."""
    overlap: int = 10
    """Sequential matching: each frame is matched with the frames 1, 2, 4, ..., 2^(overlap-1) after it
    (COLMAP's quadratic overlap)."""
    loop_keyframes: int = 30
    """Sequential matching: also match every pair of this many frames spread evenly over the capture
    (0: none). Without it the poses of a 60-frame tabletop sweep drifted to 1.1-2.2° rotation error at its
    end (development seeds 1, 2, 5); see docs/benchmarks.md."""
    camera_model: Literal["SIMPLE_RADIAL", "OPENCV", "SIMPLE_PINHOLE", "PINHOLE"] = "SIMPLE_RADIAL"
    """Lens model estimated by the mapper (the images are undistorted to PINHOLE afterwards)."""
    max_features: int = 8192
    """SIFT features per frame."""
    peak_threshold: float = 0.002
    """SIFT contrast threshold (COLMAP's 0.0067 finds too few on plain surfaces such as tables and walls: a
    60-frame tabletop video registered 32 frames at 0.004 and all 60 at 0.002)."""
    min_registered: float = 0.8
    """Fraction of the frames that must register in one model; below it nothing is written."""
    threads: int | None = None
    """CPU threads for SIFT, matching and mapping (default: $COS3D_THREADS if set, else all)."""
    seed: int = 0
    """Seed of the mapper's random choices."""
    force: bool = False
    """Replace an existing, non-empty --out."""
    progress: bool = True
    """Show progress bars."""

    def validate(self) -> None:
        if self.max_frames < 5:
            raise ConfigError("max_frames", f"must be at least 5, got {self.max_frames}")
        if not 64 <= self.max_size <= 8192:
            raise ConfigError("max_size", f"must be between 64 and 8192 pixels, got {self.max_size}")
        if self.loop_keyframes < 0:
            raise ConfigError("loop_keyframes", f"must be 0 or more, got {self.loop_keyframes}")
        if self.overlap < 1:
            raise ConfigError("overlap", f"must be at least 1, got {self.overlap}")
        if not 0.0 < self.min_registered <= 1.0:
            raise ConfigError("min_registered", f"must be in (0, 1], got {self.min_registered}")
        if self.threads is not None and self.threads < 1:
            raise ConfigError("threads", f"must be at least 1, got {self.threads}")


@dataclass
class CaptureResult:
    out: Path
    frames: int
    """Frames given to structure-from-motion."""
    registered: int
    """Frames with a pose in the kept model."""
    points: int
    """Sparse points of the kept model."""
    scale: float
    timings: dict[str, float] = field(default_factory=dict)
    resumed: tuple[str, ...] = ()
    """Steps that an earlier, interrupted run had finished."""


def is_photo_folder(folder: Path) -> bool:
    """True when ``folder`` holds photos and no scene layout (``cos3d train --scene PHOTOS``)."""
    if not folder.is_dir():
        return False
    if any((folder / n).exists() for n in ("sparse", "transforms.json", "pose", "color")):
        return False
    return any(p.suffix.lower() in IMAGE_EXTS for p in folder.iterdir() if p.is_file())


def _threads(cfg: CaptureConfig) -> int:
    if cfg.threads:
        return int(cfg.threads)
    env = os.environ.get("COS3D_THREADS")
    return max(1, int(env)) if env and env.isdigit() else -1


def _fingerprint(cfg: CaptureConfig, kind: str) -> str:
    """What the finished steps depend on: the source (path, size, time) and the settings."""
    src = cfg.source.resolve()
    if src.is_dir():
        stat = [(p.name, p.stat().st_size, int(p.stat().st_mtime)) for p in sorted(src.iterdir()) if p.is_file()]
    else:
        stat = [(src.name, src.stat().st_size, int(src.stat().st_mtime))]
    keep = {k: v for k, v in asdict(cfg).items() if k not in ("out", "force", "progress", "threads")}
    blob = json.dumps([str(src), kind, stat, {k: str(v) for k, v in keep.items()}], sort_keys=True)
    return hashlib.sha1(blob.encode()).hexdigest()


class _Work:
    """The hidden work folder beside ``out`` and its ``state.json`` (finished steps and what they found)."""

    def __init__(self, out: Path, fingerprint: str):
        self.root = out.parent / f".{out.name}.sfm-work"
        self.state_path = self.root / "state.json"
        state: dict[str, Any] = {}
        if self.state_path.is_file():
            try:
                state = json.loads(self.state_path.read_text())
            except (OSError, ValueError):
                state = {}
        if state.get("fingerprint") != fingerprint:  # other inputs or settings: start over
            shutil.rmtree(self.root, ignore_errors=True)
            state = {"fingerprint": fingerprint, "done": [], "info": {}}
        self.root.mkdir(parents=True, exist_ok=True)
        self.state = state
        self.resumed = tuple(s for s in STEPS if s in state["done"])

    def done(self, step: str) -> bool:
        return step in self.state["done"]

    def finish(self, step: str, **info: Any) -> None:
        self.state["info"].update(info)
        self.state["done"].append(step)
        write_json(self.state_path, self.state)

    @property
    def info(self) -> dict[str, Any]:
        return self.state["info"]


def _say(cfg: CaptureConfig, i: int, step: str, text: str) -> None:
    if cfg.progress:
        print(f"[{i}/{len(STEPS)}] {step}: {text}", file=sys.stderr, flush=True)


def _bar(cfg: CaptureConfig):
    from tqdm import tqdm

    return lambda it, desc="frames", total=None: tqdm(it, desc=desc, total=total, disable=not cfg.progress,
                                                      dynamic_ncols=True, leave=False)


def _resolve_kind(cfg: CaptureConfig) -> str:
    src = cfg.source
    if str(src) in ("", "."):
        raise Cos3dError("the source is required: a folder of photos or a video file")
    if cfg.kind != "auto":
        kind = cfg.kind
    elif src.is_dir():
        kind = "images"
    else:
        kind = "video"
    if kind == "images" and not src.is_dir():
        raise Cos3dError(f"{src}: not a folder of photos" + ("; it looks like a video: use `cos3d prepare video`"
                                                           if src.suffix.lower() in VIDEO_EXTS else ""))
    if kind == "video":
        if src.is_dir():
            raise Cos3dError(f"{src}: is a folder; `cos3d prepare video` takes a video file (photos: `cos3d "
                             "prepare images`)")
        if not src.is_file():
            raise Cos3dError(f"{src}: no such video file")
        if src.suffix.lower() in IMAGE_EXTS:
            raise Cos3dError(f"{src}: is one photo; pass the folder of photos to `cos3d prepare images`")
    return kind


def prepare_capture(cfg: CaptureConfig) -> CaptureResult:
    """Run the steps of the module docstring for ``cfg``; returns what was made (see :class:`CaptureResult`)."""
    cfg.validate()
    kind = _resolve_kind(cfg)
    if str(cfg.out) in ("", "."):
        raise Cos3dError("--out is required: the scene folder to create (absent or empty)")
    out = Path(cfg.out).absolute()
    check_output_folder(out, cfg.force)
    if kind == "images":
        list_photos(cfg.source)  # format and count problems before any work
    work = _Work(out, _fingerprint(cfg, kind))
    try:
        result = _run(cfg, kind, out, work)
    except Cos3dError:
        shutil.rmtree(work.root, ignore_errors=True)  # nothing half-written: a user error needs new input
        raise
    shutil.rmtree(work.root, ignore_errors=True)
    return result


def _run(cfg: CaptureConfig, kind: str, out: Path, work: _Work) -> CaptureResult:
    from cos3d.capture import inputs, sfm

    threads = _threads(cfg)
    bar = _bar(cfg)
    timings: dict[str, float] = dict(work.info.get("timings", {}))
    frames_dir, db = work.root / "frames", work.root / "database.db"
    sequential = cfg.matcher == "sequential"

    def timed(step: str, t0: float) -> None:
        timings[step] = round(time.perf_counter() - t0, 3)

    # 1. frames
    t0 = time.perf_counter()
    if not work.done("frames"):
        shutil.rmtree(frames_dir, ignore_errors=True)
        if kind == "images":
            photos = list_photos(cfg.source)
            _say(cfg, 1, "frames", f"{len(photos)} photos from {cfg.source}")
            staged = inputs.stage_photos(photos, frames_dir, max_side=cfg.max_size, progress=bar)
        else:
            _say(cfg, 1, "frames", f"choosing at most {cfg.max_frames} sharp, evenly spaced frames of {cfg.source}")
            staged = inputs.stage_video(cfg.source, frames_dir, max_frames=cfg.max_frames, max_side=cfg.max_size,
                                        progress=bar)
        timed("frames", t0)
        work.finish("frames", names=staged.names, source_index=staged.source_index, size=list(staged.size),
                    rotated=staged.rotated, timings=timings)
    names: list[str] = work.info["names"]
    n = len(names)
    if cfg.matcher == "auto" and n > EXHAUSTIVE_MAX[kind]:
        sequential = True
    _say(cfg, 1, "frames", f"{n} frames of {work.info['size'][0]}x{work.info['size'][1]}"
         + (f" ({work.info['rotated']} turned upright by their EXIF orientation)" if work.info.get("rotated") else ""))

    # 2. features
    if not work.done("features"):
        t0 = time.perf_counter()
        db.unlink(missing_ok=True)
        _say(cfg, 2, "features", f"SIFT on {n} frames ({cfg.camera_model} camera)")
        sfm.extract(db, frames_dir, names, camera_model=cfg.camera_model, max_image_size=cfg.max_size,
                    max_features=cfg.max_features, peak_threshold=cfg.peak_threshold, threads=threads)
        timed("features", t0)
        work.finish("features", timings=timings)

    # 3. matches
    if not work.done("matches"):
        t0 = time.perf_counter()
        how = (f"sequential (quadratic overlap {cfg.overlap}) + every pair of {min(cfg.loop_keyframes, n)} keyframes"
               if sequential else f"exhaustive, {n * (n - 1) // 2} pairs")
        _say(cfg, 3, "matches", how)
        sfm.match(db, sequential=sequential, overlap=cfg.overlap, threads=threads, names=names,
                  loop_keyframes=cfg.loop_keyframes)
        timed("matches", t0)
        pairs, best = sfm.verified_pairs(db)
        work.finish("matches", pairs=pairs, best_pair_inliers=best, timings=timings)
    pairs, best = work.info["pairs"], work.info["best_pair_inliers"]
    if pairs == 0 or best < 15:
        raise Cos3dError(
            f"{cfg.source}: the frames do not overlap: no two of the {n} frames share enough features (the best pair "
            f"has {best} verified matches); film or photograph the scene from nearby positions, each view sharing "
            "most of what the previous one saw"
        )

    # 4. mapping (+ normalisation)
    norm_dir = work.root / "normalised"
    if not work.done("mapping"):
        t0 = time.perf_counter()
        _say(cfg, 4, "mapping", f"incremental mapping of {n} frames ({pairs} overlapping pairs)")
        shutil.rmtree(work.root / "sparse", ignore_errors=True)
        shutil.rmtree(norm_dir, ignore_errors=True)
        from tqdm import tqdm

        with tqdm(total=n, desc="registering frames", disable=not cfg.progress, dynamic_ncols=True,
                  leave=False) as reg_bar:
            rec = sfm.map_incremental(db, frames_dir, work.root / "sparse", threads=threads, seed=cfg.seed,
                                      small=max(work.info["size"]) < 1000, on_image=lambda: reg_bar.update(1))
        registered = 0 if rec is None else rec.num_reg_images()
        need = int(np.ceil(cfg.min_registered * n))
        if registered < need:
            what = "no model could be started" if rec is None else f"only {registered} of the {n} frames registered"
            raise Cos3dError(
                f"{cfg.source}: {what} (need {need}, --min-registered {cfg.min_registered}); the rest do not overlap "
                "enough or are blurred: capture more, slower, overlapping views (or lower --min-registered to keep "
                "a partial scene)"
            )
        rnames, centres, ups = sfm.camera_centres_and_ups(rec)
        pts = np.asarray([p.xyz for p in rec.points3D.values()]) if rec.num_points3D() else np.zeros((0, 3))
        spread = float(np.linalg.norm(centres - centres.mean(0), axis=1).max()) if len(centres) else 0.0
        if spread < 1e-9:
            raise Cos3dError(f"{cfg.source}: the camera does not move; walk around the scene while filming")
        s, R, t, up_from = sfm.normalising_similarity(centres, ups, pts)
        sfm.apply_similarity(rec, s, R, t)
        norm_dir.mkdir(parents=True)
        rec.write(str(norm_dir))
        T = np.eye(4)
        T[:3, :3], T[:3, 3] = s * R, t
        timed("mapping", t0)
        work.finish("mapping", registered=registered, points=int(rec.num_points3D()), registered_names=rnames,
                    sfm_to_scene=T.tolist(), scale=s, up_from=up_from, timings=timings)
    registered = work.info["registered"]
    _say(cfg, 4, "mapping", f"{registered} of {n} frames registered, {work.info['points']} points")

    # 5. undistort
    und = work.root / "undistorted"
    if not work.done("undistort"):
        t0 = time.perf_counter()
        _say(cfg, 5, "undistort", f"{registered} frames to PINHOLE")
        shutil.rmtree(und, ignore_errors=True)
        sfm.undistort(norm_dir, frames_dir, und, threads=threads)
        timed("undistort", t0)
        work.finish("undistort", timings=timings)

    # 6. scene
    t0 = time.perf_counter()
    _say(cfg, 6, "scene", f"writing {out}")
    index = dict(zip(names, work.info["source_index"]))
    with atomic_dir(out, force=cfg.force) as tmp:
        shutil.copytree(und / "images", tmp / "images")
        (tmp / "sparse").mkdir()
        model = und / "sparse" / "0" if (und / "sparse" / "0").is_dir() else und / "sparse"
        shutil.copytree(model, tmp / "sparse" / "0", ignore=shutil.ignore_patterns("*.ini"))
        timed("scene", t0)
        write_json(tmp / CAPTURE_FILE, {
            "source": str(cfg.source.resolve()),
            "kind": kind,
            "frames": n,
            "registered": registered,
            "points": work.info["points"],
            "frame_source_index": {k: index[k] for k in work.info["registered_names"]},
            "matcher": "sequential" if sequential else "exhaustive",
            "camera_model": cfg.camera_model,
            "sfm_to_scene": work.info["sfm_to_scene"],
            "scale": work.info["scale"],
            "up_from": work.info["up_from"],
            "units": "normalised, not metres: +z is the dominant plane's normal (up_from: plane) or the cameras' "
                     "mean up (up_from: cameras), the origin the sparse points' median, "
                     "the median camera distance to it 1; multiply by (a known distance in metres / the same "
                     "distance in the scene) for metres, or use cos3d.robot.transform_from_correspondences(scale=True)",
            "timings": timings,
            "resumed_steps": list(work.resumed),
        })
    return CaptureResult(out=out, frames=n, registered=registered, points=work.info["points"],
                         scale=work.info["scale"], timings=timings, resumed=work.resumed)


def capture_scene_path(source: Path) -> Path:
    """Where ``cos3d train --images/--video SOURCE`` poses a capture by default: ``<name>_scene`` beside it."""
    source = Path(source).absolute()
    stem = source.name if source.is_dir() else source.stem
    return source.parent / f"{stem}_scene"


def scene_for_training(cfg: Any) -> Any:
    """``cfg`` (a :class:`cos3d.pipeline.train_config.TrainConfig`) with ``scene`` set to a posed scene: when it names
    ``--images``/``--video``, or a ``--scene`` folder holding only photos, the capture is posed first (or a
    scene posed earlier from the same source is reused) and ``scene`` points at it. Other configs pass
    through unchanged."""
    import dataclasses

    from cos3d.readers import default_data_root

    if cfg.images is not None and cfg.video is not None:
        raise ConfigError("video", "give --images or --video, not both")
    source, kind = None, "auto"
    if cfg.images is not None:
        source, kind = Path(cfg.images), "images"
    elif cfg.video is not None:
        source, kind = Path(cfg.video), "video"
    elif cfg.scene:
        p = Path(cfg.scene)
        p = p if p.exists() else Path(cfg.data_root or default_data_root()) / p
        if p.is_file() and p.suffix.lower() in VIDEO_EXTS:
            source, kind = p, "video"
        elif is_photo_folder(p):
            source, kind = p, "images"
    if source is None:
        return cfg
    if cfg.scene and Path(cfg.scene).absolute() != source.absolute() and (cfg.images or cfg.video):
        raise ConfigError("scene", f"--scene {cfg.scene} and --{kind} {source} name two inputs; give one")
    out = Path(cfg.capture_out) if cfg.capture_out is not None else capture_scene_path(source)
    made = out / CAPTURE_FILE
    reuse = False
    if made.is_file():
        try:
            reuse = json.loads(made.read_text()).get("source") == str(source.resolve())
        except (OSError, ValueError):
            reuse = False
        if not reuse:
            raise ConfigError("capture_out", f"{out} holds a scene posed from another source; pass another "
                              "--capture-out or remove it")
    if reuse:
        print(f"cos3d train: using the scene posed earlier from {source}: {out}", file=sys.stderr)
    else:
        print(f"cos3d train: {source} has no camera poses; posing it by structure-from-motion into {out} "
              f"(`cos3d prepare {'video' if kind == 'video' else 'images'}`)", file=sys.stderr)
        prepare_capture(CaptureConfig(source=source, out=out, kind=kind, threads=cfg.threads, seed=cfg.seed,
                                      progress=cfg.progress, camera_model=cfg.capture_camera_model))
    return dataclasses.replace(cfg, scene=str(out), images=None, video=None, capture_out=None)
