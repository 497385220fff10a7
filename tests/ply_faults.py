"""Test helper: write a Gaussian ``.ply`` that holds NaN/inf values, as a corrupt or diverged file would.

``cos3d.data.ply.write_ply`` refuses such values (a run must never write what it cannot read back), so a
finite copy is written and the non-finite values are put back with plyfile.
"""

from __future__ import annotations

import io
from pathlib import Path

from plyfile import PlyData


def write_nonfinite_ply(path, g) -> None:
    """Write ``g`` (means, log-scales and opacities as they are, NaN/inf included) to ``path``."""
    from cos3d.data.gaussians import Gaussians
    from cos3d.data.ply import write_ply

    finite = lambda t: t.detach().nan_to_num(0.0, 0.0, 0.0)  # noqa: E731
    write_ply(path, Gaussians(means=finite(g.means), quats=finite(g.quats), log_scales=finite(g.log_scales),
                              opacity_logits=finite(g.opacity_logits), sh=finite(g.sh),
                              features={k: finite(v) for k, v in g.features.items()}))  # fmt: skip
    ply = PlyData.read(io.BytesIO(Path(path).read_bytes()))  # not mapped: the file is rewritten
    v = ply["vertex"].data
    cols = [(a, g.means[:, i]) for i, a in enumerate("xyz")] + [("opacity", g.opacity_logits)]
    cols += [(f"scale_{i}", g.log_scales[:, i]) for i in range(3)]
    for name, t in cols:
        v[name] = t.detach().numpy().astype("float32")
    ply.write(str(path))
