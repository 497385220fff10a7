"""The training configuration: :class:`TrainConfig` is ``cos3d train``'s command line and ``run.json``'s
``config`` (it round-trips through :func:`cos3d.core.config.from_dict`). Training and loading both read it.

Presets (``--preset fast|full``, ``--fast``) are files in ``cos3d/configs/`` (package data).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from cos3d.core.config import ConfigError
from cos3d.field.ins2lang import Ins2LangConfig
from cos3d.field.instance import InstanceConfig
from cos3d.pipeline.recon import ReconConfig
from cos3d.pipeline.views import ViewPolicy
from cos3d.vision.models import ModelsConfig

__all__ = ["Level", "TrainConfig"]

Level = Literal["s", "m", "l"]


@dataclass
class TrainConfig:
    """What ``cos3d train`` does: every field is a flag (``--max-per-pixel``, ``--recon.iterations``)."""

    scene: str
    """Scene folder, or a name like scannet/scene0000 looked up under --data-root."""
    out: Path | None = None
    """Run folder (default: runs/<scene folder name>)."""
    data_root: Path | None = None
    """Where named scenes live (default: $COS3D_DATA, else ./data)."""
    models: ModelsConfig = field(default_factory=ModelsConfig, metadata={"flatten": True})
    """2D models"""
    views: ViewPolicy = field(default_factory=ViewPolicy, metadata={"flatten": True})
    """views and resolution"""
    mask_cache: Path | None = None
    """Per-view 2D cache folder, shared with `cos3d prepare masks` (default: SCENE/cos3d_masks/<models>)."""
    resume: bool = False
    """Skip finished stages; continue stage 1 from its checkpoint."""
    restart: bool = False
    """Re-run the stages of a run folder that has finished ones (without it, such a folder is refused)."""
    stage: Literal["recon", "masks", "instance", "language", "all"] = "all"
    """Run one stage only (its predecessors must be finished), or all."""
    images: Path | None = None
    """A folder of photos with no poses: `cos3d prepare images` poses it into --capture-out first (also done
    when --scene names a folder that holds only photos)."""
    video: Path | None = None
    """A video file: `cos3d prepare video` chooses and poses its frames into --capture-out first."""
    capture_out: Path | None = None
    """Where --images/--video (or a --scene of photos) is posed (default: beside it, <name>_scene; reused
    when it was made from the same source)."""
    capture_camera_model: Literal["SIMPLE_RADIAL", "OPENCV", "SIMPLE_PINHOLE", "PINHOLE"] = "SIMPLE_RADIAL"
    """Lens model --images/--video estimate (as `cos3d prepare --camera-model`; SIMPLE_PINHOLE for frames with no
    lens distortion, e.g. rendered ones)."""
    gaussians: Path | None = None
    """Import a trained scene (.ply from graphdeco 3DGS, gsplat, splatfacto) instead of running stage 0."""
    levels: tuple[Level, ...] = ("l", "s")
    """Mask levels to train a field for (a comma list of s, m, l; all three can be trained). Queries answer
    objects on l; part queries on the finest trained level that separates the part (s, then m)."""
    iterations: int | None = None
    """Stage-1 iterations (default: iterations-per-view × training views within [iterations-min, iterations-max])."""
    iterations_per_view: int = 300
    """Stage-1 iterations per training view when --iterations is not given (each step sees a whole view)."""
    iterations_min: int = 3000
    """Lower clamp of the per-view rule."""
    iterations_max: int = 30000
    """Upper clamp of the per-view rule (COS3D trains 30k; its fast setting 3k)."""
    seed: int = 0
    """Seed of every stage (stage-0 init and view order, stage-1 init, stage-2 samplers)."""
    device: str = "auto"
    """auto (CUDA when available), cpu, cuda, cuda:1 ..."""
    max_per_pixel: int | None = None
    """Keep at most this many blending weights per pixel in the cached view weights (default: all)."""
    max_pixels_per_view: int | None = None
    """Cache the weights of only a seeded sample of this many pixels per view (default: as many as the memory budget allows)."""
    memory_budget_gib: float | None = None
    """Memory for the cached blending weights of stages 1-2; views sample pixels to fit (default: a quarter of the available RAM, half the free GPU memory)."""
    cache_weights: bool = False
    """Also keep the per-view blending weights on disk (RUN/cache/weights) for later runs."""
    threads: int | None = None
    """CPU threads for torch (default: $COS3D_THREADS if set, else torch's); 1 is often faster on a busy machine."""
    progress: bool = True
    """Show progress bars."""
    recon: ReconConfig = field(
        default_factory=ReconConfig, metadata={"exclude": ("seed", "device", "threads", "progress")}
    )
    """stage 0: photometric 3DGS"""
    instance: InstanceConfig = field(default_factory=InstanceConfig, metadata={"exclude": ("iterations", "seed")})
    """stage 1: instance field"""
    ins2lang: Ins2LangConfig = field(default_factory=Ins2LangConfig, metadata={"exclude": ("seed",)})
    """stage 2: instance-to-language mapping"""

    def stage1_iterations(self, n_views: int) -> int:
        """``iterations`` if set, else the per-view rule for ``n_views`` training views."""
        if self.iterations is not None:
            return int(self.iterations)
        return int(min(self.iterations_max, max(self.iterations_min, self.iterations_per_view * n_views)))

    def validate(self) -> None:
        """Raise :class:`~cos3d.core.config.ConfigError` naming the first bad setting."""
        try:
            self.models.validate()
        except ConfigError as e:
            raise ConfigError(f"models.{e.key}", e.problem) from None
        if not self.levels:
            raise ConfigError("levels", "must name at least one level (s, m, l)")
        if len(set(self.levels)) != len(self.levels):
            raise ConfigError("levels", f"lists a level twice: {','.join(self.levels)}")
        positive = {
            "iterations": self.iterations,
            "iterations_per_view": self.iterations_per_view,
            "iterations_min": self.iterations_min,
            "iterations_max": self.iterations_max,
            "max_per_pixel": self.max_per_pixel,
            "threads": self.threads,
        }
        for key, v in positive.items():
            if v is not None and v < 1:
                raise ConfigError(key, f"must be positive, got {v}")
        if self.iterations_min > self.iterations_max:
            raise ConfigError("iterations_min", f"{self.iterations_min} exceeds iterations-max {self.iterations_max}")
        if self.memory_budget_gib is not None and not self.memory_budget_gib > 0:
            raise ConfigError("memory_budget_gib", f"must be positive, got {self.memory_budget_gib}")
        for key, v in (("max_views", self.views.max_views), ("max_size", self.views.max_size)):
            if v is not None and v < (16 if key == "max_size" else 1):
                raise ConfigError(f"views.{key}", f"must be at least {16 if key == 'max_size' else 1}, got {v}")
        if self.max_pixels_per_view is not None and self.max_pixels_per_view < 100:
            raise ConfigError("max_pixels_per_view", f"must be at least 100, got {self.max_pixels_per_view}")
        if self.gaussians is not None and not Path(self.gaussians).is_file():
            raise ConfigError("gaussians", f"{self.gaussians}: no such file")
        if self.ins2lang.method not in ("kernel", "mlp"):
            raise ConfigError("ins2lang.method", f"must be kernel or mlp, got {self.ins2lang.method!r}")
        try:
            self.recon.validate()
        except ConfigError as e:
            raise ConfigError(f"recon.{e.key}", e.problem) from None
