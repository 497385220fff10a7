"""ScanNet's raw ``.sens`` stream: read it frame by frame, and export it to the ScanNet layout.

A ``.sens`` file (ScanNet's ``SensReader``, version 4) is one little-endian binary stream::

    header   version uint32 (= 4)
             sensor name: length uint64, then that many bytes
             intrinsic_color, extrinsic_color, intrinsic_depth, extrinsic_depth: 4x4 float32 each, row-major
             colour compression int32 (-1 unknown, 0 raw RGB, 1 PNG, 2 JPEG)
             depth compression int32 (-1 unknown, 0 raw uint16, 1 zlib uint16, 2 OCCI)
             colour width, colour height, depth width, depth height: uint32 each
             depth shift float32 (raw depth units per metre, 1000 for ScanNet)
             frame count uint64
    frames   per frame: camera_to_world 4x4 float32, colour timestamp uint64, depth timestamp uint64,
             colour size uint64, depth size uint64, then the colour bytes and the depth bytes

(IMU records may follow the frames; they are not read.) A real scan is 1-5 GB, so nothing here holds
more than one frame: :class:`SensFile` reads the header, then :meth:`SensFile.frames` walks the frame
records, reading the bytes of the frames it yields and seeking over the others without reading them.
The file size is checked before every step, so a truncated file fails at the frame where it ends, as
one :class:`SensFormatError` line naming the file, the frame and the problem.

:func:`export_sens` (``cos3d prepare scannet``) writes what ScanNet's exporter writes, for every k-th
frame: ``color/<i>.jpg`` (the stored JPEG bytes, not re-encoded), ``depth/<i>.png`` (uint16 mm),
``pose/<i>.txt`` (4x4 camera-to-world, ``-inf`` where tracking was lost, as in the stream),
``intrinsic/{intrinsic,extrinsic}_{color,depth}.txt`` (4x4). ``<i>`` is the frame's index in the stream.
Numbers are written as the shortest text that reads back to the same float32. :func:`write_sens`
writes the format (tests make small files with it).
"""

from __future__ import annotations

import io
import os
import struct
import time
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from cos3d.core.atomic import atomic_dir, check_output_folder
from cos3d.core.errors import Cos3dError, SceneFormatError

__all__ = [
    "COLOR_COMPRESSION",
    "DEPTH_COMPRESSION",
    "SENS_VERSION",
    "SensExportConfig",
    "SensExportSummary",
    "SensFile",
    "SensFormatError",
    "SensFrame",
    "SensHeader",
    "export_sens",
    "write_sens",
]

SENS_VERSION = 4
COLOR_COMPRESSION = {0: "raw", 1: "png", 2: "jpeg"}
"""Colour compression codes of the format (``-1`` = unknown is refused)."""
DEPTH_COMPRESSION = {0: "raw_ushort", 1: "zlib_ushort", 2: "occi_ushort"}
"""Depth compression codes of the format (``-1`` = unknown is refused; OCCI cannot be decoded here)."""

_FIXED = struct.Struct("<64f2i4IfQ")  # after the sensor name: 4 matrices, 2 codecs, 4 sizes, shift, count
_FRAME = struct.Struct("<16f4Q")  # per-frame record before its colour and depth bytes
MAX_SENSOR_NAME = 4096
"""A longer sensor name means the file is not a ``.sens`` stream."""
MAX_SIDE = 1 << 15
"""Largest image side accepted in the header."""


class SensFormatError(SceneFormatError):
    """A ``.sens`` file is not one, is truncated, or uses a feature this reader does not decode."""


@dataclass(frozen=True)
class SensHeader:
    """The header of a ``.sens`` file (matrices as stored: float32 ``[4, 4]``)."""

    version: int
    sensor_name: str
    intrinsic_color: np.ndarray
    extrinsic_color: np.ndarray
    intrinsic_depth: np.ndarray
    extrinsic_depth: np.ndarray
    color_compression: int
    depth_compression: int
    color_width: int
    color_height: int
    depth_width: int
    depth_height: int
    depth_shift: float
    """Raw depth units per metre (1000: millimetres)."""
    num_frames: int
    """Frame count as declared; a truncated file has fewer (found while iterating)."""
    frames_offset: int
    """Byte offset of the first frame record."""

    @property
    def color_format(self) -> str:
        return COLOR_COMPRESSION[self.color_compression]

    @property
    def depth_format(self) -> str:
        return DEPTH_COMPRESSION[self.depth_compression]


@dataclass
class SensFrame:
    """One frame record: its pose and its still-compressed colour and depth bytes."""

    index: int
    """Position in the stream (0-based): the exporter's file name."""
    camera_to_world: np.ndarray
    """float32 ``[4, 4]``, OpenCV axes; ``-inf`` everywhere when tracking was lost."""
    timestamp_color: int
    timestamp_depth: int
    color_data: bytes
    depth_data: bytes
    header: SensHeader
    path: Path

    def _error(self, problem: str) -> SensFormatError:
        return SensFormatError(f"{self.path}: frame {self.index}: {problem}")

    def decode_color(self) -> np.ndarray:
        """uint8 ``[H, W, 3]`` RGB (JPEG and PNG through PIL; raw as stored)."""
        h = self.header
        if h.color_format == "raw":
            want = h.color_width * h.color_height * 3
            if len(self.color_data) != want:
                raise self._error(f"raw colour has {len(self.color_data)} bytes, expected {want} "
                                  f"for {h.color_width}x{h.color_height} RGB")
            return np.frombuffer(self.color_data, dtype=np.uint8).reshape(h.color_height, h.color_width, 3).copy()
        from PIL import Image

        try:
            with Image.open(io.BytesIO(self.color_data)) as im:
                rgb = np.asarray(im.convert("RGB"))
        except Exception as e:
            raise self._error(f"colour is not a readable {h.color_format.upper()} image ({type(e).__name__})") from None
        return rgb

    def color_size(self) -> tuple[int, int]:
        """(width, height) of the compressed colour image from its own header (no pixel decoding)."""
        h = self.header
        if h.color_format == "raw":
            return h.color_width, h.color_height
        from PIL import Image

        try:
            with Image.open(io.BytesIO(self.color_data)) as im:
                if im.format != h.color_format.upper():
                    raise ValueError(f"it is {im.format}")
                return im.size
        except Exception as e:
            detail = f": {e}" if isinstance(e, ValueError) and str(e).startswith("it is") else ""
            raise self._error(f"colour is not a readable {h.color_format.upper()} image{detail}") from None

    def decode_depth(self) -> np.ndarray:
        """uint16 ``[h, w]`` raw depth (divide by ``header.depth_shift`` for metres; 0 = no depth)."""
        h = self.header
        if h.depth_format == "zlib_ushort":
            try:
                raw = zlib.decompress(self.depth_data)
            except zlib.error as e:
                raise self._error(f"depth is not zlib data ({e})") from None
        elif h.depth_format == "raw_ushort":
            raw = self.depth_data
        else:
            raise self._error(f"depth compression {h.depth_format} cannot be decoded here")
        want = h.depth_width * h.depth_height * 2
        if len(raw) != want:
            raise self._error(f"depth has {len(raw)} bytes, expected {want} for {h.depth_width}x{h.depth_height} uint16")
        return np.frombuffer(raw, dtype="<u2").reshape(h.depth_height, h.depth_width).astype(np.uint16)

    @property
    def pose_valid(self) -> bool:
        return bool(np.all(np.isfinite(self.camera_to_world)))


class SensFile:
    """An open ``.sens`` file: ``header`` is read on opening, frames on demand.

    ``with SensFile(path) as sens: for frame in sens.frames(every=10): ...``. Raises
    :class:`SensFormatError` (one line naming the file) for a file that is not a version-4 ``.sens``
    stream, has an unknown compression code or ends inside its header.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if self.path.is_dir():
            raise SensFormatError(f"{self.path}: is a folder, not a .sens file")
        try:
            self._f: BinaryIO = open(self.path, "rb")  # noqa: SIM115 (closed by close())
        except FileNotFoundError:
            raise SensFormatError(f"{self.path}: no such file; pass the scan's .sens file") from None
        except OSError as e:
            raise SensFormatError(f"{self.path}: cannot open ({e.strerror})") from None
        try:
            self.size = os.fstat(self._f.fileno()).st_size
            self.header = self._read_header()
        except BaseException:
            self._f.close()
            raise

    def __enter__(self) -> SensFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._f.close()

    def _error(self, problem: str) -> SensFormatError:
        return SensFormatError(f"{self.path}: {problem}")

    def _read_exact(self, n: int, what: str) -> bytes:
        data = self._f.read(n)
        if len(data) < n:
            raise self._error(f"truncated: the file ends inside {what} ({self.size} bytes in all); "
                              "download the .sens file again")
        return data

    def _read_header(self) -> SensHeader:
        (version,) = struct.unpack("<I", self._read_exact(4, "the header"))
        if version != SENS_VERSION:
            head = version.to_bytes(4, "little")
            looks = f" (it starts with {head!r})" if all(32 <= b < 127 for b in head) else ""
            raise self._error(
                f"not a ScanNet .sens file of version {SENS_VERSION}: its version field is {version}{looks}"
            )
        (name_len,) = struct.unpack("<Q", self._read_exact(8, "the header"))
        if name_len > MAX_SENSOR_NAME:
            raise self._error(f"not a ScanNet .sens file: its sensor name would be {name_len} bytes long")
        name = self._read_exact(name_len, "the header").decode("utf-8", errors="replace")
        values = _FIXED.unpack(self._read_exact(_FIXED.size, "the header"))
        mats = np.array(values[:64], dtype=np.float32).reshape(4, 4, 4)
        c_comp, d_comp, cw, ch, dw, dh, shift, count = values[64:]
        if c_comp not in COLOR_COMPRESSION:
            known = ", ".join(f"{k} {v}" for k, v in COLOR_COMPRESSION.items())
            raise self._error(f"unknown colour compression type {c_comp} (known: {known})")
        if d_comp not in DEPTH_COMPRESSION:
            known = ", ".join(f"{k} {v}" for k, v in DEPTH_COMPRESSION.items())
            raise self._error(f"unknown depth compression type {d_comp} (known: {known})")
        for what, w, h in (("colour", cw, ch), ("depth", dw, dh)):
            if not (0 < w <= MAX_SIDE and 0 < h <= MAX_SIDE):
                raise self._error(f"the header gives a {what} size of {w}x{h}; not a valid .sens file")
        if not (np.isfinite(shift) and shift > 0):
            raise self._error(f"the header gives a depth shift of {shift}; it must be positive (1000 = millimetres)")
        return SensHeader(
            version=version, sensor_name=name,
            intrinsic_color=mats[0], extrinsic_color=mats[1], intrinsic_depth=mats[2], extrinsic_depth=mats[3],
            color_compression=int(c_comp), depth_compression=int(d_comp),
            color_width=int(cw), color_height=int(ch), depth_width=int(dw), depth_height=int(dh),
            depth_shift=float(shift), num_frames=int(count), frames_offset=self._f.tell(),
        )  # fmt: skip

    def frames(self, every: int = 1, max_frames: int | None = None) -> Iterator[SensFrame]:
        """Yield frames ``0, every, 2*every, ...`` (at most ``max_frames``), lazily: the colour and depth
        bytes of the frames in between are seeked over, never read. A truncated file raises
        :class:`SensFormatError` at the first frame that does not fit."""
        if every < 1:
            raise ValueError(f"every must be >= 1, got {every}")
        h = self.header
        pos, kept = h.frames_offset, 0
        for i in range(h.num_frames):
            if max_frames is not None and kept >= max_frames:
                return
            if pos + _FRAME.size > self.size:
                raise self._truncated(i, f"the file ends {self.size - pos} bytes into the record")
            self._f.seek(pos)
            values = _FRAME.unpack(self._f.read(_FRAME.size))
            n_color, n_depth = values[18], values[19]
            start = pos + _FRAME.size
            end = start + n_color + n_depth
            if end > self.size:
                raise self._truncated(
                    i, f"it declares {n_color} colour and {n_depth} depth bytes but the file ends "
                       f"{self.size - start} bytes later",
                )
            pos = end
            if i % every:
                continue
            color = self._f.read(n_color)
            depth = self._f.read(n_depth)
            if len(color) != n_color or len(depth) != n_depth:  # the file shrank under us
                raise self._truncated(i, "the file ended while reading it")
            kept += 1
            yield SensFrame(
                index=i,
                camera_to_world=np.array(values[:16], dtype=np.float32).reshape(4, 4),
                timestamp_color=int(values[16]),
                timestamp_depth=int(values[17]),
                color_data=color,
                depth_data=depth,
                header=h,
                path=self.path,
            )

    def _truncated(self, index: int, detail: str) -> SensFormatError:
        return self._error(
            f"truncated at frame {index} of {self.header.num_frames} declared: {detail}; download the .sens file again"
        )


# --------------------------------------------------------------------------------------------- export


@dataclass
class SensExportConfig:
    """What ``cos3d prepare scannet`` reads and writes."""

    sens: Path
    """The scan's raw ScanNet ``.sens`` file, e.g. ``scene0000_00.sens`` (required; no default)."""
    out: Path
    """Scene folder to create in the ScanNet export layout, absent or empty unless ``force`` (required; no default)."""
    every: int = 1
    """Export every k-th frame (0, k, 2k, ...); frames keep their index in the stream as their name."""
    max_frames: int | None = None
    """Stop after this many exported frames (default: all)."""
    force: bool = False
    """Replace an existing, non-empty ``out``."""

    def validate(self) -> None:
        """Raise :class:`Cos3dError` naming the flag of the first bad setting."""
        if str(self.sens) in ("", "."):
            raise Cos3dError("--sens is required: the scan's .sens file")
        if str(self.out) in ("", "."):
            raise Cos3dError("--out is required: the scene folder to create (absent or empty)")
        if self.every < 1:
            raise Cos3dError(f"--every must be at least 1, got {self.every}")
        if self.max_frames is not None and self.max_frames < 1:
            raise Cos3dError(f"--max-frames must be at least 1, got {self.max_frames}")


@dataclass
class SensExportSummary:
    """What :func:`export_sens` wrote."""

    out: Path
    header: SensHeader
    frames: int
    """Frames written."""
    invalid_poses: int
    """Of those, frames whose pose is not finite (the scene reader skips them)."""
    seconds: float


def _matrix_text(m: np.ndarray) -> str:
    """Rows of a float32 matrix, each number the shortest text that reads back to the same float32."""
    return "\n".join(" ".join(str(np.float32(v)) for v in row) for row in np.asarray(m, dtype=np.float32)) + "\n"


def _write_color(folder: Path, frame: SensFrame) -> None:
    h = frame.header
    if h.color_format == "raw":
        from PIL import Image

        Image.fromarray(frame.decode_color()).save(folder / f"{frame.index}.png")
        return
    size = frame.color_size()
    if size != (h.color_width, h.color_height):
        raise frame._error(f"colour image is {size[0]}x{size[1]} but the header says {h.color_width}x{h.color_height}")
    ext = ".jpg" if h.color_format == "jpeg" else ".png"
    (folder / f"{frame.index}{ext}").write_bytes(frame.color_data)


def _write_depth(folder: Path, frame: SensFrame) -> None:
    from PIL import Image

    d = frame.decode_depth()
    shift = frame.header.depth_shift
    if shift != 1000.0:  # the layout's PNG depth is millimetres
        d = np.clip(np.round(d.astype(np.float64) * (1000.0 / shift)), 0, 65535).astype(np.uint16)
    Image.fromarray(d).save(folder / f"{frame.index}.png")


def export_sens(cfg: SensExportConfig, progress: bool | None = None) -> SensExportSummary:
    """Export ``cfg.sens`` to ``cfg.out`` in the ScanNet layout (module docstring), every ``cfg.every``-th
    frame. The folder is built in a hidden sibling (``.<name>.tmp-<pid>-*``, :func:`cos3d.core.atomic.atomic_dir`) and moved into place when
    complete, so an interrupted or failed export leaves nothing at ``out``. ``progress``: a tqdm bar
    (frames/s) on stderr; None shows it on a terminal only."""
    from tqdm import tqdm

    cfg.validate()
    t0 = time.perf_counter()
    out = Path(cfg.out).absolute()
    check_output_folder(out, cfg.force)
    with SensFile(cfg.sens) as sens:
        h = sens.header
        if h.depth_format == "occi_ushort":
            raise SensFormatError(f"{sens.path}: depth compression occi_ushort cannot be decoded here "
                                  "(ScanNet's files use zlib_ushort)")
        total = -(-h.num_frames // cfg.every)
        if cfg.max_frames is not None:
            total = min(total, cfg.max_frames)
        with atomic_dir(out, force=cfg.force) as tmp:
            dirs = {name: tmp / name for name in ("color", "depth", "pose", "intrinsic")}
            for d in dirs.values():
                d.mkdir()
            for name, m in (("intrinsic_color", h.intrinsic_color), ("extrinsic_color", h.extrinsic_color),
                            ("intrinsic_depth", h.intrinsic_depth), ("extrinsic_depth", h.extrinsic_depth)):
                (dirs["intrinsic"] / f"{name}.txt").write_text(_matrix_text(m))
            written = invalid = 0
            disable = None if progress is None else not progress
            with tqdm(total=total, unit="frame", desc=f"export {sens.path.name}", disable=disable,
                      dynamic_ncols=True) as bar:  # fmt: skip
                for frame in sens.frames(every=cfg.every, max_frames=cfg.max_frames):
                    _write_color(dirs["color"], frame)
                    _write_depth(dirs["depth"], frame)
                    (dirs["pose"] / f"{frame.index}.txt").write_text(_matrix_text(frame.camera_to_world))
                    written += 1
                    invalid += not frame.pose_valid
                    bar.update(1)
            if written == 0:
                raise SensFormatError(f"{sens.path}: the file holds no frames")
    return SensExportSummary(out=out, header=h, frames=written, invalid_poses=invalid,
                             seconds=time.perf_counter() - t0)


# --------------------------------------------------------------------------------------------- writer


def _compress_color(color: bytes | np.ndarray, code: int) -> bytes:
    if isinstance(color, (bytes, bytearray)):
        return bytes(color)
    arr = np.ascontiguousarray(color, dtype=np.uint8)
    if code == 0:
        return arr.tobytes()
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG" if code == 1 else "JPEG", quality=90)
    return buf.getvalue()


def _compress_depth(depth: bytes | np.ndarray, code: int) -> bytes:
    if isinstance(depth, (bytes, bytearray)):
        return bytes(depth)
    raw = np.ascontiguousarray(depth, dtype="<u2").tobytes()
    return zlib.compress(raw) if code == 1 else raw


def write_sens(
    path: str | os.PathLike,
    poses: Sequence[np.ndarray],
    colors: Sequence[bytes | np.ndarray],
    depths: Sequence[bytes | np.ndarray],
    *,
    intrinsic_color: np.ndarray,
    intrinsic_depth: np.ndarray,
    color_size: tuple[int, int],
    depth_size: tuple[int, int],
    extrinsic_color: np.ndarray | None = None,
    extrinsic_depth: np.ndarray | None = None,
    depth_shift: float = 1000.0,
    sensor_name: str = "StructureSensor",
    color_compression: int = 2,
    depth_compression: int = 1,
    version: int = SENS_VERSION,
    num_frames: int | None = None,
    timestamps: Sequence[tuple[int, int]] | None = None,
) -> Path:
    """Write a ``.sens`` file in the exact layout :class:`SensFile` reads (module docstring).

    ``poses``: 4x4 camera-to-world each. ``colors``: compressed bytes as they are, or uint8 ``[H, W, 3]``
    compressed by ``color_compression`` (2 JPEG, 1 PNG, 0 raw). ``depths``: bytes as they are, or uint16
    ``[h, w]`` (zlib for ``depth_compression`` 1, raw for 0). ``intrinsic_*``: 3x3 or 4x4. Sizes are
    (width, height). ``version``, the codes and ``num_frames`` (default: the frames given) are written
    as given, so tests can make invalid files. Returns ``path``.
    """
    if not len(poses) == len(colors) == len(depths):
        raise ValueError(f"got {len(poses)} poses, {len(colors)} colours and {len(depths)} depths")

    def mat4(m: np.ndarray | None) -> np.ndarray:
        out = np.eye(4, dtype=np.float32)
        if m is not None:
            m = np.asarray(m, dtype=np.float32)
            out[: m.shape[0], : m.shape[1]] = m
        return out

    name = sensor_name.encode("utf-8")
    count = len(poses) if num_frames is None else num_frames
    path = Path(path)
    with open(path, "wb") as f:
        f.write(struct.pack("<IQ", version, len(name)) + name)
        mats = [mat4(intrinsic_color), mat4(extrinsic_color), mat4(intrinsic_depth), mat4(extrinsic_depth)]
        f.write(_FIXED.pack(*np.concatenate([m.ravel() for m in mats]).tolist(), color_compression,
                            depth_compression, *color_size, *depth_size, depth_shift, count))  # fmt: skip
        for i, (pose, color, depth) in enumerate(zip(poses, colors, depths)):
            c = _compress_color(color, color_compression)
            d = _compress_depth(depth, depth_compression)
            ts = timestamps[i] if timestamps is not None else (i * 33_333, i * 33_333)
            f.write(_FRAME.pack(*np.asarray(pose, dtype=np.float32).ravel().tolist(), *ts, len(c), len(d)))
            f.write(c)
            f.write(d)
    return path
