"""``cos3d prepare masks``: run the 2D models (masks s/m/l + one embedding per mask) on a scene's views
and fill the per-view cache (:mod:`cos3d.vision.cache`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from cos3d.commands._common import add_scene_args


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "masks",
        help="precompute per-view masks (levels s/m/l) and mask embeddings for a scene",
        description=(
            "Run a mask provider and an embedder on every view of a scene and cache the results per view "
            "(masks bit-packed, embeddings fp16), keyed by image content, model ids and settings: re-running "
            "skips finished views. Offline (no model weights): --masks dataset --embedder labels, the "
            "oracle-2D protocol (it measures the 3D machinery, not CLIP); or --masks classical."
        ),
    )
    add_scene_args(p)
    p.add_argument(
        "--masks", choices=("sam2", "dataset", "classical"), default="sam2", help="mask provider (default: sam2)"
    )
    p.add_argument(
        "--embedder",
        choices=("openclip", "siglip", "labels"),
        default="openclip",
        help="mask/text embedder (default: openclip)",
    )
    p.add_argument(
        "--cache", type=Path, default=None, help="cache folder (default: SCENE/cos3d_masks/<masks>-<embedder>)"
    )
    p.add_argument("--split", default="all", choices=("all", "train", "test"), help="which views (default: all)")
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda, cuda:1, ...")
    p.add_argument("--force", action="store_true", help="recompute cached views too")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    g = p.add_argument_group("sam2")
    g.add_argument(
        "--sam2-checkpoint",
        type=Path,
        default=None,
        help="local SAM2 checkpoint (.pt); default $COS3D_SAM2_CHECKPOINT, else download --sam2-hub-id",
    )
    g.add_argument(
        "--sam2-config",
        default=None,
        help="SAM2 config name or YAML path, e.g. configs/sam2.1/sam2.1_hiera_l.yaml "
        "(default $COS3D_SAM2_CONFIG, else inferred from the checkpoint file name)",
    )
    g.add_argument("--sam2-hub-id", default="facebook/sam2.1-hiera-large", help="hub model when no checkpoint is given")
    g.add_argument("--points-per-side", type=int, default=32, help="SAM2 point grid (default: 32)")
    g.add_argument(
        "--pred-iou-thresh", type=float, default=0.7, help="keep masks with predicted IoU above (default: 0.7)"
    )
    g.add_argument(
        "--stability-thresh", type=float, default=0.85, help="keep masks with stability at least (default: 0.85)"
    )
    g.add_argument("--nms-thresh", type=float, default=0.7, help="mask-IoU NMS within each level (default: 0.7)")
    g.add_argument(
        "--sam2-image-size",
        type=int,
        default=None,
        help="override SAM2's input resolution (released models: 1024); smaller = faster, worse",
    )
    g = p.add_argument_group("dataset / classical")
    g.add_argument(
        "--perturb",
        type=float,
        default=0.0,
        help="dataset masks: strength in [0, 1] of seeded SAM-like errors (erode/dilate/split/merge/drop)",
    )
    g.add_argument("--seed", type=int, default=0, help="dataset masks: perturbation seed (default: 0)")
    g.add_argument(
        "--classical-method",
        choices=("felzenszwalb", "slic"),
        default="felzenszwalb",
        help="classical masks: superpixel method (default: felzenszwalb)",
    )
    g = p.add_argument_group("embedders")
    g.add_argument(
        "--clip-model",
        default=None,
        help="open_clip architecture or model-config .json (default $COS3D_CLIP_MODEL, else ViT-B-16)",
    )
    g.add_argument(
        "--clip-pretrained", default="laion2b_s34b_b88k", help="open_clip pretrained tag (default: laion2b_s34b_b88k)"
    )
    g.add_argument(
        "--clip-checkpoint",
        type=Path,
        default=None,
        help="local open_clip checkpoint; default $COS3D_CLIP_CHECKPOINT, else download --clip-pretrained",
    )
    g.add_argument(
        "--siglip-model",
        default=None,
        help="SigLIP hub id or local folder (default $COS3D_SIGLIP_MODEL, else google/siglip-base-patch16-224)",
    )
    p.set_defaults(func=run)


def build_provider(args: argparse.Namespace, scene):  # noqa: ANN001, ANN201
    from cos3d.vision import create_mask_provider

    if args.masks == "sam2":
        return create_mask_provider(
            "sam2",
            checkpoint=args.sam2_checkpoint,
            config=args.sam2_config,
            hub_id=args.sam2_hub_id,
            device=args.device,
            points_per_side=args.points_per_side,
            pred_iou_thresh=args.pred_iou_thresh,
            stability_score_thresh=args.stability_thresh,
            nms_thresh=args.nms_thresh,
            image_size=args.sam2_image_size,
        )
    if args.masks == "dataset":
        return create_mask_provider("dataset", scene=scene, perturb=args.perturb, seed=args.seed)
    return create_mask_provider("classical", method=args.classical_method)


def build_embedder(args: argparse.Namespace):  # noqa: ANN201
    from cos3d.vision import create_embedder

    if args.embedder == "openclip":
        return create_embedder(
            "openclip",
            model=args.clip_model,
            pretrained=args.clip_pretrained,
            checkpoint=args.clip_checkpoint,
            device=args.device,
        )
    if args.embedder == "siglip":
        return create_embedder("siglip", model=args.siglip_model, device=args.device)
    return create_embedder("labels", device="cpu" if args.device == "auto" else args.device)


def run(args: argparse.Namespace) -> int:
    from cos3d.errors import Cos3dError
    from cos3d.readers import load_scene
    from cos3d.vision import prepare_masks

    if not 0.0 <= args.perturb <= 1.0:
        raise Cos3dError(f"--perturb must be in [0, 1], got {args.perturb}")
    if args.perturb and args.masks != "dataset":
        raise Cos3dError("--perturb applies to --masks dataset only")
    if args.embedder == "labels" and args.masks != "dataset":
        raise Cos3dError(
            "--embedder labels embeds mask names, which only --masks dataset provides (oracle-2D protocol)"
        )
    scene = load_scene(args.scene, args.data_root)
    cache = args.cache or Path(scene.root) / "cos3d_masks" / f"{args.masks}-{args.embedder}"
    provider = build_provider(args, scene)
    embedder = build_embedder(args)
    frames = scene.split(args.split) if args.split != "all" else scene.frames
    stats = prepare_masks(scene, frames, provider, embedder, cache, progress=not args.no_progress, force=args.force)
    print(f"{stats.summary()} -> {cache}")
    if args.masks == "dataset":
        print(
            "note: dataset masks"
            + (" + labels embeddings" if args.embedder == "labels" else "")
            + " follow the oracle-2D protocol; results measure the 3D machinery, not CLIP/SAM"
        )
    return 0
