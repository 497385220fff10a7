"""``cos3d batch train|eval SCENES.txt``: many scenes, one task each, locally or on Ray (:mod:`cos3d.apps.batch`).

``batch train`` takes the common train flags, derived from :class:`cos3d.pipeline.train_config.TrainConfig` as
``cos3d train`` derives them (less ``--scene``/``--out``: each scene trains into OUT_ROOT/<name>);
both take the :class:`cos3d.apps.batch.BatchConfig` flags (executor, resources per scene, retries, summary).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cos3d.commands.train import PRESETS, choose_preset

HELP = "train or evaluate many scenes (a list of scene folders), locally or on a Ray cluster"

TRAIN_EXCLUDE = ("scene", "out", "progress")
"""TrainConfig fields that batch sets per scene (or that are batch flags)."""


@dataclass
class BatchEvalConfig:
    """What ``cos3d batch eval`` measures on each run."""

    protocol: Literal["occlusion", "selected"] = "occlusion"
    """2D masks of the answers: occlusion-aware, or the COS3D/OpenGaussian alpha > 0.7 of the selection."""
    device: str = "auto"
    """auto (CUDA when available), cpu, cuda ..."""
    threads: int | None = None
    """CPU threads for torch per scene (default: --cpus-per-scene on Ray, else torch's)."""


def register(sub: argparse._SubParsersAction) -> None:
    from cos3d.apps.batch import BatchConfig
    from cos3d.core.config import add_arguments, add_config_flag
    from cos3d.pipeline.train_config import TrainConfig

    p = sub.add_parser(
        "batch", help=HELP,
        description="Run `cos3d train` or the tabletop evaluation on every scene of a list (SCENES.txt: one "
        "scene folder a line, # comments), one task per scene: in this process one after another "
        "(--executor local) or on Ray with declared resources per scene (--executor ray). A bad scene fails "
        "alone; a summary table is printed and written as JSON.",
    )
    inner = p.add_subparsers(dest="what", required=True, metavar="WHAT")

    t = inner.add_parser(
        "train", help="train every scene of SCENES.txt into OUT_ROOT/<scene folder name>",
        description="Train every scene of SCENES.txt into OUT_ROOT/<scene folder name> with the same train "
        "flags (those of `cos3d train`). Re-running continues: finished scenes and stages are kept (--resume "
        "is implied; --restart re-runs them).",
    )
    t.add_argument("scenes", type=Path, metavar="SCENES.txt", help="scene folders (or names under --data-root), one a line")
    add_config_flag(t)
    t.add_argument("--preset", choices=PRESETS, default=None,
                   help="the schedule of every scene (as `cos3d train --preset`); default: full on CUDA, fast on a CPU")
    t.add_argument("--fast", dest="preset", action="store_const", const="fast", help="the same as --preset fast")
    g = t.add_argument_group("batch")
    add_arguments(g, BatchConfig, BatchConfig())
    add_arguments(t, TrainConfig, TrainConfig(scene=""), exclude=TRAIN_EXCLUDE)
    t.set_defaults(func=run_train, config_cls=TrainConfig)

    e = inner.add_parser(
        "eval", help="evaluate the runs `batch train` made (tabletop protocol, oracle-2D)",
        description="Evaluate OUT_ROOT/<name> for every scene of SCENES.txt with the tabletop protocol "
        "(cos3d.eval.tabletop: 2D mask IoU of text queries in held-out views, no-target accuracy).",
    )
    e.add_argument("scenes", type=Path, metavar="SCENES.txt", help="the scene list given to `cos3d batch train`")
    g = e.add_argument_group("batch")
    add_arguments(g, BatchConfig, BatchConfig())
    add_arguments(e, BatchEvalConfig, BatchEvalConfig())
    e.set_defaults(func=run_eval, config_cls=BatchEvalConfig, config=[])


def _batch_config(args: argparse.Namespace):  # noqa: ANN202
    from cos3d.apps.batch import BatchConfig
    from cos3d.core.config import config_from_args

    plain = argparse.Namespace(**{k: v for k, v in vars(args).items() if k != "config"})
    return config_from_args(BatchConfig, plain, BatchConfig())


def _report(report, path: Path) -> int:  # noqa: ANN001
    print(report.table())
    print(f"summary: {path}")
    return 1 if report.failed else 0


def run_train(args: argparse.Namespace) -> int:
    from cos3d.apps.batch import batch_train, read_scene_list
    from cos3d.core.config import config_from_args
    from cos3d.pipeline.train_config import TrainConfig

    bcfg = _batch_config(args)
    plain = config_from_args(TrainConfig, args, TrainConfig(scene=""))
    preset, why = choose_preset(args.preset, plain.device)
    cfg = config_from_args(TrainConfig, args, TrainConfig(scene=""), files=[preset])
    cfg.validate()  # a bad flag fails once, here, not once per scene
    scenes = read_scene_list(args.scenes)
    print(f"preset: {preset} ({why})", flush=True)
    report, path = batch_train(scenes, cfg, bcfg, config_files=(preset, *args.config))
    return _report(report, path)


def run_eval(args: argparse.Namespace) -> int:
    from cos3d.apps.batch import batch_eval, read_scene_list
    from cos3d.core.config import config_from_args

    bcfg = _batch_config(args)
    ecfg = config_from_args(BatchEvalConfig, args, BatchEvalConfig())
    scenes = read_scene_list(args.scenes)
    report, path = batch_eval(scenes, bcfg, protocol=ecfg.protocol, device=ecfg.device, threads=ecfg.threads)
    return _report(report, path)
