"""``cos3d prepare video FILE --out SCENE``: poses for a phone video (:mod:`cos3d.capture`)."""

from __future__ import annotations

import argparse

HELP = "camera poses for a video: sharp, evenly spaced frames, then structure-from-motion (no depth needed)"


def register(sub: argparse._SubParsersAction) -> None:
    from cos3d.commands.prepare_capture import register_kind

    register_kind(sub, "video", HELP, "the sharpest frame of each of --max-frames equal stretches of the video "
                  "(decoded by PyAV)", "sequential (exhaustive up to 40 frames)")
