"""One ``train`` call's shared state (:class:`Session`): the run, the scenes, the Gaussians, the 2D cache and
the per-view blending weights of stages 1-2, built lazily and kept in memory; and the memory budget that
decides how many pixels of each view those weights may hold.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable, TypeVar

import numpy as np
import torch

from cos3d.core.atomic import atomic_path
from cos3d.core.config import ConfigError
from cos3d.core.errors import Cos3dError
from cos3d.data.gaussians import Gaussians
from cos3d.data.scene import Frame, Scene
from cos3d.field.view_weights import ViewWeights
from cos3d.pipeline.run_folder import RunRecord
from cos3d.pipeline.train_config import TrainConfig
from cos3d.render.contributions import Contributions
from cos3d.vision.masks import MaskSet
from cos3d.vision import load_view
from cos3d.render import compute_contributions
from cos3d.data.ply import read_ply
from cos3d.vision import level_index

__all__ = ["BYTES_PER_PIXEL", "BYTES_PER_WEIGHT", "Session", "default_memory_budget_gib", "log", "pixels_within",
           "progress_bar"]

T = TypeVar("T")


def log(msg: str) -> None:
    """A training message, on stdout."""
    print(msg, flush=True)


def progress_bar(it: Iterable[T], desc: str, enabled: bool, **kw) -> Iterable[T]:
    """``it`` wrapped in a tqdm bar when ``enabled``."""
    if not enabled:
        return it
    from tqdm.auto import tqdm

    return tqdm(it, desc=desc, dynamic_ncols=True, leave=False, **kw)


class Session:
    """State shared by the stages of one ``train`` call (loaded lazily, kept in memory)."""

    def __init__(self, cfg: TrainConfig, state: RunRecord, native: Scene, scene: Scene, device: torch.device):
        self.cfg = cfg
        self.run = state.folder
        self.state = state
        self.native = native
        """The scene as read: the 2D models run on its frames, at their own resolution."""
        self.scene = scene
        """The training views (:func:`cos3d.pipeline.views.training_scene`): selected and rescaled."""
        self.device = device
        self._gaussians: Gaussians | None = None
        self._weights: list[tuple[int, ViewWeights]] | None = None
        self._level_counts: dict[str, int] | None = None
        self.sampled_views = 0
        """Views whose pixels were sampled to fit the memory budget (set when the weights are built)."""
        self._mask_dir: Path | None = None

    # ---- paths
    @property
    def run_dir(self) -> Path:
        return self.run.root

    @property
    def ply(self) -> Path:
        return self.run.ply

    @property
    def mask_dir(self) -> Path:
        """The shared 2D cache of this run's masks: set by the masks stage, else the recorded one."""
        if self._mask_dir is not None:
            return self._mask_dir
        recorded = self.state.checked_mask_cache(self.cfg.mask_cache)
        if recorded is None:
            raise Cos3dError(f"{self.run.run_json}: the masks stage has not run; run --stage masks or --stage all")
        return recorded

    @property
    def fields_path(self) -> Path:
        return self.run.fields

    @property
    def checkpoint(self) -> Path:
        return self.run.instance_checkpoint

    def train_frames(self) -> list[Frame]:
        return list(self.scene.split("train"))

    # ---- artefacts
    def artefact_ok(self, stage: str) -> bool:
        if stage == "recon":
            return self.ply.is_file()
        if stage == "masks":
            cache = self.state.checked_mask_cache(self.cfg.mask_cache)
            if cache is None:
                return False
            man = cache / "manifest.json"
            if not man.is_file():
                return False
            try:
                views = set(json.loads(man.read_text()).get("views", []))
            except (OSError, ValueError):
                return False
            return all(f.name in views for f in self.train_frames())
        if stage in ("instance", "language"):
            if not self.fields_path.is_file():
                return False
            levels = self.run.read_fields().levels
            if stage == "instance":
                return all(lev in levels for lev in self.cfg.levels)
            return all(lev in levels and levels[lev].has_language for lev in self.cfg.levels)
        raise AssertionError(stage)

    def gaussians(self) -> Gaussians:
        if self._gaussians is None:
            if not self.ply.is_file():
                raise Cos3dError(f"{self.ply}: missing; run stage recon first (--stage recon or --stage all)")
            g = read_ply(self.ply, features=False).validate(str(self.ply))
            self._gaussians = g.detach().to(self.device)
        return self._gaussians

    def mask_view(self, i: int) -> tuple[MaskSet, np.ndarray]:
        """``(MaskSet, emb [M, D] fp16)`` of training view ``i``, read from the 2D cache (never all held:
        at a scan's full resolution they would not fit)."""

        return load_view(self.mask_dir, self.train_frames()[i].name)

    def level_counts(self) -> dict[str, int]:
        """Masks per level over the training views."""
        if self._level_counts is None:
            counts: dict[str, int] = {lev: 0 for lev in self.cfg.levels}
            for i in range(len(self.train_frames())):
                ms, _ = self.mask_view(i)
                for lev in counts:
                    counts[lev] += int((ms.level == level_index(lev)).sum())
            self._level_counts = counts
        return self._level_counts

    def budget_bytes(self) -> int:
        """Memory for the cached view weights of stages 1-2 (``memory_budget_gib`` or the default)."""
        gib = self.cfg.memory_budget_gib
        return int((gib if gib is not None else default_memory_budget_gib(self.device)) * 2**30)

    def view_weights(self) -> list[tuple[int, ViewWeights]]:
        """``[(index in train_frames(), ViewWeights)]`` for training views that see any Gaussian."""
        if self._weights is not None:
            return self._weights

        g = self.gaussians()
        frames = self.train_frames()
        cache_dir = self.run.weights_cache if self.cfg.cache_weights else None
        key = None
        if cache_dir is not None:
            st = self.ply.stat()
            key = (
                f"{st.st_size}:{st.st_mtime_ns}:{self.cfg.max_per_pixel}:{self.cfg.max_pixels_per_view}:"
                f"{self.cfg.instance.n_samples}:{self.cfg.seed}:{self.budget_bytes()}"
            )
        per_view = self.budget_bytes() / max(1, len(frames))
        self.sampled_views = 0
        out = []
        bar = progress_bar(frames, "view weights", self.cfg.progress, unit="view")
        for i, f in enumerate(bar):
            vw = None
            if cache_dir is not None:
                p = self.run.weights_file(f.name)  # a frame name is data: escaped, never a path
                if p.is_file():
                    try:
                        st = torch.load(p, map_location="cpu", weights_only=True)
                        if st.get("key") == key and st.get("camera") == f.camera.key():
                            vw = ViewWeights.from_state_dict(st["weights"], device=self.device)
                    except Exception:  # a corrupt cache entry is rebuilt
                        vw = None
            if vw is None:
                contrib = compute_contributions(g, f.camera, max_per_pixel=self.cfg.max_per_pixel)
                max_pixels = pixels_within(per_view, contrib, self.cfg.max_pixels_per_view)
                vw = ViewWeights.from_contributions(
                    contrib,
                    g.num,
                    chunk_size=self.cfg.instance.n_samples,
                    seed=self.cfg.seed,
                    name=f.name,
                    max_pixels=max_pixels,
                )
                if max_pixels is not None and max_pixels != self.cfg.max_pixels_per_view:
                    self.sampled_views += 1
                del contrib
                if cache_dir is not None:
                    with atomic_path(self.run.weights_file(f.name)) as tmp:
                        torch.save({"key": key, "camera": f.camera.key(), "weights": vw.state_dict()}, tmp)
            if vw.nnz > 0:
                out.append((i, vw))
        if not out:
            raise Cos3dError(
                f"{self.ply}: no Gaussian is visible in any of the {len(frames)} training views of {self.scene.root}; "
                "the scene and the Gaussians do not match (wrong --gaussians file or coordinate frame?)"
            )
        self._weights = out
        return out


BYTES_PER_WEIGHT = 16
"""Bytes a cached blending weight costs: column index + value, in W and in its stored transpose."""
BYTES_PER_PIXEL = 16
"""Bytes a cached pixel costs beyond its weights: row pointers, pixel index, accumulated alpha."""
MIN_PIXELS_PER_VIEW = 4096


def default_memory_budget_gib(device: torch.device) -> float:
    """A quarter of the available RAM (CPU), or half the free memory of the GPU."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free / 2 / 2**30
    avail = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                avail = int(line.split()[1]) * 1024
    except OSError:
        pass
    if avail is None:
        avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return avail / 4 / 2**30


def pixels_within(budget: float, contrib: Contributions, cap: int | None) -> int | None:
    """How many of a view's covered pixels fit in ``budget`` bytes (None: all of them and ``cap`` is
    None): the weights per covered pixel are measured on the view's own contributions."""
    covered = int(torch.unique(contrib.pixel).numel())
    if covered == 0:
        return cap
    per_pixel = contrib.nnz / covered * BYTES_PER_WEIGHT + BYTES_PER_PIXEL
    fit = int(budget // per_pixel)
    if fit >= covered:
        return cap
    if fit < MIN_PIXELS_PER_VIEW:
        raise ConfigError(
            "memory_budget_gib",
            f"leaves {budget / 2**20:.1f} MiB a view, under {MIN_PIXELS_PER_VIEW} pixels of "
            f"{per_pixel:.0f} bytes; raise it, or train fewer views (--max-views) at a smaller size (--max-size)",
        )
    return fit if cap is None else min(cap, fit)
