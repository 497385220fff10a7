"""What a capture brings: a folder of photos or a video file, checked and staged as SfM input frames.

Photos are copied (turned upright first when their EXIF orientation says so); a video is decoded
through PyAV (its wheels ship FFmpeg) and a bounded number of frames is kept: the sharpest frame of each
of ``max_frames`` equal stretches of the video (sharpness = variance of the Laplacian of the grey image).
Every problem a user can fix is one :class:`~cos3d.core.errors.Cos3dError` line naming it and what to do.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from cos3d.core.errors import Cos3dError

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
"""Photo formats read (what PIL and COLMAP both decode)."""
UNSUPPORTED_EXTS = (".heic", ".heif", ".avif", ".dng", ".cr2", ".cr3", ".nef", ".arw", ".raf", ".orf", ".rw2")
"""Phone and camera formats refused with advice (HEIC: iPhone default; RAW files)."""
VIDEO_EXTS = (".mp4", ".mov", ".m4v", ".avi", ".mkv", ".webm", ".3gp")
MIN_FRAMES = 5
"""Fewer frames than this cannot give a useful reconstruction."""


@dataclass
class StagedFrames:
    """Frames written into a folder for structure-from-motion."""

    names: list[str]
    """File names inside the staged folder, in capture order."""
    size: tuple[int, int]
    """(width, height) shared by every frame."""
    source_index: list[int]
    """Per frame: its index in the video (decoded order), or in the sorted photo list."""
    rotated: int = 0
    """Photos turned upright by their EXIF orientation."""


def list_photos(folder: Path) -> list[Path]:
    """The photos directly inside ``folder`` (sorted by name); unsupported formats are one error line."""
    if not folder.is_dir():
        raise Cos3dError(f"{folder}: not a folder; pass the folder that holds the photos")
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    bad = [p for p in files if p.suffix.lower() in UNSUPPORTED_EXTS]
    if bad:
        raise Cos3dError(
            f"{folder}: {len(bad)} photo(s) are {bad[0].suffix.upper()[1:]} (e.g. {bad[0].name}), which cos3d does "
            "not decode; export them as JPEG (iPhone: Settings > Camera > Formats > Most Compatible) and run again"
        )
    photos = [p for p in files if p.suffix.lower() in IMAGE_EXTS]
    videos = [p for p in files if p.suffix.lower() in VIDEO_EXTS]
    if not photos and videos:
        raise Cos3dError(f"{folder}: holds a video ({videos[0].name}) and no photos; run `cos3d prepare video "
                         f"{videos[0]} --out SCENE` instead")
    if len(photos) < MIN_FRAMES:
        raise Cos3dError(
            f"{folder}: found {len(photos)} photo(s) ({', '.join(IMAGE_EXTS)}); structure-from-motion needs at "
            f"least {MIN_FRAMES} overlapping photos of the scene (20-200 is typical)"
        )
    return photos


def _exif_orientation(path: Path) -> int:
    from PIL import Image

    try:
        with Image.open(path) as im:
            return int(im.getexif().get(0x0112, 1) or 1)
    except Exception as e:
        raise Cos3dError(f"{path}: cannot read the image ({e}); delete or re-export it") from None


def stage_photos(photos: list[Path], out: Path, *, max_side: int, progress: Callable | None = None) -> StagedFrames:
    """Copy ``photos`` into ``out`` (upright per EXIF orientation; shrunk to ``max_side`` pixels on the long
    side); all must share one size."""
    from PIL import Image, ImageOps

    out.mkdir(parents=True, exist_ok=True)
    sizes: dict[tuple[int, int], list[str]] = {}
    names: list[str] = []
    rotated = 0
    for p in progress(photos) if progress else photos:
        orient = _exif_orientation(p)
        dst = out / p.name
        with Image.open(p) as im:
            big = max(im.size) > max_side
        if orient != 1 or big:
            with Image.open(p) as im:
                up = ImageOps.exif_transpose(im) if orient != 1 else im.copy()
                if big:
                    s = max_side / max(up.size)
                    up = up.resize((max(1, round(up.size[0] * s)), max(1, round(up.size[1] * s))), Image.LANCZOS)
                up.save(dst, quality=95) if p.suffix.lower() in (".jpg", ".jpeg") else up.save(dst)
                size = up.size
            rotated += orient != 1
        else:
            shutil.copyfile(p, dst)
            with Image.open(dst) as im:
                size = im.size
        sizes.setdefault((int(size[0]), int(size[1])), []).append(p.name)
        names.append(p.name)
    if len(sizes) > 1:
        (a, an), (b, bn) = sorted(sizes.items(), key=lambda kv: -len(kv[1]))[:2]
        raise Cos3dError(
            f"photos have {len(sizes)} different sizes ({len(an)} are {a[0]}x{a[1]}, {len(bn)} are {b[0]}x{b[1]}, "
            f"e.g. {bn[0]}); one capture must come from one camera setting: remove or resize the odd ones"
        )
    return StagedFrames(names=names, size=next(iter(sizes)), source_index=list(range(len(names))), rotated=rotated)


def sharpness(gray: np.ndarray) -> float:
    """Variance of the 4-neighbour Laplacian of a ``[H, W]`` grey image (higher is sharper)."""
    g = np.asarray(gray, np.float32)
    lap = -4 * g[1:-1, 1:-1] + g[:-2, 1:-1] + g[2:, 1:-1] + g[1:-1, :-2] + g[1:-1, 2:]
    return float(lap.var())


def choose_frames(scores: np.ndarray, max_frames: int) -> list[int]:
    """Indices of the sharpest frame in each of ``max_frames`` equal stretches of ``scores`` (all frames when
    there are no more than ``max_frames``): evenly spaced, and never a blurred frame beside a sharp one."""
    n = len(scores)
    if n <= max_frames:
        return list(range(n))
    edges = np.linspace(0, n, max_frames + 1).round().astype(int)
    return [int(a + np.argmax(scores[a:b])) for a, b in zip(edges[:-1], edges[1:]) if b > a]


def _open_video(path: Path):
    import av

    if not path.is_file():
        raise Cos3dError(f"{path}: no such video file")
    try:
        container = av.open(str(path))
    except Exception as e:
        raise Cos3dError(f"{path}: cannot open the video ({type(e).__name__}); convert it to MP4 (H.264) and run "
                         "again") from None
    if not container.streams.video:
        container.close()
        raise Cos3dError(f"{path}: the file has no video stream; pass a video (MP4, MOV...)")
    return container


def _frames(path: Path, max_side: int):
    """Decoded frames of ``path`` as ``[H, W, 3]`` uint8 (long side at most ``max_side``), in order."""
    container = _open_video(path)
    try:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for frame in container.decode(stream):
            w, h = frame.width, frame.height
            s = min(1.0, max_side / max(w, h))
            if s < 1.0:
                frame = frame.reformat(width=int(round(w * s / 2) * 2), height=int(round(h * s / 2) * 2))
            yield frame.to_ndarray(format="rgb24")
    except Cos3dError:
        raise
    except Exception as e:
        raise Cos3dError(f"{path}: the video could not be decoded ({type(e).__name__}: {e}); convert it to MP4 "
                         "(H.264) and run again") from None
    finally:
        container.close()


def stage_video(path: Path, out: Path, *, max_frames: int, max_side: int,
                progress: Callable | None = None) -> StagedFrames:
    """Decode ``path`` twice (scores, then the chosen frames) and write the chosen ones to ``out`` as JPEG.

    Two passes keep memory at one frame, whatever the video's length. A video whose chosen frames barely
    differ (a camera on a tripod) is refused: structure-from-motion needs the camera to move."""
    from PIL import Image

    scores: list[float] = []
    small: list[np.ndarray] = []
    for rgb in progress(_frames(path, max_side), desc="scoring video frames") if progress else _frames(path, max_side):
        g = rgb.mean(axis=2)
        scores.append(sharpness(g))
        step = max(1, g.shape[1] // 64)
        small.append(g[::step, ::step].astype(np.float32))
    if len(scores) < MIN_FRAMES:
        raise Cos3dError(f"{path}: the video has {len(scores)} frame(s); film a few seconds while walking around "
                         "the scene")
    chosen = choose_frames(np.asarray(scores), max_frames)
    diffs = [float(np.abs(small[a] - small[b]).mean()) for a, b in zip(chosen[:-1], chosen[1:])]
    if max(diffs) < 1.0:  # grey levels: sensor noise and compression only
        raise Cos3dError(f"{path}: the camera does not move (consecutive chosen frames differ by < 1 grey level); "
                         "film while walking around the scene, not from a tripod")
    out.mkdir(parents=True, exist_ok=True)
    want = set(chosen)
    names: list[str] = []
    size = (0, 0)
    for i, rgb in enumerate(_frames(path, max_side)):
        if i in want:
            name = f"frame_{i:05d}.jpg"
            Image.fromarray(rgb).save(out / name, quality=95)
            names.append(name)
            size = (rgb.shape[1], rgb.shape[0])
    return StagedFrames(names=names, size=size, source_index=chosen)


def write_video(images: list[Path], path: Path, *, fps: int = 10, crf: int = 18) -> Path:
    """Encode ``images`` (one size, even width and height) as an H.264 MP4 at ``path`` through PyAV: a capture
    for the benchmark and the tests, made from rendered frames whose poses are then thrown away."""
    import av
    from PIL import Image

    first = Image.open(images[0])
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height = first.size
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": str(crf)}
        for p in images:
            rgb = np.asarray(Image.open(p).convert("RGB"))
            for packet in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path
