"""``cos3d export`` on the session run, and the splat formats (.compressed.ply, .spz, .sog, .splat).

The splat formats are checked against an independent implementation, npm's ``@playcanvas/splat-transform``
(2.7.1, which writes .spz through Niantic's own library compiled to WebAssembly), two ways:

- **Fixtures** (tests/fixtures/splats, made by its make_fixtures.py): ``scene.ply`` is a 300-Gaussian degree-3
  scene written by cos3d; the other files are splat-transform's conversions of it. cos3d reads each and every
  attribute must equal the source within the format's quantisation step (:data:`SPZ_STEP`,
  :func:`_compressed_ply_tolerance`). These run everywhere, npm or not.
- **Live** (:func:`test_splat_transform_interop`): the tool converts files both ways on the spot, and its own
  decoding of the fixtures must equal cos3d's to float32 rounding. It runs where ``bash scripts/install.sh test``
  installed the tool (``.venv/npm``: where npm exists) or ``$COS3D_SPLAT_TRANSFORM`` / PATH has it, and skips,
  saying why, elsewhere.
"""

from __future__ import annotations

import gzip
import json
import math
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from cos3d.cli import entrypoint
from cos3d.core.errors import Cos3dError
from cos3d.data.gaussians import Gaussians
from cos3d.data.ply import (SH_C0, read_gaussians, read_ply, read_splat, read_spz, write_ply, write_spz)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "splats"
ROOT = Path(__file__).resolve().parents[2]

SPZ_STEP = {
    "means": 0.5 / (1 << 12),  # 24-bit fixed point with 12 fractional bits (header byte 13), rounded
    "opacity": 0.5 / 255,  # alpha = round(sigmoid(opacity) * 255)
    "dc": 0.5 / (0.15 * 255),  # colour = round((dc * 0.15 + 0.5) * 255)
    "log_scale": 0.5 / 16,  # scale = round((log_scale + 10) * 16)
    # rotation "smallest three": 3 x 9-bit magnitudes of |q_i| <= sqrt(1/2), rounded; the largest is rebuilt
    # from the unit norm and carries at most the sum of the three errors
    "quat": 3 * 0.5 * math.sqrt(0.5) / 511,
    "sh": 0.5 / 128,  # SH = round(x * 128 + 128): all 8 bits, as cos3d writes them
    # Niantic's writer (splat-transform's backend) then rounds to buckets of 2^(8 - bits): sh1Bits 5 for band 1,
    # shRestBits 4 for bands 2-3 (its defaults, and what splat-transform passes): +- half a bucket more
    "sh1_niantic": (0.5 + 8 / 2) / 128,
    "sh_rest_niantic": (0.5 + 16 / 2) / 128,
}
"""Half a quantisation step of each .spz attribute, from the format's definition (nianticlabs/spz README "File
Format" and load-spz.cc's packGaussians, which splat-transform runs): an attribute decoded from .spz is within
this of the value written."""


def _random_gaussians(n=600, degree=1, seed=0) -> Gaussians:
    g = torch.Generator().manual_seed(seed)
    k = (degree + 1) ** 2
    sh = torch.randn(n, k, 3, generator=g) * 0.2
    sh[:, 0] = torch.randn(n, 3, generator=g) * 0.8
    return Gaussians(
        means=torch.randn(n, 3, generator=g),
        quats=torch.nn.functional.normalize(torch.randn(n, 4, generator=g), dim=1),
        log_scales=torch.rand(n, 3, generator=g) * -3 - 1,
        opacity_logits=torch.randn(n, generator=g),
        sh=sh,
        features={},
    )


def _quat_error(g: Gaussians, h: Gaussians) -> np.ndarray:
    """[N, 4] component errors of unit quaternions, q and -q being one rotation."""
    q1 = torch.nn.functional.normalize(g.quats.double(), dim=1)
    q2 = torch.nn.functional.normalize(h.quats.double(), dim=1)
    sign = torch.where((q1 * q2).sum(1, keepdim=True) < 0, -1.0, 1.0)
    return (q1 - sign * q2).abs().numpy()


def _within(name: str, err, tol) -> None:
    """``err <= tol`` everywhere (both broadcastable), with float32 rounding of the stored values as slack."""
    err, tol = np.asarray(err, np.float64), np.asarray(tol, np.float64)
    over = err - (tol + 2e-6 * (1 + np.abs(tol)))
    assert (over <= 0).all(), f"{name}: error {err.max():.6g} exceeds the format's step (worst by {over.max():.3g})"


def _check_spz(g: Gaussians, h: Gaussians, *, sh1: float, sh_rest: float, means_scale: np.ndarray | None = None) -> None:
    """``h`` (decoded .spz) equals ``g`` within :data:`SPZ_STEP`; SH band 1 within ``sh1``, bands 2-3 ``sh_rest``."""
    assert h.num == g.num and h.sh.shape == g.sh.shape
    d = lambda a, b: (a.double() - b.double()).abs().numpy()  # noqa: E731
    # positions: fixed point, plus float32 rounding of the far ones (30 m: 2e-6)
    _within("means", d(g.means, h.means), SPZ_STEP["means"] + 1.2e-7 * g.means.abs().numpy())
    _within("opacity", d(g.opacities, h.opacities), SPZ_STEP["opacity"])
    _within("log_scales", d(g.log_scales, h.log_scales), SPZ_STEP["log_scale"])
    _within("sh dc", d(g.sh[:, 0], h.sh[:, 0]), SPZ_STEP["dc"])
    _within("quats", _quat_error(g, h), SPZ_STEP["quat"])
    if g.sh.shape[1] > 1:
        _within("sh band 1", d(g.sh[:, 1:4], h.sh[:, 1:4]), sh1)
        _within("sh bands 2-3", d(g.sh[:, 4:], h.sh[:, 4:]), sh_rest)


def _assert_close(g: Gaussians, h: Gaussians, *, means=2e-4, quat=3e-3, log_scale=0.035, opacity=2.5e-3,
                  dc=0.015, rest=0.05):
    assert h.num == g.num and h.sh.shape == g.sh.shape
    assert (g.means - h.means).abs().max() < means
    assert _quat_error(g, h).max() < quat
    assert (g.log_scales - h.log_scales).abs().max() < log_scale
    assert (g.opacities - h.opacities).abs().max() < opacity
    assert (g.sh[:, 0] - h.sh[:, 0]).abs().max() < dc
    if g.sh.shape[1] > 1:
        assert (g.sh[:, 1:] - h.sh[:, 1:]).abs().max() < rest


# ---------------------------------------------------------------------------------------------------
# formats: cos3d's own writers


@pytest.mark.parametrize("version", [4, 3])
@pytest.mark.parametrize("degree", [0, 1, 3])
def test_spz_round_trip(tmp_path, degree, version):
    g = _random_gaussians(degree=degree)
    write_spz(tmp_path / "a.spz", g, version=version)
    head = (tmp_path / "a.spz").read_bytes()[:4]
    assert head[: 4 if version == 4 else 2] == (b"NGSP" if version == 4 else b"\x1f\x8b")  # v4: plaintext header; v1-3: one gzip stream
    _check_spz(g, read_spz(tmp_path / "a.spz"), sh1=SPZ_STEP["sh"], sh_rest=SPZ_STEP["sh"])
    _check_spz(g, read_gaussians(tmp_path / "a.spz"), sh1=SPZ_STEP["sh"], sh_rest=SPZ_STEP["sh"])
    # stored in the .spz axes (RUB): y and z reversed
    raw = read_spz(tmp_path / "a.spz", convert=False)
    np.testing.assert_allclose(raw.means[:, 1].numpy(), -g.means[:, 1].numpy(), atol=2e-4)


def _spz_v4_parts(data: bytes) -> tuple[tuple, list[tuple[int, int]], list[bytes]]:
    """Header fields, table of contents and raw streams of a version-4 .spz, by the format's README."""
    header = struct.unpack("<IIIBBBBI12s", data[:32])
    toc_at, streams = header[7], header[6]
    toc = [struct.unpack_from("<QQ", data, toc_at + 16 * i) for i in range(streams)]
    out, off = [], toc_at + 16 * streams
    for c, _ in toc:
        out.append(data[off:off + c])
        off += c
    assert off == len(data)
    return header, toc, out


@pytest.mark.parametrize("degree", [0, 3])
def test_spz_v4_layout_is_v3_bytes_in_zstd_streams(tmp_path, degree):
    """Version 4 is a 32-byte plaintext header (magic, version, count, SH degree, fractional bits, flags, stream
    count, table offset, 12 zero bytes), a table of (compressed, uncompressed) u64 sizes and one Zstandard stream
    per non-empty attribute, in v3's order: the streams joined are v3's gzip body byte for byte."""
    import zstandard

    g = _random_gaussians(n=100, degree=degree)
    write_spz(tmp_path / "a.spz", g)  # the default is the current version, 4
    write_spz(tmp_path / "b.spz", g, version=3)
    header, toc, streams = _spz_v4_parts((tmp_path / "a.spz").read_bytes())
    assert header == (0x5053474E, 4, 100, degree, 12, 0, 6 if degree else 5, 32, bytes(12))
    body = b"".join(zstandard.ZstdDecompressor().decompress(s) for s in streams)
    assert [u for _, u in toc] == [900, 100, 300, 300, 400] + ([100 * 45] if degree else [])
    assert body == gzip.decompress((tmp_path / "b.spz").read_bytes())[16:]


def _v4_with(data: bytes, *, ext: bytes = b"", toc_at: int | None = None, streams: int | None = None) -> bytes:
    """A copy of a version-4 .spz with extension records put in front of its table (flags 0x2)."""
    header, toc, parts = _spz_v4_parts(data)
    h = list(header)
    h[5] |= 2 if ext else 0
    h[7] = 32 + len(ext) if toc_at is None else toc_at
    h[6] = h[6] if streams is None else streams
    return (struct.pack("<IIIBBBBI12s", *h) + ext + b"".join(struct.pack("<QQ", *e) for e in toc)
            + b"".join(parts))


def test_spz_v4_extensions_and_damage(tmp_path):
    g = _random_gaussians(n=50, degree=1)
    good = write_spz(tmp_path / "good.spz", g).read_bytes()
    rec = lambda kind, payload: struct.pack("<II", kind, len(payload)) + payload  # noqa: E731
    # an unknown vendor's record is skipped by its length; SPZ_ADOBE_coordinate_system RUB (4) is the default
    (tmp_path / "ext.spz").write_bytes(_v4_with(good, ext=rec(0x12340001, b"xyz") + rec(0xADBE0003, struct.pack("<I", 4))))
    _check_spz(g, read_spz(tmp_path / "ext.spz"), sh1=SPZ_STEP["sh"], sh_rest=SPZ_STEP["sh"])
    # stored in RDF (the .ply axes): read with no turn
    (tmp_path / "rdf.spz").write_bytes(_v4_with(good, ext=rec(0xADBE0003, struct.pack("<I", 6))))
    h = read_spz(tmp_path / "rdf.spz")
    np.testing.assert_allclose(h.means.numpy(), read_spz(tmp_path / "good.spz", convert=False).means.numpy())
    (tmp_path / "luf.spz").write_bytes(_v4_with(good, ext=rec(0xADBE0003, struct.pack("<I", 7))))
    with pytest.raises(Cos3dError, match=r"luf\.spz: .spz stores its splats in LUF axes"):
        read_spz(tmp_path / "luf.spz")
    (tmp_path / "long.spz").write_bytes(_v4_with(good, ext=struct.pack("<II", 0xADBE0003, 400)))
    with pytest.raises(Cos3dError, match="runs past"):
        read_spz(tmp_path / "long.spz")
    for name, data, message in [
        ("short.spz", good[:20], "version-4 header is 20 bytes"),
        ("cut.spz", good[:-10], "streams add up to"),
        ("streams.spz", _v4_with(good, streams=5), "lists 5 streams"),
        ("toc.spz", _v4_with(good, toc_at=len(good)), "table at byte"),
        ("junk.spz", good[:128] + bytes(40) + good[168:], "stream 0 is not valid Zstandard data"),  # after the table
        ("v3head.spz", good[:4] + struct.pack("<I", 3) + good[8:], "versions 1-3 are gzip"),
        ("sh4.spz", good[:12] + bytes([4]) + good[13:], "SH degree 4 is not 0-3.*-H 3"),
    ]:
        (tmp_path / name).write_bytes(data)
        with pytest.raises(Cos3dError, match=message) as e:
            read_spz(tmp_path / name)
        assert name in str(e.value) and "\n" not in str(e.value)


def test_spz_and_splat_errors_are_one_line(tmp_path):
    (tmp_path / "bad.spz").write_bytes(b"not gzip")
    with pytest.raises(Cos3dError, match="gzip.*NGSP"):
        read_spz(tmp_path / "bad.spz")
    header = np.array([0x5053474E, 5, 0], "<u4").tobytes() + bytes([0, 12, 0, 0])
    (tmp_path / "v5.spz").write_bytes(gzip.compress(header))
    with pytest.raises(Cos3dError, match="version 5 is not supported"):
        read_spz(tmp_path / "v5.spz")
    (tmp_path / "bad.splat").write_bytes(b"x" * 33)
    with pytest.raises(Cos3dError, match="multiple of 32"):
        read_splat(tmp_path / "bad.splat")
    with pytest.raises(Cos3dError, match="unknown splat file type"):
        read_gaussians(tmp_path / "scene.obj")
    with pytest.raises(Cos3dError, match="version 2.*4 .*or 3"):
        write_spz(tmp_path / "x.spz", _random_gaussians(n=3), version=2)


def test_splat_reader(tmp_path):
    """A .splat written by the format's definition (antimatter15) reads back."""
    g = _random_gaussians(degree=0)
    n = g.num
    rec = np.zeros(n, dtype=[("p", "<f4", 3), ("s", "<f4", 3), ("c", "u1", 4), ("r", "u1", 4)])
    rec["p"] = g.means.numpy()
    rec["s"] = g.scales.numpy()
    rgb = 0.5 + SH_C0 * g.sh[:, 0].numpy()
    rec["c"][:, :3] = np.clip(np.round(rgb * 255), 0, 255)
    rec["c"][:, 3] = np.round(g.opacities.numpy() * 255)
    q = torch.nn.functional.normalize(g.quats, dim=1).numpy()
    rec["r"] = np.clip(np.round((q + 1) / 2 * 255), 0, 255)
    (tmp_path / "a.splat").write_bytes(rec.tobytes())
    h = read_gaussians(tmp_path / "a.splat")
    ok = (rgb > 0.01).all(1) & (rgb < 0.99).all(1)  # colours outside [0, 1] clip in the format
    _assert_close(g.subset(torch.from_numpy(np.nonzero(ok)[0])), h.subset(torch.from_numpy(np.nonzero(ok)[0])),
                  means=1e-6, quat=0.02, log_scale=1e-5, dc=0.01)


# ---------------------------------------------------------------------------------------------------
# formats: files written by splat-transform (tests/fixtures/splats), read by cos3d


def _fixture_source() -> Gaussians:
    return read_ply(FIXTURES / "scene.ply")


def test_fixtures_are_small_and_described():
    sizes = {p.name: p.stat().st_size for p in FIXTURES.iterdir() if p.is_file()}
    assert {"scene.ply", "scene.compressed.ply", "scene.v4.spz", "scene.v3.spz", "scene.sh0.v4.spz", "scene.sog"} <= set(sizes)
    assert sum(sizes.values()) < 200_000, sizes
    src = _fixture_source()
    assert src.num == 300 and src.sh_degree == 3


@pytest.mark.parametrize("name,version,degree", [("scene.v4.spz", 4, 3), ("scene.v3.spz", 3, 3), ("scene.sh0.v4.spz", 4, 0)])
def test_spz_written_by_splat_transform(name, version, degree):
    """splat-transform's .spz (its default, version 4, and version 3; degree 3 and, with ``-H 0``, degree 0) read
    by cos3d: every attribute within half a step of the source, SH within Niantic's bucket rounding; y and z
    reversed on disk (RUB) and back in the .ply axes after reading."""
    path = FIXTURES / name
    data = path.read_bytes()
    head = data[:16] if version == 4 else gzip.decompress(data)[:16]
    magic, ver, n, deg, frac = struct.unpack("<IIIBB", head[:14])
    assert (magic, ver, n, deg, frac) == (0x5053474E, version, 300, degree, 12)
    src = _fixture_source()
    if degree == 0:
        src.sh = src.sh[:, :1].contiguous()
    h = read_gaussians(path)
    assert h.sh_degree == degree
    _check_spz(src, h, sh1=SPZ_STEP["sh1_niantic"], sh_rest=SPZ_STEP["sh_rest_niantic"])
    stored = read_spz(path, convert=False)
    _within("RUB y", (stored.means[:, 1] + src.means[:, 1]).abs().numpy(), 2 * SPZ_STEP["means"] + 1e-5)


def _compressed_ply_tolerance(path: Path) -> dict[str, np.ndarray]:
    """Per-splat half steps of a compressed PLY, from the format (PlayCanvas's, as splat-transform's
    writeCompressedPly and the engine's reader define it) and the file's own chunk table: per 256 splats a
    float32 min/max per axis; positions and log-scales 11/10/11-bit unorms between them (half a step:
    (max - min) / (2 (2^bits - 1)); a span under 1e-5 stores 0, so up to 1e-5); colour 8 bits of
    0.5 + SH_C0 * dc between the chunk's min_r..max_b; opacity 8 bits of sigmoid; rotation 2 bits for the largest
    component and 3 x 10-bit unorms of the others in [-sqrt(1/2), sqrt(1/2)] (the largest rebuilt, as in .spz);
    higher SH 8 bits over [-4, 4), decoded at the bucket centre: 8 / 512."""
    from plyfile import PlyData

    ply = PlyData.read(str(path))
    c = ply["chunk"].data
    n = len(ply["vertex"].data)
    ci = np.arange(n) // 256
    col = lambda nm: np.asarray(c[nm], np.float64)[ci]  # noqa: E731
    half = lambda lo, hi, bits: np.maximum((col(hi) - col(lo)) / (2 * ((1 << bits) - 1)), 1e-5)  # noqa: E731
    bits = (11, 10, 11)
    return {
        "means": np.stack([half(f"min_{a}", f"max_{a}", b) for a, b in zip("xyz", bits)], 1),
        "log_scales": np.stack([half(f"min_scale_{a}", f"max_scale_{a}", b) for a, b in zip("xyz", bits)], 1),
        "dc": np.stack([(col(f"max_{ch}") - col(f"min_{ch}")) / (2 * 255 * SH_C0) for ch in "rgb"], 1),
        "opacity": np.full(n, 0.5 / 255),
        "quat": np.full((n, 1), 3 * 0.5 * math.sqrt(2) / 1023),
        "rest": np.full(n, 8 / 512)[:, None, None],
    }


def _match(src: Gaussians, h: Gaussians, radius: float) -> np.ndarray:
    """Source index of each decoded splat (splat-transform reorders: Morton order), one to one."""
    from scipy.spatial import cKDTree

    d, j = cKDTree(src.means.numpy()).query(h.means.numpy())
    assert len(set(j.tolist())) == src.num and d.max() < radius, "decoded splats do not pair off with the source"
    return j


def test_compressed_ply_written_by_splat_transform():
    path = FIXTURES / "scene.compressed.ply"
    h = read_gaussians(path)
    src = _fixture_source()
    tol = _compressed_ply_tolerance(path)
    g = src.subset(torch.from_numpy(_match(src, h, radius=float(np.linalg.norm(tol["means"], axis=1).max()) * 1.01)))
    assert h.sh_degree == 3
    d = lambda a, b: (a.double() - b.double()).abs().numpy()  # noqa: E731
    _within("means", d(g.means, h.means), tol["means"])
    _within("log_scales", d(g.log_scales, h.log_scales), tol["log_scales"])
    _within("sh dc", d(g.sh[:, 0], h.sh[:, 0]), tol["dc"])
    _within("opacity", d(g.opacities, h.opacities), tol["opacity"])
    _within("quats", _quat_error(g, h), tol["quat"])
    _within("sh rest", d(g.sh[:, 1:], h.sh[:, 1:]), tol["rest"])


def test_sog_written_by_splat_transform():
    """splat-transform's SOG (version 2; ``-g cpu``): positions 16-bit in ``sign(x) ln(|x| + 1)`` between the meta's
    mins/maxs, truncated (so within one step: ``(max - min) / 65535 (|x| + 1)``); rotations 3 x 8-bit truncated of
    the smaller components times sqrt(2) (within 2 / (255 sqrt 2) each, the rebuilt largest within the sum);
    opacity 8-bit truncated sigmoid (1 / 255). Log-scales and SH DC index 256-entry k-means codebooks: the format
    bounds nothing, so each decoded value must be the codebook entry nearest the source. Higher SH are a k-means
    palette (256 entries for 300 splats here): only their overall error is bounded (half the coefficients' RMS; a
    band or channel read in the wrong order gives ~1.4 x), their exact decoding is checked by the live test."""
    import zipfile

    path = FIXTURES / "scene.sog"
    meta = json.loads(zipfile.ZipFile(path).read("meta.json"))
    h = read_gaussians(path)
    src = _fixture_source()
    g = src.subset(torch.from_numpy(_match(src, h, radius=0.01)))
    assert h.sh_degree == 3
    d = lambda a, b: (a.double() - b.double()).abs().numpy()  # noqa: E731
    step = (np.asarray(meta["means"]["maxs"]) - np.asarray(meta["means"]["mins"])) / 65535
    _within("means", d(g.means, h.means), step * (g.means.abs().double().numpy() + 1) * (1 + 1e-4))
    _within("quats", _quat_error(g, h), 3 * 2 / (255 * math.sqrt(2)))
    _within("opacity", d(g.opacities, h.opacities), 1 / 255)
    for name, got, want in (("scales", h.log_scales, g.log_scales), ("sh0", h.sh[:, 0], g.sh[:, 0])):
        cb = np.asarray(meta[name]["codebook"])
        nearest = np.abs(want.double().numpy()[..., None] - cb).min(-1)
        _within(f"{name} (nearest codebook entry)", d(want, got), nearest + 1e-6)
    rms = lambda t: float(t.double().pow(2).mean().sqrt())  # noqa: E731
    assert rms(g.sh[:, 1:] - h.sh[:, 1:]) < 0.5 * rms(g.sh[:, 1:])


# ---------------------------------------------------------------------------------------------------
# formats: against the live tool


def _splat_transform() -> str | None:
    """splat-transform: ``$COS3D_SPLAT_TRANSFORM``, where scripts/install.sh puts it (``.venv/npm`` beside the
    repository or the running interpreter's environment), or on PATH."""
    candidates = [os.environ.get("COS3D_SPLAT_TRANSFORM")]
    candidates += [str(Path(p) / "npm/node_modules/.bin/splat-transform") for p in (ROOT / ".venv", sys.prefix)]
    candidates.append(shutil.which("splat-transform"))
    return next((c for c in candidates if c and os.path.isfile(c) and os.access(c, os.X_OK)), None)


def test_splat_transform_interop(tmp_path):
    exe = _splat_transform()
    if exe is None:
        npm = "npm is not installed" if shutil.which("npm") is None else "npm is here: run `bash scripts/install.sh test`"
        pytest.skip(f"@playcanvas/splat-transform not installed ({npm}; it goes to .venv/npm)")

    def convert(src, dst, *extra):
        r = subprocess.run([exe, "-q", "-w", str(src), *extra, str(dst)], capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stdout + r.stderr

    # (1) its decoding of the committed fixtures equals ours (float32 rounding; the .spz backend computes in float32)
    for name in ("scene.v4.spz", "scene.v3.spz", "scene.sh0.v4.spz", "scene.compressed.ply", "scene.sog"):
        convert(FIXTURES / name, tmp_path / f"{name}.ply")
        theirs, ours = read_ply(tmp_path / f"{name}.ply"), read_gaussians(FIXTURES / name)
        assert theirs.num == ours.num and theirs.sh.shape == ours.sh.shape, name
        for attr, atol in (("means", 2e-6), ("log_scales", 2e-6), ("opacities", 1e-6), ("sh", 2e-6)):
            np.testing.assert_allclose(getattr(ours, attr).numpy(), getattr(theirs, attr).numpy(), atol=atol, rtol=1e-6,
                                       err_msg=f"{name}: {attr}")
        _within(f"{name} quats", _quat_error(ours, theirs), 2e-6)
    # (2) fresh conversions of a new scene, both ways
    g = _random_gaussians(n=1000, degree=1)
    write_ply(tmp_path / "a.ply", g)
    convert(tmp_path / "a.ply", tmp_path / "a.compressed.ply")
    h = read_gaussians(tmp_path / "a.compressed.ply")
    tol = _compressed_ply_tolerance(tmp_path / "a.compressed.ply")
    gm = g.subset(torch.from_numpy(_match(g, h, radius=float(np.linalg.norm(tol["means"], axis=1).max()) * 1.01)))
    _within("means", (gm.means - h.means).abs().numpy(), tol["means"])
    for version in ("4", "3"):
        convert(tmp_path / "a.ply", tmp_path / f"st{version}.spz", "--spz-version", version)
        _check_spz(g, read_gaussians(tmp_path / f"st{version}.spz"), sh1=SPZ_STEP["sh1_niantic"],
                   sh_rest=SPZ_STEP["sh_rest_niantic"])
        write_spz(tmp_path / f"ours{version}.spz", g, version=int(version))  # ours, read by its reader
        convert(tmp_path / f"ours{version}.spz", tmp_path / f"back{version}.ply")
        _check_spz(g, read_ply(tmp_path / f"back{version}.ply"), sh1=SPZ_STEP["sh"], sh_rest=SPZ_STEP["sh"])


# ---------------------------------------------------------------------------------------------------
# cos3d export


def test_export_run(trained_run, tmp_path, capsys):
    out = tmp_path / "export"
    rc = entrypoint(["export", "--run", str(trained_run), "--out", str(out), "--prompt", "red coffee mug,soda can,elephant",
                     "--formats", "ply,spz"])
    assert rc == 0
    assert "wrote" in capsys.readouterr().out
    # (a) scene labels: a 3DGS .ply with label properties, npz, json
    g = read_ply(out / "labels.ply")
    assert {"label", "label_score"} <= set(g.features)
    z = np.load(out / "labels.npz")
    assert z["label"].shape == (g.num,) and z["label"].dtype == np.int32
    np.testing.assert_array_equal(g.features["label"][:, 0].numpy().astype(np.int32), z["label"])
    meta = json.loads((out / "labels.json").read_text())
    names = [o["names"][0] for o in meta["objects"]]
    for want in ("red coffee mug", "blue mug", "white bowl", "ketchup bottle", "table"):
        assert want in names, names
    assert names.count("soda can") == 2  # the same-kind pair: two objects
    for o in meta["objects"]:
        assert (z["label"] == o["label"]).sum() == o["num_gaussians"] > 0
        assert str(z["names"][o["label"]]) == o["names"][0]
    # the filters: the floor loses the floaters that made its box 46 x 39 m; every object is above the floor
    assert max(o["box"]["extent"][0] for o in meta["objects"] if o["names"][0] == "floor") < 10
    assert meta["filtered"]["floater_gaussians"] > 0
    assert min(o["num_gaussians"] for o in meta["objects"]) >= meta["filtered"]["min_gaussians"]
    assert sorted(o["label"] for o in meta["objects"]) == list(range(1, len(meta["objects"]) + 1))
    # (b) one prompt's selection: 3DGS .ply (+ .spz) and a labelled point cloud
    sel = read_ply(out / "soda_can.ply")
    assert 0 < sel.num < g.num and "object" in sel.features
    assert read_gaussians(out / "soda_can.spz").num == sel.num
    from plyfile import PlyData

    pc = PlyData.read(str(out / "soda_can_points.ply"))["vertex"]
    assert {"x", "y", "z", "red", "green", "blue", "object"} <= {p.name for p in pc.properties}
    assert sorted(set(np.asarray(pc["object"]).tolist())) == [1, 2]
    # (c) objects as JSON with boxes, centroids, grasps
    d = json.loads((out / "soda_can.json").read_text())
    assert len(d["objects"]) == 2 and len(d["targets"]) == 2
    assert np.asarray(d["targets"][0]["grasp"]["T_base_grasp"]).shape == (4, 4)
    assert "box" in d["objects"][0] and "centroid" in d["objects"][0]
    # a no-target prompt writes its answer, and no splats
    e = json.loads((out / "elephant.json").read_text())
    assert e["no_target"] and e["targets"] == [] and not (out / "elephant.ply").exists()
    assert read_gaussians(out / "scene.spz").num == g.num
    assert (out / "scene.spz").read_bytes()[:4] == b"NGSP"  # .spz version 4 by default


def test_export_errors_name_the_flag(trained_run, tmp_path, capsys):
    assert entrypoint(["export", "--run", str(trained_run), "--out", str(tmp_path), "--formats", "ply,obj"]) == 2
    assert "--formats obj" in capsys.readouterr().err
    assert entrypoint(["export", "--run", str(tmp_path / "nope")]) == 2
    assert "nope" in capsys.readouterr().err


def test_export_no_labels_writes_prompt_files_only(trained_run, tmp_path):
    out = tmp_path / "export"
    assert entrypoint(["export", "--run", str(trained_run), "--out", str(out), "--no-labels", "--formats", "ply,spz",
                       "--prompt", "soda can", "--spz-version", "3"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["soda_can.json", "soda_can.ply", "soda_can.spz", "soda_can_points.ply"]
    assert (out / "soda_can.spz").read_bytes()[:2] == b"\x1f\x8b"  # --spz-version 3: gzip


def _blob(rng, centre, n, size, opacity):
    """``n`` Gaussian centres on the surface of a box of side lengths ``size`` around ``centre``."""
    p = rng.uniform(-0.5, 0.5, (n, 3))
    face = rng.integers(0, 3, n)
    p[np.arange(n), face] = np.sign(p[np.arange(n), face]) * 0.5
    return np.asarray(centre) + p * np.asarray(size), np.full(n, opacity)


def _floor(rng, nx, ny, sx, sy):
    """A floor as training leaves one: ``nx`` x ``ny`` Gaussians on a jittered grid of ``sx`` x ``sy`` m at z = 0."""
    g = np.stack(np.meshgrid(np.linspace(-sx / 2, sx / 2, nx), np.linspace(-sy / 2, sy / 2, ny)), -1).reshape(-1, 2)
    p = np.concatenate([g + rng.normal(0, 0.2 * sx / nx, g.shape), rng.normal(0, 0.003, (len(g), 1))], 1)
    return p, np.full(len(p), 0.8)


def test_object_filters_drop_floaters_and_fragments():
    """The export's filters on a synthetic tabletop: two mugs (1000 Gaussians each, one with a handle a hair
    apart), a flat 12 x 7 x 1 cm slab of 159 faint Gaussians answered as a third "mug", and a 5 x 4 m floor of 3000
    with 30 floaters 20-40 m away. The mugs stay whole, the slab goes, the floor loses its floaters only."""
    from cos3d.apps.export import MIN_GAUSSIANS, SceneObject, filter_objects

    rng = np.random.default_rng(0)
    parts = [_blob(rng, (0, 0, 0.05), 1000, (0.08, 0.08, 0.1), 0.9),
             _blob(rng, (0.5, 0, 0.05), 1000, (0.08, 0.08, 0.1), 0.9),
             _blob(rng, (0.55, 0, 0.05), 60, (0.01, 0.01, 0.06), 0.9),  # the handle, 1 mm from the mug's side
             _blob(rng, (0.25, 0.3, 0.005), 159, (0.12, 0.07, 0.01), 0.15),
             _floor(rng, 60, 50, 5.0, 4.0)]
    far = rng.uniform(20, 40, (30, 3)) * rng.choice([-1, 1], (30, 3))
    means = np.concatenate([p for p, _ in parts] + [far])
    opacity = np.concatenate([o for _, o in parts] + [np.full(30, 0.5)])
    start = np.cumsum([0] + [len(p) for p, _ in parts])
    ids = [np.arange(start[i], start[i + 1]) for i in range(len(parts))]
    floor_ids = np.concatenate([ids[4], np.arange(start[-1], start[-1] + 30)])
    objs = [SceneObject(1, ["mug"], 0.99, ids[0]), SceneObject(2, ["mug"], 0.98, np.concatenate([ids[1], ids[2]])),
            SceneObject(3, ["mug"], 0.9, ids[3]), SceneObject(4, ["floor"], 0.95, floor_ids)]
    kept, dropped = filter_objects(objs, means, opacity)
    assert [(o.label, o.names[0], len(o.gaussians)) for o in kept] == [(1, "mug", 1000), (2, "mug", 1060), (3, "floor", 3000)]
    assert dropped["floater_gaussians"] == 30
    assert [(d["names"], d["num_gaussians"]) for d in dropped["objects_below_floor"]] == [(["mug"], 159)]
    extent = means[kept[2].gaussians].max(0) - means[kept[2].gaussians].min(0)
    assert extent[0] < 5.2 and extent[1] < 4.2  # 5 x 4 m and its jitter; ~80 m with the floaters
    # below MIN_GAUSSIANS is no object, whatever its name's heaviest
    lone = [SceneObject(1, ["speck"], 0.9, np.arange(MIN_GAUSSIANS - 1))]
    assert filter_objects(lone, means, opacity)[0] == []
