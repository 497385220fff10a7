"""``cos3d prepare images DIR`` / ``cos3d prepare video FILE``: camera poses by structure-from-motion.

The flags are :class:`cos3d.capture.CaptureConfig`'s fields (:mod:`cos3d.core.config`); the two subcommands
differ only in what the source is (:mod:`cos3d.prepare_images`, :mod:`cos3d.prepare_video`).
"""

from __future__ import annotations

import argparse

DESCRIPTION = (
    "Turn a phone capture into a posed scene: {what}, SIFT features, {matching} matching, incremental mapping "
    "(pycolmap, CPU) and undistortion to a pinhole camera, written as images/ + sparse/0/ (the COLMAP layout "
    "every cos3d command reads) with capture.json (frames registered, the normalising similarity and scale: "
    "+z up, median camera distance 1; metres are not known from images). An interrupted run continues from "
    "its finished steps; the scene is built aside and moved into --out when complete. Next: "
    "`cos3d train --scene OUT`."
)


def register_kind(sub: argparse._SubParsersAction, kind: str, help: str, what: str, matching: str) -> None:
    from cos3d.capture import CaptureConfig
    from cos3d.core.config import add_arguments, add_config_flag

    p = sub.add_parser(kind, help=help, description=DESCRIPTION.format(what=what, matching=matching))
    add_config_flag(p)
    add_arguments(p, CaptureConfig, CaptureConfig(), exclude=("kind",))
    p.set_defaults(func=run, config_cls=CaptureConfig, capture_kind=kind)


def run(args: argparse.Namespace) -> int:
    import dataclasses

    from cos3d.capture import CaptureConfig, prepare_capture
    from cos3d.core.config import config_from_args

    cfg = config_from_args(CaptureConfig, args, CaptureConfig())
    cfg = dataclasses.replace(cfg, kind=args.capture_kind)
    r = prepare_capture(cfg)
    t = sum(r.timings.values())
    resumed = f"; continued after {', '.join(r.resumed)}" if r.resumed else ""
    print(f"wrote {r.out}: {r.registered} of {r.frames} frames registered, {r.points} sparse points, scale "
          f"{r.scale:.4g} (normalised units, not metres) in {t:.1f} s{resumed}; next: cos3d train --scene {r.out}")
    return 0
