"""``cos3d prepare tabletop``: render a seeded tabletop scene (pybullet, CPU) in the ScanNet layout."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

DEFAULTS = {"seed": 0, "views": 24, "width": 320, "height": 240, "objects": 8}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "tabletop",
        help="render a seeded tabletop scene with instance and part ground truth",
        description=(
            "Render textured real-object meshes on a table with pybullet's CPU renderer and write colour, "
            "depth, poses, intrinsics, instance and part maps, labels.json, parts.json, splits.json and "
            "meta.json in the ScanNet layout. The same arguments give the same files."
        ),
    )
    p.add_argument("--out", type=Path, required=True, help="scene folder to create (absent or empty)")
    p.add_argument("--seed", type=int, default=DEFAULTS["seed"], help="random seed: objects, layout, cameras (default: 0)")
    p.add_argument("--views", type=int, default=DEFAULTS["views"], help="total number of views (default: 24)")
    p.add_argument("--test-views", type=int, default=None,
                   help="held-out test views among --views (default: max(2, views/5))")
    p.add_argument("--width", type=int, default=DEFAULTS["width"], help="image width (default: 320)")
    p.add_argument("--height", type=int, default=DEFAULTS["height"], help="image height (default: 240)")
    p.add_argument("--objects", type=int, default=DEFAULTS["objects"],
                   help="objects on the table, the robot and a same-kind pair included (default: 8)")
    p.add_argument("--force", action="store_true", help="replace --out if it exists and is not empty")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from cos3d.tabletop import TabletopConfig, generate_tabletop

    cfg = TabletopConfig(out=args.out, seed=args.seed, views=args.views, width=args.width, height=args.height,
                         objects=args.objects, test_views=args.test_views, force=args.force)
    t0 = time.perf_counter()
    out = generate_tabletop(cfg)
    print(f"wrote {out} ({cfg.views} views at {cfg.width}x{cfg.height}, {cfg.objects} objects, seed {cfg.seed}) "
          f"in {time.perf_counter() - t0:.1f} s")
    return 0
