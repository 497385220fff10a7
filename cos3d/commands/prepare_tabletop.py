"""``cos3d prepare tabletop``: render a seeded tabletop scene (pybullet, CPU) in the ScanNet layout.

The flags are :class:`cos3d.tabletop.TabletopConfig`'s fields (:mod:`cos3d.core.config`).
"""

from __future__ import annotations

import argparse
import time

HELP = "render a seeded tabletop scene with instance and part ground truth"


def register(sub: argparse._SubParsersAction) -> None:
    from pathlib import Path

    from cos3d.core.config import add_arguments, add_config_flag
    from cos3d.tabletop import TabletopConfig

    p = sub.add_parser(
        "tabletop",
        help=HELP,
        description=(
            "Render textured real-object meshes on a table with pybullet's CPU renderer and write colour, "
            "depth, poses, intrinsics, instance and part maps, labels.json, parts.json, splits.json and "
            "meta.json in the ScanNet layout. The same arguments give the same files."
        ),
    )
    add_config_flag(p)
    add_arguments(p, TabletopConfig, TabletopConfig(out=Path("")))
    p.set_defaults(func=run, config_cls=TabletopConfig)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from cos3d.core.config import config_from_args
    from cos3d.core.errors import Cos3dError
    from cos3d.tabletop import TabletopConfig, generate_tabletop

    cfg = config_from_args(TabletopConfig, args, TabletopConfig(out=Path("")))
    if str(cfg.out) in ("", "."):
        raise Cos3dError("--out is required: the scene folder to create (absent or empty)")
    t0 = time.perf_counter()
    out = generate_tabletop(cfg)
    print(f"wrote {out} ({cfg.views} views at {cfg.width}x{cfg.height}, {cfg.objects} objects, seed {cfg.seed}) "
          f"in {time.perf_counter() - t0:.1f} s")
    return 0
