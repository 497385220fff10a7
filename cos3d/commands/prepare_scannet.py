"""``cos3d prepare scannet``: export a raw ScanNet ``.sens`` scan to the ScanNet layout, without the toolkit.

The flags are :class:`cos3d.readers.sens.SensExportConfig`'s fields (:mod:`cos3d.core.config`).
"""

from __future__ import annotations

import argparse

HELP = "export a ScanNet .sens scan (every k-th frame) to the ScanNet export layout"


def register(sub: argparse._SubParsersAction) -> None:
    from pathlib import Path

    from cos3d.core.config import add_arguments, add_config_flag
    from cos3d.readers.sens import SensExportConfig

    p = sub.add_parser(
        "scannet",
        help=HELP,
        description=(
            "Read a raw ScanNet .sens file frame by frame (header, poses, JPEG colour, zlib depth) and write "
            "color/<i>.jpg (the stored JPEG bytes), depth/<i>.png (uint16 mm), pose/<i>.txt and intrinsic/ "
            "(colour and depth intrinsics and extrinsics), as ScanNet's exporter does, for every k-th frame. "
            "The folder is built aside and moved into --out when complete."
        ),
    )
    add_config_flag(p)
    add_arguments(p, SensExportConfig, SensExportConfig(sens=Path(""), out=Path("")))
    p.set_defaults(func=run, config_cls=SensExportConfig)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from cos3d.core.config import config_from_args
    from cos3d.readers.sens import SensExportConfig, export_sens

    cfg = config_from_args(SensExportConfig, args, SensExportConfig(sens=Path(""), out=Path("")))
    s = export_sens(cfg)
    h = s.header
    invalid = f"; {s.invalid_poses} lost tracking (-inf pose), which the scene reader skips" if s.invalid_poses else ""
    print(f"wrote {s.out}: {s.frames} of {h.num_frames} frames (every {cfg.every}){invalid}; "
          f"colour {h.color_width}x{h.color_height} {h.color_format.upper()}, depth {h.depth_width}x{h.depth_height}; "
          f"in {s.seconds:.1f} s")
    return 0
