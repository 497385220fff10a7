"""Gaussians container and .ply read/write."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cos3d.core.errors import Cos3dError
from cos3d.data.gaussians import Gaussians
from cos3d.data.ply import read_ply, write_ply
from ply_faults import write_nonfinite_ply


def _scene(n=50, degree=3, seed=0) -> Gaussians:
    g = Gaussians.random(n, sh_degree=degree, generator=torch.Generator().manual_seed(seed))
    gen = torch.Generator().manual_seed(seed + 1)
    g.features["instance_l"] = torch.randn(n, 16, generator=gen)
    g.features["language_l"] = torch.randn(n, 7, generator=gen).half()
    return g


def _assert_bit_exact(a: torch.Tensor, b: torch.Tensor) -> None:
    assert a.dtype == b.dtype and a.shape == b.shape
    assert torch.equal(a.view(torch.int16 if a.element_size() == 2 else torch.int32),
                       b.view(torch.int16 if b.element_size() == 2 else torch.int32))  # fmt: skip


@pytest.mark.parametrize("degree", [0, 1, 3])
def test_ply_round_trip_bit_exact(tmp_path, degree):
    g = _scene(degree=degree)
    p = write_ply(tmp_path / "g.ply", g)
    h = read_ply(p)
    for name in ("means", "quats", "log_scales", "opacity_logits", "sh"):
        _assert_bit_exact(getattr(g, name), getattr(h, name))
    assert h.sh_degree == degree
    assert set(h.features) == {"instance_l", "language_l"}
    _assert_bit_exact(g.features["instance_l"], h.features["instance_l"])
    _assert_bit_exact(g.features["language_l"], h.features["language_l"])  # fp16 comes back as fp16
    assert not list(tmp_path.glob(".*tmp*")), "atomic write left a temporary file"


def test_ply_rest_order_is_channel_major(tmp_path):
    from plyfile import PlyData

    g = _scene(n=3, degree=1)
    g.sh = torch.arange(3 * 4 * 3, dtype=torch.float32).reshape(3, 4, 3)
    write_ply(tmp_path / "g.ply", g, features=False)
    v = PlyData.read(str(tmp_path / "g.ply"))["vertex"].data
    # f_rest_{c*(K-1)+k} = sh[:, 1+k, c]: R's three rest coefficients first, then G, then B
    for c in range(3):
        for k in range(3):
            np.testing.assert_array_equal(v[f"f_rest_{c * 3 + k}"], g.sh[:, 1 + k, c].numpy())


def _write_graphdeco_style(path, n=4, with_opacity=True, extra=()):
    """A hand-written binary header laid out the way graphdeco's save_ply writes it (degree 1)."""
    props = ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"] + [f"f_rest_{i}" for i in range(9)]
    if with_opacity:
        props.append("opacity")
    props += ["scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"] + list(extra)
    header = "ply\nformat binary_little_endian 1.0\nelement vertex %d\n" % n
    header += "".join(f"property float {p}\n" for p in props) + "end_header\n"
    vals = np.arange(n * len(props), dtype="<f4").reshape(n, len(props)) / 10.0
    with open(path, "wb") as f:
        f.write(header.encode("ascii"))
        f.write(vals.tobytes())
    return props, vals


def test_graphdeco_header_opens(tmp_path):
    props, vals = _write_graphdeco_style(tmp_path / "point_cloud.ply", extra=[f"instance_l_{i}" for i in range(3)] + ["foo"])
    g = read_ply(tmp_path / "point_cloud.ply")
    col = {p: vals[:, i] for i, p in enumerate(props)}
    assert g.num == 4 and g.sh_degree == 1
    np.testing.assert_array_equal(g.means.numpy(), np.stack([col["x"], col["y"], col["z"]], 1))
    np.testing.assert_array_equal(g.quats[:, 0].numpy(), col["rot_0"])  # w first
    np.testing.assert_array_equal(g.opacity_logits.numpy(), col["opacity"])
    np.testing.assert_array_equal(g.sh[:, 2, 1].numpy(), col["f_rest_4"])  # G channel, 2nd rest coefficient
    assert g.features["instance_l"].shape == (4, 3)
    assert g.features["foo"].shape == (4, 1)
    # extra columns survive a round trip through our writer
    h = read_ply(write_ply(tmp_path / "again.ply", g))
    assert torch.equal(h.features["instance_l"], g.features["instance_l"])


def test_ply_missing_opacity_is_a_clear_error(tmp_path):
    _write_graphdeco_style(tmp_path / "bad.ply", with_opacity=False)
    with pytest.raises(Cos3dError, match=r"bad\.ply.*'opacity'"):
        read_ply(tmp_path / "bad.ply")


def test_ply_missing_file_and_bad_rest_count(tmp_path):
    with pytest.raises(Cos3dError, match="no such"):
        read_ply(tmp_path / "nope.ply")
    _write_graphdeco_style(tmp_path / "odd.ply", extra=["f_rest_9"])  # 10 rest coefficients
    with pytest.raises(Cos3dError, match="f_rest"):
        read_ply(tmp_path / "odd.ply")


def test_validate_names_the_bad_tensor():
    g = _scene()
    g.log_scales[3, 1] = float("nan")
    with pytest.raises(Cos3dError, match=r"1 of \d+ Gaussians have NaN/inf values \(in log_scales; first: index 3\)"):
        g.validate()
    g = _scene()
    g.features["instance_l"][7] = float("inf")
    with pytest.raises(Cos3dError, match="instance_l"):
        g.validate()
    g = _scene()
    g.sh = g.sh[:, :5]
    with pytest.raises(Cos3dError, match="sh must have shape"):
        g.validate()


def test_read_ply_refuses_non_finite_rows(tmp_path):
    g = _scene()
    g.means[2, 0] = float("nan")
    g.opacity_logits[5] = float("-inf")
    with pytest.raises(Cos3dError, match=r"bad\.ply: 2 of \d+ Gaussians have NaN/inf values \(rows 2, 5; columns x"):
        write_ply(tmp_path / "bad.ply", g)  # never writes what read_ply refuses
    assert not (tmp_path / "bad.ply").exists()
    write_nonfinite_ply(tmp_path / "bad.ply", g)
    with pytest.raises(Cos3dError, match=r"bad\.ply: 2 of \d+ Gaussians have NaN/inf values \(in means, opacity_logits; first: row 2\)"):
        read_ply(tmp_path / "bad.ply")
    g.means[:] = float("nan")
    write_nonfinite_ply(tmp_path / "all.ply", g)
    with pytest.raises(Cos3dError, match=rf"all\.ply: {g.num} of {g.num} Gaussians"):
        read_ply(tmp_path / "all.ply", features=False)


def test_subset_to_detach_and_properties():
    g = _scene(n=20, degree=2)
    s = g.subset(torch.tensor([1, 5, 7]))
    assert s.num == 3 and s.features["language_l"].shape == (3, 7)
    assert torch.equal(s.means[1], g.means[5])
    m = g.subset(g.opacities > 0.5)
    assert m.num == int((g.opacities > 0.5).sum())
    assert g.sh_degree == 2 and torch.allclose(g.scales, g.log_scales.exp())
    g.means.requires_grad_(True)
    assert not g.detach().means.requires_grad
    d = g.to(dtype=torch.float64)
    assert d.means.dtype == torch.float64 and d.features["language_l"].dtype == torch.float16


def test_params_round_trip_and_gsplat_strategy_ops():
    from gsplat.strategy.ops import duplicate, remove

    g = _scene(n=10, degree=1)
    params = g.params()
    assert set(params) == {"means", "quats", "scales", "opacities", "sh0", "shN", "feat_instance_l", "feat_language_l"}
    h = Gaussians.from_params(params)
    assert torch.equal(h.sh, g.sh) and torch.equal(h.features["instance_l"], g.features["instance_l"])
    opt = {k: torch.optim.Adam([{"params": [p], "lr": 1e-3}]) for k, p in params.items()}
    state: dict = {}
    duplicate(params, opt, state, torch.tensor([True, False] * 5))
    remove(params, opt, state, torch.arange(15) < 2)
    h = Gaussians.from_params(params)
    assert h.num == 13 and h.features["instance_l"].shape == (13, 16)
    assert torch.equal(h.features["instance_l"][-1], g.features["instance_l"][8])
