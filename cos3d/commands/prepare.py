"""``cos3d prepare tabletop|scannet|images|video|masks``: make, export or pose a scene, or fill a scene's
per-view 2D-model cache."""

from __future__ import annotations

import argparse
import importlib

HELP = ("make a tabletop scene, export a ScanNet .sens scan, pose photos or a video (structure-from-motion), or "
        "precompute masks + embeddings for a scene")
SUBCOMMANDS = {
    "tabletop": "cos3d.commands.prepare_tabletop",
    "masks": "cos3d.commands.prepare_masks",
    "scannet": "cos3d.commands.prepare_scannet",
    "images": "cos3d.commands.prepare_images",
    "video": "cos3d.commands.prepare_video",
}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("prepare", help=HELP,
                       description="Prepare inputs: generate a tabletop scene, export a raw ScanNet .sens "
                       "scan to the ScanNet layout, pose a folder of photos or a video by structure-from-motion, "
                       "or run the 2D models on a scene.")
    inner = p.add_subparsers(dest="what", required=True, metavar="WHAT")
    for modname in SUBCOMMANDS.values():
        importlib.import_module(modname).register(inner)
