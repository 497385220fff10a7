"""Structure-from-motion with pycolmap (CPU SIFT, matching, incremental mapping, undistortion), and the
similarity that puts its arbitrary frame into a normalised one.

The mapper's frame has an arbitrary origin, rotation and scale. :func:`normalising_similarity` picks
``scene = s · R · sfm + t`` with +z the normal of the dominant plane (a table, a floor) when one lies
within 30° of the cameras' average up, else that average up (gravity for a handheld capture: people hold
phones upright), the origin at the median of the sparse points, and the median camera distance to it
1 unit. Metres are unknown from images alone: see :mod:`cos3d.capture` for how to recover them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from cos3d.core.errors import Cos3dError


def _pycolmap():
    try:
        import pycolmap
    except ImportError:  # pragma: no cover - a declared dependency
        raise Cos3dError("pycolmap is not installed; run `pip install pycolmap` (or scripts/install.sh)") from None
    pycolmap.logging.minloglevel = 2  # errors only: cos3d reports each step itself
    return pycolmap


def extract(db: Path, images: Path, names: list[str], *, camera_model: str, max_image_size: int,
            max_features: int, peak_threshold: float, threads: int) -> None:
    """SIFT features of ``names`` (one shared camera: one phone, one zoom) into the database ``db``."""
    pc = _pycolmap()
    ex = pc.FeatureExtractionOptions()
    ex.num_threads = threads
    ex.max_image_size = max_image_size
    ex.sift.max_num_features = max_features
    ex.sift.peak_threshold = peak_threshold
    ro = pc.ImageReaderOptions()
    ro.camera_model = camera_model
    pc.extract_features(db, images, image_names=names, camera_mode=pc.CameraMode.SINGLE, reader_options=ro,
                        extraction_options=ex, device=pc.Device.cpu)


def loop_pairs(names: list[str], keyframes: int) -> list[tuple[str, str]]:
    """Every pair of at most ``keyframes`` frames spread evenly over ``names`` (every ``ceil(n / keyframes)``-th
    frame, the first and the last included): the loop-closing pairs of a sequentially matched video."""
    if keyframes < 2 or len(names) < 3:
        return []
    step = -(-len(names) // keyframes)
    kf = names[::step]
    if kf[-1] != names[-1]:
        kf = kf[:-1] + [names[-1]] if len(kf) >= keyframes else kf + [names[-1]]
    return [(a, b) for i, a in enumerate(kf) for b in kf[i + 1:]]


def match(db: Path, *, sequential: bool, overlap: int, threads: int, names: list[str] | None = None,
          loop_keyframes: int = 0) -> None:
    """Match features: ``sequential`` pairs each frame with its successors at offsets 1, 2, 4, ... up to
    ``2^(overlap-1)`` (COLMAP's quadratic overlap), plus every pair of ``loop_keyframes`` keyframes of
    ``names`` (:func:`loop_pairs`); otherwise every pair."""
    pc = _pycolmap()
    mo = pc.FeatureMatchingOptions()
    mo.num_threads = threads
    if sequential:
        po = pc.SequentialPairingOptions()
        po.overlap = overlap
        po.num_threads = threads
        pc.match_sequential(db, matching_options=mo, pairing_options=po, device=pc.Device.cpu)
        pairs = loop_pairs(list(names or []), loop_keyframes)
        if pairs:  # pairs matched above are skipped by COLMAP's matcher
            listing = db.parent / "loop_pairs.txt"
            listing.write_text("".join(f"{a} {b}\n" for a, b in pairs))
            ip = pc.ImportedPairingOptions()
            ip.match_list_path = listing
            pc.match_image_pairs(db, matching_options=mo, pairing_options=ip, device=pc.Device.cpu)
    else:
        pc.match_exhaustive(db, matching_options=mo, device=pc.Device.cpu)


def verified_pairs(db: Path) -> tuple[int, int]:
    """(pairs with a verified two-view geometry, the most inlier matches of a pair) in ``db``."""
    import sqlite3

    con = sqlite3.connect(str(db))
    try:
        rows = con.execute("SELECT rows FROM two_view_geometries WHERE rows > 0").fetchall()
    finally:
        con.close()
    return len(rows), max((r[0] for r in rows), default=0)


def map_incremental(db: Path, images: Path, out: Path, *, threads: int, seed: int, small: bool = False,
                    on_image: Callable[[], None] | None = None):
    """Incremental mapping; returns the reconstruction with the most registered images, or None.

    ``small`` (frames under 1000 pixels on the long side) halves COLMAP's inlier minimums (100 to start a
    model, 30 to register a frame): small, compressed frames of plain surfaces carry a few hundred
    features, and a 24-frame 320×240 tabletop video registered 2 frames with the defaults, 22 with these.
    ``on_image`` is called as each further frame is registered (a progress bar)."""
    pc = _pycolmap()
    po = pc.IncrementalPipelineOptions()
    po.num_threads = threads
    po.random_seed = seed
    po.mapper.num_threads = threads
    po.mapper.random_seed = seed
    po.min_model_size = 3
    if small:
        po.mapper.init_min_num_inliers = 50
        po.mapper.abs_pose_min_num_inliers = 15
    out.mkdir(parents=True, exist_ok=True)
    recs = pc.incremental_mapping(db, images, out, options=po, next_image_callback=on_image)
    if not recs:
        return None
    return max(recs.values(), key=lambda r: r.num_reg_images())


def camera_centres_and_ups(rec) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(image names, camera centres ``[N, 3]``, camera up vectors ``[N, 3]`` = −y of the camera) of ``rec``."""
    names, centres, ups = [], [], []
    for im in sorted(rec.images.values(), key=lambda im: im.name):
        if not im.has_pose:
            continue
        w2c = im.cam_from_world().matrix()  # [3, 4]
        R, t = w2c[:, :3], w2c[:, 3]
        names.append(im.name)
        centres.append(-R.T @ t)
        ups.append(-R[1])  # row 1 of world-to-camera = the camera's y axis in the world; OpenCV y points down
    return names, np.asarray(centres), np.asarray(ups)


def rotation_to_z(v: np.ndarray) -> np.ndarray:
    """``[3, 3]`` rotation taking the unit vector ``v`` to +z (the shortest arc)."""
    v = np.asarray(v, np.float64) / np.linalg.norm(v)
    z = np.array([0.0, 0.0, 1.0])
    c = float(v @ z)
    if c < -1 + 1e-9:
        return np.diag([1.0, -1.0, -1.0])
    k = np.cross(v, z)
    K = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + K + K @ K / (1 + c)


def dominant_plane_up(points: np.ndarray, up_guess: np.ndarray, *, max_angle_deg: float = 30.0,
                      min_inliers: float = 0.1, seed: int = 0) -> np.ndarray | None:
    """The normal (oriented along ``up_guess``) of the plane that holds most of ``points`` ``[P, 3]`` (RANSAC,
    then a least-squares fit to its inliers), when it holds at least ``min_inliers`` of them and lies within
    ``max_angle_deg`` of ``up_guess``: a table, a floor. None otherwise."""
    P = np.asarray(points, np.float64)
    if len(P) < 20:
        return None
    rng = np.random.default_rng(seed)
    centre = np.median(P, axis=0)
    tol = 0.02 * float(np.median(np.linalg.norm(P - centre, axis=1)))
    best, best_n = None, 0
    for _ in range(300):
        a, b, c = P[rng.choice(len(P), 3, replace=False)]
        n = np.cross(b - a, c - a)
        if np.linalg.norm(n) < 1e-12:
            continue
        n /= np.linalg.norm(n)
        inl = np.abs((P - a) @ n) < tol
        if inl.sum() > best_n:
            best, best_n = inl, int(inl.sum())
    if best is None or best_n < min_inliers * len(P):
        return None
    Q = P[best]
    n = np.linalg.svd(Q - Q.mean(0), full_matrices=False)[2][-1]
    g = np.asarray(up_guess, np.float64) / np.linalg.norm(up_guess)
    n = n if n @ g >= 0 else -n
    return n if np.degrees(np.arccos(np.clip(n @ g, -1, 1))) <= max_angle_deg else None


def normalising_similarity(
    centres: np.ndarray, ups: np.ndarray, points: np.ndarray
) -> tuple[float, np.ndarray, np.ndarray, str]:
    """``(s, R, t, how)`` with ``scene = s · R · sfm + t``: +z along the normal of the dominant plane of the
    points when one lies within 30° of the cameras' mean up (``how="plane"``: a table or floor), else along
    that mean up (``how="cameras"``); the points' median at the origin, the median camera distance to it 1."""
    up = ups.mean(axis=0)
    if np.linalg.norm(up) < 1e-6:
        up = np.array([0.0, 0.0, 1.0])
    plane = dominant_plane_up(points, up) if len(points) else None
    how = "cameras" if plane is None else "plane"
    R = rotation_to_z(up if plane is None else plane)
    centre = np.median(points, axis=0) if len(points) else centres.mean(axis=0)
    d = float(np.median(np.linalg.norm(centres - centre, axis=1)))
    s = 1.0 / d if d > 1e-12 else 1.0
    t = -s * (R @ centre)
    return s, R, t, how


def apply_similarity(rec, s: float, R: np.ndarray, t: np.ndarray) -> None:
    """Transform the reconstruction ``rec`` in place by ``x ↦ s R x + t``."""
    pc = _pycolmap()
    rec.transform(pc.Sim3d(np.hstack([s * np.asarray(R, np.float64), np.asarray(t, np.float64).reshape(3, 1)])))


def undistort(sparse: Path, images: Path, out: Path, *, threads: int) -> None:
    """Undistort to PINHOLE cameras: ``out/images`` and ``out/sparse``."""
    pc = _pycolmap()
    pc.undistort_images(out, sparse, images, output_type="COLMAP", num_threads=threads)
