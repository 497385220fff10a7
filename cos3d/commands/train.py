"""``cos3d train``: Gaussians (stage 0) → masks → instance field (stage 1) → language field (stage 2)."""

from __future__ import annotations

import argparse
from pathlib import Path

from cos3d.commands._common import add_scene_args


def _levels(text: str) -> tuple[str, ...]:
    parts = tuple(p.strip() for p in text.split(",") if p.strip())
    bad = [p for p in parts if p not in ("s", "m", "l")]
    if not parts or bad:
        raise argparse.ArgumentTypeError(f"expected a comma list of s, m, l (e.g. l,s), got {text!r}")
    return parts


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train a scene's collaborative field (Gaussians, masks, instance and language features)",
        description=(
            "Train the stages of cos3d on a scene into a run folder: 0 Gaussians (photometric 3DGS, or "
            "--gaussians to import one), masks (2D masks + embeddings of the training views), 1 instance "
            "field (contrastive, on cached blending weights), 2 language field (Ins2Lang kernel regression). "
            "Every stage is resumable (--resume). Offline defaults: --masks dataset --embedder labels, the "
            "oracle-2D protocol (it measures the 3D machinery, not CLIP/SAM)."
        ),
    )
    add_scene_args(p)
    p.add_argument("--out", type=Path, default=None, help="run folder (default: runs/<scene folder name>)")
    p.add_argument(
        "--masks",
        choices=("dataset", "sam2", "classical"),
        default="dataset",
        help="mask provider (default: dataset, the scene's instance maps)",
    )
    p.add_argument(
        "--embedder",
        choices=("labels", "openclip", "siglip"),
        default="labels",
        help="mask embedder (default: labels, sentence embeddings of mask names)",
    )
    p.add_argument(
        "--fast", action="store_true", help="fast presets: stage 0's short schedule and fewer stage-1 iterations"
    )
    p.add_argument("--resume", action="store_true", help="skip finished stages; continue stage 1 from its checkpoint")
    p.add_argument(
        "--stage",
        choices=("recon", "masks", "instance", "language", "all"),
        default="all",
        help="run one stage only (its predecessors must be finished), or all (default)",
    )
    p.add_argument(
        "--gaussians",
        type=Path,
        default=None,
        metavar="PLY",
        help="import a trained scene (.ply from graphdeco 3DGS, gsplat, splatfacto) and skip stage 0",
    )
    p.add_argument("--levels", type=_levels, default=("l", "s"), help="mask levels to train fields for (default: l,s)")
    p.add_argument(
        "--iterations",
        type=int,
        default=None,
        help="stage-1 iterations (default: 50 per training view within [500, 3000] with --fast, "
        "else 300 per view within [3000, 30000])",
    )
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda, cuda:1 ...")
    p.add_argument(
        "--ins2lang",
        choices=("kernel", "mlp"),
        default="kernel",
        help="stage 2: kernel regression over anchors (default) or a small MLP",
    )
    p.add_argument(
        "--max-per-pixel",
        type=int,
        default=None,
        help="keep at most this many blending weights per pixel in the cached view weights",
    )
    p.add_argument(
        "--max-pixels-per-view",
        type=int,
        default=None,
        help="cache the weights of only this many sampled pixels per view (bounds memory on large scenes)",
    )
    p.add_argument(
        "--cache-weights",
        action="store_true",
        help="also keep the per-view blending weights on disk (RUN/cache/weights) for later runs",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="CPU threads for torch (default: torch's); 1 is often faster on a busy machine",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    g = p.add_argument_group("2D models")
    g.add_argument(
        "--perturb", type=float, default=None, help="dataset masks: strength in [0, 1] of seeded SAM-like errors"
    )
    g.add_argument("--sam2-checkpoint", type=Path, default=None, help="local SAM2 checkpoint (.pt)")
    g.add_argument("--sam2-config", default=None, help="SAM2 config name or YAML path")
    g.add_argument("--clip-model", default=None, help="open_clip architecture or model-config .json")
    g.add_argument("--clip-checkpoint", type=Path, default=None, help="local open_clip checkpoint")
    g.add_argument("--siglip-model", default=None, help="SigLIP hub id or local folder")
    p.set_defaults(func=run)


def config_from_args(args: argparse.Namespace):  # noqa: ANN201
    """The :class:`cos3d.train.TrainConfig` of parsed ``cos3d train`` arguments."""
    from cos3d.errors import Cos3dError
    from cos3d.field.ins2lang import Ins2LangConfig
    from cos3d.train import TrainConfig

    mask_opts: dict = {}
    if args.perturb is not None:
        if args.masks != "dataset":
            raise Cos3dError("--perturb applies to --masks dataset only")
        mask_opts["perturb"] = args.perturb
    if args.masks == "sam2":
        if args.sam2_checkpoint is not None:
            mask_opts["checkpoint"] = str(args.sam2_checkpoint)
        if args.sam2_config is not None:
            mask_opts["config"] = args.sam2_config
    emb_opts: dict = {}
    if args.embedder == "openclip":
        if args.clip_model is not None:
            emb_opts["model"] = args.clip_model
        if args.clip_checkpoint is not None:
            emb_opts["checkpoint"] = str(args.clip_checkpoint)
    if args.embedder == "siglip" and args.siglip_model is not None:
        emb_opts["model"] = args.siglip_model
    return TrainConfig(
        scene=args.scene,
        out=args.out,
        data_root=args.data_root,
        masks=args.masks,
        embedder=args.embedder,
        fast=args.fast,
        resume=args.resume,
        stage=args.stage,
        gaussians=args.gaussians,
        levels=tuple(args.levels),
        iterations=args.iterations,
        seed=args.seed,
        device=args.device,
        max_per_pixel=args.max_per_pixel,
        max_pixels_per_view=args.max_pixels_per_view,
        threads=args.threads,
        cache_weights=args.cache_weights,
        ins2lang=Ins2LangConfig(method=args.ins2lang),
        mask_options=mask_opts,
        embedder_options=emb_opts,
        progress=not args.no_progress,
    )


def run(args: argparse.Namespace) -> int:
    from cos3d.train import train

    run_dir = train(config_from_args(args))
    print(f"run: {run_dir}  (load it with cos3d.load({str(run_dir)!r}); query it with `cos3d query --run {run_dir}`)")
    return 0
