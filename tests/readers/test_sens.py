"""ScanNet ``.sens`` reading and ``cos3d prepare scannet``, on small ``.sens`` files written here."""

from __future__ import annotations

import io
import itertools
import struct
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cos3d.cli import entrypoint
from cos3d.readers import load_scene
from cos3d.readers.sens import SensFile, SensFormatError, write_sens


def _pose(i: int) -> np.ndarray:
    a = 0.3 * i
    c2w = np.eye(4, dtype=np.float32)
    c2w[:3, :3] = [[np.cos(a), -np.sin(a), 0.0], [np.sin(a), np.cos(a), 0.0], [0.0, 0.0, 1.0]]
    c2w[:3, 3] = [0.1 * i, -0.25 + 0.05 * i, 1.5]
    return c2w


def _K(fx: float, fy: float, cx: float, cy: float) -> np.ndarray:
    return np.array([[fx, 0, cx], [0, fy, cy], [0, 0, 1]], dtype=np.float32)


def _jpeg(size: tuple[int, int], seed: int) -> bytes:
    w, h = size
    y, x = np.mgrid[0:h, 0:w]
    img = np.stack([(x * 255 // w + 40 * seed) % 256, y * 255 // h, np.full_like(x, 30 * seed % 256)], -1)
    buf = io.BytesIO()
    Image.fromarray(img.astype(np.uint8)).save(buf, format="JPEG", quality=85)
    return buf.getvalue()


def make_sens(path: Path, n: int = 7, color_size=(64, 48), depth_size=(32, 24), invalid=(4,), **kw) -> dict:
    """A small .sens file: ``n`` frames, frames in ``invalid`` with a -inf pose (lost tracking)."""
    rng = np.random.default_rng(0)
    (cw, ch), (dw, dh) = color_size, depth_size
    poses = [np.full((4, 4), -np.inf, np.float32) if i in invalid else _pose(i) for i in range(n)]
    colors = [_jpeg(color_size, i) for i in range(n)]
    depths = [rng.integers(0, 5000, size=(dh, dw)).astype(np.uint16) for _ in range(n)]
    Kc = _K(0.9 * cw, 0.91 * cw, (cw - 1) / 2 + 0.3, (ch - 1) / 2 - 0.2)
    Kd = _K(0.88 * dw, 0.87 * dw, (dw - 1) / 2 - 0.25, (dh - 1) / 2 + 0.4)  # its own, not Kc scaled
    ext_d = np.eye(4, dtype=np.float32)
    ext_d[:3, 3] = [0.025, 0.0, 0.0]
    args = dict(intrinsic_color=Kc, intrinsic_depth=Kd, color_size=color_size, depth_size=depth_size,
                extrinsic_depth=ext_d) | kw  # fmt: skip
    write_sens(path, poses, colors, depths, **args)
    return dict(poses=poses, colors=colors, depths=depths, Kc=Kc, Kd=Kd, ext_d=ext_d)


def export(capsys, sens: Path, out: Path, *extra: str) -> tuple[int, str, str]:
    rc = entrypoint(["prepare", "scannet", "--sens", str(sens), "--out", str(out), *extra])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def test_export_every_2_reads_back(tmp_path, capsys):
    sens, out = tmp_path / "scene0000_00.sens", tmp_path / "data" / "scene0000_00"
    data = make_sens(sens)
    rc, stdout, err = export(capsys, sens, out, "--every", "2")
    assert rc == 0, err
    assert "4 of 7 frames (every 2); 1 lost tracking" in stdout

    # the exporter's files: every 2nd frame by its stream index, the -inf pose written as it is
    assert sorted(p.name for p in (out / "color").iterdir()) == ["0.jpg", "2.jpg", "4.jpg", "6.jpg"]
    assert sorted(p.name for p in (out / "depth").iterdir()) == ["0.png", "2.png", "4.png", "6.png"]
    assert sorted(p.name for p in (out / "intrinsic").iterdir()) == [
        "extrinsic_color.txt", "extrinsic_depth.txt", "intrinsic_color.txt", "intrinsic_depth.txt"]
    assert np.all(np.loadtxt(out / "pose" / "4.txt") == -np.inf)
    assert np.array_equal(np.loadtxt(out / "intrinsic" / "extrinsic_depth.txt").astype(np.float32), data["ext_d"])
    for i in (0, 2, 4, 6):
        assert (out / "color" / f"{i}.jpg").read_bytes() == data["colors"][i]  # not re-encoded
        with Image.open(out / "depth" / f"{i}.png") as im:
            assert np.array_equal(np.asarray(im).astype(np.uint16), data["depths"][i])
    assert [p.name for p in tmp_path.joinpath("data").iterdir()] == ["scene0000_00"]  # no temporary left

    scene = load_scene(out)
    assert [f.name for f in scene.frames] == ["0", "2", "6"]  # frame 4 lost tracking: skipped, noted
    assert any("skipped 1 of 4" in n for n in scene.notes)
    for f in scene.frames:
        i = int(f.name)
        assert np.array_equal(f.camera.c2w.astype(np.float32), data["poses"][i])
        assert (f.camera.width, f.camera.height) == (64, 48)
        assert np.array_equal(f.camera.K.astype(np.float32), data["Kc"])
        assert np.array_equal(f.depth_K.astype(np.float32), data["Kd"])
        assert f.load_image().shape == (48, 64, 3)
        assert f.load_depth().shape == (48, 64)  # resampled to the colour camera through depth_K


def test_colour_and_depth_of_different_sizes_keep_their_intrinsics(tmp_path, capsys):
    """ScanNet's 1296x968 colour / 640x480 depth, scaled down."""
    sens, out = tmp_path / "s.sens", tmp_path / "out"
    data = make_sens(sens, n=3, color_size=(128, 96), depth_size=(64, 48), invalid=())
    rc, _, err = export(capsys, sens, out)
    assert rc == 0, err
    scene = load_scene(out)
    assert [f.name for f in scene.frames] == ["0", "1", "2"]
    f = scene.frames[1]
    assert f.size == (128, 96)
    assert np.array_equal(f.camera.K.astype(np.float32), data["Kc"])
    assert np.array_equal(f.depth_K.astype(np.float32), data["Kd"])
    with Image.open(f.depth_path) as im:
        assert im.size == (64, 48)
        assert np.array_equal(np.asarray(im).astype(np.uint16), data["depths"][1])
    depth = f.load_depth()
    assert depth.shape == (96, 128)
    raw = set((data["depths"][1].astype(np.float32) / 1000.0).ravel().tolist())
    assert set(depth.ravel().tolist()) <= raw | {0.0}  # nearest samples of the written depth, in metres


def test_max_frames_and_skipped_frames_are_not_decoded(tmp_path, capsys):
    sens, out = tmp_path / "s.sens", tmp_path / "out"
    n = 9
    colors = [_jpeg((32, 24), i) if i % 3 == 0 else b"not a jpeg" for i in range(n)]
    depths = [np.full((24, 32), 1234, np.uint16) if i % 3 == 0 else b"not zlib" for i in range(n)]
    write_sens(sens, [_pose(i) for i in range(n)], colors, depths, intrinsic_color=_K(30, 30, 15.5, 11.5),
               intrinsic_depth=_K(30, 30, 15.5, 11.5), color_size=(32, 24), depth_size=(32, 24))  # fmt: skip
    rc, stdout, err = export(capsys, sens, out, "--every", "3", "--max-frames", "2")
    assert rc == 0, err
    assert [f.name for f in load_scene(out).frames] == ["0", "3"]
    assert "2 of 9 frames (every 3)" in stdout


def test_depth_shift_other_than_millimetres_is_converted(tmp_path, capsys):
    sens, out = tmp_path / "s.sens", tmp_path / "out"
    data = make_sens(sens, n=2, invalid=(), depth_shift=5000.0)
    assert export(capsys, sens, out)[0] == 0
    with Image.open(out / "depth" / "1.png") as im:
        mm = np.asarray(im).astype(np.int64)
    assert np.array_equal(mm, np.round(data["depths"][1] / 5.0).astype(np.int64))


def test_force_replaces_a_non_empty_out(tmp_path, capsys):
    sens, out = tmp_path / "s.sens", tmp_path / "out"
    make_sens(sens, n=2, invalid=())
    out.mkdir()
    (out / "old.txt").write_text("x")
    rc, _, err = export(capsys, sens, out)
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "--force" in err
    assert (out / "old.txt").is_file()
    assert export(capsys, sens, out, "--force")[0] == 0
    assert not (out / "old.txt").exists() and (out / "color" / "1.jpg").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "s.sens"]


def _header_size(name: str = "StructureSensor") -> int:
    return 4 + 8 + len(name) + 4 * 64 + 4 * 2 + 4 * 4 + 4 + 8


@pytest.mark.parametrize(
    "case, expect",
    [
        ("truncated", "truncated at frame 3 of 7"),
        ("header_cut", "ends inside the header"),
        ("version", "version field is 3"),
        ("colour_codec", "unknown colour compression type 7"),
        ("depth_codec", "unknown depth compression type -1"),
        ("not_sens", "not a ScanNet .sens file"),
        ("missing", "no such file"),
        ("occi", "occi_ushort cannot be decoded"),
    ],
)
def test_bad_input_is_one_line_naming_the_file(tmp_path, capsys, case, expect):
    sens, out = tmp_path / "scene.sens", tmp_path / "out"
    if case == "truncated":
        make_sens(sens)
        raw = sens.read_bytes()
        frame = (len(raw) - _header_size()) // 7
        sens.write_bytes(raw[: _header_size() + int(3.5 * frame)])
    elif case == "header_cut":
        make_sens(sens)
        sens.write_bytes(sens.read_bytes()[:100])
    elif case == "version":
        make_sens(sens, version=3)
    elif case == "colour_codec":
        make_sens(sens, color_compression=7)
    elif case == "depth_codec":
        make_sens(sens, depth_compression=-1)
    elif case == "not_sens":
        sens.write_text("ply\nformat ascii 1.0\nelement vertex 0\nend_header\n")
    elif case == "occi":
        make_sens(sens, depth_compression=2)
    rc, stdout, err = export(capsys, sens, out)
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1, err
    assert lines[0].startswith("cos3d prepare: error: ") and str(sens) in lines[0] and expect in lines[0], lines[0]
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ([] if case == "missing" else ["scene.sens"])


def test_bad_flags_are_one_line(tmp_path, capsys):
    sens = tmp_path / "s.sens"
    make_sens(sens, n=1, invalid=())
    for extra, expect in ((["--every", "0"], "--every must be at least 1"), (["--max-frames", "0"], "--max-frames")):
        rc, _, err = export(capsys, sens, tmp_path / "out", *extra)
        assert rc == 2 and len(err.strip().splitlines()) == 1 and expect in err, err
    assert entrypoint(["prepare", "scannet", "--out", str(tmp_path / "o")]) == 2
    assert "--sens is required" in capsys.readouterr().err


def test_header_only_until_frames_are_asked_for(tmp_path):
    """Opening reads the header alone: a huge declared frame count with a truncated body fails only
    when iteration reaches the missing frame."""
    sens = tmp_path / "huge.sens"
    make_sens(sens, n=3, invalid=(), num_frames=10**12)
    raw = sens.read_bytes()
    sens.write_bytes(raw[:-10])  # frame 2 cut short
    with SensFile(sens) as f:
        assert f.header.num_frames == 10**12
        assert (f.header.color_width, f.header.depth_width, f.header.depth_shift) == (64, 32, 1000.0)
        it = f.frames()
        first = list(itertools.islice(it, 2))
        assert [fr.index for fr in first] == [0, 1]
        assert np.array_equal(first[1].camera_to_world, _pose(1))
        assert first[1].decode_color().shape == (48, 64, 3) and first[1].decode_depth().shape == (24, 32)
        with pytest.raises(SensFormatError, match="truncated at frame 2 of 1000000000000 declared"):
            next(it)


def test_frames_stream_without_holding_the_file(tmp_path):
    """Frames in between are seeked over: memory stays about one frame while the file is 10 frames."""
    sens = tmp_path / "big.sens"
    payload = 2 << 20
    rng = np.random.default_rng(1)
    blobs = [rng.integers(0, 256, payload, dtype=np.uint8).tobytes() for _ in range(2)]
    n = 10
    write_sens(sens, [_pose(i) for i in range(n)], [blobs[i % 2] for i in range(n)], [b"d"] * n,
               intrinsic_color=_K(30, 30, 15.5, 11.5), intrinsic_depth=_K(30, 30, 15.5, 11.5),
               color_size=(32, 24), depth_size=(32, 24))  # fmt: skip
    del blobs
    assert sens.stat().st_size > n * payload
    tracemalloc.start()
    try:
        with SensFile(sens) as f:
            indices = [fr.index for fr in f.frames(every=5)]
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert indices == [0, 5]
    assert peak < 2.5 * payload, peak


def test_writer_layout_is_the_documented_one(tmp_path):
    """Byte offsets of the header fields, checked by hand (not through the reader)."""
    sens = tmp_path / "s.sens"
    data = make_sens(sens, n=1, invalid=())
    raw = sens.read_bytes()
    version, name_len = struct.unpack_from("<IQ", raw, 0)
    assert (version, raw[12:12 + name_len]) == (4, b"StructureSensor")
    off = 12 + name_len
    Kc = np.frombuffer(raw, "<f4", 16, off).reshape(4, 4)
    assert np.array_equal(Kc[:3, :3], data["Kc"]) and Kc[3, 3] == 1
    off += 4 * 64
    assert struct.unpack_from("<2i4IfQ", raw, off) == (2, 1, 64, 48, 32, 24, 1000.0, 1)
    off += 8 + 16 + 4 + 8
    frame = struct.unpack_from("<16f4Q", raw, off)
    assert np.array_equal(np.array(frame[:16], np.float32).reshape(4, 4), data["poses"][0])
    n_color, n_depth = frame[18], frame[19]
    off += 96
    assert raw[off:off + n_color] == data["colors"][0] and off + n_color + n_depth == len(raw)
