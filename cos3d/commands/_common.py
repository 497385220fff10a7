"""Arguments shared by several subcommands."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_scene_args(parser: argparse.ArgumentParser, required: bool = True) -> None:
    """``--scene`` and ``--data-root``, resolved by :func:`cos3d.readers.resolve_scene_path`."""
    parser.add_argument(
        "--scene",
        required=required,
        help="scene folder: a path, or a name like 'scannet/scene0000' looked up under --data-root",
    )
    parser.add_argument(
        "--data-root",
        type=Path,
        default=None,
        help="where named scenes live (default: $COS3D_DATA, else ./data)",
    )
