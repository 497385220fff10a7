"""``cos3d demo``: tabletop → train (fast, offline) → prompts of every kind → a table (oracle-2D)."""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "make a tabletop, train it and answer text/image/click/part prompts (offline, a few minutes)"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help=HELP,
        description="End-to-end demo on a generated tabletop with the offline oracle-2D providers "
        "(SAM2 + OpenCLIP when $COS3D_SAM2_CHECKPOINT and $COS3D_CLIP_CHECKPOINT are set).",
    )
    p.add_argument("--workdir", type=Path, default=Path("cos3d-demo"), help="folder for scene, run and report")
    p.add_argument("--resume", action="store_true", help="reuse the finished scene and training stages")
    p.add_argument("--protocol", default="occlusion", choices=("occlusion", "selected"),
                   help="2D mask protocol for the IoU column")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from cos3d.apps.demo import DemoConfig, run_demo

    run_demo(DemoConfig(workdir=args.workdir, resume=args.resume, protocol=args.protocol,
                        progress=not args.no_progress))
    return 0
