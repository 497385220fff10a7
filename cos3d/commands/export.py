"""``cos3d export``: scene-wide per-Gaussian labels, prompt selections and objects, as PLY/NPZ/JSON/SPZ.

The flags are :class:`cos3d.apps.export.ExportConfig`'s fields (:mod:`cos3d.core.config`). Examples::

    cos3d export --run runs/tabletop                                   # labels from the training names
    cos3d export --run RUN --vocabulary "mug,bowl,soda can" --prompt "red coffee mug,bowl" --formats ply,spz
    cos3d export --run RUN --no-labels --prompt "red coffee mug" --formats ply,spz --spz-version 3
"""

from __future__ import annotations

import argparse
import time

HELP = "export per-Gaussian labels, prompt selections (PLY, point cloud, SPZ) and objects (JSON)"


def register(sub: argparse._SubParsersAction) -> None:
    from pathlib import Path

    from cos3d.core.config import add_arguments, add_config_flag
    from cos3d.apps.export import ExportConfig

    p = sub.add_parser(
        "export",
        help=HELP,
        description=(
            "Write a run's scene-wide decomposition into named objects (labels.ply with 'label' and "
            "'label_score' properties, labels.npz, labels.json), each --prompt's selection (a 3DGS .ply, a "
            "labelled point cloud _points.ply, objects with boxes and grasps as .json) and, with --formats spz, "
            ".spz copies (scene.spz beside the labels; version 4, --spz-version 3 for older viewers). Objects lose "
            "their floaters and fragments below a size floor are dropped (labels.json 'filtered'). --no-labels "
            "writes the prompts' files only. Default output folder: RUN/export."
        ),
    )
    add_config_flag(p)
    add_arguments(p, ExportConfig, ExportConfig(run=Path("")))
    p.set_defaults(func=run, config_cls=ExportConfig)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from cos3d.core.config import config_from_args
    from cos3d.core.errors import Cos3dError
    from cos3d.apps.export import ExportConfig, export_run

    cfg = config_from_args(ExportConfig, args, ExportConfig(run=Path("")))
    if str(cfg.run) in ("", "."):
        raise Cos3dError("--run is required: the run folder made by cos3d train")
    t0 = time.perf_counter()
    summary = export_run(cfg)
    print(f"wrote {len(summary['files'])} files to {summary['out']} in {time.perf_counter() - t0:.1f} s")
    return 0
