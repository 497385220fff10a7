"""``cos3d train``: Gaussians (stage 0) → masks → instance field (stage 1) → language field (stage 2).

The flags are :class:`cos3d.pipeline.train_config.TrainConfig`'s fields (:mod:`cos3d.core.config`). A preset
(``--preset fast|full``; ``--fast`` is ``--preset fast``) comes first, then ``--config`` files, then the flags
given on the command line. Without ``--preset`` the device decides (:func:`choose_preset`): the full schedule
on CUDA, the fast one on a CPU, where the full one takes hours; the choice and its reason are printed before
any work starts. The Python API (``TrainConfig(...)``) has the full schedule's defaults and no preset.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from cos3d.pipeline.train_config import TrainConfig

HELP = "train a scene's collaborative field (Gaussians, masks, instance and language features)"
PRESETS = ("fast", "full")


def choose_preset(asked: str | None, device: str) -> tuple[str, str]:
    """``(preset, why)``: the one asked for, else by the device ``device`` resolves to (``auto``: CUDA when
    available)."""
    if asked is not None:
        return asked, "asked for with --preset" if asked != "fast" else "asked for (--fast / --preset fast)"
    from cos3d.core.device import resolve_device

    dev = resolve_device(device)
    if dev.type == "cuda":
        return "full", f"the default on a CUDA device ({dev}); --preset fast for a quick run"
    return "fast", (f"the default on a {dev.type.upper()} device (no CUDA): the full schedule takes hours there; "
                    "--preset full to run it anyway")


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
        "--preset",
        choices=PRESETS,
        default=None,
        help="the schedule: fast (cos3d/configs/fast.yaml: 300-step stage 0, fewer stage-1 iterations) or full "
        "(the defaults: 7000-step stage 0 with densification); default: full on CUDA, fast on a CPU",
    )
    p.add_argument("--fast", dest="preset", action="store_const", const="fast", help="the same as --preset fast")
    add_arguments(p, TrainConfig, TrainConfig(scene=""))
    p.set_defaults(func=run, config_cls=TrainConfig)


def config_of(args: argparse.Namespace) -> tuple[TrainConfig, str, str]:
    """``(config, preset, why)`` of parsed ``cos3d train`` arguments: the preset (asked for, or chosen by the
    device the flags and files name), then the ``--config`` files, then the flags."""
    from cos3d.core.config import config_from_args
    from cos3d.pipeline.train_config import TrainConfig

    plain = config_from_args(TrainConfig, args, TrainConfig(scene=""))  # for the device the preset follows
    preset, why = choose_preset(getattr(args, "preset", None), plain.device)
    return config_from_args(TrainConfig, args, TrainConfig(scene=""), files=[preset]), preset, why


def run(args: argparse.Namespace) -> int:
    from cos3d.core.errors import Cos3dError
    from cos3d.pipeline.runner import train

    cfg, preset, why = config_of(args)
    if not cfg.scene and cfg.images is None and cfg.video is None:
        raise Cos3dError("--scene is required: a scene folder, or a name like scannet/scene0000 under --data-root "
                         "(or --images PHOTOS / --video FILE for a capture without poses)")
    print(f"preset: {preset} ({why})", flush=True)
    run_dir = train(cfg, config_files=(preset, *args.config))
    print(f"run: {run_dir}  (load it with cos3d.load({str(run_dir)!r}); query it with `cos3d query --run {run_dir}`)")
    return 0
