"""``cos3d prepare images DIR --out SCENE``: poses for a folder of photos (:mod:`cos3d.capture`)."""

from __future__ import annotations

import argparse

HELP = "camera poses for a folder of photos by structure-from-motion (no depth needed)"


def register(sub: argparse._SubParsersAction) -> None:
    from cos3d.commands.prepare_capture import register_kind

    register_kind(sub, "images", HELP, "the photos (upright per EXIF)",
                  "exhaustive (sequential by file name beyond 120 photos)")
