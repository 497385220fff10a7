"""Contact sheet of a tabletop scene: colour | instance ids | part ids | depth, one row per view.

    python scripts/preview_tabletop.py SCENE_DIR [--views 0 5 19] [--out preview.png]

Ids are drawn with a fixed palette (0 = black); depth is shown near = bright. Prints the names of
the ids it shows, so the sheet can be checked against labels.json / parts.json by eye.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from PIL import Image


def palette(n: int = 256) -> np.ndarray:
    rng = np.random.default_rng(7)
    pal = rng.integers(60, 256, size=(n, 3), dtype=np.uint8)
    pal[0] = 0
    return pal


def depth_image(d_mm: np.ndarray) -> np.ndarray:
    d = d_mm.astype(np.float64) / 1000.0
    valid = d > 0
    if not valid.any():
        return np.zeros(d.shape + (3,), np.uint8)
    lo, hi = np.percentile(d[valid], [1, 99])
    g = np.clip((hi - d) / max(hi - lo, 1e-6), 0, 1) * 255
    g[~valid] = 0
    return np.repeat(g.astype(np.uint8)[..., None], 3, -1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("scene", type=Path)
    ap.add_argument("--views", nargs="*", default=None, help="frame names (default: 4 spread over the scene)")
    ap.add_argument("--out", type=Path, default=None, help="PNG to write (default: SCENE/preview.png)")
    args = ap.parse_args()
    root: Path = args.scene
    names = sorted((p.stem for p in (root / "color").glob("*.png")), key=int)
    views = args.views or [names[i] for i in np.linspace(0, len(names) - 1, 4).round().astype(int)]
    pal = palette()
    rows = []
    for v in views:
        rgb = np.asarray(Image.open(root / "color" / f"{v}.png").convert("RGB"))
        inst = np.asarray(Image.open(root / "instance" / f"{v}.png")).astype(np.int64)
        part = np.asarray(Image.open(root / "part" / f"{v}.png")).astype(np.int64)
        depth = np.asarray(Image.open(root / "depth" / f"{v}.png"))
        rows.append(np.concatenate([rgb, pal[inst % 256], pal[(part * 37) % 256], depth_image(depth)], 1))
    out = args.out or root / "preview.png"
    Image.fromarray(np.concatenate(rows, 0)).save(out)
    labels = json.loads((root / "labels.json").read_text())
    parts = json.loads((root / "parts.json").read_text())
    print(f"wrote {out} (views {', '.join(views)})")
    for k, names_ in labels.items():
        print(f"  instance {k:>2}: {names_[0]}")
    for k, p in parts.items():
        print(f"  part {k:>2}: {p['names'][0]} (of instance {p['parent']})")


if __name__ == "__main__":
    main()
