"""Read and write Gaussian scenes as ``.ply`` files compatible with graphdeco 3DGS, gsplat and
nerfstudio splatfacto exports.

One ``vertex`` element, binary little-endian float32 properties, in this order:

- ``x y z`` mean, ``nx ny nz`` (written as zeros, ignored on read),
- ``f_dc_0..2`` the SH DC term (RGB),
- ``f_rest_0..3(K-1)-1`` the higher SH bands in graphdeco's *channel-major* order: all rest
  coefficients of R, then of G, then of B (``f_rest_{c*(K-1)+k}`` is band coefficient k+1 of
  channel c); absent for degree 0,
- ``opacity`` (logit), ``scale_0..2`` (log), ``rot_0..3`` (quaternion w, x, y, z),
- extra per-Gaussian features as ``feat_<name>_<i>`` (i = 0..D-1). A header comment
  ``cos3d feature <name> <dtype>`` records the dtype so fp16 features come back as fp16
  (bit-exact: fp16 → fp32 → fp16 is lossless).

Reading also keeps columns that other tools add: any unknown group ``<prefix>_<i>`` (e.g.
``instance_l_0..15``) becomes feature ``<prefix>`` [N, D], and an unknown single column
``<name>`` becomes feature ``<name>`` [N, 1]. Writing then re-uses the ``feat_`` scheme.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path

import numpy as np
import torch

from cos3d.atomic import atomic_path
from cos3d.errors import Cos3dError
from cos3d.gaussians import Gaussians

FEATURE_PREFIX = "feat_"
_REQUIRED = ["x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2", "opacity", "scale_0", "scale_1", "scale_2",
             "rot_0", "rot_1", "rot_2", "rot_3"]  # fmt: skip
_KNOWN = set(_REQUIRED) | {"nx", "ny", "nz"}
_DTYPES = {"float16": torch.float16, "float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16}
_INDEXED = re.compile(r"^(.+)_(\d+)$")


def write_ply(path: str | os.PathLike, gaussians: Gaussians, *, features: bool | list[str] = True) -> Path:
    """Write ``gaussians`` to ``path`` atomically (binary little-endian float32).

    Args:
        features: True: every feature; False: none; a list: those names.

    Returns:
        The path written.
    """
    from plyfile import PlyData, PlyElement

    path = Path(path)
    g = gaussians.detach().to("cpu")
    g.validate_shapes()
    n, k = g.num, g.sh.shape[1]
    cols: list[tuple[str, np.ndarray]] = []

    def add(prefix: str, arr: torch.Tensor | np.ndarray) -> None:
        a = arr.numpy() if isinstance(arr, torch.Tensor) else arr
        a = a.reshape(n, -1)
        for i in range(a.shape[1]):
            cols.append((f"{prefix}{i}", a[:, i]))

    f32 = lambda t: t.to(torch.float32)  # noqa: E731
    for i, name in enumerate("xyz"):
        cols.append((name, f32(g.means[:, i]).numpy()))
    for name in ("nx", "ny", "nz"):
        cols.append((name, np.zeros(n, np.float32)))
    add("f_dc_", f32(g.sh[:, 0]))
    if k > 1:
        add("f_rest_", f32(g.sh[:, 1:]).transpose(1, 2).reshape(n, 3 * (k - 1)))  # channel-major
    cols.append(("opacity", f32(g.opacity_logits).numpy()))
    add("scale_", f32(g.log_scales))
    add("rot_", f32(g.quats))
    names = list(g.features) if features is True else (list(features) if features else [])
    comments = ["cos3d gaussians"]
    for name in names:
        if name not in g.features:
            raise Cos3dError(f"write_ply: no feature named {name!r}; the Gaussians have {sorted(g.features)}")
        if not re.fullmatch(r"[A-Za-z0-9_]+", name):
            raise Cos3dError(f"write_ply: feature name {name!r} must contain only letters, digits and '_'")
        t = g.features[name]
        if not t.is_floating_point():
            raise Cos3dError(f"write_ply: feature {name!r} must be a float tensor, got {t.dtype}")
        comments.append(f"cos3d feature {name} {str(t.dtype).replace('torch.', '')}")
        add(f"{FEATURE_PREFIX}{name}_", f32(t))
    data = np.empty(n, dtype=[(c, "<f4") for c, _ in cols])
    for c, a in cols:
        data[c] = a
    el = PlyElement.describe(data, "vertex")
    with atomic_path(path) as tmp:
        PlyData([el], text=False, byte_order="<", comments=comments).write(str(tmp))
    return path


def _group_columns(names: list[str]) -> dict[str, list[tuple[int, str]]]:
    groups: dict[str, list[tuple[int, str]]] = {}
    for nm in names:
        m = _INDEXED.match(nm)
        key, idx = (m.group(1), int(m.group(2))) if m else (nm, -1)
        groups.setdefault(key, []).append((idx, nm))
    return groups


def read_ply(path: str | os.PathLike, *, device: torch.device | str = "cpu", features: bool = True) -> Gaussians:
    """Read a Gaussian ``.ply`` (graphdeco / gsplat / splatfacto / cos3d).

    Raises :class:`Cos3dError` naming the file and the problem for a missing file, a file without a
    ``vertex`` element, a missing required property, an ``f_rest`` count that is not 3·((d+1)²−1), or
    NaN/inf values. Non-finite Gaussians are **refused, never dropped**: the message gives the count of
    bad rows (of the columns read: with ``features=False`` extra columns are not checked), so a
    corrupt or diverged scene never reaches a query as if it were fine.
    """
    from plyfile import PlyData

    path = Path(path)
    if not path.is_file():
        raise Cos3dError(f"{path}: no such .ply file")
    try:
        ply = PlyData.read(str(path))
    except Exception as e:
        raise Cos3dError(f"{path}: cannot parse as PLY ({e})") from None
    try:
        el = ply["vertex"]
    except KeyError:
        raise Cos3dError(f"{path}: no 'vertex' element; is this a Gaussian splat .ply?") from None
    names = [p.name for p in el.properties]
    missing = [p for p in _REQUIRED if p not in names]
    if missing:
        raise Cos3dError(
            f"{path}: missing required Gaussian propert{'y' if len(missing) == 1 else 'ies'} "
            f"{', '.join(repr(m) for m in missing)} (a 3DGS .ply has x y z f_dc_* opacity scale_* rot_*)"
        )
    data = el.data
    n = len(data)

    def col(nm: str) -> np.ndarray:
        return np.asarray(data[nm], dtype=np.float32)

    def block(prefix: str, count: int) -> np.ndarray:
        return np.stack([col(f"{prefix}{i}") for i in range(count)], axis=1) if count else np.zeros((n, 0), np.float32)

    rest = sorted((nm for nm in names if nm.startswith("f_rest_")), key=lambda s: int(s[7:]) if s[7:].isdigit() else -1)
    n_rest = len(rest)
    k = n_rest // 3 + 1
    if n_rest % 3 or math.isqrt(k) ** 2 != k or k > 16 or rest != [f"f_rest_{i}" for i in range(n_rest)]:
        raise Cos3dError(
            f"{path}: found {n_rest} f_rest_* properties; expected 0, 9, 24 or 45 numbered from 0 (SH degree 0-3)"
        )
    sh = np.empty((n, k, 3), np.float32)
    sh[:, 0] = block("f_dc_", 3)
    if k > 1:
        sh[:, 1:] = block("f_rest_", n_rest).reshape(n, 3, k - 1).transpose(0, 2, 1)
    means = np.stack([col("x"), col("y"), col("z")], axis=1)

    feats: dict[str, torch.Tensor] = {}
    if features:
        dtypes: dict[str, torch.dtype] = {}
        for c in ply.comments:
            parts = c.split()
            if len(parts) == 4 and parts[:2] == ["cos3d", "feature"] and parts[3] in _DTYPES:
                dtypes[parts[2]] = _DTYPES[parts[3]]
        extra = [nm for nm in names if nm not in _KNOWN and not nm.startswith("f_rest_")]
        for key, members in _group_columns(extra).items():
            name = key[len(FEATURE_PREFIX) :] if key.startswith(FEATURE_PREFIX) else key
            idx = sorted(i for i, _ in members)
            if idx == list(range(len(idx))):
                arr = np.stack([col(f"{key}_{i}") for i in idx], axis=1)
            else:  # not a clean 0..D-1 group: keep each column as its own [N, 1] feature
                for _, nm in members:
                    feats[nm] = torch.from_numpy(col(nm)[:, None].copy())
                continue
            t = torch.from_numpy(np.ascontiguousarray(arr))
            feats[name] = t.to(dtypes.get(name, torch.float32))
    g = Gaussians(
        means=torch.from_numpy(means),
        quats=torch.from_numpy(block("rot_", 4)),
        log_scales=torch.from_numpy(block("scale_", 3)),
        opacity_logits=torch.from_numpy(col("opacity").copy()),
        sh=torch.from_numpy(sh),
        features=feats,
    )
    g.validate_shapes()
    bad, where = g.nonfinite_rows()
    if where:
        nbad = int(bad.sum())
        raise Cos3dError(
            f"{path}: {nbad} of {n} Gaussians have NaN/inf values (in {', '.join(where)}; first: row "
            f"{int(bad.nonzero()[0, 0])}); the file is corrupt or its training diverged: re-export or retrain it "
            "(cos3d refuses such files rather than drop rows)"
        )
    return g.to(device)
