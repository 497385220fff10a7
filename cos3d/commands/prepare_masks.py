"""``cos3d prepare masks``: run the 2D models (masks s/m/l + one embedding per mask) on a scene's views
and fill the per-view cache (:mod:`cos3d.vision.cache`) that ``cos3d train`` reads.

The flags are :class:`PrepareMasksConfig`'s fields (:mod:`cos3d.core.config`); the 2D-model flags are the
same :class:`cos3d.vision.models.ModelsConfig` that ``cos3d train`` uses, so both commands with the
same models fill and read the same cache folder.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from cos3d.vision.models import ModelsConfig

HELP = "precompute per-view masks (levels s/m/l) and mask embeddings for a scene"


@dataclass
class PrepareMasksConfig:
    """What ``cos3d prepare masks`` does."""

    scene: str
    """Scene folder, or a name like scannet/scene0000 looked up under --data-root."""
    data_root: Path | None = None
    """Where named scenes live (default: $COS3D_DATA, else ./data)."""
    models: ModelsConfig = field(
        default_factory=lambda: ModelsConfig(masks="sam2", embedder="openclip"), metadata={"flatten": True}
    )
    """2D models"""
    cache: Path | None = None
    """Cache folder (default: SCENE/cos3d_masks/<masks>-<embedder>-<key>, the folder `cos3d train` reads)."""
    split: Literal["all", "train", "test"] = "all"
    """Which views."""
    device: str = "auto"
    """auto (CUDA when available), cpu, cuda, cuda:1 ..."""
    force: bool = False
    """Recompute cached views too."""
    progress: bool = True
    """Show a progress bar."""
    executor: Literal["local", "ray"] = "local"
    """local: views one after another in this process; ray: views on model-holding Ray actors (pip install 'cos3d[ray]')."""
    ray_address: str | None = None
    """Ray cluster to use (auto, HOST:PORT); default: start a local one on 127.0.0.1 for this command."""
    workers: int | None = None
    """Ray: model-holding actors (default: one per GPU of the cluster, else one per CPU)."""


def register(sub: argparse._SubParsersAction) -> None:
    from cos3d.core.config import add_arguments, add_config_flag

    p = sub.add_parser(
        "masks",
        help=HELP,
        description=(
            "Run a mask provider and an embedder on every view of a scene and cache the results per view "
            "(masks bit-packed, embeddings fp16), keyed by image content, model ids and settings: re-running "
            "skips finished views, and `cos3d train` with the same models reads them. Offline (no model "
            "weights): --masks dataset --embedder labels, the oracle-2D protocol (it measures the 3D "
            "machinery, not CLIP); or --masks classical."
        ),
    )
    add_config_flag(p)
    add_arguments(p, PrepareMasksConfig, PrepareMasksConfig(scene=""))
    p.set_defaults(func=run, config_cls=PrepareMasksConfig)


def run(args: argparse.Namespace) -> int:
    from cos3d.core.atomic import check_writable
    from cos3d.core.config import ConfigError, config_from_args
    from cos3d.core.errors import Cos3dError
    from cos3d.readers import load_scene
    from cos3d.vision import prepare_masks
    from cos3d.vision.models import mask_cache_dir

    cfg = config_from_args(PrepareMasksConfig, args, PrepareMasksConfig(scene=""))
    if not cfg.scene:
        raise Cos3dError("--scene is required: a scene folder, or a name like scannet/scene0000 under --data-root")
    try:
        cfg.models.validate()
    except ConfigError as e:
        raise ConfigError(f"models.{e.key}", e.problem) from None
    if cfg.executor == "ray":
        return _run_ray(cfg)
    if cfg.ray_address is not None or cfg.workers is not None:
        flag = "--ray-address" if cfg.ray_address is not None else "--workers"
        raise Cos3dError(f"{flag} applies to --executor ray only")
    if cfg.cache is not None:  # before any model runs (the default cache is checked once it is known)
        check_writable(cfg.cache, "--cache")
    scene = load_scene(cfg.scene, cfg.data_root)
    provider = cfg.models.create_provider(scene, device=cfg.device)
    embedder = cfg.models.create_embedder(device=cfg.device)
    cache = cfg.cache or check_writable(mask_cache_dir(scene.root, provider, embedder), "the scene's mask cache")
    frames = scene.split(cfg.split) if cfg.split != "all" else scene.frames
    stats = prepare_masks(scene, frames, provider, embedder, cache, progress=cfg.progress, force=cfg.force)
    print(f"{stats.summary()} -> {cache}")
    _oracle_note(cfg)
    return 0


def _oracle_note(cfg: PrepareMasksConfig) -> None:
    if cfg.models.oracle_2d:
        print(
            "note: dataset masks"
            + (" + labels embeddings" if cfg.models.embedder == "labels" else "")
            + " follow the oracle-2D protocol; results measure the 3D machinery, not CLIP/SAM"
        )


def _run_ray(cfg: PrepareMasksConfig) -> int:
    """The views on Ray actors (:mod:`cos3d.distributed.masks`): the same cache as the local executor."""
    from cos3d.distributed import require_ray
    from cos3d.distributed.masks import ModelsFactory, prepare_masks_ray
    from cos3d.core.errors import Cos3dError
    from cos3d.readers import load_scene

    require_ray()
    if cfg.workers is not None and cfg.workers < 1:
        raise Cos3dError(f"--workers must be positive, got {cfg.workers}")
    scene = load_scene(cfg.scene, cfg.data_root)
    frames = scene.split(cfg.split) if cfg.split != "all" else scene.frames
    stats, cache = prepare_masks_ray(
        scene.root, [f.name for f in frames], ModelsFactory(cfg.models), cfg.cache,
        workers=cfg.workers, device=cfg.device, force=cfg.force, progress=cfg.progress, address=cfg.ray_address,
    )
    print(f"{stats.summary()} -> {cache}")
    _oracle_note(cfg)
    return 0
