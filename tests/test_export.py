"""``cos3d export`` on the session run, and the splat formats (.compressed.ply, .spz, .splat).

The splat-transform test converts our files with npm's ``@playcanvas/splat-transform`` (found on PATH,
or at ``$COS3D_SPLAT_TRANSFORM``) and reads its output back; it is skipped, saying why, where the
package is not installed (``npm install -g @playcanvas/splat-transform``).
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess

import numpy as np
import pytest
import torch

from cos3d.cli import entrypoint
from cos3d.core.errors import Cos3dError
from cos3d.data.gaussians import Gaussians
from cos3d.data.ply import SH_C0, read_gaussians, read_ply, read_splat, read_spz, write_ply, write_spz

pytestmark = pytest.mark.usefixtures("one_torch_thread")


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


def _assert_close(g: Gaussians, h: Gaussians, *, means=2e-4, quat=3e-3, log_scale=0.035, opacity=2.5e-3,
                  dc=0.015, rest=0.05):
    assert h.num == g.num and h.sh.shape == g.sh.shape
    assert (g.means - h.means).abs().max() < means
    q1 = torch.nn.functional.normalize(g.quats, dim=1)
    q2 = torch.nn.functional.normalize(h.quats, dim=1)
    assert torch.minimum((q1 - q2).abs().amax(1), (q1 + q2).abs().amax(1)).max() < quat  # q and -q: one rotation
    assert (g.log_scales - h.log_scales).abs().max() < log_scale
    assert (g.opacities - h.opacities).abs().max() < opacity
    assert (g.sh[:, 0] - h.sh[:, 0]).abs().max() < dc
    if g.sh.shape[1] > 1:
        assert (g.sh[:, 1:] - h.sh[:, 1:]).abs().max() < rest


# ---------------------------------------------------------------------------------------------------
# formats


@pytest.mark.parametrize("degree", [0, 1, 3])
def test_spz_round_trip(tmp_path, degree):
    g = _random_gaussians(degree=degree)
    write_spz(tmp_path / "a.spz", g)
    _assert_close(g, read_spz(tmp_path / "a.spz"), rest=0.005)
    _assert_close(g, read_gaussians(tmp_path / "a.spz"), rest=0.005)
    # stored in the .spz axes (RUB): y and z reversed
    raw = read_spz(tmp_path / "a.spz", convert=False)
    np.testing.assert_allclose(raw.means[:, 1].numpy(), -g.means[:, 1].numpy(), atol=2e-4)


def test_spz_and_splat_errors_are_one_line(tmp_path):
    (tmp_path / "bad.spz").write_bytes(b"not gzip")
    with pytest.raises(Cos3dError, match="gzip"):
        read_spz(tmp_path / "bad.spz")
    header = np.array([0x5053474E, 4, 0], "<u4").tobytes() + bytes([0, 12, 0, 0])
    (tmp_path / "v4.spz").write_bytes(gzip.compress(header))
    with pytest.raises(Cos3dError, match="version 4"):
        read_spz(tmp_path / "v4.spz")
    (tmp_path / "bad.splat").write_bytes(b"x" * 33)
    with pytest.raises(Cos3dError, match="multiple of 32"):
        read_splat(tmp_path / "bad.splat")
    with pytest.raises(Cos3dError, match="unknown splat file type"):
        read_gaussians(tmp_path / "scene.obj")


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


def _splat_transform() -> str | None:
    exe = os.environ.get("COS3D_SPLAT_TRANSFORM") or shutil.which("splat-transform")
    return exe if exe and os.path.exists(exe) else None


def test_splat_transform_interop(tmp_path):
    exe = _splat_transform()
    if exe is None:
        npm = "npm is not installed" if shutil.which("npm") is None else "npm is here"
        pytest.skip(f"@playcanvas/splat-transform not installed ({npm}; `npm install -g @playcanvas/splat-transform`)")
    g = _random_gaussians(n=1000, degree=1)
    write_ply(tmp_path / "a.ply", g)

    def convert(src, dst, *extra):
        r = subprocess.run([exe, "-q", "-w", str(src), *extra, str(dst)], capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stdout + r.stderr

    # SuperSplat's compressed PLY: splat-transform reorders splats (Morton order); match them back
    convert(tmp_path / "a.ply", tmp_path / "a.compressed.ply")
    h = read_gaussians(tmp_path / "a.compressed.ply")
    from scipy.spatial import cKDTree

    d, j = cKDTree(g.means.numpy()).query(h.means.numpy())
    assert len(set(j.tolist())) == g.num and d.max() < 5e-3
    _assert_close(g.subset(torch.from_numpy(j)), h, means=5e-3, log_scale=5e-3, dc=0.015, rest=0.02)
    # .spz written by splat-transform (v3) read by us, ours read by splat-transform
    convert(tmp_path / "a.ply", tmp_path / "st.spz", "--spz-version", "3")
    _assert_close(g, read_gaussians(tmp_path / "st.spz"))
    write_spz(tmp_path / "ours.spz", g)
    convert(tmp_path / "ours.spz", tmp_path / "back.ply")
    _assert_close(g, read_ply(tmp_path / "back.ply"), rest=0.005)


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


def test_export_errors_name_the_flag(trained_run, tmp_path, capsys):
    assert entrypoint(["export", "--run", str(trained_run), "--out", str(tmp_path), "--formats", "ply,obj"]) == 2
    assert "--formats obj" in capsys.readouterr().err
    assert entrypoint(["export", "--run", str(tmp_path / "nope")]) == 2
    assert "nope" in capsys.readouterr().err
