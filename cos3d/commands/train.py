"""``cos3d train``: Gaussians (stage 0) → masks → instance field (stage 1) → language field (stage 2).

The flags are :class:`cos3d.pipeline.train_config.TrainConfig`'s fields (:mod:`cos3d.core.config`); ``--config`` files and
presets (``--fast`` = ``--config fast``) come first, flags given on the command line override them.
"""

from __future__ import annotations

import argparse

HELP = "train a scene's collaborative field (Gaussians, masks, instance and language features)"


def register(sub: argparse._SubParsersAction) -> None:
    from cos3d.core.config import add_arguments, add_config_flag
    from cos3d.pipeline.train_config import TrainConfig

    p = sub.add_parser(
        "train",
        help=HELP,
        description=(
            "Train the stages of cos3d on a scene into a run folder: 0 Gaussians (photometric 3DGS, or "
            "--gaussians to import one), masks (2D masks + embeddings of the training views, in the scene's "
            "shared 2D cache), 1 instance field (contrastive, on cached blending weights), 2 language field "
            "(Ins2Lang kernel regression). Every stage is resumable (--resume). Offline defaults: --masks dataset "
            "--embedder labels, the oracle-2D protocol (it measures the 3D machinery, not CLIP/SAM)."
        ),
    )
    add_config_flag(p)
    p.add_argument(
        "--fast",
        dest="config",
        action="append_const",
        const="fast",
        help="the fast preset (cos3d/configs/fast.yaml): stage 0's short schedule and fewer stage-1 iterations",
    )
    add_arguments(p, TrainConfig, TrainConfig(scene=""))
    p.set_defaults(func=run, config_cls=TrainConfig)


def run(args: argparse.Namespace) -> int:
    from cos3d.core.config import config_from_args
    from cos3d.core.errors import Cos3dError
    from cos3d.pipeline.runner import train
    from cos3d.pipeline.train_config import TrainConfig

    cfg = config_from_args(TrainConfig, args, TrainConfig(scene=""))
    if not cfg.scene and cfg.images is None and cfg.video is None:
        raise Cos3dError("--scene is required: a scene folder, or a name like scannet/scene0000 under --data-root "
                         "(or --images PHOTOS / --video FILE for a capture without poses)")
    run_dir = train(cfg, config_files=tuple(args.config))
    print(f"run: {run_dir}  (load it with cos3d.load({str(run_dir)!r}); query it with `cos3d query --run {run_dir}`)")
    return 0
